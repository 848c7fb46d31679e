//! A stage's gradient sums travel as buckets on the host transport: a data-parallel step of
//! the reference model (110 tensors) sends a few messages per rank, not a few per tensor,
//! with the plain optimizer and with the distributed one; and the buckets change no bit (the
//! parity tests' bitwise checks, and the distributed optimizer's equality with the plain one,
//! hold through them).

mod common;

use common::parity::{at, batches, lower, model, opts, SEED};
use hetpar::runtime::reference::{param_specs, Params};
use serde_json::json;

/// Messages each rank sends in one step: the difference of a 3-step and a 1-step run, halved.
fn per_step(distributed: bool) -> Vec<u64> {
    let (g, cfg) = model();
    let dp = |mbs: bool| {
        let mut l = json!({"dp": 2, "distributed_optimizer": distributed});
        if mbs {
            l["micro_batch_size"] = json!(4);
        }
        at(l, 0, 2)
    };
    let program = lower(
        &g,
        "colocated_sequential",
        json!({"vision": dp(false), "projector": dp(false), "llm": dp(true)}),
    );
    let init = Params::init(&cfg, SEED).unwrap();
    let b = batches(&g, &cfg);
    let sent = |steps: usize| {
        hetpar::runtime::exec::run(&program, &cfg, &init, &b, &opts(steps))
            .unwrap()
            .messages
    };
    let (one, three) = (sent(1), sent(3));
    one.iter()
        .zip(&three)
        .map(|((r, a), (s, b))| {
            assert_eq!(r, s);
            (b - a) / 2
        })
        .collect()
}

#[test]
fn a_data_parallel_step_sends_a_few_messages_per_rank_not_a_few_per_tensor() {
    let (_, cfg) = model();
    let tensors = param_specs(&cfg).len() as u64;
    assert!(tensors >= 100, "the reference model has {tensors} tensors");
    for distributed in [false, true] {
        let sent = per_step(distributed);
        assert_eq!(sent.len(), 2);
        for (rank, n) in sent.iter().enumerate() {
            // One bucket per module and collective: 2 (n - 1) = 2 messages each.
            assert!(
                *n <= 16,
                "distributed optimizer {distributed}: rank {rank} sent {n} messages a step for \
                 {tensors} tensors"
            );
        }
    }
}
