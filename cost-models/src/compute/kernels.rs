//! How many kernels a layer launches: each costs `kernel_launch_s` on top of its work, which is
//! what decides small layers (a narrow encoder split over many GPUs runs dozens of
//! microsecond kernels per layer). The count follows the operators of a Megatron-Core layer
//! with fused bias-dropout-add and fused attention; backward launches about twice as many
//! (an input-gradient and a weight-gradient product per linear, a gradient kernel per
//! elementwise operator).

use hetpar_ir::layout::Layout;
use hetpar_ir::model::{MoeSpec, PositionKind};

use crate::memory::AttentionKernel;

/// Forward kernels of one transformer layer on one GPU.
pub fn layer_forward(
    l: &Layout,
    positions: PositionKind,
    kernel: AttentionKernel,
    moe: Option<&MoeSpec>,
) -> f64 {
    // Two norms, the QKV and output products, two bias-dropout-adds.
    let mut k = 6.0;
    if positions == PositionKind::Rope {
        k += 1.0;
    }
    k += match kernel {
        AttentionKernel::Flash => 1.0,
        // Scores product, scale-mask-softmax, dropout, context product.
        AttentionKernel::Materialized => 4.0,
    };
    let tp_collectives = if l.tp > 1 {
        if l.sequence_parallel {
            4.0
        } else {
            2.0
        }
    } else {
        0.0
    };
    k += tp_collectives;
    if l.cp > 1 {
        // The key/value exchange: one kernel per ring step, or one gather.
        k += f64::from(l.cp - 1).min(2.0);
    }
    // FC1, activation, FC2 (SwiGLU's gate and up products are one product).
    let ffn = 3.0;
    match moe {
        Some(m) => {
            let local = (f64::from(m.experts) / f64::from(l.ep)).max(1.0);
            // Router product, softmax and top-k, permute and unpermute (two each), the
            // dispatch and combine all-to-alls, then each local expert's FFN.
            k += 1.0 + 2.0 + 4.0 + if l.ep > 1 { 2.0 } else { 0.0 };
            k += local * ffn + f64::from(m.shared_experts) * ffn;
        }
        None => k += ffn,
    }
    k
}

/// Backward kernels per forward kernel.
pub const BACKWARD_PER_FORWARD: f64 = 2.0;

#[cfg(test)]
mod tests {
    use super::*;
    use hetpar_ir::layout::RecomputeSpec;

    fn layout(tp: u32, sp: bool, ep: u32) -> Layout {
        Layout {
            tp,
            cp: 1,
            pp: 1,
            dp: 1,
            ep,
            vpp: 1,
            sequence_parallel: sp,
            tp_comm_overlap: false,
            cp_comm: Default::default(),
            recompute: RecomputeSpec::default(),
            distributed_optimizer: false,
            micro_batch_size: 1,
            chunk_layers: vec![1],
            micro_batches: 1,
        }
    }

    #[test]
    fn a_dense_layer_launches_a_dozen_kernels_and_sp_adds_two_collectives() {
        let (rope, flash) = (PositionKind::Rope, AttentionKernel::Flash);
        assert_eq!(layer_forward(&layout(1, false, 1), rope, flash, None), 11.0);
        assert_eq!(layer_forward(&layout(4, true, 1), rope, flash, None), 15.0);
    }

    #[test]
    fn each_local_expert_adds_its_own_ffn_kernels() {
        let moe = MoeSpec {
            experts: 8,
            top_k: 2,
            expert_ffn_hidden: 128,
            shared_experts: 0,
            layer_frequency: 1,
        };
        let (none, flash) = (PositionKind::None, AttentionKernel::Flash);
        let spread = layer_forward(&layout(1, false, 8), none, flash, Some(&moe));
        let whole = layer_forward(&layout(1, false, 1), none, flash, Some(&moe));
        // Seven more local experts, no all-to-alls.
        assert_eq!(whole - spread, 7.0 * 3.0 - 2.0);
    }
}
