//! Plan search: per-module layouts, placement and schedule, jointly and exactly with respect
//! to the closed-form cost model; the event simulation then decides between the best few. The
//! homogeneous baseline is searched over the same dimensions. `docs/planner.md` states what is
//! exact and what the space leaves out.
//!
//! - `space`: the layouts one module may take; `stages`: balanced uneven pipeline stages;
//! - `price`: each module option's closed-form terms and each boundary's synthesized time,
//!   priced once per context and cached;
//! - `lm`: the language model's priced options per arrangement;
//! - `upstream`: chains of encoders and projectors and their joint options;
//! - `frontier`: Pareto frontiers in (time, tail, memory);
//! - `objective`: the same objective for one whole plan, computed directly;
//! - `joint`: bounds, then exact best choices with boundaries, keeping the best few;
//! - `baseline`: the homogeneous space; `result`: simulation, labels, alternatives; `warnings`: what a user should know.

pub mod baseline;
pub mod frontier;
pub mod joint;
pub mod lm;
pub mod objective;
pub mod price;
pub mod result;
pub mod space;
pub mod stages;
pub mod upstream;
pub mod warnings;

use std::time::Instant;

use hetpar_cost::combine::Arrangement;
use hetpar_cost::{AttentionKernel, Constants, Options};
use hetpar_ir::model::{ModelGraph, ModuleKind};
use hetpar_ir::Cluster;

pub use price::entry;
pub use result::{Candidate, CandidateKind, ModuleSummary, SearchResult, SearchStats};

use joint::{Counts, Scored, Setup};
use price::Pricer;
use space::Bounds;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Shortest iteration time (most tokens per second).
    Throughput,
    /// Most model TFLOP/s per GPU used.
    TflopsPerGpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementChoice {
    Colocated,
    NonColocated,
    Any,
}

/// Search settings; limits are counts, never wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct SearchOptions {
    pub objective: Objective,
    /// A constraint on the chosen plan.
    pub placement: PlacementChoice,
    /// Alternatives to report.
    pub top_k: usize,
    /// Per-module layouts; false searches the homogeneous plan only.
    pub heterogeneous: bool,
    /// Closed-form evaluations before the search stops (the stop reason says so).
    pub max_evaluations: usize,
    /// Candidates simulated at the end, per kind (heterogeneous, homogeneous).
    pub simulate: usize,
    /// Deepest language-model pipeline tried (the layer count bounds it too).
    pub max_pp: u32,
    /// Most virtual pipeline chunks per stage tried.
    pub max_vpp: u32,
    /// Largest language-model micro-batch size tried.
    pub max_micro_batch_size: u32,
    /// Largest pass size (micro-batches per encoder pass) tried besides the whole step.
    pub max_pass_size: u32,
    pub attention: AttentionKernel,
    /// Efficiency constants (a calibration's); the cluster's GPU model's when `None`.
    pub constants: Option<Constants>,
    /// Alternatives must differ from each other in some module's layout shape, the placement
    /// or the schedule (false: any simulated candidate, as autotune wants to measure many).
    pub distinct_alternatives: bool,
    /// Keep to what hetpar's runtime executes: no TP communication overlap, CP by all-gather
    /// (`space::comm_variants`).
    pub runnable: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            objective: Objective::Throughput,
            placement: PlacementChoice::Any,
            top_k: 5,
            heterogeneous: true,
            max_evaluations: 2_000_000,
            simulate: 12,
            max_pp: 64,
            max_vpp: 4,
            max_micro_batch_size: 8,
            max_pass_size: 8,
            attention: AttentionKernel::Flash,
            constants: None,
            distinct_alternatives: true,
            runnable: false,
        }
    }
}

fn bounds(opts: &SearchOptions, cluster: &Cluster, arr: Arrangement, others: bool) -> Bounds {
    Bounds {
        gpus_per_node: cluster.gpus_per_node,
        max_pp: opts.max_pp,
        // Interleaving needs a pipeline schedule: disjoint groups, or a lone language model.
        max_vpp: if arr == Arrangement::Disjoint || !others {
            opts.max_vpp
        } else {
            1
        },
        allow_cp: true,
        max_mbs: opts.max_micro_batch_size,
    }
}

