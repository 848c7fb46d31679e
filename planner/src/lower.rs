//! Lowering: a plan to a program, one ordered instruction list per rank.
//!
//! The order is the schedule the cost model simulates (`hetpar_cost` task graph: every lane's
//! order is the order of each of its ranks), so what runs is what was predicted. Around each
//! forward and backward the lowering adds its transfers: a pipeline receive before and send
//! after, to the rank with the same tp, cp and dp coordinates on the neighbouring stage; and
//! a boundary's fused calls, once per rank, boundary, unit and direction (also on a rank that
//! is both source and destination, where the first position wins):
//!
//! - **forward**: after the source's last chunk of its pass or micro-batch x, for every unit
//!   of the boundary x covers (an encoder or projector pass feeding the language model covers
//!   the pass size's micro-batches of the pass, `Passes::micro_batches_of`; otherwise the
//!   unit is x itself); and before the destination's first chunk of its unit x;
//! - **backward**: after the destination's first chunk's backward of x; and before the
//!   source's last chunk's backward of x, for every unit x covers (its gradients of every
//!   micro-batch of the pass).
//!
//! Every transfer's sender reaches it right after the pass that made its rows, so with
//! buffered sends no order of the cost model that respects the boundaries' dependencies
//! deadlocks; NCCL, whose grouped calls wait for their peers, also needs each pair's messages
//! in one order on both sides, which the runtime checks before it runs (`exec/order.rs`).

use std::collections::BTreeSet;
use std::ops::Range;

use hetpar_cost::estimate::estimate_with_tasks;
use hetpar_cost::tasks::{Task, TaskGraph, TaskKind};
use hetpar_cost::Options;
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::placement::Coord;
use hetpar_ir::program::{
    BoundaryProgram, Instruction, ModuleProgram, Program, RankProgram, Transfer,
};
use hetpar_ir::{BoundaryId, Cluster, ModuleId, Plan, Rank};

use crate::boundary::ownership::units;
use crate::boundary::synth::MicroBatchPlan;
use crate::boundary::{synthesize_all_with, Limits};
use crate::PlanError;

pub fn lower(model: &ModelGraph, cluster: &Cluster, plan: &Plan) -> Result<Program, PlanError> {
    lower_with(model, cluster, plan, &Options::default())
}

/// [`lower`] with the cost model's options (a calibration's constants): the order of each
/// rank's passes is the schedule the cost model simulates with them.
pub fn lower_with(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
) -> Result<Program, PlanError> {
    let (_, (graph, _)) = estimate_with_tasks(model, cluster, plan, opts).map_err(|e| match e {
        hetpar_cost::CostError::Unsupported(s) => PlanError::Unsupported(s),
        hetpar_cost::CostError::Internal(s) => PlanError::Internal(s),
    })?;
    check_units(model, plan, &graph)?;
    let lower = Lowering { model, plan };
    let mut ranks: Vec<RankProgram> = Vec::new();
    for (l, lane) in graph.lanes.iter().enumerate() {
        for &rank in &lane.ranks {
            ranks.push(RankProgram {
                rank,
                instructions: lower.rank(&graph, l, rank),
            });
        }
    }
    ranks.sort_by_key(|r| r.rank);
    let boundaries = synthesize_all_with(
        model,
        cluster,
        plan,
        Limits::default(),
        None,
        opts.constants,
    )
    .into_iter()
    .zip(model.boundaries())
    .map(|(r, b)| {
        let n = units(model, plan, b.id) as usize;
        BoundaryProgram {
            name: r.name,
            from: r.from,
            to: r.to,
            width: b.width,
            forward: per_unit(r.forward.plans, n),
            backward: per_unit(r.backward.plans, n),
            fold_forward: r.fold_forward,
            fold_backward: r.fold_backward,
        }
    })
    .collect();
    let passes = plan.passes();
    Ok(Program {
        kind: "program".into(),
        format_version: FORMAT_VERSION,
        model: model.name().to_string(),
        cluster: cluster.name.clone(),
        micro_batches: passes.micro_batches,
        encoder_chunk: passes.per_pass,
        modules: module_programs(model, plan),
        boundaries,
        ranks,
    })
}

