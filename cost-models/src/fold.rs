//! What a boundary program takes over from its producer: a tensor-parallel projector's last
//! collectives (its output's reduction forward, its output gradient's sequence-parallel gather
//! backward), which a folded boundary program does inside its transfer.
//!
//! A collective is priced once, in one place: the producer's cost drops what a fold takes
//! (`compute::ModuleCompute::fold`), and the boundary prices it instead, the direct program
//! with these same collectives (`producer_collectives`) and the folded one whole (the planner's
//! `boundary::compose`). The simulation drops the collectives of the folds the chosen programs
//! make (`schedule::BoundaryTimes::folds`); the plan search's terms drop every projector's
//! (`Folds::every_projector`), its boundaries carrying them whether folded or not.

use std::collections::BTreeMap;

use hetpar_ir::model::{ModelGraph, ModuleKind};
use hetpar_ir::{Cluster, ModuleId, Plan};

use crate::compute::tp::TpCollectives;
use crate::compute::ModuleCompute;
use crate::constants::Constants;
use crate::estimate::{hardware, Options};
use crate::schedule::units::module_units;

/// Which of a producer's last collectives its boundary program takes over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fold {
    /// The output's reduction (all-reduce, or reduce-scatter under sequence parallelism).
    pub forward: bool,
    /// The output gradient's sequence-parallel all-gather.
    pub backward: bool,
}

impl Fold {
    pub const NONE: Fold = Fold {
        forward: false,
        backward: false,
    };
    pub const BOTH: Fold = Fold {
        forward: true,
        backward: true,
    };
}

/// The folds of a plan, by producer module (none where absent).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folds(BTreeMap<ModuleId, Fold>);

impl Folds {
    /// Module `m`'s fold.
    pub fn of(&self, m: ModuleId) -> Fold {
        self.0.get(&m).copied().unwrap_or_default()
    }

    /// Adds `f` to module `m`'s fold.
    pub fn add(&mut self, m: ModuleId, f: Fold) {
        let e = self.0.entry(m).or_default();
        e.forward |= f.forward;
        e.backward |= f.backward;
    }

    /// Both collectives of every projector: terms whose boundaries carry them.
    pub fn every_projector(model: &ModelGraph) -> Folds {
        let mut out = Folds::default();
        for m in model.modules() {
            if m.kind == ModuleKind::Projector {
                out.add(m.id, Fold::BOTH);
            }
        }
        out
    }
}

/// Per unit (encoder pass) of projector `m`, its output's all-reduce, reduce-scatter and
/// all-gather over its tp group on the replica with the most rows, as its own cost prices them
/// (`ModuleCompute::output_collectives`); zero without tensor parallelism.
pub fn producer_collectives(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
    m: ModuleId,
) -> Vec<TpCollectives> {
    let c = opts
        .constants
        .unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model));
    let mp = plan.module(m);
    let compute = ModuleCompute {
        module: model.module(m),
        layout: &mp.layout,
        hw: hardware(cluster, c, mp),
        act_bytes: model.data().precision.activation_bytes() as f64,
        kernel: opts.attention,
        fold: Fold::NONE,
    };
    let u = module_units(model, plan, m);
    (0..u.count)
        .map(|p| {
            let busiest = (0..u.dp)
                .map(|d| u.work(p, d))
                .max_by(|a, b| a.rows.total_cmp(&b.rows))
                .unwrap_or_default();
            compute.output_collectives(busiest)
        })
        .collect()
}
