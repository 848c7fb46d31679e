//! The closed form: iteration time and peak memory per rank without a simulation, for ranking
//! many candidates fast (the planner's search).
//!
//! - **Per module stage**: a micro-batch module's mean micro-batch; an item module (encoder,
//!   projector) per encoder pass, each pass priced on its busiest replica (its dealt items),
//!   summed over the P passes. A stage has the time of its largest unit and of the step.
//! - **Colocated**: every other module's step time, spread over the M micro-batches, adds onto
//!   each language-model stage sharing its ranks; `(M - 1) x slowest + sum of stages`.
//! - **Pipelines**: modules on identical ranks add up per group stage; with the stage whose
//!   step is longest as the bottleneck, `its step + (sum of one unit of every other stage) /
//!   vpp` (the 1F1B formula when every stage has M units).
//! - **Memory**: `memory::rank_memory`, as the simulation, with each module's activations its
//!   replica's largest unit times the units the schedule keeps alive at its peak, read off
//!   the same steps the simulation orders (`schedule::steps`). Each unit is taken at its
//!   replica's largest and every module's peak is added as though they coincided, so the
//!   closed form never reports less than the simulation.

use std::collections::{BTreeMap, HashMap};

use hetpar_ir::placement::{Axis, Coord};
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{Cluster, ModelGraph, ModuleId, Plan, Rank};

use crate::combine::{pipeline_step, PipeStage};
use crate::compute::Work;
use crate::cost::Cost;
use crate::estimate::{price, Options, Priced};
use crate::fold::Folds;
use crate::memory::{
    chunk_activations, module_memory, module_nccl, rank_memory, InFlight, RankInputs,
};
use crate::schedule::pipeline::PipelineSteps;
use crate::schedule::steps::{alive, Order, Position};
use crate::schedule::units::{units, ModuleUnits, UnitKind, WorkKey};

/// A closed-form estimate: time and peak memory per rank, no simulation.
#[derive(Clone, Debug, PartialEq)]
pub struct Quick {
    pub time: Cost,
    /// Per module: forward + backward of one whole step, every unit (micro-batch or encoder
    /// pass) on its busiest replica, summed over the module's pipeline stages, s. It ranks a
    /// module's layouts: more replicas share the items of a pass.
    pub module_time: Vec<f64>,
    /// Largest per-rank memory (`memory::rank_memory`), bytes.
    pub peak_memory_bytes: f64,
    /// Each module's own terms, for `crate::combine` (the plan search's objective).
    pub modules: Vec<crate::combine::ModuleQuick>,
}

/// Time of one module stage, s.
#[derive(Clone, Copy, Debug, Default)]
struct StageTime {
    /// Its largest unit (busiest replica).
    unit: f64,
    /// The step's units, each on its busiest replica.
    step: f64,
}

/// One module, priced.
struct ModuleQuick {
    stages: Vec<StageTime>,
    /// Item modules: per replica, forward + backward of all its passes over all stages (empty
    /// for micro-batch modules, whose replicas do alike).
    replica_step: Vec<f64>,
    /// Per replica and stage: activation bytes of its largest unit in its largest chunk.
    act: Vec<Vec<f64>>,
}

/// Forward + backward seconds of work `w` on stage `s` of module `m`, all its chunks.
fn stage_work_time(p: &Priced<'_>, m: usize, s: u32, w: Work) -> f64 {
    let l = p.computes[m].layout;
    (0..l.vpp)
        .map(|c| {
            let t = p.computes[m].chunk((c * l.pp + s) as usize, w);
            t.forward.total() + t.backward.total()
        })
        .sum()
}

/// Per stage, the pipeline transfers of one micro-batch of `rows` rows it waits for: the
/// activations into each of its chunks from the previous stage and the gradients back, as the
/// simulation's pipeline dependencies price them (replica 0's links).
fn pipeline_hops(cluster: &Cluster, plan: &Plan, p: &Priced<'_>, m: usize, rows: f64) -> Vec<f64> {
    let mp = &plan.modules()[m];
    let l = &mp.layout;
    let mut out = vec![0.0; l.pp as usize];
    if l.pp < 2 {
        return out;
    }
    let act_bytes = p.computes[m].act_bytes;
    let hidden = p.computes[m].module.output_width() as f64;
    let bytes = rows / f64::from(l.cp) * hidden * act_bytes / f64::from(l.tp);
    let positions: Vec<u32> = (0..l.vpp).flat_map(|_| 0..l.pp).collect();
    for w in positions.windows(2) {
        let (from, to) = (w[0], w[1]);
        let link = crate::collective::Link::between(
            cluster,
            &p.constants,
            crate::schedule::lanes::first_rank(mp, 0, from),
            crate::schedule::lanes::first_rank(mp, 0, to),
        );
        out[to as usize] += 2.0 * crate::collective::p2p_time(bytes, link);
    }
    out
}

