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
    /// Fixed cost of one kernel launch, s; `compute::kernels` counts a layer's kernels.
    pub kernel_launch_s: f64,
    /// Activation reads and writes of memory-bound kernels per layer, in units of
    /// rows x hidden elements (norms, residuals, dropout-free elementwise work).
    pub elementwise_passes: f64,
    /// Fraction of link bandwidth collectives reach within a node.
    pub nvlink_efficiency: f64,
    /// Fraction of per-GPU network bandwidth collectives reach across nodes.
    pub network_efficiency: f64,
    /// Whether data-parallel communication overlaps compute (1) or not (0): the gradient
    /// reduction under the last unit's backward, the parameter gather under the first unit's
    /// forward, as Megatron's `--overlap-grad-reduce` / `--overlap-param-gather` do.
    pub dp_overlap: f64,
    /// Tokens the busiest expert of a MoE layer receives relative to the mean (routing with
    /// an auxiliary balancing loss is not perfectly even).
    pub moe_load_imbalance: f64,
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
    /// Only `matmul_max_efficiency` and `attention_efficiency` are fitted (`hetpar calibrate`
    /// on `cost-models/data/`, `docs/cost-model.md` "Calibration"): the published rows identify
    /// nothing else. The rest are hardware figures or stated assumptions, each marked below,
    /// until `hetpar profile` measures them on the device.
    ///
    /// A100: fitted to Korthikanti et al. 2022, Table 5, whose Megatron-LM materialized the
    /// attention scores (so the attention efficiency is that of batched score products).
    /// Hopper (H100, H200): fitted to the Megatron-Core H100 rows (flash attention). B200: not
    /// fitted; the A100's structure with a guessed large-GEMM efficiency.
    pub fn for_gpu(gpu: GpuModel) -> Constants {
        // Fitted: `hetpar calibrate cost-models/data/korthikanti-2022-a100.json`.
        let a100 = Constants::nvidia(0.807, 0.253, 64.0);
        match gpu {
            GpuModel::A10080gb => a100,
            // Fitted: `hetpar calibrate cost-models/data/megatron-core-h100.json`. Assumed:
            // Hopper's larger tiles need larger shapes than the A100's 64 (no public row has
            // small per-GPU products to identify it).
            GpuModel::H100Sxm80gb | GpuModel::H200141gb => Constants::nvidia(0.606, 0.208, 96.0),
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
            // Not fitted: a guessed large-product efficiency and larger tiles still.
            GpuModel::B200 => Constants::nvidia(0.68, 0.50, 128.0),
        }
    }

    /// An NVIDIA GPU's constants: the fitted (or guessed) product and attention efficiencies
    /// and the product half dimension of its generation; the rest are the same figures for
    /// every generation, none identified by a public row.
    fn nvidia(matmul_max_efficiency: f64, attention_efficiency: f64, matmul_half_dim: f64) -> Self {
        Constants {
            matmul_max_efficiency,
            attention_efficiency,
            matmul_half_dim,
            // Assumed: memory-bound kernels at 80% of HBM bandwidth.
            hbm_efficiency: 0.80,
            // Assumed: a launch and its tail, a few microseconds.
            kernel_launch_s: 4e-6,
            // Korthikanti et al.'s count of a layer's elementwise passes.
            elementwise_passes: 4.0,
            // Hardware: NCCL's all-reduce bus bandwidth within a node, about 80% of one
            // direction's NVLink (about 360 of 450 GB/s on a DGX H100).
            nvlink_efficiency: 0.80,
            // Assumed: InfiniBand at 85% of line rate.
            network_efficiency: 0.85,
            // Megatron's gradient-reduce and parameter-gather overlap, on in the H100 rows.
            dp_overlap: 1.0,
            // Assumed (no public MoE row): the busiest expert 10% over the mean.
            moe_load_imbalance: 1.1,
            // Memory figures: assumed, with their sources, in docs/cost-model.md.
            cuda_context_bytes: (1u64 << 30) as f64,
            nccl_buffer_bytes: (4u64 << 20) as f64,
            nccl_channels: 16.0,
            allocator_margin: 0.10,
        }
    }
}
