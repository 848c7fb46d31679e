//! `hetpar profile`: microbenchmarks of the backend, written as a calibration file.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{emit, print_diagnostics};

/// The backend to measure.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    /// This machine's cores running the CPU backend (a cluster of `cpu_thread` ranks).
    Cpu,
    /// One NVIDIA GPU (--gpu): bf16 matrix products over a grid of shapes (256 to 8192 in
    /// each dimension), attention, memory-bound kernels and the per-kernel cost.
    Cuda,
}

#[derive(clap::Args)]
pub struct Args {
    /// The cluster the calibration is for.
    #[arg(long)]
    pub cluster: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
    /// Write the calibration here (atomically) instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The GPU profiled with --backend cuda (CUDA ordinal).
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    super::check_output("-o", a.output.as_deref(), &[&a.cluster])?;
    let text = match hetpar::io::read_text(&a.cluster) {
        Ok(t) => t,
        Err(ds) => {
            print_diagnostics(&ds);
            return Ok(ExitCode::from(1));
        }
    };
    let cluster = match hetpar::ir::load_cluster(&text) {
        Ok(c) => c,
        Err(ds) => {
            print_diagnostics(&ds.with_file(&a.cluster.display().to_string()));
            return Ok(ExitCode::from(1));
        }
    };
    let cal = match a.backend {
        Backend::Cpu => hetpar::autotune::profile_cpu(&cluster)?,
        Backend::Cuda => profile_cuda(&cluster, a.gpu)?,
    };
    let h = &cal.hardware;
    let c = &cal.constants;
    let links = match (h.intra_node_bandwidth, h.intra_node_latency_s) {
        (Some(bw), Some(lat)) => format!(
            "point to point {:.2} GB/s after {:.1} µs",
            bw / 1e9,
            lat * 1e6
        ),
        // One GPU has no link to time: the cluster's figures stay.
        _ => format!("per-kernel cost {:.2} µs", c.kernel_launch_s * 1e6),
    };
    eprintln!(
        "matrix products: peak {:.2} GFLOP/s, half dimension {:.2}; attention {:.0}% of peak; \
         memory-bound kernels {:.2} GB/s; {links}",
        h.dense_flops.unwrap_or(f64::NAN) / 1e9,
        c.matmul_half_dim,
        c.attention_efficiency * 100.0,
        h.memory_bandwidth.unwrap_or(f64::NAN) / 1e9,
    );
    emit(
        &hetpar::ir::json::to_canonical_json(&cal),
        a.output.as_deref(),
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "cuda")]
fn profile_cuda(
    cluster: &hetpar::ir::Cluster,
    gpu: usize,
) -> anyhow::Result<hetpar::cost::calibration::Calibration> {
    use hetpar::runtime::cuda::{profile, Device};
    hetpar::profile::check_cluster(cluster)?;
    // The dynamic linker reads LD_LIBRARY_PATH only at start: come back with pip's CUDA
    // libraries on it.
    hetpar::runtime::libs::reexec_with_cuda_libraries()?;
    let dev = Device::open(gpu)?;
    eprintln!("profiling {} (sm_{}{})", dev.name, dev.arch.0, dev.arch.1);
    if !hetpar::profile::device_is(cluster.gpu_model, &dev.name) {
        // Kept going: a calibration of a stand-in device still fits the cost model's shape.
        eprintln!(
            "warning: {} is not a {}, the model of cluster `{}`; the calibration says {}",
            dev.name,
            cluster.gpu_model.as_str(),
            cluster.name,
            cluster.gpu_model.as_str()
        );
    }
    let p = profile::profile_cuda(&dev, &profile::Grid::gpu())?;
    Ok(hetpar::profile::calibration(cluster.gpu_model, &p))
}

#[cfg(not(feature = "cuda"))]
fn profile_cuda(
    _: &hetpar::ir::Cluster,
    _: usize,
) -> anyhow::Result<hetpar::cost::calibration::Calibration> {
    anyhow::bail!("this hetpar was built without the `cuda` feature (it is on by default)")
}
