//! Synthesis: from ownership maps to a transfer plan, lowered into operations and fused calls.
//!
//! For every unit (the destination's encoder pass or micro-batch, `ownership`): segments (rows with holders and needers); every (row, needing rank)
//! pair whose rank does not hold the row is a delivery. Deliveries are grouped into flows: the
//! same holders, the needers of one destination node, every row range they share. A flow with
//! a holder on the destination node is sent directly over NVLink; otherwise the e-graph picks
//! direct, via-leader or via-parts for its shape. Holders are chosen to balance load across
//! replicated holders, lowest rank first on ties, so the plan is deterministic.

use std::collections::{BTreeMap, HashMap};

use hetpar_cost::collective::Link;
use hetpar_cost::Constants;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::{BoundaryId, Cluster, Plan, Rank};

use super::egraph::{choose, FlowInfo, Limits, Links, Stats, Strategy};
use super::ownership::{destination_map, segments, source_maps, Segment, SideMap};

/// One operation of a lowered boundary (the program's transfer operation).
pub use hetpar_ir::program::{Rows, Transfer as Op};

/// The lowered plan of one unit of the boundary's destination: an encoder pass for a boundary
/// into an encoder or projector, a micro-batch otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MicroBatchPlan {
    /// The unit's index (the program's `micro_batch` of the boundary instruction).
    pub micro_batch: u32,
    pub ops: Vec<Op>,
}

/// Which direction of a boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Activations, source layout to destination layout.
    Forward,
    /// Gradients, from ranks holding complete gradients back to every source holder.
    Backward,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        })
    }
}

/// One boundary in one direction: the plan and its figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Reshard {
    pub direction: Direction,
    /// Bytes received by ranks over all links (equals the lower bound).
    pub bytes: u64,
    /// (row, rank) pairs where the rank needs the row and does not hold it, x width x element.
    pub lower_bound_bytes: u64,
    /// Bytes crossing nodes.
    pub network_bytes: u64,
    /// Predicted time of the chosen program (with a composition, the producer's collective
    /// and the transfer), summed over units, s.
    pub time_s: f64,
    /// Slowest micro-batch, s.
    pub max_micro_batch_time_s: f64,
    /// Fused calls: ranks that communicate, per micro-batch, summed.
    pub fused_calls: usize,
    pub sends: usize,
    pub broadcasts: usize,
    pub all_gathers: usize,
    /// Reductions folded into the transfer (`Reduce` operations).
    pub reduces: usize,
    /// Flows per strategy.
    pub strategies: BTreeMap<Strategy, usize>,
    pub stats: Stats,
    /// The composed program: the e-graph's choice and the direct program's cost.
    pub egraph: Composition,
    /// What the step's simulation adds for this direction: the transfer, s. A producer
    /// collective the program keeps stays in its module's cost; a folded program is charged
    /// whole, its module's cost leaving the folded collective out (`hetpar_cost::fold`).
    pub charged_time_s: f64,
    #[serde(skip)]
    pub plans: Vec<MicroBatchPlan>,
    /// Charged time of each unit (encoder pass or micro-batch, as `plans`), s.
    #[serde(skip)]
    pub micro_batch_times: Vec<f64>,
    /// The chosen program's time of each unit, s.
    #[serde(skip)]
    pub unit_times: Vec<f64>,
    #[serde(skip)]
    pub segments: Vec<Vec<Segment>>,
}

impl Reshard {
    /// A direction with nothing synthesized yet.
    pub fn empty(direction: Direction) -> Self {
        Reshard {
            direction,
            bytes: 0,
            lower_bound_bytes: 0,
            network_bytes: 0,
            time_s: 0.0,
            max_micro_batch_time_s: 0.0,
            fused_calls: 0,
            sends: 0,
            broadcasts: 0,
            all_gathers: 0,
            reduces: 0,
            strategies: BTreeMap::new(),
            stats: Stats::default(),
            egraph: Composition::default(),
            charged_time_s: 0.0,
            plans: Vec::new(),
            micro_batch_times: Vec::new(),
            unit_times: Vec::new(),
            segments: Vec::new(),
        }
    }
}

