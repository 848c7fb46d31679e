//! Lowering a plan to a program: every pipeline send has its receive, every rank runs each
//! forward and backward it holds once per micro-batch, boundary calls reach both sides, and the
//! program of the tiny example is golden (`UPDATE_EXPECT=1` rewrites it).

use std::collections::BTreeMap;

use expect_test::expect_file;
use hetpar_ir::program::{Instruction, Program};
use hetpar_ir::{load_cluster, load_model, load_plan};
use hetpar_planner::lower::lower;

fn example(model: &str, cluster: &str, plan: &str) -> Program {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let read = |p: String| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
    let m = load_model(&read(format!("{root}/models/{model}.json")))
        .unwrap()
        .0;
    let c = load_cluster(&read(format!("{root}/clusters/{cluster}.json"))).unwrap();
    let p = load_plan(&read(format!("{root}/plans/{plan}.json")), &m, &c)
        .unwrap()
        .0;
    lower(&m, &c, &p).expect("lowers")
}

fn examples() -> Vec<Program> {
    vec![
        example("tiny-uneven", "h100-8", "tiny-uneven-colocated-8"),
        example("llama-3-8b", "h100-8", "llama-3-8b-homogeneous-8"),
        example("llava-1.5-7b", "h100-8", "llava-1.5-7b-colocated-8"),
    ]
}

/// One pipeline message: an activation (`activation`) or gradient of one chunk and
/// micro-batch of a module, from one rank to another.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PipeMsg {
    module: String,
    micro_batch: u32,
    chunk: u32,
    from: u32,
    to: u32,
    activation: bool,
}

/// The message instruction `i` of rank `me` sends (+1) or receives (-1).
fn pipe_msg(i: &Instruction, me: u32) -> Option<(PipeMsg, i64)> {
    let msg = |module: &String, micro_batch: u32, chunk: u32, from, to, activation| PipeMsg {
        module: module.clone(),
        micro_batch,
        chunk,
        from,
        to,
        activation,
    };
    Some(match i {
        Instruction::SendActivation {
            module,
            micro_batch,
            chunk,
            to,
        } => (msg(module, *micro_batch, *chunk, me, *to, true), 1),
        Instruction::RecvActivation {
            module,
            micro_batch,
            chunk,
            from,
        } => (msg(module, *micro_batch, *chunk, *from, me, true), -1),
        Instruction::SendGradient {
            module,
            micro_batch,
            chunk,
            to,
        } => (msg(module, *micro_batch, *chunk, me, *to, false), 1),
        Instruction::RecvGradient {
            module,
            micro_batch,
            chunk,
            from,
        } => (msg(module, *micro_batch, *chunk, *from, me, false), -1),
        _ => return None,
    })
}

#[test]
fn every_pipeline_send_has_its_matching_receive() {
    for p in examples() {
        let mut balance: BTreeMap<PipeMsg, i64> = BTreeMap::new();
        for r in &p.ranks {
            for (key, d) in r.instructions.iter().filter_map(|i| pipe_msg(i, r.rank)) {
                *balance.entry(key).or_default() += d;
            }
        }
        let unmatched: Vec<_> = balance.iter().filter(|(_, &v)| v != 0).collect();
        assert!(unmatched.is_empty(), "{}: {unmatched:?}", p.model);
    }
}

/// The forward (`forward`) or backward of one chunk of a module for one micro-batch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pass {
    module: String,
    stage: u32,
    chunk: u32,
    micro_batch: u32,
    forward: bool,
}

/// The pass instruction `i` runs, if any.
fn pass_of(i: &Instruction) -> Option<Pass> {
    let (module, stage, chunk, micro_batch, forward) = match i {
        Instruction::Forward {
            module,
            stage,
            chunk,
            micro_batch,
        } => (module, stage, chunk, micro_batch, true),
        Instruction::Backward {
            module,
            stage,
            chunk,
            micro_batch,
        } => (module, stage, chunk, micro_batch, false),
        _ => return None,
    };
    Some(Pass {
        module: module.clone(),
        stage: *stage,
        chunk: *chunk,
        micro_batch: *micro_batch,
        forward,
    })
}

#[test]
fn every_rank_runs_each_forward_and_backward_once_per_micro_batch() {
    for p in examples() {
        for r in &p.ranks {
            let mut count: BTreeMap<Pass, u32> = BTreeMap::new();
            for k in r.instructions.iter().filter_map(pass_of) {
                *count.entry(k).or_default() += 1;
            }
            assert!(
                count.values().all(|&n| n == 1),
                "{} rank {}: a pass runs twice",
                p.model,
                r.rank
            );
            let forwards = count.keys().filter(|k| k.forward).count();
            assert_eq!(forwards * 2, count.len(), "every forward has its backward");
            let per_mb = forwards as u32 / p.micro_batches;
            assert_eq!(
                per_mb * p.micro_batches,
                forwards as u32,
                "{} rank {}",
                p.model,
                r.rank
            );
            // Each backward comes after its forward.
            let pos = |k: &Pass| {
                r.instructions
                    .iter()
                    .position(|i| pass_of(i).as_ref() == Some(k))
            };
            for k in count.keys().filter(|k| k.forward) {
                let back = Pass {
                    forward: false,
                    ..k.clone()
                };
                assert!(
                    pos(k) < pos(&back),
                    "{} rank {}: backward before forward",
                    p.model,
                    r.rank
                );
            }
            assert_eq!(r.instructions.last(), Some(&Instruction::OptimizerStep));
        }
    }
}

#[test]
fn boundary_calls_reach_every_rank_of_both_modules() {
    let p = example("tiny-uneven", "h100-8", "tiny-uneven-colocated-8");
    for r in &p.ranks {
        let calls = r
            .instructions
            .iter()
            .filter(|i| matches!(i, Instruction::BoundaryForward { .. }))
            .count();
        // Colocated on all 8 ranks: each rank calls each of the 2 boundaries once per micro-batch.
        assert_eq!(calls as u32, 2 * p.micro_batches, "rank {}", r.rank);
    }
}

#[test]
fn the_tiny_example_program_is_stable() {
    let p = example("tiny-uneven", "h100-8", "tiny-uneven-colocated-8");
    let text = hetpar_ir::json::to_canonical_json(&p);
    let again = hetpar_ir::json::to_canonical_json(&example(
        "tiny-uneven",
        "h100-8",
        "tiny-uneven-colocated-8",
    ));
    assert_eq!(text, again, "lowering is deterministic");
    let back: Program = serde_json::from_str(&text).expect("the program parses back");
    assert_eq!(back, p);
    expect_file!["golden/program-tiny-uneven.json"].assert_eq(&text);
}
