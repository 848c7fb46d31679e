//! The schedule's structure: every lane finds its place in its kind's order the same way from
//! its key and from any of its ranks, task ids are a bijection onto the module tasks, and the
//! kinds' warm-up arithmetic (1F1B's, interleaved's lead) is what their files say.

#[allow(dead_code)] // the simulation helpers serve the other test files
mod common;

use std::collections::BTreeSet;

use common::{h100, images, plan, vlm};
use hetpar_cost::schedule::interleaved::first_chunk_lead;
use hetpar_cost::schedule::lanes::{Lanes, ReplicaStage, TaskIndex};
use hetpar_cost::schedule::one_f_one_b::warmup;
use hetpar_cost::schedule::steps::Order;
use hetpar_cost::schedule::units::units;
use hetpar_ir::{ModelGraph, Plan};
use serde_json::json;

/// One plan of every schedule kind, encoders beside (colocated) or upstream of (pipeline) the
/// language model, dp 2 encoders, a pipelined and an interleaved language model.
fn plans() -> Vec<(&'static str, ModelGraph, Plan)> {
    let c = h100(2);
    let m = vlm(16, 2048, images(2, 512));
    let enc = json!({"dp": 2});
    let lm = |pp: u32, vpp: u32| json!({"pp": pp, "vpp": vpp, "micro_batch_size": 1});
    let cases = [
        ("colocated_sequential", None, (0, 2), lm(1, 1), (0, 4)),
        ("colocated_three_phase", None, (0, 2), lm(2, 1), (0, 4)),
        ("colocated_chunked", Some(2), (0, 2), lm(4, 1), (0, 4)),
        ("pipeline_1f1b", Some(2), (0, 2), lm(2, 1), (2, 4)),
        ("pipeline_interleaved", None, (0, 2), lm(2, 2), (2, 4)),
    ];
    cases
        .into_iter()
        .map(|(kind, k, e, l, o)| (kind, m.clone(), plan(&m, &c, kind, k, enc.clone(), e, l, o)))
        .collect()
}

#[test]
fn a_lanes_position_from_its_key_is_the_position_of_each_of_its_ranks() {
    for (kind, m, p) in plans() {
        let order = Order::new(&m, &p).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let lanes = Lanes::new(&p);
        let mut positions = BTreeSet::new();
        for (lane, key) in lanes.lanes.iter().zip(&lanes.keys) {
            let pos = order.position(key);
            assert!(pos.is_some(), "{kind}: lane {key:?} has no position");
            positions.insert(pos);
            for &r in &lane.ranks {
                assert_eq!(
                    order.position_of_rank(&p, r),
                    pos,
                    "{kind}: rank {r} of lane {key:?}"
                );
            }
        }
        // Different stages are different positions: the order is not one lane's for all.
        let stages = p.module(m.language_model()).layout.pp as usize;
        assert!(positions.len() >= stages, "{kind}: {positions:?}");
    }
}

#[test]
fn task_ids_are_a_bijection_onto_every_module_task_and_none_outside_them() {
    for (kind, m, p) in plans() {
        let us = units(&m, &p);
        let index = TaskIndex::new(&p, &us);
        let mut ids = Vec::new();
        for (i, mp) in p.modules().iter().enumerate() {
            let l = &mp.layout;
            for d in 0..l.dp {
                for s in 0..l.pp {
                    let at = ReplicaStage::new(i, d, s);
                    for c in 0..l.vpp {
                        for j in 0..us[i].count {
                            for fwd in [true, false] {
                                ids.push(index.get(at.task(c, j, fwd)).expect("in range"));
                            }
                        }
                    }
                    assert_eq!(index.get(at.task(l.vpp, 0, true)), None, "{kind}: chunk");
                    assert_eq!(index.get(at.task(0, us[i].count, true)), None, "{kind}");
                }
                let past = ReplicaStage::new(i, d, l.pp);
                assert_eq!(index.get(past.task(0, 0, true)), None, "{kind}: stage");
            }
            let past = ReplicaStage::new(i, l.dp, 0);
            assert_eq!(index.get(past.task(0, 0, true)), None, "{kind}: replica");
        }
        ids.sort_unstable();
        let n = ids.len() as u32;
        assert_eq!(
            ids,
            (0..n).collect::<Vec<_>>(),
            "{kind}: ids 0..{n}, each once"
        );
    }
}

#[test]
fn the_interleaved_lead_counts_micro_batches_forwarded_into_chunk_0_before_its_first_backward() {
    // p 4, v 2, m 16: stage 0's 10 warm-up forwards put micro-batches 0-3 and 4-5 into chunk
    // 0 (0-3 into chunk 1 between); the steady state forwards 6 and 7 into chunk 0, then 6
    // into chunk 1, before the backward of micro-batch 0 in chunk 0 (the fifth backward).
    assert_eq!(first_chunk_lead(4, 2, 16), 8);
    // p 2, v 2, m 8: 0-1 into chunk 0, 0-1 into chunk 1, then 2 and 3 into chunk 0 first.
    assert_eq!(first_chunk_lead(2, 2, 8), 4);
}

#[test]
fn a_1f1b_stage_warms_up_d_minus_x_minus_1_or_an_interleaved_groups_lead_at_most_m() {
    assert_eq!(warmup(4, 0, 0, 16), 3);
    assert_eq!(warmup(4, 3, 0, 16), 0);
    // An interleaved group downstream needs 8 micro-batches before its first backward.
    assert_eq!(warmup(4, 1, 8, 16), 7);
    assert_eq!(warmup(8, 0, 0, 4), 4);
}