/// How the e-graph composed a direction: the producer's last collective, the transfer and
/// the consumer's first collective as one program (`compose`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Composition {
    /// The chosen program as a term (`compose::term`).
    pub program: String,
    /// The rules whose rewrites the chosen program uses, in order, each once.
    pub rules_fired: Vec<String>,
    /// The unrewritten composition's cost, s.
    pub direct_time_s: f64,
    /// Selections of one e-node per e-class priced by the extraction.
    pub selections: usize,
    /// `exhausted` (the optimum) or `selection_limit`; empty where nothing was composed.
    pub stop_reason: String,
}

/// Inputs shared by both directions.
pub struct Context<'a> {
    pub model: &'a ModelGraph,
    pub cluster: &'a Cluster,
    pub plan: &'a Plan,
    pub constants: Constants,
    pub limits: Limits,
}

impl Context<'_> {
    pub(crate) fn links(&self) -> Links {
        Links {
            network: Link::of_class(self.cluster, &self.constants, true),
            nvlink: Link::of_class(self.cluster, &self.constants, false),
        }
    }
}

/// Segments of every unit of a boundary (its destination's passes or micro-batches), forward.
pub fn forward_segments(cx: &Context<'_>, b: BoundaryId) -> Vec<Vec<Segment>> {
    forward_segments_of(&source_maps(cx.model, cx.plan, b), &destination_maps(cx, b))
}

/// The destination's needs in every unit of boundary `b`.
pub fn destination_maps(cx: &Context<'_>, b: BoundaryId) -> Vec<SideMap> {
    (0..super::ownership::units(cx.model, cx.plan, b))
        .map(|u| destination_map(cx.model, cx.plan, b, u))
        .collect()
}

/// Segments of every unit from the source's maps and the destination's.
pub fn forward_segments_of(src: &[SideMap], dst: &[SideMap]) -> Vec<Vec<Segment>> {
    src.iter().zip(dst).map(|(s, d)| segments(s, d)).collect()
}

/// Swaps holders and needers: the backward problem.
pub fn backward_segments(fwd: &[Vec<Segment>]) -> Vec<Vec<Segment>> {
    fwd.iter()
        .map(|v| {
            v.iter()
                .map(|s| Segment {
                    sample: s.sample,
                    rows: s.rows.clone(),
                    holders: s.needers.clone(),
                    needers: s.holders.clone(),
                })
                .collect()
        })
        .collect()
}

/// A flow's holders and needers, each interned (`synthesize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    holders: u32,
    needers: u32,
}

struct Flow {
    holders: super::ownership::Ranks,
    needers: Vec<Rank>,
    rows: Vec<Rows>,
    cross: bool,
    bytes: u64,
}

