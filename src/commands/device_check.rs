//! `hetpar device-check`: the CUDA backend on one GPU. Every operation against the CPU
//! reference, a matrix-product throughput and a device-copy bandwidth figure, then the
//! reference model trained under two plans on the CPU and on the GPU (f32 and bf16 products),
//! their losses compared step by step, then a real-shaped Llama layer stack's step time,
//! TFLOP/s and MFU (`device_llama.rs`).

// Without the feature only the refusal below is compiled.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::process::ExitCode;

/// The model and the two plans trained (embedded, so a binary copied alone can run them).
const MODEL: &str = include_str!("../../examples/models/reference-tiny.json");
const CLUSTER: &str = include_str!("../../examples/clusters/h100-8.json");
const PLANS: [(&str, &str); 2] = [
    (
        "reference-tiny-colocated-4 (encoder dp4 into llm tp2 cp2 sp)",
        include_str!("../../examples/plans/reference-tiny-colocated-4.json"),
    ),
    (
        "reference-tiny-noncolocated-8 (tp2 sp dp2 | tp2 pp2 sp, recompute)",
        include_str!("../../examples/plans/reference-tiny-noncolocated-8.json"),
    ),
];

/// Largest relative difference of a GPU run's losses from the CPU run's, over all steps:
/// f32 products, and bf16 products (8 significant bits, compounding over the steps).
pub const LOSS_TOLERANCE_F32: f64 = 1e-4;
pub const LOSS_TOLERANCE_BF16: f64 = 2e-2;

#[derive(clap::Args)]
pub struct Args {
    /// The GPU to check (CUDA ordinal).
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Seed of the random inputs, weights and batches.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Size n of the n x n x n matrix products timed.
    #[arg(long, default_value_t = 8192)]
    pub gemm_size: usize,
    /// MiB copied device to device, timed.
    #[arg(long, default_value_t = 1024)]
    pub copy_mib: usize,
    /// Training steps per plan and backend (0 skips training).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// Training steps of the real-shaped Llama stack on the GPU, the first a warm-up (0 skips
    /// it).
    #[arg(long, default_value_t = 4)]
    pub llama_steps: usize,
    /// Llama-3-8B layers in that stack.
    #[arg(long, default_value_t = 4)]
    pub llama_layers: u32,
    /// Its sequence length (one sample a step).
    #[arg(long, default_value_t = 4096)]
    pub llama_sequence: u32,
}

/// `max_k |a_k - b_k| / |b_k|`.
fn loss_error(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs() / f64::from(y.abs()).max(1e-30))
        .fold(0.0, f64::max)
}

#[cfg(feature = "cuda")]
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    use std::fmt::Write as _;

    use hetpar::runtime::cuda::{check, Device, Precision};
    use hetpar::runtime::exec::{generated::synthetic_batches, run as execute, Backend};
    use hetpar::runtime::reference::{Config, Params};
    // The dynamic linker reads LD_LIBRARY_PATH only at start: come back with pip's CUDA
    // libraries on it (and NCCL linked under the name cudarc loads).
    hetpar::runtime::libs::reexec_with_cuda_libraries()?;
    let dev = Device::open(a.gpu)?;
    let report = check::run(&dev, a.seed, a.gemm_size, a.copy_mib << 20)?;
    print!("{}", report.render());
    let mut passed = report.passed();
    if a.steps > 0 {
        let (g, _) = hetpar::ir::load_model(MODEL).map_err(|d| anyhow::anyhow!("{d:?}"))?;
        let cluster = hetpar::ir::load_cluster(CLUSTER).map_err(|d| anyhow::anyhow!("{d:?}"))?;
        let cfg = Config::from_model(&g)?;
        let init = Params::init(&cfg, a.seed)?;
        let batches = synthetic_batches(&g, &cfg, a.seed, a.steps)?;
        println!(
            "training, {} steps: {:<66} {:>8} {:>8} {:>8} {:>8}",
            a.steps, "plan", "cpu ms", "gpu ms", "f32 err", "bf16 err"
        );
        for (name, text) in PLANS {
            // Printed as it goes, so a run stopped by a time limit still says what it did.
            let row = (|| -> anyhow::Result<(String, bool)> {
                let (plan, _) = hetpar::ir::load_plan(text, &g, &cluster)
                    .map_err(|d| anyhow::anyhow!("{d:?}"))?;
                let program = hetpar::planner::lower::lower(&g, &cluster, &plan)?;
                let mut opts = hetpar::runtime::exec::RunOptions {
                    steps: a.steps,
                    lr: 1e-3,
                    timeout: std::time::Duration::from_secs(120),
                    backend: Backend::Cpu,
                    save: None,
                };
                let cpu = execute(&program, &cfg, &init, &batches, &opts)?;
                let mut gpu = Vec::new();
                for precision in [Precision::F32, Precision::Bf16] {
                    opts.backend = Backend::Cuda {
                        device: dev.clone(),
                        precision,
                        nccl: false,
                    };
                    gpu.push(execute(&program, &cfg, &init, &batches, &opts)?);
                }
                let mean_ms =
                    |s: &[f64]| s.iter().skip(1).sum::<f64>() / (s.len().max(2) - 1) as f64 * 1e3;
                let e32 = loss_error(&gpu[0].losses, &cpu.losses);
                let e16 = loss_error(&gpu[1].losses, &cpu.losses);
                let ok = e32 <= LOSS_TOLERANCE_F32 && e16 <= LOSS_TOLERANCE_BF16;
                let mut row = format!(
                    "  {name:<85} {:>8.2} {:>8.2} {e32:>8.1e} {e16:>8.1e}  {}\n",
                    mean_ms(&cpu.step_seconds),
                    mean_ms(&gpu[0].step_seconds),
                    if ok { "ok" } else { "FAILED" }
                );
                let _ = writeln!(
                    row,
                    "    losses cpu      {:?}\n    losses gpu f32  {:?}\n    losses gpu bf16 {:?}",
                    cpu.losses, gpu[0].losses, gpu[1].losses
                );
                Ok((row, ok))
            })();
            match row {
                Ok((row, ok)) => {
                    passed &= ok;
                    print!("{row}");
                }
                Err(e) => {
                    passed = false;
                    println!("  {name}: FAILED: {e:#}");
                }
            }
        }
        println!(
            "tolerances: loss {LOSS_TOLERANCE_F32:.0e} (f32), {LOSS_TOLERANCE_BF16:.0e} (bf16)"
        );
    }
    if a.llama_steps > 0 {
        let llama = super::device_llama::check(
            &dev,
            CLUSTER,
            a.llama_layers,
            a.llama_sequence,
            a.llama_steps,
            a.seed,
        );
        match llama {
            Ok(ok) => passed &= ok,
            Err(e) => {
                passed = false;
                println!("llama stack: FAILED: {e:#}");
            }
        }
    }
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(not(feature = "cuda"))]
pub fn run(_: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("this hetpar was built without the `cuda` feature (it is on by default)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_error_is_the_worst_step_relative_to_the_reference() {
        assert_eq!(
            loss_error(&[2.0, 3.3], &[2.0, 3.0]),
            (3.3f32 as f64 - 3.0) / 3.0
        );
        assert_eq!(loss_error(&[1.0], &[1.0]), 0.0);
    }
}
