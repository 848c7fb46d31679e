//! Builds the task graph of a plan: lanes, tasks with durations and dependencies, and each
//! lane's order under the plan's schedule kind.
//!
//! Units: the language model and every module after it split the global batch into M
//! micro-batches (`shard::replica_samples`); encoders and projectors run P encoder passes,
//! each over the items of k = `encoder_chunk` micro-batches dealt over their replicas
//! (`shard::pass_deal`). A module task is the forward or backward of one pipeline chunk of
//! one module for one unit (micro-batch or pass, `units`) on one data-parallel replica.
//! Dependencies: along a module's pipeline, backward after forward, and across boundaries
//! (`boundary`). Orders: `steps`.

mod boundary;
pub(crate) mod lanes;
pub mod steps;
pub mod units;

use std::collections::BTreeSet;

use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::PlacementKind;
use hetpar_ir::{Cluster, ModuleId, Plan, Rank};

use crate::collective::{p2p_time, Link};
use crate::compute::{ChunkTime, ModuleCompute};
use crate::constants::Constants;
use crate::memory::{chunk_activations, AttentionKernel};
use crate::tasks::{Dep, DepKind, LaneId, Task, TaskGraph, TaskId, TaskKind};
use crate::CostError;

pub use boundary::{links, BoundaryLink};
use lanes::{first_rank, lookup, Lanes, TaskIndex};
use steps::{colocated_steps, PipelineSteps, Step};
use units::{ModuleUnits, UnitKind};

pub struct Inputs<'a> {
    pub model: &'a ModelGraph,
    pub cluster: &'a Cluster,
    pub plan: &'a Plan,
    pub constants: Constants,
    pub kernel: AttentionKernel,
    pub computes: Vec<ModuleCompute<'a>>,
    /// Every module's units and each replica's work in them (`units::units`).
    pub units: &'a [ModuleUnits],
    /// Seconds of exposed data-parallel gradient communication per module stage.
    pub grad_sync: Vec<Vec<f64>>,
    /// Seconds of optimizer step per module stage.
    pub optimizer: Vec<Vec<f64>>,
    /// Synthesized boundary times, when known. Otherwise a placeholder prices each linked
    /// replica pair's rows as one send.
    pub boundary_times: Option<&'a BoundaryTimes>,
}

/// Per boundary id, the synthesized (forward, backward) seconds of each unit of the boundary's
/// *destination*: per encoder pass for a boundary into an encoder or projector (vision ->
/// projector), per micro-batch for a boundary into the language model or after it. A unit
/// past the end of the list falls back to the placeholder.
pub type BoundaryTimes = std::collections::BTreeMap<hetpar_ir::BoundaryId, Vec<(f64, f64)>>;

pub fn build(inp: &Inputs<'_>) -> Result<TaskGraph, CostError> {
    let (model, plan) = (inp.model, inp.plan);
    if plan.placement_kind == PlacementKind::PartialOverlap
        && !nested_in_language_model(model, plan)
    {
        return Err(CostError::Unsupported(
            "partially overlapping placements have no schedule yet, except every module inside the language model's ranks under a colocated schedule; colocate modules fully or make them disjoint".into(),
        ));
    }
    let lanes = Lanes::new(plan);
    let index = TaskIndex::new(plan, inp.units);
    let mut tasks = module_tasks(inp, &lanes, &index);
    pipeline_deps(inp, &index, &mut tasks);
    boundary::add_deps(inp, &lanes, &index, &mut tasks)?;
    let mut orders = orders(inp, &lanes, &index)?;
    sync_and_step(inp, &lanes, &mut tasks, &mut orders);
    Ok(TaskGraph {
        lanes: lanes.lanes,
        tasks,
        orders,
    })
}