/// Synthesizes one direction from its segments.
pub fn synthesize(
    cx: &Context<'_>,
    b: BoundaryId,
    direction: Direction,
    segs: Vec<Vec<Segment>>,
) -> Reshard {
    let width = u64::from(cx.model.boundary(b).width);
    let el = cx.model.data().precision.activation_bytes();
    let row_bytes = width * el;
    let node = |r: Rank| cx.cluster.node_of(r);
    let links = cx.links();

    // Flows per micro-batch: rank lists are interned so that grouping allocates only for new
    // (holders, needers) pairs.
    let mut lower_bound = 0u64;
    let mut per_mb: Vec<Vec<Flow>> = Vec::new();
    let mut interned: HashMap<Vec<Rank>, u32> = HashMap::new();
    let mut intern = |v: &[Rank]| -> u32 {
        if let Some(&id) = interned.get(v) {
            return id;
        }
        let id = interned.len() as u32;
        interned.insert(v.to_vec(), id);
        id
    };
    for segs_j in &segs {
        let mut index: HashMap<FlowKey, usize> = HashMap::new();
        let mut flows: Vec<Flow> = Vec::new();
        let mut missing: Vec<(u32, Rank)> = Vec::new();
        for s in segs_j {
            missing.clear();
            missing.extend(
                s.needers
                    .iter()
                    .copied()
                    .filter(|q| !s.holders.contains(q))
                    .map(|q| (node(q), q)),
            );
            let n_rows = s.rows.end - s.rows.start;
            lower_bound += missing.len() as u64 * n_rows * row_bytes;
            missing.sort_unstable();
            let hid = intern(&s.holders);
            for group in missing.chunk_by(|a, b| a.0 == b.0) {
                let needers: Vec<Rank> = group.iter().map(|x| x.1).collect();
                let key = FlowKey {
                    holders: hid,
                    needers: intern(&needers),
                };
                let i = *index.entry(key).or_insert_with(|| {
                    let n = group[0].0;
                    let cross = !s.holders.iter().any(|&h| node(h) == n);
                    flows.push(Flow {
                        holders: s.holders.clone(),
                        needers,
                        rows: Vec::new(),
                        cross,
                        bytes: 0,
                    });
                    flows.len() - 1
                });
                flows[i].rows.push((s.sample, s.rows.clone()));
                flows[i].bytes += n_rows * row_bytes;
            }
        }
        per_mb.push(flows);
    }

    // Strategy per distinct flow shape.
    let shape = |f: &Flow| FlowInfo {
        bytes: f.bytes,
        k: f.needers.len() as u64,
        holders: f
            .holders
            .iter()
            .filter(|&&h| !f.cross || node(h) != node(f.needers[0]))
            .count() as u64,
        cross: f.cross,
    };
    let mut shapes: Vec<FlowInfo> = per_mb.iter().flatten().map(shape).collect();
    shapes.sort_by_key(|f| (f.bytes, f.k, f.holders, f.cross));
    shapes.dedup();
    let (chosen, stats) = choose(&shapes, links, cx.limits);
    let strategy_of = |f: &FlowInfo| {
        shapes
            .binary_search_by_key(&(f.bytes, f.k, f.holders, f.cross), |x| {
                (x.bytes, x.k, x.holders, x.cross)
            })
            .map(|i| chosen[i])
            .unwrap_or(Strategy::Direct)
    };

    // Lowering.
    let mut r = Reshard::empty(direction);
    r.lower_bound_bytes = lower_bound;
    r.stats = stats;
    for (j, flows) in per_mb.iter().enumerate() {
        let mut load: HashMap<Rank, u64> = HashMap::new();
        let mut ops: Vec<Op> = Vec::new();
        for f in flows {
            let info = shape(f);
            let st = if f.cross {
                strategy_of(&info)
            } else {
                Strategy::Direct
            };
            *r.strategies.entry(st).or_default() += 1;
            // Holders to draw from: on the destination node when any, else all.
            let dn = node(f.needers[0]);
            let local: Vec<Rank> = f
                .holders
                .iter()
                .copied()
                .filter(|&h| node(h) == dn)
                .collect();
            let pool = if local.is_empty() {
                f.holders.to_vec()
            } else {
                local
            };
            let pick = |bytes: u64, load: &mut HashMap<Rank, u64>| {
                let h = *pool
                    .iter()
                    .min_by_key(|&&h| (load.get(&h).copied().unwrap_or(0), h))
                    .unwrap_or(&pool[0]);
                *load.entry(h).or_default() += bytes;
                h
            };
            match st {
                Strategy::Direct => {
                    for &q in &f.needers {
                        let src = pick(info.bytes, &mut load);
                        ops.push(Op::Send {
                            src,
                            dst: q,
                            rows: f.rows.clone(),
                        });
                    }
                }
                Strategy::ViaLeader => {
                    let leader = f.needers[0];
                    let src = pick(info.bytes, &mut load);
                    ops.push(Op::Send {
                        src,
                        dst: leader,
                        rows: f.rows.clone(),
                    });
                    ops.push(Op::Broadcast {
                        root: leader,
                        group: f.needers.clone(),
                        rows: f.rows.clone(),
                    });
                }
                Strategy::ViaParts => {
                    let parts = split_rows(&f.rows, f.needers.len());
                    let mut gathered = Vec::new();
                    for (&q, part) in f.needers.iter().zip(parts) {
                        if !part.is_empty() {
                            let bytes =
                                part.iter().map(|x| x.1.end - x.1.start).sum::<u64>() * row_bytes;
                            let src = pick(bytes, &mut load);
                            ops.push(Op::Send {
                                src,
                                dst: q,
                                rows: part.clone(),
                            });
                        }
                        gathered.push((q, part));
                    }
                    ops.push(Op::AllGather {
                        group: f.needers.clone(),
                        parts: gathered,
                    });
                }
            }
        }
        let t = micro_batch_time(&ops, row_bytes, &node, &links, &mut r);
        r.time_s += t;
        r.charged_time_s += t;
        r.micro_batch_times.push(t);
        r.unit_times.push(t);
        r.max_micro_batch_time_s = r.max_micro_batch_time_s.max(t);
        r.plans.push(MicroBatchPlan {
            micro_batch: j as u32,
            ops,
        });
    }
    r.segments = segs;
    r
}

