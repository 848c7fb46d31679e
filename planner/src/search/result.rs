//! The end of a search: the best few plans of each kind simulated with synthesized boundary
//! times, the winner under the placement constraint, labels, alternatives and warnings.

use std::collections::BTreeSet;

use hetpar_cost::{estimate_with_boundaries, Estimate, Options};
use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::PlanFile;
use hetpar_ir::{Cluster, Plan};

use super::joint::Scored;
use super::{Objective, PlacementChoice, SearchOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    /// Some module's layout or placement differs from the homogeneous arrangement.
    Heterogeneous,
    /// Every module on the language model's tp and cp, on its first stage's ranks.
    Homogeneous,
    /// A model of one module: heterogeneity does not apply.
    SingleModule,
}

/// One evaluated plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Candidate {
    pub kind: CandidateKind,
    pub plan: PlanFile,
    /// Closed-form iteration time (boundaries synthesized), s.
    pub quick_time_s: f64,
    pub quick_peak_memory_bytes: f64,
    /// The simulation, for candidates that were simulated.
    pub estimate: Option<Estimate>,
    /// Each module's own closed-form terms, for explaining where time and memory go.
    pub modules: Vec<ModuleSummary>,
}

/// One module's share of a plan in closed form.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModuleSummary {
    pub name: String,
    /// Forward + backward of the step, every unit on the busiest replica, over its stages, s.
    pub work_s: f64,
    /// Units per step: micro-batches, or encoder passes.
    pub units: u32,
    /// The most a rank holds for it alone (static, activations alive, buffers), bytes.
    pub memory_bytes: f64,
    /// Gradient sync and optimizer step of its slowest stage, s.
    pub tail_s: f64,
}

impl Candidate {
    /// Objective value, lower is better (simulated when available).
    pub fn score(&self, objective: Objective) -> f64 {
        match &self.estimate {
            Some(e) if !e.feasible => f64::INFINITY,
            Some(e) => match objective {
                Objective::Throughput => e.iteration_time_s,
                Objective::TflopsPerGpu => -e.tflops_per_gpu,
            },
            None => self.quick_time_s,
        }
    }

    fn feasible(&self) -> bool {
        self.estimate.as_ref().is_some_and(|e| e.feasible)
    }

    /// How many distinct rank ranges its modules sit on (1: all on the same ranks).
    pub fn placements(&self) -> usize {
        self.plan
            .modules
            .values()
            .map(|m| PlacedOn {
                offset: m.placement.ranks.offset,
                count: m.placement.ranks.count,
            })
            .collect::<BTreeSet<_>>()
            .len()
    }
}