/// Forward and backward tasks of every module, replica, unit, stage and chunk, in the order
/// `TaskIndex` computes ids in.
fn module_tasks(inp: &Inputs<'_>, lanes: &Lanes, index: &TaskIndex) -> Vec<Task> {
    let mut tasks: Vec<Task> = Vec::new();
    let mut cache: std::collections::HashMap<(usize, usize, u64, u64), (ChunkTime, f64)> =
        std::collections::HashMap::new();
    let act_bytes = inp.model.data().precision.activation_bytes() as f64;
    for (m, mp) in inp.plan.modules().iter().enumerate() {
        let l = &mp.layout;
        let comp = &inp.computes[m];
        let units = &inp.units[m];
        for d in 0..l.dp {
            for j in 0..units.count {
                let w = units.work(j, d);
                for s in 0..l.pp {
                    let lanes_here = lanes.of_stage(m, d, s);
                    for c in 0..l.vpp {
                        let chunk = (c * l.pp + s) as usize;
                        let (time, act) = *cache
                            .entry((m, chunk, w.rows.to_bits(), w.pairs.to_bits()))
                            .or_insert_with(|| {
                                let act = chunk_activations(
                                    comp.module,
                                    l,
                                    chunk,
                                    w,
                                    act_bytes,
                                    inp.kernel,
                                );
                                (comp.chunk(chunk, w), act)
                            });
                        for fwd in [true, false] {
                            debug_assert_eq!(
                                index.get((m as u32, d, s, c, j, fwd)),
                                Some(tasks.len() as TaskId)
                            );
                            let parts = if fwd { time.forward } else { time.backward };
                            tasks.push(Task {
                                kind: if fwd {
                                    TaskKind::Forward
                                } else {
                                    TaskKind::Backward
                                },
                                module: Some(ModuleId::new(m)),
                                replica: d,
                                stage: s,
                                chunk: c,
                                micro_batch: j,
                                lanes: lanes_here.clone(),
                                deps: Vec::new(),
                                duration: parts.total(),
                                activation_bytes: act,
                                parts,
                            });
                        }
                    }
                }
            }
        }
    }
    tasks
}

/// Dependencies inside a module: along the pipeline, and backward after forward.
fn pipeline_deps(inp: &Inputs<'_>, index: &TaskIndex, tasks: &mut [Task]) {
    let act_bytes = inp.model.data().precision.activation_bytes() as f64;
    for (m, mp) in inp.plan.modules().iter().enumerate() {
        let l = &mp.layout;
        let hidden = inp.computes[m].module.output_width() as f64;
        let positions: Vec<(u32, u32)> = (0..l.vpp)
            .flat_map(|c| (0..l.pp).map(move |s| (s, c)))
            .collect();
        let units = &inp.units[m];
        for d in 0..l.dp {
            for j in 0..units.count {
                let rows = units.work(j, d).rows;
                let bytes = rows / f64::from(l.cp) * hidden * act_bytes / f64::from(l.tp);
                for (i, &(s, c)) in positions.iter().enumerate() {
                    let f = index.at((m as u32, d, s, c, j, true));
                    let b = index.at((m as u32, d, s, c, j, false));
                    tasks[b as usize].deps.push(Dep {
                        task: f,
                        latency: 0.0,
                        kind: DepKind::Local,
                    });
                    if i == 0 {
                        continue;
                    }
                    let (ps, pc) = positions[i - 1];
                    let pf = index.at((m as u32, d, ps, pc, j, true));
                    let pb = index.at((m as u32, d, ps, pc, j, false));
                    let link = Link::between(
                        inp.cluster,
                        &inp.constants,
                        first_rank(mp, d, ps),
                        first_rank(mp, d, s),
                    );
                    let lat = if ps == s { 0.0 } else { p2p_time(bytes, link) };
                    tasks[f as usize].deps.push(Dep {
                        task: pf,
                        latency: lat,
                        kind: DepKind::Pipeline,
                    });
                    tasks[pb as usize].deps.push(Dep {
                        task: b,
                        latency: lat,
                        kind: DepKind::Pipeline,
                    });
                }
            }
        }
    }
}