/// Searches plans for `model` on `cluster`.
pub fn search(model: &ModelGraph, cluster: &Cluster, opts: SearchOptions) -> SearchResult {
    let start = Instant::now();
    let cost_opts = Options {
        attention: opts.attention,
        constants: opts.constants,
    };
    let constants = opts
        .constants
        .unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model));
    let mut pricer = Pricer::new(model, cluster, cost_opts);
    pricer.runnable = opts.runnable;
    let world = u32::try_from(cluster.world_size()).unwrap_or(u32::MAX);
    let others = model
        .modules()
        .iter()
        .any(|m| model.item_origin(m.id).is_some());
    let downstream = model
        .modules()
        .iter()
        .any(|m| m.kind == ModuleKind::Generator);
    let keep = opts.simulate.max(opts.top_k + 1);
    let setup = |arr: Arrangement, ceiling: f64| Setup {
        arrangement: arr,
        max_pass_size: opts.max_pass_size,
        capacity: cluster.gpu.hbm_bytes - constants.cuda_context_bytes,
        keep,
        max_evaluations: opts.max_evaluations,
        ceiling,
    };
    let mut counts = Counts {
        exhausted: true,
        ..Counts::default()
    };
    let mut add = |c: Counts| {
        counts.evaluations += c.evaluations;
        counts.over_memory += c.over_memory;
        counts.bounded += c.bounded;
        counts.exhausted &= c.exhausted;
    };
    // Heterogeneous arrangements the placement constraint allows.
    let mut arrs = Vec::new();
    if opts.heterogeneous && others && opts.placement != PlacementChoice::NonColocated {
        arrs.push(Arrangement::Colocated);
        arrs.push(Arrangement::Nested);
    }
    if opts.heterogeneous && others && !downstream && opts.placement != PlacementChoice::Colocated {
        arrs.push(Arrangement::Disjoint);
    }
    let mut found: Vec<Scored> = Vec::new();
    // The nested arrangement's language-model options serve the homogeneous search too.
    let hb = bounds(&opts, cluster, Arrangement::Nested, others);
    let mut nested = lm::LmPool::new(&pricer, Arrangement::Nested, world, hb);
    for arr in arrs {
        let b = bounds(&opts, cluster, arr, others);
        let mut own;
        let pool = if arr == Arrangement::Nested {
            &mut nested
        } else {
            own = lm::LmPool::new(&pricer, arr, world, b);
            &mut own
        };
        // No plan at or past the kept worst of the arrangements searched before can enter.
        let ceiling = match found.get(keep - 1) {
            Some(w) => w.time,
            None => f64::INFINITY,
        };
        let (top, c) = joint::search(&mut pricer, pool, &setup(arr, ceiling), &|p, o| {
            joint::free_options(p, o, b)
        });
        add(c);
        for s in top {
            joint::insert(&mut found, s, keep);
        }
    }
    // The homogeneous baseline (for a lone language model: its whole search), over the nested
    // arrangement's language-model options.
    let (homogeneous, c) = joint::search(
        &mut pricer,
        &mut nested,
        &setup(Arrangement::Nested, f64::INFINITY),
        &|p, o| baseline::options_for(p.model, o, hb),
    );
    add(c);
    let stats = SearchStats {
        candidates: pricer.priced,
        pruned_memory: counts.over_memory,
        pruned_bound: counts.bounded,
        invalid: pricer.invalid,
        synthesized: pricer.synthesized,
        evaluations: counts.evaluations,
        simulated: 0,
        closed_form_best_s: None,
        elapsed_s: 0.0,
        stop_reason: if counts.exhausted {
            "exhausted the space".into()
        } else {
            "evaluation limit".into()
        },
    };
    let mut r = result::finish(model, cluster, &opts, found, homogeneous, stats);
    r.stats.elapsed_s = start.elapsed().as_secs_f64();
    r
}
