//! The search's objective for one whole plan, computed directly (no caches, no frontiers):
//! every module's closed-form terms from `estimate_quick`, every boundary synthesized, combined
//! by `hetpar_cost::combine`. The search finds the plan minimizing this over its space; tests
//! check that against brute force.

use hetpar_cost::combine::{combine, Arrangement, Others};
use hetpar_cost::{estimate_quick_with, Constants, Folds, Options};
use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::PlacementKind;
use hetpar_ir::{Cluster, Plan};

/// How a plan's other modules sit relative to its language model; `None` for an arrangement
/// the search does not produce.
pub fn arrangement(model: &ModelGraph, plan: &Plan) -> Option<Arrangement> {
    let lm = plan.module(model.language_model());
    let item: Vec<_> = plan
        .modules()
        .iter()
        .filter(|m| model.item_origin(m.module).is_some())
        .collect();
    if item.is_empty() {
        return Some(Arrangement::Colocated);
    }
    match plan.placement_kind {
        PlacementKind::Colocated | PlacementKind::Single => Some(Arrangement::Colocated),
        PlacementKind::Disjoint => Some(Arrangement::Disjoint),
        PlacementKind::PartialOverlap => {
            let stage0: Vec<_> =
                lm.grid.ranks()[..lm.grid.ranks().len() / lm.layout.pp as usize].to_vec();
            let nested = item.iter().all(|m| {
                let mut r = m.grid.ranks().to_vec();
                r.sort_unstable();
                let mut s = stage0.clone();
                s.sort_unstable();
                r == s
            });
            nested.then_some(Arrangement::Nested)
        }
    }
}

/// The closed-form (step time, peak memory per rank with the CUDA context) of a whole plan.
pub fn closed_form(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    opts: &Options,
) -> Option<(f64, f64)> {
    let arr = arrangement(model, plan)?;
    // Each projector's last collectives priced at its boundary, as the search does.
    let q = estimate_quick_with(model, cluster, plan, opts, &Folds::every_projector(model));
    let lm = model.language_model();
    let boundary: f64 = model
        .boundaries()
        .iter()
        .map(|b| crate::boundary::boundary_step_time(model, cluster, plan, opts.constants, b.id))
        .sum();
    let others: Vec<_> = q
        .modules
        .iter()
        .enumerate()
        .filter(|(m, _)| *m != lm.index())
        .map(|(_, t)| t)
        .collect();
    let (t, mem) = combine(
        arr,
        &q.modules[lm.index()],
        plan.module(lm).layout.vpp,
        plan.passes().count(),
        Others::of(&others, boundary),
    );
    let context = opts
        .constants
        .unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model))
        .cuda_context_bytes;
    Some((t, mem + context))
}