/// A stage's work priced once: stage `stage` over a unit's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StageWork {
    stage: u32,
    work: WorkKey,
}

/// An item module's stages, each pass on its busiest replica; and every replica's step.
fn pass_times(p: &Priced<'_>, u: &ModuleUnits, m: usize, pp: u32) -> (Vec<StageTime>, Vec<f64>) {
    let mut cache: HashMap<StageWork, f64> = HashMap::new();
    let mut stages = vec![StageTime::default(); pp as usize];
    let mut replica_step = vec![0.0; u.dp as usize];
    for pass in 0..u.count {
        for (s, st) in stages.iter_mut().enumerate() {
            let mut busiest = 0.0f64;
            for (d, total) in replica_step.iter_mut().enumerate() {
                let w = u.work(pass, d as u32);
                let key = StageWork {
                    stage: s as u32,
                    work: WorkKey::of(w),
                };
                let t = *cache
                    .entry(key)
                    .or_insert_with(|| stage_work_time(p, m, s as u32, w));
                *total += t;
                busiest = busiest.max(t);
            }
            st.unit = st.unit.max(busiest);
            st.step += busiest;
        }
    }
    (stages, replica_step)
}

fn price_module(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    p: &Priced<'_>,
    u: &ModuleUnits,
    m: usize,
    opts: &Options,
) -> ModuleQuick {
    let id = ModuleId::new(m);
    let l = &plan.modules()[m].layout;
    let act_bytes = model.data().precision.activation_bytes() as f64;
    let mut replica_step = Vec::new();
    let stages = match u.kind {
        UnitKind::MicroBatch => {
            let mbs = f64::from(l.micro_batch_size);
            let w = Work {
                rows: model.mean_rows_per_sample(id) * mbs,
                pairs: model.mean_pairs_per_sample(id) * mbs,
            };
            let hops = pipeline_hops(cluster, plan, p, m, w.rows);
            (0..l.pp)
                .map(|s| {
                    let t = stage_work_time(p, m, s, w) + hops[s as usize];
                    StageTime {
                        unit: t,
                        step: t * f64::from(u.count),
                    }
                })
                .collect()
        }
        UnitKind::Pass => {
            let (stages, per_replica) = pass_times(p, u, m, l.pp);
            replica_step = per_replica;
            stages
        }
    };
    let module = model.module(id);
    let act = (0..l.dp)
        .map(|d| {
            (0..l.pp)
                .map(|s| {
                    (0..l.vpp)
                        .map(|c| {
                            let chunk = (c * l.pp + s) as usize;
                            chunk_activations(
                                module,
                                l,
                                chunk,
                                u.peak(d),
                                act_bytes,
                                opts.attention,
                            )
                        })
                        .fold(0.0, f64::max)
                })
                .collect()
        })
        .collect();
    ModuleQuick {
        stages,
        replica_step,
        act,
    }
}

/// A closed-form estimate of the iteration time and peak memory (no simulation), for pruning
/// searches (module comment).
pub fn estimate_quick(model: &ModelGraph, cluster: &Cluster, plan: &Plan, opts: &Options) -> Quick {
    estimate_quick_with(model, cluster, plan, opts, &Folds::default())
}

/// [`estimate_quick`] with the producers' collectives `folds` left to their boundaries
/// (`crate::fold`).
pub fn estimate_quick_with(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
    folds: &Folds,
) -> Quick {
    let units = units(model, plan);
    let priced = price(model, cluster, plan, opts, &units, folds);
    let modules: Vec<ModuleQuick> = (0..plan.modules().len())
        .map(|m| price_module(model, cluster, plan, &priced, &units[m], m, opts))
        .collect();
    let module_time = modules
        .iter()
        .map(|q| q.stages.iter().map(|s| s.step).sum())
        .collect();
    let Ok(order) = Order::new(model, plan) else {
        return Quick {
            time: Cost::Infeasible,
            module_time,
            peak_memory_bytes: f64::INFINITY,
            modules: Vec::new(),
        };
    };
    let t = match &order {
        Order::Colocated { lm, .. } => colocated_time(plan, *lm, &modules),
        Order::Pipeline(ps) => pipeline_time(model, plan, ps, &modules, &units),
    };
    // Units alive per lane, counted once for the peak and for every module's own terms.
    let mut lanes = Lanes::new(&order);
    let inputs = rank_inputs(model, plan, &priced, opts);
    let (peak, tail) = per_rank(&inputs, &priced, &units, &modules, &mut lanes);
    let terms = modules
        .iter()
        .enumerate()
        .map(|(m, q)| {
            let memory = own_memory(&inputs, m, &units[m], q, &mut lanes);
            terms_of(&priced, m, &units[m], q, memory)
        })
        .collect();
    Quick {
        time: Cost::seconds(t + tail),
        module_time,
        peak_memory_bytes: peak,
        modules: terms,
    }
}

