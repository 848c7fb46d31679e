//! `hetpar profile --backend cuda`: the CUDA backend's microbenchmarks on one GPU
//! (`hetpar_runtime::cuda::profile`), as a calibration for a cluster of that GPU.

use hetpar_cost::calibration::{from_profile, Calibration, Measurement, Profile};
use hetpar_ir::gpu::GpuModel;
use hetpar_runtime::cuda::profile::GpuProfile;

/// The calibration of `gpu_model` from one GPU's measurements: the products, attention and
/// memory-bound kernels as [`from_profile`] fits them (no links: one GPU has none to time),
/// and the per-kernel cost the measured seconds per launch.
pub fn calibration(gpu_model: GpuModel, p: &GpuProfile) -> Calibration {
    let profile = Profile {
        matmuls: p
            .matmuls
            .iter()
            .map(|&(m, k, n, t)| (m as f64, k as f64, n as f64, t))
            .collect(),
        attention: p.attention.clone(),
        memory: p.memory.iter().map(|(_, b, t)| (*b, *t)).collect(),
        p2p: Vec::new(),
        collectives: Vec::new(),
    };
    let mut cal = from_profile(gpu_model, "cuda", &profile);
    cal.constants.kernel_launch_s = p.kernel_launch_s;
    cal.measurements.push(Measurement {
        kind: "kernel_launch".into(),
        what: "a one-value kernel launched back to back".into(),
        amount: 1.0,
        seconds: p.kernel_launch_s,
    });
    cal
}

/// Whether the driver's name for a device (`NVIDIA H100 80GB HBM3`) is `gpu_model`.
pub fn device_is(gpu_model: GpuModel, device_name: &str) -> bool {
    let tag = match gpu_model {
        GpuModel::H100Sxm80gb => "H100",
        GpuModel::H200141gb => "H200",
        GpuModel::A10080gb => "A100",
        GpuModel::B200 => "B200",
        GpuModel::CpuThread => return false,
    };
    device_name.to_ascii_uppercase().contains(tag)
}

/// Refuses a cluster whose ranks are not GPUs.
pub fn check_cluster(cluster: &hetpar_ir::Cluster) -> anyhow::Result<()> {
    if cluster.gpu_model == GpuModel::CpuThread {
        anyhow::bail!(
            "the CUDA backend profiles a GPU, but cluster `{}` has cpu_thread ranks \
             (--backend cpu profiles those)",
            cluster.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_its_model_by_the_drivers_name() {
        assert!(device_is(GpuModel::H100Sxm80gb, "NVIDIA H100 80GB HBM3"));
        assert!(device_is(GpuModel::H200141gb, "NVIDIA H200"));
        assert!(!device_is(GpuModel::H100Sxm80gb, "NVIDIA H200"));
        assert!(!device_is(GpuModel::A10080gb, "NVIDIA H100 PCIe"));
        assert!(!device_is(GpuModel::CpuThread, "NVIDIA H100"));
    }
}
