//! Parity where the e-graph folds the projector's reduction into the boundary transfer
//! (`Reduce` operations) and, under sequence parallelism, its gather into the backward one:
//! each plan's program must carry the fold (so an "always direct" e-graph fails here), and
//! still give the single-device gradients after one step and losses over 50 steps, on the
//! CPU backend and on the emulated GPU.

mod common;

use common::parity::{
    assert_grads_match, assert_grads_within, assert_losses_match, at, batches, lower, model, opts,
    single_device_losses, SEED, STEPS,
};
use hetpar::runtime::exec::run;
use hetpar::runtime::reference::{loss_and_grads, Params};
use serde_json::{json, Value};

/// (name, schedule, modules, folds the backward gather too).
fn folded() -> Vec<(&'static str, &'static str, Value, bool)> {
    vec![
        (
            "colocated: projector tp2 sp dp2 into llm tp2 sp dp2",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
                "llm": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true,
                                 "micro_batch_size": 2}), 0, 4),
            }),
            true,
        ),
        (
            "colocated: projector tp4 sp into llm tp2 cp2 sp",
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 4, "dp": 1, "sequence_parallel": true}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 0, 4),
            }),
            true,
        ),
        (
            "colocated: projector tp2 dp2 (no sp) into llm dp4",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"dp": 4, "micro_batch_size": 1}), 0, 4),
            }),
            false,
        ),
        (
            "non-colocated: projector tp2 sp dp2 on 0-3, llm tp2 pp2 on 4-7",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
                "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 4, 4),
            }),
            true,
        ),
    ]
}

fn check_folds(name: &str, program: &hetpar::ir::program::Program, backward: bool) {
    let b = program
        .boundaries
        .iter()
        .find(|b| b.from == "projector")
        .expect("a projector boundary");
    assert!(b.fold_forward, "{name}: the reduction is not folded");
    assert_eq!(
        b.fold_backward, backward,
        "{name}: the backward gather's fold"
    );
    assert!(
        b.forward
            .iter()
            .flatten()
            .all(|t| matches!(t, hetpar::ir::program::Transfer::Reduce { .. })),
        "{name}: a folded forward is made of reductions"
    );
}

#[test]
fn folded_boundaries_give_the_single_device_gradients_and_50_step_losses() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    let reference = single_device_losses(&cfg, &init, &batches);
    for (name, schedule, modules, backward) in folded() {
        let program = lower(&g, schedule, modules);
        check_folds(name, &program, backward);
        let one = run(&program, &cfg, &init, &batches[..1], &opts(1))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &one, &want);
        let out = run(&program, &cfg, &init, &batches, &opts(STEPS))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_losses_match(name, &out, &reference);
    }
}

/// The exchange path (one fused call per rank, as NCCL runs it) sums the partials in the same
/// order as the CPU transport: bit-identical numbers.
#[test]
fn folded_boundaries_as_one_exchange_give_the_cpu_backends_numbers_bit_for_bit() {
    use common::parity::{bits, run_grouped};
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    for (name, schedule, modules, _) in folded() {
        let program = lower(&g, schedule, modules);
        let plain = run(&program, &cfg, &init, &batches, &opts(2)).unwrap();
        let grouped = run_grouped(&program, &cfg, &init, &batches, 2)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bits(&plain), bits(&grouped), "{name}");
    }
}

/// The CUDA backend's arithmetic on the emulated GPU: the single device's gradients within
/// 1e-4 after one step. Skipped without a C++ compiler.
#[test]
fn folded_boundaries_give_the_single_device_gradients_on_the_emulated_gpu() {
    use hetpar::runtime::cuda::Precision;
    let Some(dev) = common::emulated_gpu() else {
        return;
    };
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let (_, want) = loss_and_grads(&cfg, &init, &batches[0]).unwrap();
    for (name, schedule, modules, _) in folded() {
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
