//! Lowering: a plan to a program, one ordered instruction list per rank.
//!
//! The order is the schedule the cost model simulates (`hetpar_cost` task graph: every lane's
//! order is the order of each of its ranks), so what runs is what was predicted. Around each
//! forward and backward the lowering adds its transfers: a pipeline receive before and send
//! after, to the rank with the same tp, cp and dp coordinates on the neighbouring stage; a
//! boundary's fused call after the source module's last chunk and before the destination's
//! first (once per rank, boundary and micro-batch, also on a rank that is both).

use std::collections::BTreeSet;

use hetpar_cost::estimate::estimate_with_tasks;
use hetpar_cost::tasks::{DepKind, TaskKind};
use hetpar_cost::Options;
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::placement::Coord;
use hetpar_ir::program::{
    BoundaryProgram, Instruction, ModuleProgram, Program, RankProgram, Transfer,
};
use hetpar_ir::{Cluster, Plan, Rank};

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
    let mut ranks: Vec<RankProgram> = Vec::new();
    for (l, lane) in graph.lanes.iter().enumerate() {
        for &rank in &lane.ranks {
            let mut out: Vec<Instruction> = Vec::new();
            let mut boundary_done: BTreeSet<(u32, u32, bool)> = BTreeSet::new();
            for &t in &graph.orders[l] {
                let task = &graph.tasks[t as usize];
                let Some(m) = task.module else {
                    out.push(Instruction::OptimizerStep);
                    continue;
                };
                let module = model.module(m);
                let name = module.name.clone();
                if task.kind == TaskKind::GradSync {
                    // Only ranks of this module stage take part.
                    let mp = plan.module(m);
                    if mp.grid.coord_of(rank).is_some_and(|c| c.pp == task.stage) {
                        out.push(Instruction::GradSync {
                            module: name,
                            stage: task.stage,
                        });
                    }
                    continue;
                }
                let mp = plan.module(m);
                let Some(me) = mp.grid.coord_of(rank) else {
                    continue;
                };
                let l = &mp.layout;
                let i = task.chunk * l.pp + task.stage;
                let last = l.pp * l.vpp - 1;
                let peer = |pos: u32| -> Rank {
                    mp.grid.rank_at(Coord {
                        pp: pos % l.pp,
                        ..me
                    })
                };
                let j = task.micro_batch;
                let mut boundary = |out: &mut Vec<Instruction>, b: u32, fwd: bool| {
                    if boundary_done.insert((b, j, fwd)) {
                        let boundary = model.boundaries()[b as usize].name.clone();
                        out.push(if fwd {
                            Instruction::BoundaryForward {
                                boundary,
                                micro_batch: j,
                            }
                        } else {
                            Instruction::BoundaryBackward {
                                boundary,
                                micro_batch: j,
                            }
                        });
                    }
                };
                let has = |kind: DepKind| task.deps.iter().any(|d| d.kind == kind);
                match task.kind {
                    TaskKind::Forward => {
                        if i > 0 && (i - 1) % l.pp != task.stage {
                            out.push(Instruction::RecvActivation {
                                module: name.clone(),
                                micro_batch: j,
                                chunk: i,
                                from: peer(i - 1),
                            });
                        }
                        if i == 0 && has(DepKind::Boundary) {
                            for b in model.incoming(m) {
                                boundary(&mut out, b.index() as u32, true);
                            }
                        }
                        out.push(Instruction::Forward {
                            module: name.clone(),
                            stage: task.stage,
                            chunk: task.chunk,
                            micro_batch: j,
                        });
                        if i < last && (i + 1) % l.pp != task.stage {
                            out.push(Instruction::SendActivation {
                                module: name.clone(),
                                micro_batch: j,
                                chunk: i + 1,
                                to: peer(i + 1),
                            });
                        }
                        if i == last {
                            for b in model.outgoing(m) {
                                boundary(&mut out, b.index() as u32, true);
                            }
                        }
                    }
                    TaskKind::Backward => {
                        if i < last && (i + 1) % l.pp != task.stage {
                            out.push(Instruction::RecvGradient {
                                module: name.clone(),
                                micro_batch: j,
                                chunk: i,
                                from: peer(i + 1),
                            });
                        }
                        if i == last {
                            for b in model.outgoing(m) {
                                boundary(&mut out, b.index() as u32, false);
                            }
                        }
                        out.push(Instruction::Backward {
                            module: name.clone(),
                            stage: task.stage,
                            chunk: task.chunk,
                            micro_batch: j,
                        });
                        if i > 0 && (i - 1) % l.pp != task.stage {
                            out.push(Instruction::SendGradient {
                                module: name.clone(),
                                micro_batch: j,
                                chunk: i - 1,
                                to: peer(i - 1),
                            });
                        }
                        if i == 0 {
                            for b in model.incoming(m) {
                                boundary(&mut out, b.index() as u32, false);
                            }
                        }
                    }
                    _ => {}
                }
            }
            ranks.push(RankProgram {
                rank,
                instructions: out,
            });
        }
    }
    ranks.sort_by_key(|r| r.rank);
    let modules = model
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
                vpp: l.vpp,
                sequence_parallel: l.sequence_parallel,
                micro_batch_size: l.micro_batch_size,
                chunk_layers: l.chunk_layers.clone(),
                recompute: l.recompute.clone(),
                ranks: grid,
            }
        })
        .collect();
    let m = plan.modules().first().map_or(1, |p| p.layout.micro_batches) as usize;
    let per_micro_batch = |plans: Vec<MicroBatchPlan>| {
        let mut out: Vec<Vec<Transfer>> = vec![Vec::new(); m];
        for p in plans {
            out[p.micro_batch as usize] = p.ops;
        }
        out
    };
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
    .map(|(r, b)| BoundaryProgram {
        name: r.name,
        from: r.from,
        to: r.to,
        width: b.width,
        forward: per_micro_batch(r.forward.plans),
        backward: per_micro_batch(r.backward.plans),
    })
    .collect();
    Ok(Program {
        kind: "program".into(),
        format_version: FORMAT_VERSION,
        model: model.name().to_string(),
        cluster: cluster.name.clone(),
        micro_batches: m as u32,
        modules,
        boundaries,
        ranks,
    })
}