/// Every lane's order of module tasks: its steps (`steps`), each for the lane's modules of the
/// step's unit kind, in topological order forward and reversed backward.
fn orders(
    inp: &Inputs<'_>,
    lanes: &Lanes,
    index: &TaskIndex,
) -> Result<Vec<Vec<TaskId>>, CostError> {
    let (model, plan) = (inp.model, inp.plan);
    let topo: Vec<usize> = model
        .topological_order()
        .iter()
        .map(|m| m.index())
        .collect();
    let mut orders: Vec<Vec<TaskId>> = vec![Vec::new(); lanes.lanes.len()];
    let lm = model.language_model().index();
    let pipeline = if plan.schedule.kind.is_colocated() {
        None
    } else {
        Some(PipelineSteps::new(model, plan)?)
    };
    for (lane, key) in lanes.keys.iter().enumerate() {
        // The lane's steps and the modules they run (colocated: every module on the lane).
        let (steps, members): (Vec<Step>, Vec<usize>) = match &pipeline {
            None => {
                let Some((_, sl)) = lookup(key, lm) else {
                    continue;
                };
                let p = plan.modules()[lm].layout.pp;
                (colocated_steps(p, sl, plan.passes()), topo.clone())
            }
            Some(ps) => {
                let Some(&(m0, _, s)) = key.first() else {
                    continue;
                };
                let g = ps.pipe.group_of[m0 as usize];
                (ps.steps(g, s), ps.pipe.groups[g].clone())
            }
        };
        let of_kind = |kind: UnitKind| -> Vec<usize> {
            members
                .iter()
                .copied()
                .filter(|&m| inp.units[m].kind == kind && lookup(key, m).is_some())
                .collect()
        };
        let (passes, micro) = (of_kind(UnitKind::Pass), of_kind(UnitKind::MicroBatch));
        let order = &mut orders[lane];
        for st in steps {
            let ms = if st.kind == UnitKind::Pass {
                &passes
            } else {
                &micro
            };
            let mut push = |m: usize| {
                if let Some((d, s)) = lookup(key, m) {
                    if let Some(t) = index.get((m as u32, d, s, st.chunk, st.unit, st.forward)) {
                        order.push(t);
                    }
                }
            };
            if st.forward {
                ms.iter().copied().for_each(&mut push);
            } else {
                ms.iter().rev().copied().for_each(&mut push);
            }
        }
    }
    Ok(orders)
}