/// Checks that the schedule runs every module once per unit of its own: each encoder pass
/// for an encoder or projector, each micro-batch for the others.
fn check_units(model: &ModelGraph, plan: &Plan, graph: &TaskGraph) -> Result<(), PlanError> {
    let passes = plan.passes();
    for mp in plan.modules() {
        let (want, what) = if model.item_origin(mp.module).is_some() {
            (passes.count(), "encoder passes")
        } else {
            (passes.micro_batches, "micro-batches")
        };
        let got: BTreeSet<u32> = graph
            .tasks
            .iter()
            .filter(|t| t.module == Some(mp.module) && t.kind == TaskKind::Forward)
            .map(|t| t.micro_batch)
            .collect();
        if !got.iter().copied().eq(0..want) {
            return Err(PlanError::Internal(format!(
                "the cost model schedules module `{}` over {} units, but the plan gives it {want} {what} ({} micro-batches, encoder_chunk {})",
                model.module(mp.module).name,
                got.len(),
                passes.micro_batches,
                passes.per_pass
            )));
        }
    }
    Ok(())
}

/// A boundary's transfers by unit.
fn per_unit(plans: Vec<MicroBatchPlan>, n: usize) -> Vec<Vec<Transfer>> {
    let mut out: Vec<Vec<Transfer>> = vec![Vec::new(); n];
    for p in plans {
        if let Some(slot) = out.get_mut(p.micro_batch as usize) {
            *slot = p.ops;
        }
    }
    out
}

fn module_programs(model: &ModelGraph, plan: &Plan) -> Vec<ModuleProgram> {
    model
        .modules()
        .iter()
        .map(|m| {
            let mp = plan.module(m.id);
            let l = &mp.layout;
            let mut grid = Vec::with_capacity(l.size() as usize);
            for pp in 0..l.pp {
                for dp in 0..l.dp {
                    for cp in 0..l.cp {
                        for tp in 0..l.tp {
                            grid.push(mp.grid.rank_at(Coord { tp, cp, dp, pp }));
                        }
                    }
                }
            }
            ModuleProgram {
                name: m.name.clone(),
                kind: m.kind,
                tp: l.tp,
                cp: l.cp,
                pp: l.pp,
                dp: l.dp,
                ep: l.ep,
                vpp: l.vpp,
                sequence_parallel: l.sequence_parallel,
                tp_comm_overlap: l.tp_comm_overlap,
                cp_comm: l.cp_comm,
                distributed_optimizer: l.distributed_optimizer,
                micro_batch_size: l.micro_batch_size,
                chunk_layers: l.chunk_layers.clone(),
                recompute: l.recompute.clone(),
                ranks: grid,
            }
        })
        .collect()
}

struct Lowering<'a> {
    model: &'a ModelGraph,
    plan: &'a Plan,
}

/// One rank's instructions as they are emitted, with the boundary calls it has made.
struct Emit {
    out: Vec<Instruction>,
    done: BTreeSet<BoundaryCall>,
}

/// A boundary's fused call for one unit of its destination, forward or backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BoundaryCall {
    boundary: BoundaryId,
    unit: u32,
    forward: bool,
}

