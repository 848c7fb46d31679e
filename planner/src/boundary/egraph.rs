//! The e-graph of deliveries: equivalent ways to bring one flow of rows from the ranks that
//! hold it to the k ranks of one destination node that need it, extracted under link-aware
//! costs.
//!
//! Terms: `(flow bytes k holders cross)` is the rows; `(send FROM TO x)` moves x between roles:
//! `holders` (source ranks), `needers` (the k destination ranks), `leader` (one of them),
//! `parts` (the k of them, each with 1/k of the rows). `(send holders needers f)` is direct
//! point-to-point. Rules (each named, each with its own test):
//! - `via-leader`: direct = one network copy to a leader, then an NVLink broadcast;
//! - `via-parts`: direct = scatter parts across the slow links, then an NVLink all-gather.
//!
//! (A rule joining two sends into one only gave back the direct term already in its class, and
//! one cancelling a send and its inverse never matched, since no rule makes inverses: both are
//! gone. The composition with the producer's collectives is `compose/`.)
//!
//! Limits are values (iterations, nodes) and the stop reason is reported; iteration order is
//! deterministic (egg's), and no wall-clock limit applies.

use egg::{
    define_language, rewrite, Analysis, CostFunction, DidMerge, EGraph, Id, Language, RecExpr,
    Rewrite, Runner, Symbol,
};
use hetpar_cost::collective::Link;
use hetpar_cost::Cost;

define_language! {
    pub enum Delivery {
        "flow" = Flow([Id; 4]),
        "send" = Send([Id; 3]),
        Num(u64),
        Role(Symbol),
    }
}

/// The attributes of a flow, carried up through the sends that move it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowInfo {
    pub bytes: u64,
    pub k: u64,
    pub holders: u64,
    pub cross: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Data {
    pub num: Option<u64>,
    pub flow: Option<FlowInfo>,
}

#[derive(Default)]
pub struct FlowAnalysis;

impl Analysis<Delivery> for FlowAnalysis {
    type Data = Data;

    fn make(egraph: &mut EGraph<Delivery, Self>, enode: &Delivery, _id: Id) -> Data {
        let num = |i: &Id| egraph[*i].data.num;
        match enode {
            Delivery::Num(n) => Data {
                num: Some(*n),
                flow: None,
            },
            Delivery::Flow([b, k, h, c]) => Data {
                num: None,
                flow: match (num(b), num(k), num(h), num(c)) {
                    (Some(bytes), Some(k), Some(holders), Some(c)) => Some(FlowInfo {
                        bytes,
                        k,
                        holders,
                        cross: c != 0,
                    }),
                    _ => None,
                },
            },
            Delivery::Send([_, _, x]) => Data {
                num: None,
                flow: egraph[*x].data.flow,
            },
            Delivery::Role(_) => Data::default(),
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        let before = a.clone();
        if a.num.is_none() {
            a.num = b.num;
        }
        if a.flow.is_none() {
            a.flow = b.flow;
        }
        DidMerge(*a != before, false)
    }
}

pub type DeliveryGraph = EGraph<Delivery, FlowAnalysis>;

fn splittable(var: &'static str) -> impl Fn(&mut DeliveryGraph, Id, &egg::Subst) -> bool {
    let v: egg::Var = var.parse().expect("a pattern variable");
    move |g, _, subst| g[subst[v]].data.flow.is_some_and(|f| f.cross && f.k > 1)
}

/// The named rewrite rules.
pub fn rules() -> Vec<Rewrite<Delivery, FlowAnalysis>> {
    vec![
        rewrite!("via-leader"; "(send holders needers ?r)" => "(send leader needers (send holders leader ?r))" if splittable("?r")),
        rewrite!("via-parts"; "(send holders needers ?r)" => "(send parts needers (send holders parts ?r))" if splittable("?r")),
    ]
}

/// Link figures the costs use.
#[derive(Clone, Copy, Debug)]
pub struct Links {
    pub network: Link,
    pub nvlink: Link,
}

/// Time of one send between roles for a flow, s.
pub fn step_time(from: &str, to: &str, f: FlowInfo, links: &Links) -> f64 {
    let bytes = f.bytes as f64;
    let k = f.k.max(1) as f64;
    let nics = f.holders.max(1).min(f.k.max(1)) as f64;
    let far = if f.cross { links.network } else { links.nvlink };
    let near = links.nvlink;
    match (from, to) {
        ("holders", "needers") => (k / nics).ceil() * bytes / far.bandwidth + far.latency,
        ("holders", "leader") => bytes / far.bandwidth + far.latency,
        ("leader", "needers") => bytes / near.bandwidth + k.log2().ceil() * near.latency,
        ("holders", "parts") => (k / nics).ceil() * (bytes / k) / far.bandwidth + far.latency,
        ("parts", "needers") => (k - 1.0) / k * bytes / near.bandwidth + (k - 1.0) * near.latency,
        // Any other move (no rule makes one) pays the slow link for every copy.
        _ => k * bytes / far.bandwidth + far.latency,
    }
}

/// Extraction cost: the sum of step times, a totally ordered `Cost`.
pub struct DeliveryCost<'a> {
    pub egraph: &'a DeliveryGraph,
    pub links: Links,
}

