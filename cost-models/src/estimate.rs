//! Estimating a plan: per-module pricing, the task graph and its simulation, memory per rank,
//! and the metrics of `docs/cost-model.md`.

use hetpar_ir::layout::Layout;
use hetpar_ir::model::{module_flops, ModelGraph};
use hetpar_ir::placement::Axis;
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{Cluster, Plan, Rank};

use crate::collective::{collective_time, CollectiveKind, Link};
use crate::compute::{Hardware, ModuleCompute, PassTime, Work};
use crate::constants::Constants;
use crate::cost::Cost;
use crate::error::{stated_error, StatedError};
use crate::fold::Folds;
use crate::memory::{
    rank_memory, stage_parameters, static_memory, AttentionKernel, InFlight, RankInputs,
    StaticMemory,
};
use crate::schedule::units::{units, ModuleUnits};
use crate::schedule::{self, Inputs};
use crate::simulate::simulate;
use crate::sync;
use crate::tasks::{TaskGraph, TaskKind};
use crate::CostError;

/// Knobs that are properties of the training software rather than of the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub attention: AttentionKernel,
    /// Efficiency constants; those of the cluster's GPU model when `None`.
    pub constants: Option<Constants>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            attention: AttentionKernel::Flash,
            constants: None,
        }
    }
}

pub use crate::memory::MemoryBreakdown;

/// Where one lane's time goes, s.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct TimeBreakdown {
    pub compute: f64,
    pub recompute: f64,
    pub tp_comm: f64,
    pub cp_comm: f64,
    pub ep_comm: f64,
    pub grad_sync: f64,
    pub optimizer: f64,
    /// Time waiting: pipeline bubble, transfers, stragglers.
    pub idle: f64,
}

/// One set of ranks that behave identically.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RankEntry {
    pub ranks: Vec<Rank>,
    pub memory: MemoryBreakdown,
    pub time: TimeBreakdown,
}

/// The prediction for one plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub feasible: bool,
    /// Why not, when infeasible: the rank and its memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infeasible_reason: Option<String>,
    pub iteration_time_s: f64,
    /// Language-model sequence tokens per second.
    pub tokens_per_s: f64,
    pub samples_per_s: f64,
    /// Model FLOPs of every module per step, forward + backward, no recompute.
    pub model_flops: f64,
    pub gpus: u64,
    pub tflops_per_gpu: f64,
    pub mfu: f64,
    pub peak_memory_bytes: f64,
    pub peak_memory_rank: Rank,
    pub memory_capacity_bytes: f64,
    /// Mean idle fraction of the ranks.
    pub bubble_fraction: f64,
    /// Breakdown of the rank that finishes last.
    pub time_breakdown: TimeBreakdown,
    pub per_rank: Vec<RankEntry>,
    /// The cost model's stated error for the cluster's GPU model (`crate::error`).
    pub stated_error: StatedError,
}

impl Estimate {
    /// The objective cost: the iteration time, or infeasible.
    pub fn cost(&self) -> Cost {
        if self.feasible {
            Cost::seconds(self.iteration_time_s)
        } else {
            Cost::Infeasible
        }
    }
}

fn first_group(mp: &ModulePlan, axis: Axis) -> Vec<Rank> {
    mp.grid
        .group_at(axis, hetpar_ir::placement::Coord::default())
}

pub(crate) fn hardware(cluster: &Cluster, c: Constants, mp: &ModulePlan) -> Hardware {
    let tp = first_group(mp, Axis::Tp);
    let cp = first_group(mp, Axis::Cp);
    // ep splits the dp x cp ranks: its group is the first ep of them.
    let ep: Vec<Rank> = dp_cp_group(mp, 1)
        .into_iter()
        .take(mp.layout.ep as usize)
        .collect();
    Hardware::new(
        cluster,
        c,
        Link::of_group(cluster, &c, &tp),
        Link::of_group(cluster, &c, &cp),
        Link::of_group(cluster, &c, &ep),
    )
}

