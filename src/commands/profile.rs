//! `hetpar profile`: microbenchmarks of the backend, written as a calibration file.

use std::path::PathBuf;
use std::process::ExitCode;

use super::{emit, print_diagnostics};

/// The backend to measure.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    /// This machine's cores running the CPU backend (a cluster of `cpu_thread` ranks).
    Cpu,
    /// NVIDIA GPUs with NCCL (not profiled yet: `hetpar device-check` measures one GPU).
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
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
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
        Backend::Cuda => anyhow::bail!(
            "profiling the CUDA backend into a calibration file is not implemented yet; \
             `hetpar device-check` measures a GPU's matrix-product throughput and copy \
             bandwidth, and --backend cpu profiles a cluster of cpu_thread ranks"
        ),
    };
    let h = &cal.hardware;
    let c = &cal.constants;
    eprintln!(
        "matrix products: peak {:.2} GFLOP/s, half dimension {:.2}; attention {:.0}% of peak; \
         memory-bound kernels {:.2} GB/s; point to point {:.2} GB/s after {:.1} µs",
        h.dense_flops.unwrap_or(f64::NAN) / 1e9,
        c.matmul_half_dim,
        c.attention_efficiency * 100.0,
        h.memory_bandwidth.unwrap_or(f64::NAN) / 1e9,
        h.intra_node_bandwidth.unwrap_or(f64::NAN) / 1e9,
        h.intra_node_latency_s.unwrap_or(f64::NAN) * 1e6,
    );
    emit(
        &hetpar::ir::json::to_canonical_json(&cal),
        a.output.as_deref(),
    )?;
    Ok(ExitCode::SUCCESS)
}