impl CostFunction<Delivery> for DeliveryCost<'_> {
    type Cost = Cost;

    fn cost<C>(&mut self, enode: &Delivery, mut costs: C) -> Cost
    where
        C: FnMut(Id) -> Cost,
    {
        let children = enode.fold(0.0, |acc, id| {
            acc + costs(id).as_secs().unwrap_or(f64::INFINITY)
        });
        let own = match enode {
            Delivery::Send([a, b, x]) => {
                let role = |id: &Id| {
                    self.egraph[*id].nodes.iter().find_map(|n| match n {
                        Delivery::Role(s) => Some(s.as_str()),
                        _ => None,
                    })
                };
                match (role(a), role(b), self.egraph[*x].data.flow) {
                    (Some(ra), Some(rb), Some(f)) => step_time(ra, rb, f, &self.links),
                    _ => f64::INFINITY,
                }
            }
            _ => 0.0,
        };
        Cost::seconds(children + own)
    }
}

/// How a flow is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Direct,
    ViaLeader,
    ViaParts,
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Direct => "direct",
            Strategy::ViaLeader => "via a leader",
            Strategy::ViaParts => "via parts",
        })
    }
}

/// Search limits (values, never wall-clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    /// Whether a producer's collectives may be composed with the transfer (`compose`); off,
    /// every boundary takes its direct program.
    pub compose: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            iterations: 8,
            nodes: 50_000,
            compose: true,
        }
    }
}

/// What the e-graph search did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub flows: usize,
    pub iterations: usize,
    pub enodes: usize,
    pub eclasses: usize,
    pub stop_reason: String,
    /// Times each rule fired, by name.
    pub rules_fired: std::collections::BTreeMap<String, usize>,
}

/// Why the e-graph search stopped, in words (`--explain` and the JSON report show it).
fn stop_words(reason: Option<&egg::StopReason>) -> String {
    use egg::StopReason as R;
    match reason {
        None => "not stopped".into(),
        Some(R::Saturated) => "saturated".into(),
        Some(R::IterationLimit(n)) => format!("iteration limit ({n})"),
        Some(R::NodeLimit(n)) => format!("node limit ({n})"),
        Some(R::TimeLimit(s)) => format!("time limit ({s} s)"),
        Some(R::Other(s)) => s.clone(),
    }
}

/// The term of a direct delivery of a flow.
pub fn direct_term(f: FlowInfo) -> RecExpr<Delivery> {
    format!(
        "(send holders needers (flow {} {} {} {}))",
        f.bytes,
        f.k,
        f.holders,
        u8::from(f.cross)
    )
    .parse()
    .unwrap_or_default()
}

/// Chooses a strategy for every flow shape.
pub fn choose(shapes: &[FlowInfo], links: Links, limits: Limits) -> (Vec<Strategy>, Stats) {
    let mut egraph = DeliveryGraph::default();
    let roots: Vec<Id> = shapes
        .iter()
        .map(|f| egraph.add_expr(&direct_term(*f)))
        .collect();
    let runner = Runner::default()
        .with_egraph(egraph)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(std::time::Duration::from_secs(u64::MAX / 4))
        .run(&rules());
    let mut stats = Stats {
        flows: shapes.len(),
        iterations: runner.iterations.len(),
        enodes: runner.egraph.total_number_of_nodes(),
        eclasses: runner.egraph.number_of_classes(),
        stop_reason: stop_words(runner.stop_reason.as_ref()),
        rules_fired: Default::default(),
    };
    for it in &runner.iterations {
        for (name, n) in &it.applied {
            *stats.rules_fired.entry(name.to_string()).or_default() += n;
        }
    }
    let extractor = egg::Extractor::new(
        &runner.egraph,
        DeliveryCost {
            egraph: &runner.egraph,
            links,
        },
    );
    let strategies = roots
        .iter()
        .map(|&r| {
            let (_, best) = extractor.find_best(runner.egraph.find(r));
            classify(&best)
        })
        .collect();
    (strategies, stats)
}

/// Which strategy an extracted term is.
pub fn classify(e: &RecExpr<Delivery>) -> Strategy {
    let has = |role: &str| {
        e.as_ref()
            .iter()
            .any(|n| matches!(n, Delivery::Role(s) if s.as_str() == role))
    };
    if has("leader") {
        Strategy::ViaLeader
    } else if has("parts") {
        Strategy::ViaParts
    } else {
        Strategy::Direct
    }
}
