//! Estimating a plan: per-module pricing, the task graph and its simulation, memory per rank,
//! and the metrics of `docs/cost-model.md`.

use hetpar_ir::layout::Layout;
use hetpar_ir::model::{module_flops, Body, ModelGraph, ModuleKind};
use hetpar_ir::placement::Axis;
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{Cluster, Plan, Rank};

use crate::collective::{collective_time, CollectiveKind, Link};
use crate::compute::{Hardware, ModuleCompute, PassTime, Work};
use crate::constants::Constants;
use crate::cost::Cost;
use crate::memory::{stage_parameters, static_memory, AttentionKernel, StaticMemory};
use crate::schedule::{self, Inputs};
use crate::simulate::simulate;
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

/// Memory of one rank, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct MemoryBreakdown {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    /// Peak activations alive for backward under the schedule.
    pub activations: f64,
    /// Boundary receive/send buffers and the language model's fp32 logits of one micro-batch.
    pub buffers: f64,
    /// CUDA context, NCCL and allocator reserve.
    pub reserve: f64,
    pub total: f64,
}

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

fn hardware(cluster: &Cluster, c: Constants, mp: &ModulePlan) -> Hardware {
    let tp = first_group(mp, Axis::Tp);
    let cp = first_group(mp, Axis::Cp);
    let dp = first_group(mp, Axis::Dp);
    let ep: Vec<Rank> = dp.iter().copied().take(mp.layout.ep as usize).collect();
    Hardware::new(
        cluster,
        c,
        Link::of_group(cluster, &c, &tp),
        Link::of_group(cluster, &c, &cp),
        Link::of_group(cluster, &c, &ep),
    )
}

/// The ranks of the data-parallel gradient group (dp x cp) of the first replica group.
fn dp_cp_group(mp: &ModulePlan) -> Vec<Rank> {
    let g = &mp.grid;
    (0..g.size(Axis::Dp))
        .flat_map(|dp| {
            let at = hetpar_ir::placement::Coord {
                dp,
                ..Default::default()
            };
            g.group_at(Axis::Cp, at)
        })
        .collect()
}

struct Priced<'a> {
    computes: Vec<ModuleCompute<'a>>,
    statics: Vec<Vec<StaticMemory>>,
    grad_sync: Vec<Vec<f64>>,
    optimizer: Vec<Vec<f64>>,
    constants: Constants,
}

fn price<'a>(
    model: &'a ModelGraph,
    cluster: &Cluster,
    plan: &'a Plan,
    opts: &Options,
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
    for (m, mp) in model.modules().iter().zip(plan.modules()) {
        let l: &Layout = &mp.layout;
        computes.push(ModuleCompute {
            module: m,
            layout: l,
            hw: hardware(cluster, c, mp),
            act_bytes,
            kernel: opts.attention,
        });
        let group = dp_cp_group(mp);
        let link = Link::of_group(cluster, &c, &group);
        let n = group.len() as u32;
        let mut st = Vec::new();
        let mut gs = Vec::new();
        let mut op = Vec::new();
        for s in 0..l.pp {
            let params = stage_parameters(m, l, s);
            let mem = static_memory(params, l, data.precision, data.optimizer);
            let comm = if l.distributed_optimizer {
                collective_time(CollectiveKind::ReduceScatter, params * 4.0, n, link)
                    + collective_time(CollectiveKind::AllGather, params * 2.0, n, link)
            } else {
                collective_time(CollectiveKind::AllReduce, params * 4.0, n, link)
            };
            gs.push(comm * (1.0 - c.dp_overlap));
            // Adam touches master weight, moments and gradient (read + write) per shard.
            let shard = if l.distributed_optimizer {
                f64::from(n.max(1))
            } else {
                1.0
            };
            op.push(params / shard * 32.0 / (cluster.gpu.hbm_bandwidth * c.hbm_efficiency));
            st.push(mem);
        }
        statics.push(st);
        grad_sync.push(gs);
        optimizer.push(op);
    }
    Priced {
        computes,
        statics,
        grad_sync,
        optimizer,
        constants: c,
    }
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
    let priced = price(model, cluster, plan, opts);
    let inputs = Inputs {
        model,
        cluster,
        plan,
        constants: priced.constants,
        kernel: opts.attention,
        computes: priced.computes,
        grad_sync: priced.grad_sync,
        optimizer: priced.optimizer,
        boundary_times,
    };
    let graph = schedule::build(&inputs)?;
    let timeline = simulate(&graph)?;
    let t = timeline.makespan;
    let data = model.data();
    let act_bytes = data.precision.activation_bytes() as f64;

    let rows_per_mb: Vec<f64> = plan
        .modules()
        .iter()
        .enumerate()
        .map(|(m, mp)| mean_rows_per_micro_batch(model, mp, m))
        .collect();
    let mut per_rank = Vec::new();
    for (l, lane) in graph.lanes.iter().enumerate() {
        let r0 = lane.ranks[0];
        let mut mem = MemoryBreakdown {
            reserve: priced.constants.framework_reserve_bytes,
            ..Default::default()
        };
        let mut buffers = 0.0f64;
        for (m, mp) in plan.modules().iter().enumerate() {
            let Some(c) = mp.grid.coord_of(r0) else {
                continue;
            };
            let sm = &priced.statics[m][c.pp as usize];
            mem.weights += sm.weights;
            mem.gradients += sm.gradients;
            mem.optimizer += sm.optimizer;
            let module = model.module(hetpar_ir::ModuleId::new(m));
            let rows_per_mb = rows_per_mb[m];
            if c.pp == 0 {
                if let Some(w) = module.input_width() {
                    buffers = buffers.max(2.0 * rows_per_mb * f64::from(w) * act_bytes);
                }
            }
            if let Body::LanguageModel { vocab_size, .. } = &module.body {
                if c.pp + 1 == mp.layout.pp {
                    let logits = rows_per_mb / f64::from(mp.layout.cp) * f64::from(*vocab_size)
                        / f64::from(mp.layout.tp)
                        * 4.0;
                    buffers = buffers.max(logits);
                }
            }
        }
        mem.buffers = buffers;
        mem.activations = timeline.peak_activations[l];
        mem.total = mem.weights
            + mem.gradients
            + mem.optimizer
            + mem.activations
            + mem.buffers
            + mem.reserve;
        let mut time = TimeBreakdown::default();
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
        time.idle = (t - timeline.busy[l]).max(0.0);
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
            "rank {peak_rank} needs {:.2} GiB of {:.2} GiB: weights {:.2}, gradients {:.2}, optimizer {:.2}, activations {:.2}, buffers {:.2}, reserve {:.2} GiB",
            gib(m.total), gib(capacity), gib(m.weights), gib(m.gradients), gib(m.optimizer), gib(m.activations), gib(m.buffers), gib(m.reserve)
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
    };
    Ok((est, (graph, timeline)))
}

