//! The CUDA backend. Without a GPU: every CUDA command fails with the missing library named,
//! never a panic. With one (the tests say "skipped" otherwise): the reference model trains
//! under two plans on the GPU as on the CPU, gradients within 1e-4 of the CPU's after one
//! step and losses within 1e-4 over five (bf16 products: 2e-2), and launched ranks as
//! processes sharing the GPU give the threads' losses.

#![cfg(feature = "cuda")]

mod common;
use common::{hetpar, losses, stderr, stdout, REF_CLUSTER, REF_MODEL, REF_PLAN};

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

fn train(program_path: &str, backend: Backend, steps: usize) -> RunOutput {
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
    let opts = RunOptions {
        steps,
        lr: 1e-3,
        timeout: std::time::Duration::from_secs(120),
        backend,
    };
    run(&program, &cfg, &init, &batches, &opts).unwrap()
}

fn worst_relative(a: &Params, b: &Params) -> (f64, String) {
    let mut worst = (0.0, String::new());
    for (name, t) in b.iter() {
        let u = a.get(name).unwrap();
        let scale = t
            .data()
            .iter()
            .fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let diff = u
            .data()
            .iter()
            .zip(t.data())
            .fold(0.0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
        let e = diff / scale.max(1e-12);
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    worst
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
    for plan in [COLOCATED, REF_PLAN] {
        let cpu = train(plan, Backend::Cpu, 5);
        for (precision, tol_grad, tol_loss) in
            [(Precision::F32, 1e-4, 1e-4), (Precision::Bf16, 5e-2, 2e-2)]
        {
            let gpu = train(
                plan,
                Backend::Cuda {
                    device: dev.clone(),
                    precision,
                    nccl: false,
                },
                5,
            );
            let one = train(
                plan,
                Backend::Cuda {
                    device: dev.clone(),
                    precision,
                    nccl: false,
                },
                1,
            );
            let cpu_one = train(plan, Backend::Cpu, 1);
            let (e, name) = worst_relative(&one.grads, &cpu_one.grads);
            assert!(
                e <= tol_grad,
                "{plan} {precision}: gradient of {name} off by {e:e}"
            );
            for (k, (g, c)) in gpu.losses.iter().zip(&cpu.losses).enumerate() {
                let e = f64::from((g - c).abs()) / f64::from(c.abs());
                assert!(
                    e <= tol_loss,
                    "{plan} {precision}: step {k} loss {g} vs {c}"
                );
            }
        }
    }
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
