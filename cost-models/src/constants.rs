//! The cost model's efficiency constants: the one documented place where they live.
//!
//! Hardware figures (peak FLOP/s, HBM, link bandwidths) come from `hetpar_ir::gpu` and the
//! cluster file. What is here says how close to those peaks real kernels and collectives get.
//! One set per GPU generation; the same constants serve every model and plan (they are
//! validated against Korthikanti et al. 2022 in `tests/calibration.rs`, without per-row fudge).

use hetpar_ir::gpu::GpuModel;

/// Efficiency constants of one GPU generation.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constants {
    /// Fraction of dense peak a large matrix product reaches.
    pub matmul_max_efficiency: f64,
    /// Dimension at which a matrix product reaches half its per-dimension efficiency: each of
    /// m, n, k contributes a factor x / (x + half_dim). Small per-GPU shapes run far below peak.
    pub matmul_half_dim: f64,
    /// Fraction of dense peak the attention kernel reaches on its score/context FLOPs.
    pub attention_efficiency: f64,
    /// Fraction of HBM bandwidth memory-bound kernels reach.
    pub hbm_efficiency: f64,
    /// Fixed cost of one kernel launch, s.
    pub kernel_launch_s: f64,
    /// Activation reads and writes of memory-bound kernels per layer, in units of
    /// rows x hidden elements (norms, residuals, dropout-free elementwise work).
    pub elementwise_passes: f64,
    /// Fraction of link bandwidth collectives reach within a node.
    pub nvlink_efficiency: f64,
    /// Fraction of per-GPU network bandwidth collectives reach across nodes.
    pub network_efficiency: f64,
    /// Fraction of data-parallel gradient communication hidden behind backward.
    pub dp_overlap: f64,
    /// Memory of the CUDA context on every rank (driver state, the library kernels a
    /// training process loads, cuBLAS workspaces), bytes. Assumed: see `docs/cost-model.md`.
    pub cuda_context_bytes: f64,
    /// `NCCL_BUFFSIZE`: one channel's buffer for one peer of a communicator, bytes (NCCL's
    /// default, 4 MiB).
    pub nccl_buffer_bytes: f64,
    /// Channels per NCCL communicator. Assumed: see `docs/cost-model.md`.
    pub nccl_channels: f64,
    /// Fraction of the memory the caching allocator holds that fragmentation adds on top.
    /// Assumed: see `docs/cost-model.md`.
    pub allocator_margin: f64,
}

impl Constants {
    /// The constants of a GPU model.
    ///
    /// A100: fitted to Korthikanti et al. 2022, Table 5 (eight rows, worst error 3%; see
    /// `docs/cost-model.md`), whose Megatron-LM materialized the attention scores, so the
    /// attention efficiency is that of batched score products. Hopper and Blackwell: the A100
    /// structure with the lower large-GEMM efficiency and larger tiles those chips are known
    /// for, and fused attention; not yet fitted to measurements (`hetpar autotune` will).
    pub fn for_gpu(gpu: GpuModel) -> Constants {
        let a100 = Constants {
            matmul_max_efficiency: 0.80,
            matmul_half_dim: 64.0,
            attention_efficiency: 0.30,
            hbm_efficiency: 0.80,
            kernel_launch_s: 4e-6,
            elementwise_passes: 4.0,
            nvlink_efficiency: 0.80,
            network_efficiency: 0.85,
            dp_overlap: 0.8,
            // Memory figures: assumed, with their sources, in docs/cost-model.md.
            cuda_context_bytes: (1u64 << 30) as f64,
            nccl_buffer_bytes: (4u64 << 20) as f64,
            nccl_channels: 16.0,
            allocator_margin: 0.10,
        };
        match gpu {
            GpuModel::A10080gb => a100,
            GpuModel::H100Sxm80gb | GpuModel::H200141gb => Constants {
                matmul_max_efficiency: 0.72,
                matmul_half_dim: 96.0,
                attention_efficiency: 0.50,
                ..a100
            },
            // Plain loops on one core: no tiles to fill, no launches, no overlap of gradient
            // sums (the CPU backend sums after backward), no CUDA, NCCL or caching allocator.
            // `hetpar profile` and `hetpar autotune` measure what the figures should be.
            GpuModel::CpuThread => Constants {
                matmul_max_efficiency: 1.0,
                matmul_half_dim: 4.0,
                attention_efficiency: 0.5,
                hbm_efficiency: 1.0,
                kernel_launch_s: 0.0,
                nvlink_efficiency: 1.0,
                network_efficiency: 1.0,
                dp_overlap: 0.0,
                cuda_context_bytes: 0.0,
                nccl_buffer_bytes: 0.0,
                nccl_channels: 0.0,
                allocator_margin: 0.0,
                ..a100
            },
            GpuModel::B200 => Constants {
                matmul_max_efficiency: 0.68,
                matmul_half_dim: 128.0,
                attention_efficiency: 0.50,
                ..a100
            },
        }
    }
}
