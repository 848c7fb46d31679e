//! The CUDA backend. Without a GPU: every CUDA command fails with the missing library named,
//! never a panic. On the emulated GPU (`kernels.cu` compiled for the CPU; skipped without a
//! C++ compiler) and on a real one (skipped without): the reference model trains under two
//! plans as on the CPU, losses within 1e-4 at each of three steps and the third step's
//! gradients within 1e-4 (each tensor's error over its largest value, floored at 1e-4 of the
//! model's largest gradient); bf16 products: 2e-2 and 5e-2. With a GPU, launched ranks as processes
//! sharing it give the threads' losses.

#![cfg(feature = "cuda")]

mod common;
use common::{hetpar, losses, stderr, stdout, REF_CLUSTER, REF_MODEL, REF_PLAN};

use std::sync::Arc;

use hetpar::runtime::cuda::emulated::EmuDevice;
use hetpar::runtime::cuda::{Device, Precision};
use hetpar::runtime::exec::{run, Backend, RunOptions, RunOutput};
use hetpar::runtime::reference::{Batch, Config, Params};

const COLOCATED: &str = "examples/plans/reference-tiny-colocated-4.json";

fn has_driver() -> bool {
    Device::count().is_ok_and(|n| n > 0)
}

#[test]
fn without_a_gpu_cuda_commands_fail_naming_the_driver() {
    if has_driver() {
        eprintln!("skipped: this machine has a GPU");
        return;
    }
    for args in [
        vec![
            "run",
            REF_PLAN,
            "--model",
            REF_MODEL,
            "--cluster",
            REF_CLUSTER,
            "--steps",
            "1",
            "--backend",
            "cuda",
        ],
        vec!["device-check"],
        vec!["profile", "--cluster", REF_CLUSTER, "--backend", "cuda"],
    ] {
        let o = hetpar(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("NVIDIA driver"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn nccl_is_refused_where_it_cannot_work() {
    let base = [
        "--model",
        REF_MODEL,
        "--cluster",
        REF_CLUSTER,
        "--steps",
        "1",
    ];
    for (first, extra, says) in [
        (
            "run",
            &["--backend", "cuda", "--nccl"][..],
            "--nccl is for `hetpar launch`",
        ),
        (
            "launch",
            &["--nproc-per-node", "8", "--nccl"][..],
            "--nccl needs --backend cuda",
        ),
    ] {
        let o = hetpar(&[&[first, REF_PLAN][..], &base, extra].concat());
        assert_eq!(o.status.code(), Some(2), "{first}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{first}: {}", stderr(&o));
    }
}

/// Where a run computes.
#[derive(Clone)]
enum On {
    Cpu,
    Gpu(Arc<Device>, Precision),
    /// Every rank on the emulated device, through the same `GpuMath` and operations.
    Emulated(Arc<EmuDevice>, Precision),
}

fn train(program_path: &str, on: &On, steps: usize) -> RunOutput {
    let root = common::root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let (g, _) = hetpar::ir::load_model(&read(REF_MODEL)).unwrap();
    let cluster = hetpar::ir::load_cluster(&read(REF_CLUSTER)).unwrap();
    let (plan, _) = hetpar::ir::load_plan(&read(program_path), &g, &cluster).unwrap();
    let program = hetpar::planner::lower::lower(&g, &cluster, &plan).unwrap();
    let cfg = Config::from_model(&g).unwrap();
    let init = Params::init(&cfg, 7).unwrap();
    let batches: Vec<Batch> = (0..3)
        .map(|k| Batch::for_model(&g, &cfg, 100 + k).unwrap())
        .collect();
    let backend = match on {
        On::Gpu(device, precision) => Backend::Cuda {
            device: device.clone(),
            precision: *precision,
            nccl: false,
        },
        On::Cpu | On::Emulated(..) => Backend::Cpu,
    };
    let opts = RunOptions {
        steps,
        lr: 1e-3,
        timeout: std::time::Duration::from_secs(120),
        backend,
        save: None,
    };
    match on {
        On::Emulated(dev, precision) => {
            common::run_emulated(dev, *precision, &program, &cfg, &init, &batches, &opts)
        }
        _ => run(&program, &cfg, &init, &batches, &opts),
    }
    .unwrap()
}

/// Two plans trained three steps on `device(precision)` as on the CPU, in f32 and with bf16
/// products: each step's loss, and the last step's gradients.
fn trains_two_plans_as_the_cpu_does(device: impl Fn(Precision) -> On) {
    const STEPS: usize = 3;
    for plan in [COLOCATED, REF_PLAN] {
        let cpu = train(plan, &On::Cpu, STEPS);
        for (precision, tol_grad, tol_loss) in
            [(Precision::F32, 1e-4, 1e-4), (Precision::Bf16, 5e-2, 2e-2)]
        {
            let gpu = train(plan, &device(precision), STEPS);
            let (e, name) = common::worst_gradient(plan, &gpu.grads, &cpu.grads);
            eprintln!("{plan} {precision}: worst gradient {name}, {e:.2e}");
            assert!(
                e <= tol_grad,
                "{plan} {precision}: gradient of {name} off by {e:e}"
            );
            for (k, (g, c)) in gpu.losses.iter().zip(&cpu.losses).enumerate() {
                let e = f64::from((g - c).abs()) / f64::from(c.abs());
                eprintln!("{plan} {precision}: step {k} loss {g} vs {c}, {e:.2e}");
                assert!(
                    e <= tol_loss,
                    "{plan} {precision}: step {k} loss {g} vs {c}"
                );
            }
        }
    }
}

#[test]
fn the_gpu_trains_two_plans_as_the_cpu_does() {
    let dev = match Device::open(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    trains_two_plans_as_the_cpu_does(|p| On::Gpu(dev.clone(), p));
}

#[test]
fn the_emulated_gpu_trains_two_plans_as_the_cpu_does() {
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    trains_two_plans_as_the_cpu_does(|p| On::Emulated(dev.clone(), p));
}

#[test]
fn launched_ranks_on_one_gpu_give_the_threads_losses() {
    if !has_driver() {
        eprintln!("skipped: no GPU");
        return;
    }
    let args = |cmd: &'static str| {
        let mut v = vec![
            cmd,
            REF_PLAN,
            "--model",
            REF_MODEL,
            "--cluster",
            REF_CLUSTER,
            "--steps",
            "3",
            "--backend",
            "cuda",
            "--gpu",
            "0",
        ];
        if cmd == "launch" {
            v.extend(["--nproc-per-node", "8"]);
        }
        v
    };
    let threads = hetpar(&args("run"));
    assert!(threads.status.success(), "{}", stderr(&threads));
    let procs = hetpar(&args("launch"));
    assert!(procs.status.success(), "{}", stderr(&procs));
    let (a, b) = (losses(&stdout(&threads)), losses(&stdout(&procs)));
    assert_eq!(a.len(), 3);
    assert_eq!(a, b, "threads and processes on the GPU train alike");
}

/// Every kind of figure the profile fits, measured, in positive finite seconds, and the
/// calibration that `--calibration` reads: backend `cuda`, accepted by `Calibration::check`,
/// the peak and bandwidth fitted and the per-kernel cost the measured one.
fn check_gpu_profile(p: &hetpar::runtime::cuda::profile::GpuProfile) {
    use hetpar::cost::calibration::Calibration;
    use hetpar::ir::gpu::GpuModel;
    assert_eq!(p.matmuls.len(), 8, "2 x 2 x 2 shapes: {:?}", p.matmuls);
    assert_eq!(p.attention.len(), 2, "{:?}", p.attention);
    assert_eq!(p.memory.len(), 6, "3 kernels x 2 sizes: {:?}", p.memory);
    let seconds = p
        .matmuls
        .iter()
        .map(|m| m.3)
        .chain(p.attention.iter().map(|a| a.1))
        .chain(p.memory.iter().map(|m| m.2))
        .chain([p.kernel_launch_s]);
    for t in seconds {
        assert!(t.is_finite() && t > 0.0, "a time of {t} s in {p:?}");
    }
    let cal = hetpar::profile::calibration(GpuModel::H100Sxm80gb, p);
    cal.check().unwrap();
    assert_eq!(
        (cal.backend.as_str(), cal.source.as_str()),
        ("cuda", "profile")
    );
    assert!(cal.hardware.dense_flops.is_some_and(|f| f > 0.0));
    assert!(cal.hardware.memory_bandwidth.is_some_and(|b| b > 0.0));
    assert_eq!(cal.constants.kernel_launch_s, p.kernel_launch_s);
    for kind in ["matmul", "attention", "memory", "kernel_launch"] {
        assert!(
            cal.measurements.iter().any(|m| m.kind == kind),
            "no {kind} measurement"
        );
    }
    // The file as written and read back.
    let text = hetpar::ir::json::to_canonical_json(&cal);
    let back: Calibration = serde_json::from_str(&text).unwrap();
    back.check().unwrap();
    assert_eq!(back, cal);
}

#[test]
fn profiling_the_emulated_gpu_measures_every_kind_into_a_cuda_calibration() {
    use hetpar::runtime::cuda::profile::{profile_engine, Grid};
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let p = profile_engine(
        &dev.rank(Precision::F32),
        &dev.rank(Precision::Bf16),
        &Grid::tiny(),
    )
    .unwrap();
    check_gpu_profile(&p);
}

#[test]
fn profiling_the_gpu_measures_every_kind_into_a_cuda_calibration() {
    use hetpar::runtime::cuda::profile::{profile_cuda, Grid};
    if !has_driver() {
        eprintln!("skipped: no GPU");
        return;
    }
    let dev = Device::open(0).unwrap();
    check_gpu_profile(&profile_cuda(&dev, &Grid::tiny()).unwrap());
}

#[test]
fn profiling_cpu_thread_ranks_on_the_cuda_backend_is_refused() {
    let o = hetpar(&[
        "profile",
        "--cluster",
        "examples/clusters/cpu-2.json",
        "--backend",
        "cuda",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cpu_thread"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
}

/// A mixture of experts' combination and its backward (`moe_combine`, `moe_combine_bwd`) on
/// the emulated GPU give the CPU's bits: rows with several, one or no assignments, in an
/// order that is not the rows'.
#[test]
fn the_emulated_moe_combination_and_its_backward_give_the_cpu_bits() {
    use hetpar::runtime::exec::math::{CpuMath, Math};
    use hetpar::runtime::tensor::Tensor;
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let gpu = hetpar::runtime::cuda::GpuMath::new(dev.rank(Precision::F32));
    let (n, cols) = (4, 5);
    let rows = [3, 0, 3, 1, 0, 3, 1];
    let weights: Vec<f64> = (0..rows.len()).map(|a| 0.1 + a as f64 / 7.0).collect();
    let value = |i: usize| ((i * 7919) % 101) as f32 / 37.0 - 1.3;
    let x = Tensor::from_vec(
        &[rows.len(), cols],
        (0..rows.len() * cols).map(value).collect(),
    )
    .unwrap();
    let dy = Tensor::from_vec(&[n, cols], (0..n * cols).map(|i| value(i + 500)).collect()).unwrap();
    let bits = |t: &Tensor| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let (want, got) = (
        CpuMath.moe_combine(&x, &rows, &weights, n).unwrap(),
        gpu.moe_combine(&x, &rows, &weights, n).unwrap(),
    );
    assert_eq!(bits(&got), bits(&want), "combination");
    assert!(
        want.data()[2 * cols..3 * cols].iter().all(|&v| v == 0.0),
        "row 2 has none"
    );
    let (wdx, wdw) = CpuMath
        .moe_combine_backward(&x, &rows, &weights, &dy)
        .unwrap();
    let (gdx, gdw) = gpu.moe_combine_backward(&x, &rows, &weights, &dy).unwrap();
    assert_eq!(bits(&gdx), bits(&wdx), "input gradients");
    let b64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b64(&gdw), b64(&wdw), "weight gradients");
}
