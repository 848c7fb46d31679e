//! Parity of the CPU backend with one device: every plan of the matrix, lowered and run with
//! ranks as threads, gives the single-device gradients (1e-5 relative, per tensor) after one
//! step and the single-device losses (1e-4) at each of 50 steps; runs are bitwise
//! reproducible. Plans with a distributed optimizer do too, and give the plain plan's bits.
//! The CUDA backend's arithmetic on the emulated GPU gives the single-device gradients for
//! every plan too (1e-4). The single-device loss curve is the golden file
//! `tests/golden/losses-reference-tiny.json` (`UPDATE_EXPECT=1` rewrites it).

use std::time::Duration;

mod common;

use common::parity::{
    assert_grads_match, assert_grads_within, assert_losses_match, at, batches, bits, lower, model,
    model_of, opts, run_grouped, single_device_losses, LR, MODEL, SEED, STEPS, TWO_ENCODERS,
};
use hetpar::runtime::checkpoint::WeightSource;
use hetpar::runtime::exec::{run, RunOptions};
use hetpar::runtime::reference::{loss_and_grads, Params};
use serde_json::{json, Value};

/// The test matrix: (name, schedule, modules).
fn matrix() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "tp2 dp2 for every module",
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 2, "dp": 2, "micro_batch_size": 2}), 0, 4),
            }),
        ),
        (
            "colocated fan-in: encoder dp4 into llm tp2 cp2 with sequence parallelism",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"dp": 4}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 0, 4),
            }),
        ),
        (
            "colocated fan-out: encoder tp4 sp into llm dp4",
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 4, "dp": 1, "sequence_parallel": true}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"dp": 4, "micro_batch_size": 1}), 0, 4),
            }),
        ),
        (
            "non-colocated: encoder tp2 sp dp2 on 0-3, llm tp2 pp2 on 4-7 with recompute",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 2,
                                 "recompute": {"policy": "full"}}), 4, 4),
            }),
        ),
        (
            "non-colocated: encoder cp2 dp2 on 0-3, llm cp2 pp2 interleaved on 4-7",
            "pipeline_interleaved",
            json!({
                "vision": at(json!({"cp": 2, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"cp": 2, "pp": 2, "vpp": 2, "dp": 1, "micro_batch_size": 4}),
                          4, 4),
            }),
        ),
    ]
}

#[test]
fn every_plan_of_the_matrix_gives_the_single_device_gradients() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let out = run(&program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &out, &want);
    }
}

#[test]
fn every_plan_of_the_matrix_follows_the_golden_single_device_losses_for_50_steps() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let reference = single_device_losses(&cfg, &init, &batches);
    let golden = expect_test::expect_file!["golden/losses-reference-tiny.json"];
    golden.assert_eq(&format!(
        "{}\n",
        serde_json::to_string_pretty(&reference).unwrap()
    ));
    assert!(
        reference[STEPS - 1] < reference[0] - 0.05,
        "training lowers the loss: {reference:?}"
    );
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_losses_match(name, &out, &reference);
    }
}

#[test]
fn runs_are_bitwise_reproducible() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (name, schedule, modules) = matrix().swap_remove(1);
    let program = lower(&g, schedule, modules);
    let a = run(&program, &cfg, &init, &batches, &opts(3)).unwrap();
    let b = run(&program, &cfg, &init, &batches, &opts(3)).unwrap();
    assert_eq!(bits(&a), bits(&b), "{name}: two runs differ");
}

#[test]
fn a_missing_message_or_a_missing_rank_is_an_error_not_a_hang() {
    use hetpar::ir::program::Instruction;
    use hetpar::runtime::RuntimeError;
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, schedule, modules) = matrix().swap_remove(3);
    let program = lower(&g, schedule, modules);
    let short = RunOptions {
        steps: 1,
        lr: LR,
        timeout: Duration::from_millis(300),
        backend: Default::default(),
        save: None,
    };
    // A pipeline send that never happens: its receiver times out.
    let mut lost = program.clone();
    let r = lost
        .ranks
        .iter_mut()
        .find(|r| {
            r.instructions
                .iter()
                .any(|i| matches!(i, Instruction::SendActivation { .. }))
        })
        .expect("a pipelined plan sends activations");
    let k = r
        .instructions
        .iter()
        .position(|i| matches!(i, Instruction::SendActivation { .. }))
        .unwrap();
    r.instructions.remove(k);
    let start = std::time::Instant::now();
    let e = run(&lost, &cfg, &init, &batches, &short).expect_err("a lost message fails the run");
    assert!(
        matches!(
            e,
            RuntimeError::Timeout { .. } | RuntimeError::InvalidProgram(_)
        ),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "it took {:?}",
        start.elapsed()
    );
    // A rank that never starts: its peers see it gone.
    let mut missing = program.clone();
    missing.ranks.remove(0);
    let e = run(&missing, &cfg, &init, &batches, &short).expect_err("a missing rank fails the run");
    assert!(
        matches!(
            e,
            RuntimeError::PeerGone { peer: 0, .. }
                | RuntimeError::Timeout { peer: 0, .. }
                | RuntimeError::InvalidProgram(_)
        ),
        "{e}"
    );
}