/// Gradient synchronization (one task per module stage across its replicas) and the
/// optimizer step (one per lane), after everything else.
fn sync_and_step(
    inp: &Inputs<'_>,
    lanes: &Lanes,
    tasks: &mut Vec<Task>,
    orders: &mut [Vec<TaskId>],
) {
    for &m in inp.model.topological_order() {
        let m = m.index();
        let mp = &inp.plan.modules()[m];
        for s in 0..mp.layout.pp {
            let mut ls: Vec<LaneId> = (0..mp.layout.dp)
                .flat_map(|d| lanes.of_stage(m, d, s))
                .collect();
            ls.sort_unstable();
            ls.dedup();
            let id = tasks.len() as TaskId;
            tasks.push(Task {
                kind: TaskKind::GradSync,
                module: Some(ModuleId::new(m)),
                replica: 0,
                stage: s,
                chunk: 0,
                micro_batch: 0,
                lanes: ls.clone(),
                deps: Vec::new(),
                duration: inp.grad_sync[m].get(s as usize).copied().unwrap_or(0.0),
                activation_bytes: 0.0,
                parts: Default::default(),
            });
            for l in ls {
                orders[l as usize].push(id);
            }
        }
    }
    for (lane, key) in lanes.keys.iter().enumerate() {
        let duration: f64 = key
            .iter()
            .map(|&(m, _, s)| {
                inp.optimizer[m as usize]
                    .get(s as usize)
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum();
        let id = tasks.len() as TaskId;
        tasks.push(Task {
            kind: TaskKind::Optimizer,
            module: None,
            replica: 0,
            stage: 0,
            chunk: 0,
            micro_batch: 0,
            lanes: vec![lane as LaneId],
            deps: Vec::new(),
            duration,
            activation_bytes: 0.0,
            parts: Default::default(),
        });
        orders[lane].push(id);
    }
}

/// Whether, under a colocated schedule, every module runs on a subset of the language model's
/// ranks (the homogeneous arrangement: encoders on the LLM's first pipeline stage).
pub fn nested_in_language_model(model: &ModelGraph, plan: &Plan) -> bool {
    let lm: BTreeSet<Rank> = plan
        .module(model.language_model())
        .grid
        .ranks()
        .iter()
        .copied()
        .collect();
    plan.schedule.kind.is_colocated()
        && plan
            .modules()
            .iter()
            .all(|mp| mp.grid.ranks().iter().all(|r| lm.contains(r)))
}

/// Modules on identical ranks grouped, in topological order, with each group's first global
/// pipeline stage (groups chain as stages, encoders upstream) and the pipeline's depth.
pub struct Pipeline {
    pub group_of: Vec<usize>,
    pub groups: Vec<Vec<usize>>,
    pub offset: Vec<u32>,
    pub depth: u32,
}

pub fn pipeline_groups(model: &ModelGraph, plan: &Plan) -> Pipeline {
    let topo: Vec<usize> = model
        .topological_order()
        .iter()
        .map(|m| m.index())
        .collect();
    let sets: Vec<BTreeSet<Rank>> = plan
        .modules()
        .iter()
        .map(|mp| mp.grid.ranks().iter().copied().collect())
        .collect();
    let mut group_of = vec![usize::MAX; sets.len()];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &m in &topo {
        match groups.iter().position(|g| sets[g[0]] == sets[m]) {
            Some(g) => {
                group_of[m] = g;
                groups[g].push(m);
            }
            None => {
                group_of[m] = groups.len();
                groups.push(vec![m]);
            }
        }
    }
    let mut offset = vec![0u32; groups.len()];
    for &m in &topo {
        for bid in model.outgoing(ModuleId::new(m)) {
            let t = model.boundary(bid).to.index();
            let (gf, gt) = (group_of[m], group_of[t]);
            if gf != gt {
                offset[gt] = offset[gt].max(offset[gf] + plan.modules()[m].layout.pp);
            }
        }
    }
    let depth = groups
        .iter()
        .enumerate()
        .map(|(g, ms)| offset[g] + plan.modules()[ms[0]].layout.pp)
        .max()
        .unwrap_or(1);
    Pipeline {
        group_of,
        groups,
        offset,
        depth,
    }
}

/// The 1F1B sequence with `w` warm-up forwards: (forward?, micro-batch).
pub fn one_f_one_b(w: u32, m: u32) -> Vec<(bool, u32)> {
    let mut v = Vec::with_capacity(2 * m as usize);
    for j in 0..w {
        v.push((true, j));
    }
    for i in 0..m - w {
        v.push((true, w + i));
        v.push((false, i));
    }
    for j in m - w..m {
        v.push((false, j));
    }
    v
}

/// Megatron's interleaved 1F1B for stage `s` of `p` with `v` chunks and `m` micro-batches:
/// (forward?, micro-batch, chunk).
pub fn interleaved(p: u32, v: u32, s: u32, m: u32) -> Vec<(bool, u32, u32)> {
    let total = v * m;
    let fwd = |k: u32| ((k / (p * v)) * p + k % p, (k / p) % v);
    let bwd = |k: u32| ((k / (p * v)) * p + k % p, v - 1 - (k / p) % v);
    let warm = ((p - s - 1) * 2 + (v - 1) * p).min(total);
    let mut out = Vec::with_capacity(2 * total as usize);
    for k in 0..warm {
        let (j, c) = fwd(k);
        out.push((true, j, c));
    }
    for i in 0..total - warm {
        let (j, c) = fwd(warm + i);
        out.push((true, j, c));
        let (j, c) = bwd(i);
        out.push((false, j, c));
    }
    for k in total - warm..total {
        let (j, c) = bwd(k);
        out.push((false, j, c));
    }
    out
}