fn gib(x: f64) -> f64 {
    x / (1u64 << 30) as f64
}

fn mean_rows_per_micro_batch(model: &ModelGraph, mp: &ModulePlan, m: usize) -> f64 {
    model.mean_rows_per_sample(hetpar_ir::ModuleId::new(m)) * f64::from(mp.layout.micro_batch_size)
}

/// A closed-form estimate: time and peak memory per rank, no simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct Quick {
    pub time: Cost,
    /// Per module: forward + backward of one micro-batch summed over its stages, s.
    pub module_time: Vec<f64>,
    /// Largest per-rank memory: static memory of the modules sharing the rank plus their
    /// activations times the micro-batches the schedule keeps alive, plus the reserve.
    pub peak_memory_bytes: f64,
    /// Each module's own terms, for `crate::combine`.
    pub modules: Vec<crate::combine::ModuleQuick>,
}

/// A closed-form estimate of the iteration time (no simulation): per-stage times of a mean
/// micro-batch, combined by the 1F1B formula `(M - 1) x slowest + sum of stages` (bubble
/// divided by vpp when interleaved); colocated modules add up on shared GPUs.
pub fn estimate_analytic(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
) -> Cost {
    estimate_quick(model, cluster, plan, opts).time
}

/// `estimate_analytic` with a closed-form peak memory, for pruning searches. In flight: 1F1B
/// stage g of depth D holds min(D - g, M) micro-batches, interleaved stage s holds Megatron's
/// warm-up count of chunks plus one; colocated upstream modules hold 1 (sequential), M
/// (three-phase) or k (1 + ceil((p - 1) / k)) micro-batches (chunked).
pub fn estimate_quick(model: &ModelGraph, cluster: &Cluster, plan: &Plan, opts: &Options) -> Quick {
    let priced = price(model, cluster, plan, opts);
    let data = model.data();
    let act_bytes = data.precision.activation_bytes() as f64;
    let lm = model.language_model().index();
    let colocated = plan.schedule.kind.is_colocated();
    let pipe = crate::schedule::pipeline_groups(model, plan);
    let m_count = plan.modules().first().map_or(1, |p| p.layout.micro_batches);
    let mf = f64::from(m_count);
    let p_lm = plan.modules()[lm].layout.pp;
    let k = match plan.schedule.kind {
        hetpar_ir::plan::ScheduleKind::ColocatedThreePhase => m_count,
        hetpar_ir::plan::ScheduleKind::ColocatedChunked => {
            plan.schedule.encoder_chunk.unwrap_or(1).max(1)
        }
        _ => 1,
    };
    let mut stage_times: Vec<Vec<f64>> = Vec::new();
    // Memory per rank (modules sharing a rank add up).
    let mut memory: std::collections::HashMap<Rank, f64> = std::collections::HashMap::new();
    let mut tail = 0.0f64;
    let mut terms = Vec::new();
    for (m, mp) in plan.modules().iter().enumerate() {
        let l = &mp.layout;
        let id = hetpar_ir::ModuleId::new(m);
        let module = model.module(id);
        let rows = model.mean_rows_per_sample(id);
        let pairs = model.mean_pairs_per_sample(id);
        let mbs = f64::from(l.micro_batch_size);
        let w = Work {
            rows: rows * mbs,
            pairs: pairs * mbs,
        };
        let comp = &priced.computes[m];
        let mut per_stage = Vec::new();
        let mut stage_memory = Vec::new();
        for s in 0..l.pp {
            let mut t = 0.0;
            let mut act_chunk = 0.0f64;
            for c in 0..l.vpp {
                let chunk = (c * l.pp + s) as usize;
                let ct = comp.chunk(chunk, w);
                t += ct.forward.total() + ct.backward.total();
                act_chunk = act_chunk.max(crate::memory::chunk_activations(
                    module,
                    l,
                    chunk,
                    w,
                    act_bytes,
                    opts.attention,
                ));
            }
            per_stage.push(t);
            let alive = if colocated && m != lm {
                match plan.schedule.kind {
                    hetpar_ir::plan::ScheduleKind::ColocatedThreePhase => mf,
                    hetpar_ir::plan::ScheduleKind::ColocatedChunked => {
                        f64::from((k * (1 + (p_lm - 1).div_ceil(k))).min(m_count))
                    }
                    _ => 1.0,
                }
            } else if colocated {
                f64::from((p_lm - s).min(m_count))
            } else if l.vpp > 1 {
                f64::from(((l.pp - s - 1) * 2 + (l.vpp - 1) * l.pp + 1).min(l.vpp * m_count))
            } else {
                let g = pipe.offset[pipe.group_of[m]] + s;
                f64::from(pipe.depth.saturating_sub(g).clamp(1, m_count))
            };
            let bytes = priced.statics[m][s as usize].total() + act_chunk * alive;
            stage_memory.push(bytes);
            // Every rank of this stage: add to each (modules sharing ranks add up).
            for r in stage_ranks(mp, s) {
                *memory.entry(r).or_default() += bytes;
            }
        }
        let own_tail = priced.grad_sync[m].iter().copied().fold(0.0, f64::max)
            + priced.optimizer[m].iter().copied().fold(0.0, f64::max);
        tail = tail.max(own_tail);
        terms.push(crate::combine::ModuleQuick {
            units: l.micro_batches,
            stage_time: per_stage.clone(),
            stage_memory,
            tail: own_tail,
        });
        stage_times.push(per_stage);
    }
    let t = if colocated {
        // Upstream work adds to the LLM stage whose ranks run it (every stage when colocated
        // on all ranks, the first when nested on it).
        let lm_plan = &plan.modules()[lm];
        let mut llm = stage_times[lm].clone();
        for (m, v) in stage_times.iter().enumerate().filter(|(m, _)| *m != lm) {
            let work: f64 = v.iter().sum();
            let grid = &plan.modules()[m].grid;
            for (s, slot) in llm.iter_mut().enumerate() {
                let on_stage = stage_ranks(lm_plan, s as u32)
                    .into_iter()
                    .any(|r| grid.coord_of(r).is_some());
                if on_stage {
                    *slot += work;
                }
            }
        }
        let slow = llm.iter().copied().fold(0.0, f64::max);
        (mf - 1.0) * slow + llm.iter().sum::<f64>()
    } else {
        let mut all: Vec<f64> = Vec::new();
        let mut vpp = 1.0f64;
        for (m, v) in stage_times.iter().enumerate() {
            if model.module(hetpar_ir::ModuleId::new(m)).kind == ModuleKind::LanguageModel {
                vpp = f64::from(plan.modules()[m].layout.vpp);
            }
            all.extend(v.iter().copied());
        }
        let slow = all.iter().copied().fold(0.0, f64::max);
        let sum: f64 = all.iter().sum();
        (mf - 1.0) * slow + slow + (sum - slow) / vpp
    };
    let peak =
        memory.values().copied().fold(0.0, f64::max) + priced.constants.framework_reserve_bytes;
    Quick {
        time: Cost::seconds(t + tail),
        module_time: stage_times.iter().map(|v| v.iter().sum()).collect(),
        peak_memory_bytes: peak,
        modules: terms,
    }
}

/// The ranks of pipeline stage `s` of a module.
fn stage_ranks(mp: &ModulePlan, s: u32) -> Vec<Rank> {
    let g = &mp.grid;
    let mut out = Vec::new();
    for dp in 0..g.size(Axis::Dp) {
        for cp in 0..g.size(Axis::Cp) {
            for tp in 0..g.size(Axis::Tp) {
                out.push(g.rank_at(hetpar_ir::placement::Coord { tp, cp, dp, pp: s }));
            }
        }
    }
    out
}