/// A module plan's first rank and rank count, as its plan file gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PlacedOn {
    offset: Option<u32>,
    count: Option<u32>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SearchStats {
    /// Module options priced in closed form (each once per context).
    pub candidates: usize,
    /// (Language-model option, pass size) pairs with nothing fitting beside them.
    pub pruned_memory: usize,
    /// Pairs whose lower bound could not reach the best plans kept.
    pub pruned_bound: usize,
    /// Probe plans rejected by the verifier.
    pub invalid: usize,
    /// Boundaries synthesized for the objective.
    pub synthesized: usize,
    /// Joint choices evaluated in closed form.
    pub evaluations: usize,
    pub simulated: usize,
    /// The best closed-form objective found (either kind), s.
    pub closed_form_best_s: Option<f64>,
    pub elapsed_s: f64,
    pub stop_reason: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchResult {
    pub best: Option<Candidate>,
    pub homogeneous: Option<Candidate>,
    /// The best alternatives after the winner, by objective.
    pub top: Vec<Candidate>,
    /// Things a user should know about the winner (idle GPUs, a gain within the cost model's
    /// error, a batch too small for the cluster).
    pub warnings: Vec<String>,
    pub stats: SearchStats,
}

/// Whether every module other than the language model sits as the homogeneous baseline puts
/// it: the language model's tp (where it divides) and cp (where its items split), on its first
/// stage's ranks.
pub fn is_homogeneous(model: &ModelGraph, file: &PlanFile) -> bool {
    let lm = model.module(model.language_model());
    let Some(l) = file.modules.get(&lm.name) else {
        return false;
    };
    let world = l.layout.tp * l.layout.cp * l.layout.pp * l.layout.dp.unwrap_or(1);
    let stage0 = world / l.layout.pp.max(1);
    model
        .modules()
        .iter()
        .filter(|m| model.item_origin(m.id).is_some())
        .all(|m| {
            let Some(p) = file.modules.get(&m.name) else {
                return false;
            };
            let tp = if super::space::tp_ok(m, l.layout.tp) {
                l.layout.tp
            } else {
                1
            };
            // The language model's cp where every item splits into 2 cp blocks, else 1.
            let splits = l.layout.cp > 1
                && model.items(m.id).is_some_and(|it| {
                    it.distinct_item_tokens()
                        .iter()
                        .all(|&t| t.is_multiple_of(2 * l.layout.cp))
                });
            let cp = if splits { l.layout.cp } else { 1 };
            p.layout.tp == tp
                && p.layout.cp == cp
                && p.placement.ranks.offset == l.placement.ranks.offset
                && p.placement.ranks.count == Some(stage0)
        })
}

fn kind_of(model: &ModelGraph, file: &PlanFile) -> CandidateKind {
    if model.modules().len() == 1 {
        CandidateKind::SingleModule
    } else if is_homogeneous(model, file) {
        CandidateKind::Homogeneous
    } else {
        CandidateKind::Heterogeneous
    }
}

fn simulate(model: &ModelGraph, cluster: &Cluster, opts: &SearchOptions, s: Scored) -> Candidate {
    let o = Options {
        attention: opts.attention,
        constants: opts.constants,
    };
    let built = Plan::build(s.plan.clone(), model, cluster).ok();
    let estimate = built.as_ref().and_then(|(plan, _)| {
        let times = crate::boundary::boundary_times_with(model, cluster, plan, opts.constants);
        estimate_with_boundaries(model, cluster, plan, &o, &times).ok()
    });
    let modules = built
        .map(|(plan, _)| {
            let q = hetpar_cost::estimate_quick(model, cluster, &plan, &o);
            q.modules
                .iter()
                .zip(model.modules())
                .map(|(t, m)| ModuleSummary {
                    name: m.name.clone(),
                    work_s: t.work(),
                    units: t.units,
                    memory_bytes: t.peak_memory(),
                    tail_s: t.tail,
                })
                .collect()
        })
        .unwrap_or_default();
    Candidate {
        kind: kind_of(model, &s.plan),
        plan: s.plan,
        quick_time_s: s.time,
        quick_peak_memory_bytes: s.memory,
        estimate,
        modules,
    }
}

fn allowed(opts: &SearchOptions, c: &Candidate) -> bool {
    let disjoint = !c.plan.schedule.kind.is_colocated() && c.placements() > 1;
    match opts.placement {
        PlacementChoice::Any => true,
        PlacementChoice::Colocated => !disjoint,
        PlacementChoice::NonColocated => disjoint || c.kind == CandidateKind::SingleModule,
    }
}

/// What distinguishes alternatives: every module's layout but its recompute policy and its
/// communication variants, its ranks, and the schedule.
fn shape(c: &Candidate) -> String {
    let modules: Vec<String> = c
        .plan
        .modules
        .iter()
        .map(|(n, m)| {
            let mut l = m.layout.clone();
            l.recompute = Default::default();
            l.tp_comm_overlap = false;
            l.cp_comm = Default::default();
            format!("{n} {l:?} {:?}", m.placement.ranks)
        })
        .collect();
    format!("{modules:?} {:?}", c.plan.schedule)
}

/// Simulates the kept plans of each kind and assembles the result.
pub fn finish(
    model: &ModelGraph,
    cluster: &Cluster,
    opts: &SearchOptions,
    found: Vec<Scored>,
    homogeneous: Vec<Scored>,
    mut stats: SearchStats,
) -> SearchResult {
    let n = opts.simulate;
    stats.closed_form_best_s = found
        .iter()
        .chain(&homogeneous)
        .map(|s| s.time)
        .reduce(f64::min);
    let mut sim = |v: Vec<Scored>| -> Vec<Candidate> {
        let out: Vec<Candidate> = v
            .into_iter()
            .take(n.max(opts.top_k + 1))
            .map(|s| simulate(model, cluster, opts, s))
            .collect();
        stats.simulated += out.len();
        out
    };
    let mut all = sim(found);
    let mut homo = sim(homogeneous);
    let by =
        |a: &Candidate, b: &Candidate| a.score(opts.objective).total_cmp(&b.score(opts.objective));
    homo.sort_by(by);
    let homogeneous = homo.iter().find(|c| c.feasible()).cloned();
    all.extend(homo);
    all.sort_by(by);
    let best = all
        .iter()
        .find(|c| c.feasible() && allowed(opts, c))
        .cloned();
    let mut seen = BTreeSet::new();
    if let Some(b) = &best {
        seen.insert(shape(b));
    }
    let top: Vec<Candidate> = all
        .iter()
        .filter(|c| c.feasible() && best.as_ref().is_none_or(|b| b.plan != c.plan))
        .filter(|c| seen.insert(shape(c)) || !opts.distinct_alternatives)
        .take(opts.top_k)
        .cloned()
        .collect();
    let warnings = super::warnings::warnings(model, cluster, best.as_ref(), homogeneous.as_ref());
    SearchResult {
        best,
        homogeneous,
        top,
        warnings,
        stats,
    }
}