/// The ranks of the first gradient group: dp x cp, then every `step`-th of them (`step` =
/// ep: the ranks holding the same experts, ep splitting the dp x cp ranks).
fn dp_cp_group(mp: &ModulePlan, step: u32) -> Vec<Rank> {
    let g = &mp.grid;
    let (dps, cps) = (g.size(Axis::Dp), g.size(Axis::Cp));
    let mut out = Vec::with_capacity((dps * cps) as usize);
    for dp in 0..dps {
        for cp in 0..cps {
            out.push(g.rank_at(hetpar_ir::placement::Coord {
                dp,
                cp,
                ..Default::default()
            }));
        }
    }
    out.into_iter().step_by(step.max(1) as usize).collect()
}

pub(crate) struct Priced<'a> {
    pub computes: Vec<ModuleCompute<'a>>,
    pub statics: Vec<Vec<StaticMemory>>,
    pub grad_sync: Vec<Vec<f64>>,
    pub optimizer: Vec<Vec<f64>>,
    pub constants: Constants,
}

pub(crate) fn price<'a>(
    model: &'a ModelGraph,
    cluster: &Cluster,
    plan: &'a Plan,
    opts: &Options,
    units: &[ModuleUnits],
    folds: &Folds,
) -> Priced<'a> {
    price_some(model, cluster, plan, opts, folds, None, &|m| {
        units[m].peak(0)
    })
}

/// `price`, with the gradient synchronization and optimizer step of module `only` alone
/// (the others' left at zero) when given: pricing one module of a large plan. `unit` gives a
/// module's largest unit on its first replica: the window data-parallel communication hides
/// under (`sync`). `folds` are the collectives boundary programs take over (`crate::fold`).
pub(crate) fn price_some<'a>(
    model: &'a ModelGraph,
    cluster: &Cluster,
    plan: &'a Plan,
    opts: &Options,
    folds: &Folds,
    only: Option<usize>,
    unit: &dyn Fn(usize) -> Work,
) -> Priced<'a> {
    let c = opts
        .constants
        .unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model));
    let data = model.data();
    let act_bytes = data.precision.activation_bytes() as f64;
    let mut computes = Vec::new();
    let mut statics = Vec::new();
    let mut grad_sync = Vec::new();
    let mut optimizer = Vec::new();
    for (i, (m, mp)) in model.modules().iter().zip(plan.modules()).enumerate() {
        let l: &Layout = &mp.layout;
        let compute = ModuleCompute {
            module: m,
            layout: l,
            hw: hardware(cluster, c, mp),
            act_bytes,
            kernel: opts.attention,
            fold: folds.of(mp.module),
        };
        statics.push(
            (0..l.pp)
                .map(|s| {
                    static_memory(stage_parameters(m, l, s), l, data.precision, data.optimizer)
                })
                .collect(),
        );
        if only.is_some_and(|o| o != i) {
            grad_sync.push(vec![0.0; l.pp as usize]);
            optimizer.push(vec![0.0; l.pp as usize]);
        } else {
            let (gs, op) = stage_syncs(model, cluster, mp, &compute, unit(i), &c);
            grad_sync.push(gs);
            optimizer.push(op);
        }
        computes.push(compute);
    }
    Priced {
        computes,
        statics,
        grad_sync,
        optimizer,
        constants: c,
    }
}

/// Per stage of one module: its exposed gradient synchronization and its optimizer step. Dense
/// parameters reduce over dp x cp, routed experts over the expert-data-parallel group (the
/// dp x cp ranks holding the same experts: dp x cp / ep).
fn stage_syncs(
    model: &ModelGraph,
    cluster: &Cluster,
    mp: &ModulePlan,
    compute: &ModuleCompute<'_>,
    unit: Work,
    c: &Constants,
) -> (Vec<f64>, Vec<f64>) {
    let l = &mp.layout;
    let m = compute.module;
    let groups = [dp_cp_group(mp, 1), dp_cp_group(mp, l.ep)];
    let links = groups.clone().map(|g| Link::of_group(cluster, c, &g));
    let tied = tied_embedding_sync(model, cluster, mp, c);
    let chunks = l.chunk_layers.len();
    let mut gs = Vec::new();
    let mut op = Vec::new();
    for s in 0..l.pp {
        let params = stage_parameters(m, l, s);
        let (mut fwd, mut bwd) = (0.0, 0.0);
        for chunk in (s as usize..chunks).step_by(l.pp as usize) {
            let t = compute.chunk(chunk, unit);
            fwd += t.forward.total();
            bwd += t.backward.total();
        }
        let ends = s == 0 || s + 1 == l.pp;
        let mut sync = if ends { tied } else { 0.0 };
        let mut step = 0.0;
        for (i, p) in [params.dense, params.expert].into_iter().enumerate() {
            if p <= 0.0 {
                continue;
            }
            let n = groups[i].len() as u32;
            sync += sync::grad_sync(
                &sync::StageSync {
                    params: p,
                    group: n,
                    link: links[i],
                    distributed_optimizer: l.distributed_optimizer,
                    forward_window: fwd,
                    backward_window: bwd,
                    tied_embedding: 0.0,
                },
                c,
            );
            let shard = if l.distributed_optimizer { n } else { 1 };
            step += sync::optimizer_step(p, shard, cluster.gpu.hbm_bandwidth, c);
        }
        gs.push(sync);
        op.push(step);
    }
    (gs, op)
}

