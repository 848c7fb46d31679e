//! Boundary communicators as a general resharding problem (see `docs/boundary.md`).
//!
//! `ownership` computes which ranks hold and which need every row, `synth` turns the
//! difference into a transfer plan and lowers it into operations (one fused call per rank per
//! micro-batch), `egraph` chooses how each flow is delivered, `oracle` checks a plan row by row,
//! `baseline` prices the reference system's leader-and-broadcast scheme.

pub mod baseline;
pub mod compose;
pub mod egraph;
pub mod oracle;
pub mod ownership;
pub mod synth;

use hetpar_cost::Constants;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::{BoundaryId, Cluster, Plan};

pub use baseline::Baseline;
pub use egraph::{Limits, Strategy};
pub use synth::{Context, Direction, Reshard};

/// Both directions of one boundary and the baseline.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BoundaryReshard {
    pub name: String,
    pub from: String,
    pub to: String,
    pub forward: Reshard,
    pub backward: Reshard,
    /// The leader-and-broadcast scheme, forward.
    pub baseline: Baseline,
    /// The producer's last reduction folded into the forward transfer (`compose`).
    pub fold_forward: bool,
    /// The producer's first backward gather folded into the backward transfer.
    pub fold_backward: bool,
}

/// Synthesizes every boundary of a plan (or the one named).
pub fn synthesize_all(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    limits: Limits,
    only: Option<&str>,
) -> Vec<BoundaryReshard> {
    synthesize_all_with(model, cluster, plan, limits, only, None)
}

/// [`synthesize_all`] pricing transfers with `constants` (a calibration's), or the cluster's
/// GPU model's when `None`.
pub fn synthesize_all_with(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    limits: Limits,
    only: Option<&str>,
    constants: Option<Constants>,
) -> Vec<BoundaryReshard> {
    let cx = Context {
        model,
        cluster,
        plan,
        constants: constants.unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model)),
        limits,
    };
    model
        .boundaries()
        .iter()
        .filter(|b| only.is_none_or(|n| n == b.name))
        .map(|b| synthesize_boundary(&cx, b.id))
        .collect()
}

/// Synthesizes one boundary in both directions.
pub fn synthesize_boundary(cx: &Context<'_>, b: BoundaryId) -> BoundaryReshard {
    let dst = synth::destination_maps(cx, b);
    let fwd = synth::forward_segments_of(&ownership::source_maps(cx.model, cx.plan, b), &dst);
    let baseline = baseline::leader_broadcast(cx, b, &fwd);
    let bd = cx.model.boundary(b);
    let (forward, backward, fold_forward, fold_backward) =
        if cx.limits.compose && compose::composable(cx, b) {
            compose::compose(cx, b, fwd, &dst)
        } else {
            let (f, b) = direct(cx, b, fwd);
            (f, b, false, false)
        };
    BoundaryReshard {
        name: bd.name.clone(),
        from: cx.model.module(bd.from).name.clone(),
        to: cx.model.module(bd.to).name.clone(),
        forward,
        backward,
        baseline,
        fold_forward,
        fold_backward,
    }
}

/// Both directions' transfers alone, where the producer's rows leave whole (nothing to
/// compose: the transfer is the whole program).
fn direct(
    cx: &Context<'_>,
    b: BoundaryId,
    fwd: Vec<Vec<ownership::Segment>>,
) -> (Reshard, Reshard) {
    let bwd = synth::backward_segments(&fwd);
    // The two directions are independent: synthesize them side by side.
    let (forward, mut backward) = std::thread::scope(|scope| {
        let f = scope.spawn(|| synth::synthesize(cx, b, Direction::Forward, fwd));
        let backward = synth::synthesize(cx, b, Direction::Backward, bwd);
        // A panic in the forward thread is a bug: re-raise it where it can be seen.
        (
            f.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            backward,
        )
    });
    let mut forward = forward;
    forward.egraph.direct_time_s = forward.time_s;
    backward.egraph.direct_time_s = backward.time_s;
    (forward, backward)
}

/// Synthesized per-micro-batch (forward, backward) times of every boundary, for the cost
/// model's simulation.
pub fn boundary_times(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
) -> hetpar_cost::BoundaryTimes {
    boundary_times_with(model, cluster, plan, None)
}

/// [`boundary_times`] with `constants` (a calibration's), or the cluster's GPU model's when
/// `None`.
pub fn boundary_times_with(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    constants: Option<Constants>,
) -> hetpar_cost::BoundaryTimes {
    boundary_times_limited(model, cluster, plan, constants, Limits::default())
}

/// [`boundary_times_with`] under `limits` (`compose: false` prices every boundary's direct
/// program), with the producers' collectives the chosen programs fold.
pub fn boundary_times_limited(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    constants: Option<Constants>,
    limits: Limits,
) -> hetpar_cost::BoundaryTimes {
    let mut out = hetpar_cost::BoundaryTimes::default();
    for (r, b) in synthesize_all_with(model, cluster, plan, limits, None, constants)
        .into_iter()
        .zip(model.boundaries())
    {
        let times = r
            .forward
            .micro_batch_times
            .iter()
            .copied()
            .zip(r.backward.micro_batch_times.iter().copied())
            .collect();
        out.units.insert(b.id, times);
        let fold = hetpar_cost::Fold {
            forward: r.fold_forward,
            backward: r.fold_backward,
        };
        out.folds.add(b.from, fold);
    }
    out
}

/// Boundary `b`'s synthesized time over a whole step: forward plus backward of its chosen
/// programs, every unit, with the producer's collectives a composed boundary prices (direct
/// or folded), s. Its producer's terms leave those out (`hetpar_cost::Folds::every_projector`):
/// the plan search's pricing, so that a boundary never takes negative time.
pub fn boundary_step_time(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    constants: Option<Constants>,
    b: BoundaryId,
) -> f64 {
    let name = &model.boundary(b).name;
    synthesize_all_with(
        model,
        cluster,
        plan,
        Limits::default(),
        Some(name),
        constants,
    )
    .iter()
    .map(|r| r.forward.unit_times.iter().sum::<f64>() + r.backward.unit_times.iter().sum::<f64>())
    .sum()
}