/// `modules` with every layout's `distributed_optimizer` set to `on`.
fn distributed(mut modules: Value, on: bool) -> Value {
    for m in modules.as_object_mut().unwrap().values_mut() {
        m["layout"]["distributed_optimizer"] = json!(on);
    }
    modules
}

/// Plans with a distributed optimizer on every module (name, schedule, modules): dp x cp
/// groups of 2 and 4, sequence parallelism (whose replicated tensors are summed over the
/// stage and sharded over dp x cp), pipeline stages.
fn distopt_matrix() -> Vec<(&'static str, &'static str, Value)> {
    let mut m = matrix();
    let pipelined = (
        "distributed optimizer: encoder tp2 sp dp2 on 0-3, llm pp2 dp2 on 4-7",
        "pipeline_1f1b",
        json!({
            "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
            "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
            "llm": at(json!({"pp": 2, "dp": 2, "micro_batch_size": 2}), 4, 4),
        }),
    );
    let names = [
        "distributed optimizer: tp2 dp2 for every module",
        "distributed optimizer: encoder dp4 into llm tp2 cp2 sp",
        "distributed optimizer: encoder tp4 sp into llm dp4",
    ];
    let mut out: Vec<_> = names
        .into_iter()
        .zip(m.drain(..3))
        .map(|(name, (_, schedule, modules))| (name, schedule, modules))
        .chain([pipelined])
        .collect();
    for (_, _, modules) in &mut out {
        *modules = distributed(modules.take(), true);
    }
    out
}

#[test]
fn distributed_optimizer_plans_give_the_single_device_gradients_and_50_step_losses() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    let reference = single_device_losses(&cfg, &init, &batches);
    for (name, schedule, modules) in distopt_matrix() {
        let program = lower(&g, schedule, modules);
        let one = run(&program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &one, &want);
        let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_losses_match(name, &out, &reference);
    }
}

/// A distributed optimizer's shards are summed in the ring all-reduce's order, and Adam is
/// elementwise: a run with it has the plain run's bits, on the host transport and with
/// device-resident storage between threads. Through group collectives (NCCL's contract, whose
/// reduce-scatter adds in its own order) it is within the parity tolerance of the plain run.
#[test]
fn a_distributed_optimizer_gives_the_plain_runs_numbers_bit_for_bit() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    for (name, schedule, modules) in distopt_matrix() {
        let plain = lower(&g, schedule, distributed(modules.clone(), false));
        let sharded = lower(&g, schedule, modules);
        assert!(sharded.modules.iter().all(|m| m.distributed_optimizer));
        let want = run(&plain, &cfg, &init, &batches, &opts(3)).unwrap();
        let got = run(&sharded, &cfg, &init, &batches, &opts(3)).unwrap();
        assert_eq!(bits(&want), bits(&got), "{name}: host transport");
        let resident =
            hetpar::runtime::exec::run_with(&sharded, &cfg, &init, &batches, &opts(3), &|st| {
                st.set_math(Box::new(common::parity::resident::Resident));
                st.interpret()
            })
            .unwrap();
        assert_eq!(bits(&want), bits(&resident), "{name}: device-resident");
        let grouped = run_grouped(&sharded, &cfg, &init, &batches, 3).unwrap();
        assert_grads_within(name, &grouped, &want.grads, 1e-5);
        for (a, b) in grouped.losses.iter().zip(&want.losses) {
            assert!(
                (a - b).abs() <= 1e-5,
                "{name}: grouped loss {a} against {b}"
            );
        }
    }
}

/// Plans of the two-encoder model: (name, schedule, modules).
fn two_encoder_matrix() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "two encoders colocated: vision dp4, audio tp2 dp2, llm tp2 cp2 sp",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"dp": 4}), 0, 4),
                "audio": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "audio_projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 0, 4),
            }),
        ),
        (
            "two encoders on 0-3 (vision tp2 sp dp2, audio dp4), llm tp2 pp2 on 4-7",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "audio": at(json!({"dp": 4}), 0, 4),
                "audio_projector": at(json!({"dp": 4}), 0, 4),
                "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 4}), 4, 4),
            }),
        ),
    ]
}

#[test]
fn two_encoders_give_the_single_device_gradients_and_50_step_losses() {
    let (g, cfg) = model_of(TWO_ENCODERS);
    assert!(cfg.audio.is_some());
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    let reference = single_device_losses(&cfg, &init, &batches);
    let golden = expect_test::expect_file!["golden/losses-reference-tiny-two-encoders.json"];
    golden.assert_eq(&format!(
        "{}\n",
        serde_json::to_string_pretty(&reference).unwrap()
    ));
    for (name, schedule, modules) in two_encoder_matrix() {
        let program = lower(&g, schedule, modules);
        let one = run(&program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &one, &want);
        let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_losses_match(name, &out, &reference);
    }
}