/// `(M - 1) x slowest + sum of stages` over the language model's stages, each with the work
/// of the other modules sharing its ranks spread over the M micro-batches: a micro-batch
/// module's mean micro-batch, an item module's step on the busiest of its replicas there.
fn colocated_time(plan: &Plan, lm: usize, modules: &[ModuleQuick]) -> f64 {
    let lm_plan = &plan.modules()[lm];
    let mf = f64::from(plan.micro_batches());
    let mut slots: Vec<f64> = modules[lm].stages.iter().map(|s| s.unit).collect();
    for (m, q) in modules.iter().enumerate().filter(|(m, _)| *m != lm) {
        let grid = &plan.modules()[m].grid;
        let step: f64 = q.stages.iter().map(|s| s.step).sum();
        for (s, slot) in slots.iter_mut().enumerate() {
            // The busiest replica of m on this stage's ranks, if m runs there.
            let here = stage_ranks(lm_plan, s as u32)
                .into_iter()
                .filter_map(|r| grid.coord_of(r))
                .map(|c| q.replica_step.get(c.dp as usize).copied().unwrap_or(step))
                .reduce(f64::max);
            *slot += here.unwrap_or(0.0) / mf;
        }
    }
    let slow = slots.iter().copied().fold(0.0, f64::max);
    (mf - 1.0) * slow + slots.iter().sum::<f64>()
}

fn pipeline_time(
    model: &ModelGraph,
    plan: &Plan,
    ps: &PipelineSteps,
    modules: &[ModuleQuick],
    units: &[ModuleUnits],
) -> f64 {
    let vpp = f64::from(plan.module(model.language_model()).layout.vpp);
    let mut stages: Vec<PipeStage> = Vec::new();
    for members in &ps.pipe.groups {
        let pp = modules[members[0]].stages.len();
        let passes = members.iter().all(|&m| units[m].kind == UnitKind::Pass);
        for s in 0..pp {
            let mut st = PipeStage {
                passes,
                ..PipeStage::default()
            };
            for &m in members {
                let x = modules[m].stages.get(s).copied().unwrap_or_default();
                st.unit += x.unit;
                st.step += x.step;
            }
            stages.push(st);
        }
    }
    pipeline_step(&stages, f64::from(plan.passes().per_pass.max(1)), vpp)
}

/// What `memory::rank_memory` reads, from a priced plan.
fn rank_inputs<'a>(
    model: &'a ModelGraph,
    plan: &'a Plan,
    priced: &'a Priced<'_>,
    opts: &Options,
) -> RankInputs<'a> {
    RankInputs {
        model,
        plan,
        statics: &priced.statics,
        constants: priced.constants,
        kernel: opts.attention,
    }
}

/// The largest `rank_memory` of any rank, with the units alive at each lane's peak; and the
/// longest gradient synchronization and optimizer step of any rank, which runs those of every
/// module stage it holds one after the other at the end of the step.
fn per_rank(
    inputs: &RankInputs<'_>,
    priced: &Priced<'_>,
    units: &[ModuleUnits],
    modules: &[ModuleQuick],
    lanes: &mut Lanes<'_>,
) -> (f64, f64) {
    let plan = inputs.plan;
    let (mut peak, mut tail) = (0.0f64, 0.0f64);
    for r in plan.used_ranks() {
        let on: Vec<(usize, Coord)> = plan
            .modules()
            .iter()
            .enumerate()
            .filter_map(|(m, mp)| mp.grid.coord_of(r).map(|c| (m, c)))
            .collect();
        let Some(alive) = lanes.alive_on(plan, r) else {
            continue;
        };
        let terms: Vec<(f64, f64)> = on
            .iter()
            .map(|&(m, c)| {
                (
                    modules[m].act[c.dp as usize][c.pp as usize],
                    alive.of(units[m].kind),
                )
            })
            .collect();
        let mem = rank_memory(inputs, units, r, &InFlight::Counted(terms));
        peak = peak.max(mem.total);
        let end: f64 = on
            .iter()
            .map(|&(m, c)| {
                let s = c.pp as usize;
                priced.grad_sync[m].get(s).copied().unwrap_or(0.0)
                    + priced.optimizer[m].get(s).copied().unwrap_or(0.0)
            })
            .sum();
        tail = tail.max(end);
    }
    (peak, tail)
}

/// Units alive at the peak of a lane's steps.
#[derive(Clone, Copy, Debug)]
struct Alive {
    passes: f64,
    micro_batches: f64,
}

