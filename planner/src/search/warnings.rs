//! Warnings about a chosen plan, in the human and the JSON output.

use hetpar_ir::model::ModelGraph;
use hetpar_ir::Cluster;

use super::result::Candidate;

/// The cost model's stated error: the A100 set's worst error against Korthikanti et al. 2022,
/// Table 5 (`docs/cost-model.md`). No held-out Hopper error is stated yet.
pub const COST_MODEL_ERROR: f64 = 0.03;

/// A rank idle for more than this share of the step is worth a warning.
pub const IDLE_SHARE: f64 = 0.25;

pub fn warnings(
    model: &ModelGraph,
    cluster: &Cluster,
    best: Option<&Candidate>,
    homogeneous: Option<&Candidate>,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(b) = best.and_then(|b| b.estimate.as_ref().map(|e| (b, e))) else {
        return out;
    };
    let (best, e) = b;
    let t = e.iteration_time_s;
    let idle: Vec<(u32, f64)> = e
        .per_rank
        .iter()
        .flat_map(|r| r.ranks.iter().map(move |&k| (k, r.time.idle)))
        .filter(|&(_, i)| t > 0.0 && i / t > IDLE_SHARE)
        .collect();
    if let Some(worst) = idle.iter().map(|x| x.1).reduce(f64::max) {
        out.push(format!(
            "{} of {} GPUs are idle for more than a quarter of the step (up to {:.0}%)",
            idle.len(),
            cluster.world_size(),
            100.0 * worst / t
        ));
    }
    if let Some((hp, h)) = homogeneous.and_then(|h| h.estimate.as_ref().map(|e| (&h.plan, e))) {
        let gain = h.iteration_time_s / t - 1.0;
        if best.plan != *hp && gain < COST_MODEL_ERROR {
            out.push(format!(
                "the gain over the homogeneous plan ({:+.1}%) is within the cost model's stated error of {:.0}% (A100, Korthikanti et al. 2022; no held-out Hopper error is stated yet)",
                100.0 * gain,
                100.0 * COST_MODEL_ERROR
            ));
        }
    }
    let batch = model.data().global_batch;
    let per_node = cluster.gpus_per_node;
    // Fewer samples than nodes: every sample must span more than a node's GPUs.
    if u64::from(batch) * u64::from(per_node) < cluster.world_size() {
        out.push(format!(
            "the global batch of {batch} samples is too small to occupy {} GPUs: fewer samples than nodes, so every sample spans several nodes",
            cluster.world_size()
        ));
    }
    out
}