#[test]
fn device_resident_storage_gives_the_cpu_backends_numbers_bit_for_bit() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let plain = run(&program, &cfg, &init, &batches, &opts(3)).unwrap();
        let resident =
            hetpar::runtime::exec::run_with(&program, &cfg, &init, &batches, &opts(3), &|st| {
                st.set_math(Box::new(common::parity::resident::Resident));
                st.interpret()
            })
            .unwrap();
        assert_eq!(bits(&plain), bits(&resident), "{name}");
    }
}

#[test]
fn group_collectives_with_equal_parts_give_the_cpu_backends_numbers_bit_for_bit() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let plain = run(&program, &cfg, &init, &batches, &opts(2)).unwrap();
        let grouped = run_grouped(&program, &cfg, &init, &batches, 2).unwrap();
        assert_eq!(bits(&plain), bits(&grouped), "{name}");
    }
}

#[test]
fn every_group_a_rank_sums_over_has_a_communicator_created_once_in_one_order() {
    use hetpar::runtime::exec::rank::{program_groups, ModuleCtx};
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        let groups = program_groups(&program);
        assert_eq!(groups, program_groups(&program), "{name}: one order");
        for (i, a) in groups.iter().enumerate() {
            assert!(a.len() > 1 && !groups[i + 1..].contains(a), "{name}: {a:?}");
        }
        for rp in &program.ranks {
            for m in 0..program.modules.len() {
                let Some(c) = ModuleCtx::new(&program, m, &cfg, &init.names(), rp.rank) else {
                    continue;
                };
                for grp in [&c.tp_group, &c.cp_group, &c.dp_cp_group, &c.stage_group] {
                    assert!(
                        grp.len() <= 1 || groups.contains(grp),
                        "{name}: rank {} sums over {grp:?}, which has no communicator",
                        rp.rank
                    );
                }
            }
        }
    }
}

#[test]
fn messages_between_each_pair_come_in_one_order_and_a_swap_is_named() {
    use hetpar::ir::program::Instruction;
    use hetpar::runtime::exec::order::check_pair_order;
    let (g, _) = model();
    let mut swapped = None;
    for (name, schedule, modules) in matrix() {
        let program = lower(&g, schedule, modules);
        assert_eq!(check_pair_order(&program), Ok(()), "{name}");
        // Swap a rank's first two receives from one peer: NCCL would pair them wrongly.
        let mut p = program.clone();
        for rp in &mut p.ranks {
            let from = |i: &Instruction| match i {
                Instruction::RecvActivation { from, .. }
                | Instruction::RecvGradient { from, .. } => Some(*from),
                _ => None,
            };
            let recvs: Vec<usize> = (0..rp.instructions.len())
                .filter(|&k| from(&rp.instructions[k]).is_some())
                .collect();
            let pair = recvs.iter().enumerate().find_map(|(x, &a)| {
                recvs[x + 1..]
                    .iter()
                    .find(|&&b| from(&rp.instructions[b]) == from(&rp.instructions[a]))
                    .map(|&b| (a, b))
            });
            if let Some((a, b)) = pair {
                rp.instructions.swap(a, b);
                swapped = Some(p.clone());
                break;
            }
        }
    }
    let p = swapped.expect("a pipelined plan receives twice from one peer");
    let e = check_pair_order(&p).expect_err("a swap breaks the order");
    assert!(e.contains("first differ") && e.contains("by order"), "{e}");
}

/// Every plan of both matrices on the emulated GPU (the CUDA backend's `GpuMath`, operations
/// and kernels, the kernels compiled for the CPU): the single device's gradients within 1e-4
/// after one step, the CUDA backend's f32 tolerance. Skipped without a C++ compiler.
#[test]
fn every_plan_of_both_matrices_gives_the_single_device_gradients_on_the_emulated_gpu() {
    use hetpar::runtime::cuda::Precision;
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let mut one = matrix();
    one.extend(distopt_matrix());
    for (model, plans) in [(MODEL, one), (TWO_ENCODERS, two_encoder_matrix())] {
        let (g, cfg) = model_of(model);
        let init = Params::init(&cfg, SEED).unwrap();
        let batches = batches(&g, &cfg);
        let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
        for (name, schedule, modules) in plans {
            let program = lower(&g, schedule, modules);
            let out = common::run_emulated(
                &dev,
                Precision::F32,
                &program,
                &cfg,
                &init,
                &batches[..1],
                &opts(1),
            )
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_grads_within(name, &out, &want, 1e-4);
        }
    }
}
