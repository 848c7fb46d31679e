//! Placeholders where the batch puts them: a batch whose image (and audio) placeholders sit
//! elsewhere than the model's data layout puts them, under language-model plans whose
//! sequence-parallel parts and context-parallel blocks depend on positions, gives the
//! single-device gradients (1e-5 relative), as the program's boundary delivers rows by the
//! model's layout and the replica's group moves them where the batch needs them
//! (`runtime/src/exec/rank/reroute.rs`).

mod common;

use common::parity::TWO_ENCODERS;
use common::parity::{assert_grads_match, at, batches, lower, model_of, opts, MODEL, SEED};
use hetpar::runtime::exec::run;
use hetpar::runtime::reference::batch::IGNORE;
use hetpar::runtime::reference::{loss_and_grads, Batch, Params};
use serde_json::{json, Value};

/// `b` with every sample's tokens turned right by `3 + 5·sample` positions and its targets
/// made again (the next token, -100 before a placeholder or at the end).
fn moved(b: &Batch, vocab: usize) -> Batch {
    let s = b.seq_len;
    let mut out = b.clone();
    for sample in 0..b.batch_size {
        let row = &mut out.tokens[sample * s..(sample + 1) * s];
        row.rotate_right((3 + 5 * sample) % s);
        for p in 0..s {
            let next = if p + 1 < s { row[p + 1] } else { -1 };
            out.targets[sample * s + p] = if (0..vocab as i64).contains(&next) {
                next
            } else {
                IGNORE
            };
        }
    }
    out
}

fn plans() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "llm tp2 cp2 with sequence parallelism, encoder dp4",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4}), 0, 4),
                "projector": at(json!({"dp": 4}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4}), 0, 4),
            }),
        ),
        (
            "non-colocated: llm tp4 sp dp1 with two micro-batches on 4-7",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2}), 0, 4),
                "llm": at(json!({"tp": 4, "sequence_parallel": true, "micro_batch_size": 4}), 4, 4),
            }),
        ),
    ]
}

#[test]
fn placeholders_the_batch_moves_give_the_single_device_gradients() {
    let (g, cfg) = model_of(MODEL);
    let init = Params::init(&cfg, SEED).unwrap();
    let original = batches(&g, &cfg).swap_remove(0);
    let batch = moved(&original, cfg.llm.vocab);
    assert_ne!(batch.tokens, original.tokens, "the placeholders moved");
    let (_, want) = loss_and_grads(&cfg, &init, &batch).unwrap();
    for (name, schedule, modules) in plans() {
        let program = lower(&g, schedule, modules);
        let got = run(
            &program,
            &cfg,
            &init,
            std::slice::from_ref(&batch),
            &opts(1),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_grads_match(name, &got, &want);
    }
}

#[test]
fn moved_image_and_audio_placeholders_give_the_single_device_gradients() {
    let (g, cfg) = model_of(TWO_ENCODERS);
    let init = Params::init(&cfg, SEED).unwrap();
    let batch = moved(&batches(&g, &cfg).swap_remove(0), cfg.llm.vocab);
    let (_, want) = loss_and_grads(&cfg, &init, &batch).unwrap();
    let program = lower(
        &g,
        "colocated_sequential",
        json!({
            "vision": at(json!({"dp": 4}), 0, 4),
            "projector": at(json!({"dp": 4}), 0, 4),
            "audio": at(json!({"dp": 4}), 0, 4),
            "audio_projector": at(json!({"dp": 4}), 0, 4),
            "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                             "micro_batch_size": 4}), 0, 4),
        }),
    );
    let got = run(
        &program,
        &cfg,
        &init,
        std::slice::from_ref(&batch),
        &opts(1),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_grads_match("two encoders, llm tp2 cp2 sp", &got, &want);
}
