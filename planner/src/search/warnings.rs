//! Warnings about a chosen plan, in the human and the JSON output.

use hetpar_cost::stated_error;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::Cluster;

use super::result::Candidate;

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
        // The cost model's stated time error for this GPU model (`hetpar_cost::error`).
        let err = stated_error(cluster.gpu_model);
        if best.plan != *hp && gain < err.time {
            out.push(format!(
                "the gain over the homogeneous plan ({:+.1}%) is within the cost model's stated time error of {:.0}% ({}: {})",
                100.0 * gain,
                100.0 * err.time,
                cluster.gpu_model.as_str(),
                err.basis
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
