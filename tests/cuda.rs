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
