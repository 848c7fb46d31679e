//! Builds the task graph of a plan: lanes, tasks with durations and dependencies, and each
//! lane's order under the plan's schedule kind.
//!
//! Units: the language model and every module after it split the global batch into M
//! micro-batches (`shard::replica_samples`); encoders and projectors run P encoder passes,
//! each over the items of k micro-batches (the pass size, `encoder_chunk`) dealt over their
//! replicas (`shard::pass_deal`). A module task is the forward or backward of one pipeline
//! chunk of one module for one unit (micro-batch or pass, `units`) on one data-parallel
//! replica.
//! Dependencies: along a module's pipeline, backward after forward, and across boundaries
//! (`boundary`). Orders: `steps`, each schedule kind in its own file (`colocated`,
//! `pipeline` over `one_f_one_b` and `interleaved`).

mod boundary;
pub mod colocated;
pub mod interleaved;
pub mod lanes;
pub mod one_f_one_b;
pub mod pipeline;
pub mod steps;
pub mod units;

use std::collections::{BTreeSet, HashMap};

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
pub use interleaved::interleaved;
use lanes::{first_rank, Lanes, ReplicaStage, TaskIndex};
pub use one_f_one_b::one_f_one_b;
use steps::Order;
use units::{ModuleUnits, UnitKind, WorkKey};

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

/// What boundary synthesis tells the simulation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BoundaryTimes {
    /// Per boundary id, the synthesized (forward, backward) seconds of each unit of the
    /// boundary's *destination*: per encoder pass for a boundary into an encoder or projector
    /// (vision -> projector), per micro-batch for a boundary into the language model or after
    /// it. A unit past the end of the list falls back to the placeholder.
    pub units: std::collections::BTreeMap<hetpar_ir::BoundaryId, Vec<(f64, f64)>>,
    /// The producers' collectives the chosen programs take over (`crate::fold`): their
    /// modules' tasks leave them out, the units' times above include them.
    pub folds: crate::fold::Folds,
}

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

/// A chunk's work priced once: module `module`'s global chunk `chunk` over a unit's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ChunkWork {
    module: usize,
    chunk: usize,
    work: WorkKey,
}

/// Forward and backward tasks of every module, replica, unit, stage and chunk, in the order
/// `TaskIndex` computes ids in.
fn module_tasks(inp: &Inputs<'_>, lanes: &Lanes, index: &TaskIndex) -> Vec<Task> {
    let mut tasks: Vec<Task> = Vec::new();
    let mut cache: HashMap<ChunkWork, (ChunkTime, f64)> = HashMap::new();
    let act_bytes = inp.model.data().precision.activation_bytes() as f64;
    for (m, mp) in inp.plan.modules().iter().enumerate() {
        let l = &mp.layout;
        let comp = &inp.computes[m];
        let units = &inp.units[m];
        for d in 0..l.dp {
            for j in 0..units.count {
                let w = units.work(j, d);
                for s in 0..l.pp {
                    let at = ReplicaStage::new(m, d, s);
                    let lanes_here = lanes.of_stage(at);
                    for c in 0..l.vpp {
                        let chunk = (c * l.pp + s) as usize;
                        let key = ChunkWork {
                            module: m,
                            chunk,
                            work: WorkKey::of(w),
                        };
                        let (time, act) = *cache.entry(key).or_insert_with(|| {
                            let act =
                                chunk_activations(comp.module, l, chunk, w, act_bytes, inp.kernel);
                            (comp.chunk(chunk, w), act)
                        });
                        for fwd in [true, false] {
                            debug_assert_eq!(
                                index.get(at.task(c, j, fwd)),
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
                    let at = ReplicaStage::new(m, d, s);
                    let f = index.at(at.task(c, j, true));
                    let b = index.at(at.task(c, j, false));
                    tasks[b as usize].deps.push(Dep {
                        task: f,
                        latency: 0.0,
                        kind: DepKind::Local,
                    });
                    if i == 0 {
                        continue;
                    }
                    let (ps, pc) = positions[i - 1];
                    let before = ReplicaStage::new(m, d, ps);
                    let pf = index.at(before.task(pc, j, true));
                    let pb = index.at(before.task(pc, j, false));
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
    let order = Order::new(inp.model, inp.plan)?;
    let mut orders: Vec<Vec<TaskId>> = vec![Vec::new(); lanes.lanes.len()];
    for (lane, key) in lanes.keys.iter().enumerate() {
        let Some(pos) = order.position(key) else {
            continue;
        };
        let of_kind = |kind: UnitKind| -> Vec<usize> {
            order
                .members(pos)
                .iter()
                .copied()
                .filter(|&m| inp.units[m].kind == kind && key.of_module(m).is_some())
                .collect()
        };
        let (passes, micro) = (of_kind(UnitKind::Pass), of_kind(UnitKind::MicroBatch));
        let out = &mut orders[lane];
        for st in order.steps(pos) {
            let ms = if st.kind == UnitKind::Pass {
                &passes
            } else {
                &micro
            };
            let mut push = |m: usize| {
                if let Some(at) = key.of_module(m) {
                    if let Some(t) = index.get(at.task(st.chunk, st.unit, st.forward)) {
                        out.push(t);
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
                .flat_map(|d| lanes.of_stage(ReplicaStage::new(m, d, s)))
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
            .0
            .iter()
            .map(|at| {
                inp.optimizer[at.module.index()]
                    .get(at.stage as usize)
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