/// The tied embedding's gradient all-reduce between a language model's first and last stage
/// (fp32 gradients of the rank's vocabulary shard), s; 0 without tying or pipeline.
fn tied_embedding_sync(
    model: &ModelGraph,
    cluster: &Cluster,
    mp: &ModulePlan,
    c: &Constants,
) -> f64 {
    let l = &mp.layout;
    let m = model.module(mp.module);
    let tied = matches!(
        m.body,
        hetpar_ir::model::Body::LanguageModel {
            tied_embeddings: true,
            ..
        }
    );
    if !tied || l.pp <= 1 {
        return 0.0;
    }
    let first = mp.grid.rank_at(hetpar_ir::placement::Coord::default());
    let last = mp.grid.rank_at(hetpar_ir::placement::Coord {
        pp: l.pp - 1,
        ..Default::default()
    });
    // The embedding parameters counted once: half of both tables when untied, all when tied.
    let table = hetpar_ir::model::module_params(m).embedding as f64 / f64::from(l.tp);
    let link = Link::between(cluster, c, first, last);
    collective_time(CollectiveKind::AllReduce, table * 4.0, 2, link)
}

/// Model FLOPs per step: forward + backward of every module over the global batch.
fn model_flops(model: &ModelGraph) -> f64 {
    model
        .modules()
        .iter()
        .map(|m| module_flops(model, m.id).training())
        .sum()
}

/// Estimates a plan with synthesized boundary times (from the planner's boundary synthesis)
/// in place of the placeholder.
pub fn estimate_with_boundaries(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
    boundary_times: &crate::schedule::BoundaryTimes,
) -> Result<Estimate, CostError> {
    Ok(simulate_plan(model, cluster, plan, opts, Some(boundary_times))?.0)
}

/// Estimates a plan by simulating its schedule.
pub fn estimate(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
) -> Result<Estimate, CostError> {
    let (est, _) = estimate_with_tasks(model, cluster, plan, opts)?;
    Ok(est)
}

/// Like `estimate`, also returning the simulated task graph and its timeline.
pub fn estimate_with_tasks(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
) -> Result<(Estimate, (TaskGraph, crate::simulate::Timeline)), CostError> {
    simulate_plan(model, cluster, plan, opts, None)
}

