//! What each lane runs, in order, as *steps*: the forward or backward of one unit (a
//! micro-batch or an encoder pass) and virtual chunk, for every module of its kind on the lane.
//! The task graph's orders and the closed form's in-flight counts both read them. Each
//! schedule kind orders its steps in its own file: `colocated` (the three colocated kinds),
//! `pipeline` (groups chained as stages) over `one_f_one_b` and `interleaved`.

use hetpar_ir::model::ModelGraph;
use hetpar_ir::shard::Passes;
use hetpar_ir::{Plan, Rank};

use super::colocated::colocated_steps;
use super::lanes::LaneKey;
use super::pipeline::PipelineSteps;
use super::units::UnitKind;
use crate::CostError;

/// The forward or backward of one unit and chunk, for the lane's modules of that unit kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub forward: bool,
    pub kind: UnitKind,
    pub unit: u32,
    pub chunk: u32,
}

impl Step {
    pub(crate) fn mb(forward: bool, unit: u32, chunk: u32) -> Self {
        Step {
            forward,
            kind: UnitKind::MicroBatch,
            unit,
            chunk,
        }
    }

    pub(crate) fn pass(forward: bool, unit: u32) -> Self {
        Step {
            forward,
            kind: UnitKind::Pass,
            unit,
            chunk: 0,
        }
    }
}

/// Units (chunks, when interleaved) of `kind` alive at once at the peak of `steps`.
pub fn alive(steps: &[Step], kind: UnitKind) -> u32 {
    let (mut live, mut peak) = (0i64, 0i64);
    for s in steps.iter().filter(|s| s.kind == kind) {
        live += if s.forward { 1 } else { -1 };
        peak = peak.max(live);
    }
    peak as u32
}

/// Whether micro-batch `j` is the last of its pass.
pub(crate) fn ends_pass(passes: Passes, j: u32) -> bool {
    j + 1 == passes.micro_batches_of(passes.pass_of(j)).end
}

/// Where a lane runs in its schedule: stage `stage` of group `group`. Under a colocated
/// schedule every module is one group and the stage is the language model's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub group: usize,
    pub stage: u32,
}

/// A plan's schedule kind, ready to give every lane its steps.
pub enum Order {
    /// The colocated kinds: every module, in topological order, by the language model's stage.
    Colocated {
        lm: usize,
        pp: u32,
        passes: Passes,
        modules: Vec<usize>,
    },
    /// The pipeline kinds: groups of modules on identical ranks, chained as stages.
    Pipeline(PipelineSteps),
}

impl Order {
    /// Fails on what the pipeline kinds do not order yet (virtual chunks on an encoder).
    pub fn new(model: &ModelGraph, plan: &Plan) -> Result<Self, CostError> {
        if !plan.schedule.kind.is_colocated() {
            return Ok(Order::Pipeline(PipelineSteps::new(model, plan)?));
        }
        let lm = model.language_model().index();
        Ok(Order::Colocated {
            lm,
            pp: plan.modules()[lm].layout.pp,
            passes: plan.passes(),
            modules: model
                .topological_order()
                .iter()
                .map(|m| m.index())
                .collect(),
        })
    }

    /// The position of the lane that runs `key`: colocated, its stage of the language model;
    /// in a pipeline, its first module's group and stage.
    pub fn position(&self, key: &LaneKey) -> Option<Position> {
        match self {
            Order::Colocated { lm, .. } => key.of_module(*lm).map(|at| Position {
                group: 0,
                stage: at.stage,
            }),
            Order::Pipeline(ps) => key.0.first().map(|at| Position {
                group: ps.pipe.group_of[at.module.index()],
                stage: at.stage,
            }),
        }
    }

    /// The position of rank `r`'s lane, as `position` of its lane's key.
    pub fn position_of_rank(&self, plan: &Plan, r: Rank) -> Option<Position> {
        match self {
            Order::Colocated { lm, .. } => {
                let c = plan.modules()[*lm].grid.coord_of(r)?;
                Some(Position {
                    group: 0,
                    stage: c.pp,
                })
            }
            Order::Pipeline(ps) => plan.modules().iter().enumerate().find_map(|(m, mp)| {
                let c = mp.grid.coord_of(r)?;
                Some(Position {
                    group: ps.pipe.group_of[m],
                    stage: c.pp,
                })
            }),
        }
    }

    /// The steps of the lanes at `pos`.
    pub fn steps(&self, pos: Position) -> Vec<Step> {
        match self {
            Order::Colocated { pp, passes, .. } => colocated_steps(*pp, pos.stage, *passes),
            Order::Pipeline(ps) => ps.steps(pos.group, pos.stage),
        }
    }

    /// The modules the steps at `pos` run (those a lane holds), in topological order.
    pub fn members(&self, pos: Position) -> &[usize] {
        match self {
            Order::Colocated { modules, .. } => modules,
            Order::Pipeline(ps) => &ps.pipe.groups[pos.group],
        }
    }
}