impl Lowering<'_> {
    /// The units of boundary `b` that pass or micro-batch `x` of its source covers: every
    /// micro-batch of the pass for an encoder or projector feeding a module that takes
    /// micro-batches, else `x`.
    fn source_units(&self, b: BoundaryId, x: u32) -> Range<u32> {
        let bd = self.model.boundary(b);
        if self.model.item_origin(bd.from).is_some() && self.model.item_origin(bd.to).is_none() {
            self.plan.passes().micro_batches_of(x)
        } else {
            x..x + 1
        }
    }

    /// Rank `rank`'s instructions, in lane `l`'s order.
    fn rank(&self, graph: &TaskGraph, l: usize, rank: Rank) -> Vec<Instruction> {
        let mut e = Emit {
            out: Vec::new(),
            done: BTreeSet::new(),
        };
        for &t in &graph.orders[l] {
            let task = &graph.tasks[t as usize];
            let Some(m) = task.module else {
                e.out.push(Instruction::OptimizerStep);
                continue;
            };
            let mp = self.plan.module(m);
            let Some(me) = mp.grid.coord_of(rank) else {
                continue;
            };
            match task.kind {
                TaskKind::GradSync if me.pp == task.stage => e.out.push(Instruction::GradSync {
                    module: self.model.module(m).name.clone(),
                    stage: task.stage,
                }),
                TaskKind::Forward => self.forward(&mut e, m, me, task),
                TaskKind::Backward => self.backward(&mut e, m, me, task),
                _ => {}
            }
        }
        e.out
    }

    /// Boundary `b`'s fused calls for `units`, in the direction `fwd`, each once per rank.
    fn boundary(&self, e: &mut Emit, b: BoundaryId, units: Range<u32>, fwd: bool) {
        for u in units {
            let call = BoundaryCall {
                boundary: b,
                unit: u,
                forward: fwd,
            };
            if !e.done.insert(call) {
                continue;
            }
            let boundary = self.model.boundary(b).name.clone();
            e.out.push(if fwd {
                Instruction::BoundaryForward {
                    boundary,
                    micro_batch: u,
                }
            } else {
                Instruction::BoundaryBackward {
                    boundary,
                    micro_batch: u,
                }
            });
        }
    }

    /// The rank at pipeline position `pos` (global chunk) of module `m`, beside `me`.
    fn peer(&self, m: ModuleId, me: Coord, pos: u32) -> Rank {
        let mp = self.plan.module(m);
        mp.grid.rank_at(Coord {
            pp: pos % mp.layout.pp,
            ..me
        })
    }

    fn forward(&self, e: &mut Emit, m: ModuleId, me: Coord, task: &Task) {
        let l = &self.plan.module(m).layout;
        let name = self.model.module(m).name.clone();
        let (i, last, x) = (
            task.chunk * l.pp + task.stage,
            l.pp * l.vpp - 1,
            task.micro_batch,
        );
        if i > 0 && (i - 1) % l.pp != task.stage {
            e.out.push(Instruction::RecvActivation {
                module: name.clone(),
                micro_batch: x,
                chunk: i,
                from: self.peer(m, me, i - 1),
            });
        }
        if i == 0 {
            for b in self.model.incoming(m) {
                self.boundary(e, b, x..x + 1, true);
            }
        }
        e.out.push(Instruction::Forward {
            module: name.clone(),
            stage: task.stage,
            chunk: task.chunk,
            micro_batch: x,
        });
        if i < last && (i + 1) % l.pp != task.stage {
            e.out.push(Instruction::SendActivation {
                module: name,
                micro_batch: x,
                chunk: i + 1,
                to: self.peer(m, me, i + 1),
            });
        }
        if i == last {
            for b in self.model.outgoing(m) {
                self.boundary(e, b, self.source_units(b, x), true);
            }
        }
    }

    fn backward(&self, e: &mut Emit, m: ModuleId, me: Coord, task: &Task) {
        let l = &self.plan.module(m).layout;
        let name = self.model.module(m).name.clone();
        let (i, last, x) = (
            task.chunk * l.pp + task.stage,
            l.pp * l.vpp - 1,
            task.micro_batch,
        );
        if i < last && (i + 1) % l.pp != task.stage {
            e.out.push(Instruction::RecvGradient {
                module: name.clone(),
                micro_batch: x,
                chunk: i,
                from: self.peer(m, me, i + 1),
            });
        }
        if i == last {
            for b in self.model.outgoing(m) {
                self.boundary(e, b, self.source_units(b, x), false);
            }
        }
        e.out.push(Instruction::Backward {
            module: name.clone(),
            stage: task.stage,
            chunk: task.chunk,
            micro_batch: x,
        });
        if i > 0 && (i - 1) % l.pp != task.stage {
            e.out.push(Instruction::SendGradient {
                module: name,
                micro_batch: x,
                chunk: i - 1,
                to: self.peer(m, me, i - 1),
            });
        }
        if i == 0 {
            for b in self.model.incoming(m) {
                self.boundary(e, b, x..x + 1, false);
            }
        }
    }
}
