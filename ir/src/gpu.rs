//! The built-in GPU table: the one place where each GPU model's hardware figures live.
//! Cluster files pick a model and may override single fields.
//!
//! Sources: NVIDIA data sheets (dense, i.e. without sparsity, bf16 tensor-core FLOP/s; HBM
//! capacity as the driver reports it; HBM bandwidth; NVLink bandwidth per direction per GPU)
//! and the usual one-NIC-per-GPU network of each generation's reference systems.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GpuModel {
    #[serde(rename = "h100_sxm_80gb")]
    H100Sxm80gb,
    #[serde(rename = "h200_141gb")]
    H200141gb,
    #[serde(rename = "a100_80gb")]
    A10080gb,
    #[serde(rename = "b200")]
    B200,
    /// One thread of the CPU backend (ranks as threads on one machine): placeholder figures,
    /// of the order of one core running the reference model's f64-accumulating loops, for
    /// `hetpar profile` to replace with measured ones.
    #[serde(rename = "cpu_thread")]
    CpuThread,
}

impl GpuModel {
    pub const ALL: [GpuModel; 5] = [
        GpuModel::H100Sxm80gb,
        GpuModel::H200141gb,
        GpuModel::A10080gb,
        GpuModel::B200,
        GpuModel::CpuThread,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GpuModel::H100Sxm80gb => "h100_sxm_80gb",
            GpuModel::H200141gb => "h200_141gb",
            GpuModel::A10080gb => "a100_80gb",
            GpuModel::B200 => "b200",
            GpuModel::CpuThread => "cpu_thread",
        }
    }

    /// The built-in figures of this model.
    pub fn spec(self) -> GpuSpec {
        const MIB: f64 = 1024.0 * 1024.0;
        match self {
            GpuModel::H100Sxm80gb => GpuSpec {
                dense_bf16_flops: 989.4e12,
                hbm_bytes: 81_559.0 * MIB,
                hbm_bandwidth: 3.35e12,
                nvlink_bandwidth: 450e9,
                nvlink_latency: 3e-6,
                network_bandwidth: 50e9,
                network_latency: 8e-6,
            },
            GpuModel::H200141gb => GpuSpec {
                dense_bf16_flops: 989.4e12,
                hbm_bytes: 143_771.0 * MIB,
                hbm_bandwidth: 4.8e12,
                nvlink_bandwidth: 450e9,
                nvlink_latency: 3e-6,
                network_bandwidth: 50e9,
                network_latency: 8e-6,
            },
            GpuModel::A10080gb => GpuSpec {
                dense_bf16_flops: 312e12,
                hbm_bytes: 81_920.0 * MIB,
                hbm_bandwidth: 2.039e12,
                nvlink_bandwidth: 300e9,
                nvlink_latency: 4e-6,
                network_bandwidth: 25e9,
                network_latency: 10e-6,
            },
            GpuModel::CpuThread => GpuSpec {
                dense_bf16_flops: 1e9,
                hbm_bytes: 4096.0 * MIB,
                hbm_bandwidth: 10e9,
                nvlink_bandwidth: 4e9,
                nvlink_latency: 20e-6,
                network_bandwidth: 4e9,
                network_latency: 20e-6,
            },
            GpuModel::B200 => GpuSpec {
                dense_bf16_flops: 2250e12,
                hbm_bytes: 183_359.0 * MIB,
                hbm_bandwidth: 8.0e12,
                nvlink_bandwidth: 900e9,
                nvlink_latency: 3e-6,
                network_bandwidth: 50e9,
                network_latency: 8e-6,
            },
        }
    }
}

/// Hardware figures of one GPU and its links, in SI units (FLOP/s, bytes, bytes/s, seconds).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GpuSpec {
    /// Dense bf16 tensor-core peak, FLOP/s.
    pub dense_bf16_flops: f64,
    /// HBM capacity, bytes.
    pub hbm_bytes: f64,
    /// HBM bandwidth, bytes/s.
    pub hbm_bandwidth: f64,
    /// NVLink bandwidth per GPU per direction, bytes/s.
    pub nvlink_bandwidth: f64,
    /// NVLink latency per message, s.
    pub nvlink_latency: f64,
    /// Network bandwidth per GPU per direction, bytes/s.
    pub network_bandwidth: f64,
    /// Network latency per message, s.
    pub network_latency: f64,
}