impl Alive {
    /// Those of the unit kind `kind`.
    fn of(self, kind: UnitKind) -> f64 {
        match kind {
            UnitKind::Pass => self.passes,
            UnitKind::MicroBatch => self.micro_batches,
        }
    }
}

/// The lanes of a plan for the closed form's memory: the schedule's order and the units alive
/// per lane position, counted once each.
struct Lanes<'p> {
    order: &'p Order,
    alive: BTreeMap<Position, Alive>,
}

impl<'p> Lanes<'p> {
    fn new(order: &'p Order) -> Self {
        Lanes {
            order,
            alive: BTreeMap::new(),
        }
    }

    /// Units alive on rank `r`'s lane: colocated by the language model's stage the rank
    /// holds, in a pipeline by the (group, stage) of its first module.
    fn alive_on(&mut self, plan: &Plan, r: Rank) -> Option<Alive> {
        let pos = self.order.position_of_rank(plan, r)?;
        if let Some(&v) = self.alive.get(&pos) {
            return Some(v);
        }
        let steps = self.order.steps(pos);
        let v = Alive {
            passes: f64::from(alive(&steps, UnitKind::Pass)),
            micro_batches: f64::from(alive(&steps, UnitKind::MicroBatch)),
        };
        self.alive.insert(pos, v);
        Some(v)
    }
}

/// Per stage of module `m`, the most any of its ranks holds for it alone
/// (`memory::module_memory`: static memory, activations alive at its lane's peak, its largest
/// transient moment, allocator margin, its NCCL buffers).
fn own_memory(
    inputs: &RankInputs<'_>,
    m: usize,
    u: &ModuleUnits,
    q: &ModuleQuick,
    lanes: &mut Lanes<'_>,
) -> Vec<f64> {
    let plan = inputs.plan;
    let mp = &plan.modules()[m];
    let mut own = vec![0.0f64; mp.layout.pp as usize];
    // NCCL's buffers per stage, priced on the stage's first rank.
    let mut nccl: Vec<Option<f64>> = vec![None; mp.layout.pp as usize];
    for &r in mp.grid.ranks() {
        let Some(c) = mp.grid.coord_of(r) else {
            continue;
        };
        let Some(alive) = lanes.alive_on(plan, r).map(|a| a.of(u.kind)) else {
            continue;
        };
        let act = q.act[c.dp as usize][c.pp as usize] * alive;
        let n = *nccl[c.pp as usize].get_or_insert_with(|| module_nccl(mp, r, &inputs.constants));
        let bytes = module_memory(inputs, m, u, r, act, n);
        let slot = &mut own[c.pp as usize];
        *slot = slot.max(bytes);
    }
    own
}

/// Module `m`'s own closed-form terms in `plan` (`crate::combine`), pricing that module only,
/// less the collectives `folds` leaves to its boundaries; `None` when the plan's pipeline
/// cannot be ordered.
pub fn module_terms(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
    folds: &Folds,
    m: ModuleId,
) -> Option<crate::combine::ModuleQuick> {
    let i = m.index();
    let u = crate::schedule::units::module_units(model, plan, m);
    let priced =
        crate::estimate::price_some(model, cluster, plan, opts, folds, Some(i), &|_| u.peak(0));
    let q = price_module(model, cluster, plan, &priced, &u, i, opts);
    let order = Order::new(model, plan).ok()?;
    let inputs = rank_inputs(model, plan, &priced, opts);
    let memory = own_memory(&inputs, i, &u, &q, &mut Lanes::new(&order));
    Some(terms_of(&priced, i, &u, &q, memory))
}

fn terms_of(
    priced: &Priced<'_>,
    m: usize,
    u: &ModuleUnits,
    q: &ModuleQuick,
    stage_memory: Vec<f64>,
) -> crate::combine::ModuleQuick {
    crate::combine::ModuleQuick {
        units: u.count,
        stage_unit: q.stages.iter().map(|s| s.unit).collect(),
        stage_step: q.stages.iter().map(|s| s.step).collect(),
        stage_memory,
        tail: priced.grad_sync[m]
            .iter()
            .zip(&priced.optimizer[m])
            .map(|(g, o)| g + o)
            .fold(0.0, f64::max),
    }
}

/// The ranks of pipeline stage `s` of a module.
fn stage_ranks(mp: &ModulePlan, s: u32) -> Vec<Rank> {
    let g = &mp.grid;
    let mut out = Vec::new();
    for dp in 0..g.size(Axis::Dp) {
        for cp in 0..g.size(Axis::Cp) {
            for tp in 0..g.size(Axis::Tp) {
                out.push(g.rank_at(Coord { tp, cp, dp, pp: s }));
            }
        }
    }
    out
}