/// Splits rows into `k` near-equal parts (in row order).
pub fn split_rows(rows: &[Rows], k: usize) -> Vec<Vec<Rows>> {
    let total: u64 = rows.iter().map(|r| r.1.end - r.1.start).sum();
    let k = k.max(1) as u64;
    let mut parts: Vec<Vec<Rows>> = vec![Vec::new(); k as usize];
    let mut offset = 0u64;
    for (s, range) in rows {
        let mut a = range.start;
        while a < range.end {
            let g = offset + (a - range.start);
            let p = g * k / total.max(1);
            let next_global = ((p + 1) * total).div_ceil(k);
            let b = (range.start + (next_global - offset)).min(range.end);
            parts[p as usize].push((*s, a..b));
            a = b;
        }
        offset += range.end - range.start;
    }
    parts
}

/// One rank's sends (`sending`) or receives over the network or within its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Traffic {
    rank: Rank,
    sending: bool,
    network: bool,
}

/// Bytes and time of one micro-batch: phase 1 (point-to-point) then phase 2 (intra-node
/// collectives); each phase takes its slowest rank's send or receive volume per link class.
pub(crate) fn micro_batch_time(
    ops: &[Op],
    row_bytes: u64,
    node: &dyn Fn(Rank) -> u32,
    links: &Links,
    r: &mut Reshard,
) -> f64 {
    let rows_bytes =
        |rows: &[Rows]| rows.iter().map(|x| x.1.end - x.1.start).sum::<u64>() * row_bytes;
    // Bytes per rank, direction and link class: phase 1 over both, phase 2 within nodes.
    let mut p1: HashMap<Traffic, u64> = HashMap::new();
    let mut p2: HashMap<Traffic, u64> = HashMap::new();
    let within = |rank: Rank, sending: bool| Traffic {
        rank,
        sending,
        network: false,
    };
    let mut callers: std::collections::HashSet<Rank> = Default::default();
    // One point-to-point message of `b` bytes, counted on both ends per link class.
    let send = |p1: &mut HashMap<Traffic, u64>,
                r: &mut Reshard,
                callers: &mut std::collections::HashSet<Rank>,
                src: Rank,
                dst: Rank,
                b: u64| {
        let net = node(src) != node(dst);
        for (rank, sending) in [(src, true), (dst, false)] {
            let key = Traffic {
                rank,
                sending,
                network: net,
            };
            *p1.entry(key).or_default() += b;
        }
        r.bytes += b;
        if net {
            r.network_bytes += b;
        }
        r.sends += 1;
        callers.extend([src, dst]);
    };
    for op in ops {
        match op {
            Op::Send { src, dst, rows } => {
                send(&mut p1, r, &mut callers, *src, *dst, rows_bytes(rows));
            }
            Op::Broadcast { root, group, rows } => {
                let b = rows_bytes(rows);
                for &q in group.iter().filter(|&&q| q != *root) {
                    *p2.entry(within(q, false)).or_default() += b;
                    r.bytes += b;
                }
                *p2.entry(within(*root, true)).or_default() += b;
                r.broadcasts += 1;
                callers.extend(group.iter().copied());
            }
            Op::Reduce { srcs, dst, rows } => {
                // Every other source's partials reach the destination at once.
                let b = rows_bytes(rows);
                for &src in srcs.iter().filter(|&&s| s != *dst) {
                    send(&mut p1, r, &mut callers, src, *dst, b);
                }
                r.reduces += 1;
            }
            Op::AllGather { group, parts } => {
                let total: u64 = parts.iter().map(|p| rows_bytes(&p.1)).sum();
                for (q, part) in parts {
                    let own = rows_bytes(part);
                    *p2.entry(within(*q, false)).or_default() += total - own;
                    *p2.entry(within(*q, true)).or_default() += own;
                    r.bytes += total - own;
                }
                r.all_gathers += 1;
                callers.extend(group.iter().copied());
            }
        }
    }
    r.fused_calls += callers.len();
    let t1 = p1
        .iter()
        .map(|(k, &b)| {
            let l = if k.network {
                links.network
            } else {
                links.nvlink
            };
            b as f64 / l.bandwidth + l.latency
        })
        .fold(0.0, f64::max);
    let t2 = p2
        .values()
        .map(|&b| b as f64 / links.nvlink.bandwidth + links.nvlink.latency)
        .fold(0.0, f64::max);
    t1 + t2
}