/// The full estimate with its task graph and timeline, boundaries priced by `boundary_times`
/// when given (the planner's synthesis), else by the placeholder.
pub fn simulate_plan(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
    boundary_times: Option<&crate::schedule::BoundaryTimes>,
) -> Result<(Estimate, (TaskGraph, crate::simulate::Timeline)), CostError> {
    let units = units(model, plan);
    let none = Folds::default();
    let folds = boundary_times.map_or(&none, |t| &t.folds);
    let priced = price(model, cluster, plan, opts, &units, folds);
    let inputs = Inputs {
        model,
        cluster,
        plan,
        constants: priced.constants,
        kernel: opts.attention,
        computes: priced.computes,
        units: &units,
        grad_sync: priced.grad_sync,
        optimizer: priced.optimizer,
        boundary_times,
    };
    let graph = schedule::build(&inputs)?;
    let timeline = simulate(&graph)?;
    let t = timeline.makespan;
    let data = model.data();
    let rank_inputs = RankInputs {
        model,
        plan,
        statics: &priced.statics,
        constants: priced.constants,
        kernel: opts.attention,
    };
    let mut per_rank = Vec::new();
    for (l, lane) in graph.lanes.iter().enumerate() {
        let peak = InFlight::Simulated(timeline.peak_activations[l]);
        let mem = rank_memory(&rank_inputs, &units, lane.ranks[0], &peak);
        let time = lane_time(&graph, l, (t - timeline.busy[l]).max(0.0));
        per_rank.push(RankEntry {
            ranks: lane.ranks.clone(),
            memory: mem,
            time,
        });
    }
    let capacity = cluster.gpu.hbm_bytes;
    let worst = per_rank
        .iter()
        .max_by(|a, b| a.memory.total.total_cmp(&b.memory.total))
        .cloned();
    let peak = worst.as_ref().map_or(0.0, |w| w.memory.total);
    let peak_rank = worst.as_ref().map_or(0, |w| w.ranks[0]);
    let feasible = peak <= capacity && t.is_finite();
    let infeasible_reason = (!feasible).then(|| {
        let m = worst.as_ref().map(|w| w.memory).unwrap_or_default();
        format!(
            "rank {peak_rank} needs {:.2} GiB of {:.2} GiB: weights {:.2}, gradients {:.2}, optimizer {:.2}, activations {:.2}, recompute {:.2}, sp gather {:.2}, logits {:.2}, boundary {:.2}, nccl {:.2}, allocator margin {:.2}, cuda context {:.2} GiB",
            gib(m.total), gib(capacity), gib(m.weights), gib(m.gradients), gib(m.optimizer), gib(m.activations),
            gib(m.recompute), gib(m.sp_gather), gib(m.logits), gib(m.boundary), gib(m.nccl), gib(m.allocator_margin), gib(m.cuda_context)
        )
    });
    let gpus = plan.used_ranks().len() as u64;
    let flops = model_flops(model);
    let rank_count: f64 = per_rank.iter().map(|e| e.ranks.len() as f64).sum();
    let bubble = if t > 0.0 {
        per_rank
            .iter()
            .map(|e| e.time.idle / t * e.ranks.len() as f64)
            .sum::<f64>()
            / rank_count.max(1.0)
    } else {
        0.0
    };
    let last = graph
        .orders
        .iter()
        .enumerate()
        .max_by(|a, b| {
            let ea = a.1.last().map_or(0.0, |&x| timeline.end[x as usize]);
            let eb = b.1.last().map_or(0.0, |&x| timeline.end[x as usize]);
            ea.total_cmp(&eb)
        })
        .map_or(0, |(l, _)| l);
    let est = Estimate {
        feasible,
        infeasible_reason,
        iteration_time_s: t,
        tokens_per_s: f64::from(data.global_batch) * f64::from(data.sequence_length) / t,
        samples_per_s: f64::from(data.global_batch) / t,
        model_flops: flops,
        gpus,
        tflops_per_gpu: flops / t / gpus as f64 / 1e12,
        mfu: flops / t / (gpus as f64 * cluster.gpu.dense_bf16_flops),
        peak_memory_bytes: peak,
        peak_memory_rank: peak_rank,
        memory_capacity_bytes: capacity,
        bubble_fraction: bubble,
        time_breakdown: per_rank.get(last).map(|e| e.time).unwrap_or_default(),
        per_rank,
        stated_error: stated_error(cluster.gpu_model),
    };
    Ok((est, (graph, timeline)))
}

/// Where lane `l`'s time goes, given its idle seconds.
fn lane_time(graph: &TaskGraph, l: usize, idle: f64) -> TimeBreakdown {
    let mut time = TimeBreakdown {
        idle,
        ..Default::default()
    };
    for &tid in &graph.orders[l] {
        let task = &graph.tasks[tid as usize];
        match task.kind {
            TaskKind::Forward | TaskKind::Backward => {
                let p: &PassTime = &task.parts;
                time.compute += p.compute;
                time.recompute += p.recompute;
                time.tp_comm += p.tp_comm;
                time.cp_comm += p.cp_comm;
                time.ep_comm += p.ep_comm;
            }
            TaskKind::GradSync => time.grad_sync += task.duration,
            TaskKind::Optimizer => time.optimizer += task.duration,
        }
    }
    time
}

fn gib(x: f64) -> f64 {
    x / (1u64 << 30) as f64
}
