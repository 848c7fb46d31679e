//! Gradient synchronization and the optimizer step of one module stage, and how much of the
//! data-parallel communication stays exposed.
//!
//! Megatron reduces gradients over dp x cp in buckets as the last unit's backward produces
//! them (`--overlap-grad-reduce`: earlier units only accumulate), and with the distributed
//! optimizer gathers the updated parameters under the next step's first forward
//! (`--overlap-param-gather`). So a stage can hide its reduction under one unit's backward and
//! its gather under one unit's forward, whatever the pipeline depth, and the last bucket of
//! each never hides. A language model with tied embeddings and pp > 1 also all-reduces the
//! embedding's gradient between its first and last stage, after the data-parallel reduction.

use crate::collective::{collective_time, CollectiveKind, Link};
use crate::constants::Constants;

/// What one stage synchronizes.
#[derive(Clone, Copy, Debug)]
pub struct StageSync {
    /// Parameters of the stage on one rank.
    pub params: f64,
    /// Ranks the gradients are reduced over (dp x cp) and their link.
    pub group: u32,
    pub link: Link,
    pub distributed_optimizer: bool,
    /// The stage's forward and backward of one unit, s: what the gather and the reduction
    /// can run under.
    pub forward_window: f64,
    pub backward_window: f64,
    /// The tied-embedding all-reduce between first and last stage, s (0 when none).
    pub tied_embedding: f64,
}

/// Megatron-Core's gradient bucket: `max(40M, 1M x dp)` parameters.
fn bucket_params(group: u32) -> f64 {
    (1e6 * f64::from(group)).max(4e7)
}

/// What is left of `comm` run under `window`: the overlappable part less the window, and the
/// last bucket, which starts when the window is over.
fn exposed(comm: f64, window: f64, last_bucket: f64, overlap: f64) -> f64 {
    if overlap <= 0.0 {
        return comm;
    }
    let tail = comm * last_bucket;
    (comm - tail - overlap * window).max(0.0) + tail
}

/// Exposed data-parallel communication of one stage per step, s.
pub fn grad_sync(s: &StageSync, c: &Constants) -> f64 {
    if s.params <= 0.0 {
        return s.tied_embedding;
    }
    let last_bucket = (bucket_params(s.group) / s.params).min(1.0);
    let (reduce, gather) = if s.distributed_optimizer {
        (
            collective_time(
                CollectiveKind::ReduceScatter,
                s.params * 4.0,
                s.group,
                s.link,
            ),
            collective_time(CollectiveKind::AllGather, s.params * 2.0, s.group, s.link),
        )
    } else {
        (
            collective_time(CollectiveKind::AllReduce, s.params * 4.0, s.group, s.link),
            0.0,
        )
    };
    exposed(reduce, s.backward_window, last_bucket, c.dp_overlap)
        + exposed(gather, s.forward_window, last_bucket, c.dp_overlap)
        + s.tied_embedding
}

/// The optimizer step of one stage, s: Adam reads and writes master weight, both moments and
/// the gradient (32 bytes per parameter of the rank's shard).
pub fn optimizer_step(params: f64, shard: u32, hbm_bandwidth: f64, c: &Constants) -> f64 {
    params / f64::from(shard.max(1)) * 32.0 / (hbm_bandwidth * c.hbm_efficiency)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(params: f64, backward_window: f64) -> StageSync {
        StageSync {
            params,
            group: 8,
            link: Link {
                bandwidth: 1e11,
                latency: 0.0,
                spans_nodes: true,
            },
            distributed_optimizer: false,
            forward_window: 0.0,
            backward_window,
            tied_embedding: 0.0,
        }
    }

    #[test]
    fn a_long_backward_hides_all_but_the_last_bucket() {
        let c = Constants::for_gpu(hetpar_ir::gpu::GpuModel::H100Sxm80gb);
        let whole = grad_sync(&stage(4e8, 0.0), &c);
        let hidden = grad_sync(&stage(4e8, 100.0), &c);
        // 40M of 400M parameters: a tenth of the reduction stays exposed.
        assert!(
            (hidden - whole / 10.0).abs() < 1e-9 * whole,
            "{hidden} vs {whole}"
        );
    }

    #[test]
    fn without_overlap_every_byte_is_exposed() {
        let mut c = Constants::for_gpu(hetpar_ir::gpu::GpuModel::H100Sxm80gb);
        c.dp_overlap = 0.0;
        let s = stage(4e8, 100.0);
        let all = collective_time(CollectiveKind::AllReduce, 4e8 * 4.0, 8, s.link);
        assert_eq!(grad_sync(&s, &c), all);
    }
}
