//! Boundaries and lowering in encoder passes: an item's rows are held by the replica its
//! pass dealt it to, a boundary's unit is its destination's (pass into a projector,
//! micro-batch into the language model), and every rank's boundary calls sit between the
//! forward that makes the rows and the one that takes them, once each.

use std::collections::BTreeMap;

use hetpar_ir::program::{Instruction, Program};
use hetpar_ir::shard::item_replica;
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph, Plan};
use hetpar_planner::boundary::ownership::unit_samples;
use hetpar_planner::boundary::{synthesize_all, Limits};
use hetpar_planner::lower::lower;
use serde_json::{json, Value};

fn read(path: &str) -> String {
    let p = format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn setup(schedule: Value, modules: Value) -> (ModelGraph, Cluster, Plan) {
    let g = load_model(&read("models/reference-tiny.json")).unwrap().0;
    let c = load_cluster(&read("clusters/h100-8.json")).unwrap();
    let plan =
        json!({"kind": "plan", "format_version": 1, "schedule": schedule, "modules": modules});
    let p = load_plan(&plan.to_string(), &g, &c)
        .unwrap_or_else(|d| panic!("{d}"))
        .0;
    (g, c, p)
}

fn at(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

/// Vision and its projector dp 3 on 0-2, the language model on 3-6 in 4
/// micro-batches, `k` micro-batches per encoder pass.
fn uneven(k: u32) -> (ModelGraph, Cluster, Plan) {
    setup(
        json!({"kind": "pipeline_1f1b", "encoder_chunk": k}),
        json!({
            "vision": at(json!({"dp": 3}), 0, 3),
            "projector": at(json!({"dp": 3}), 0, 3),
            "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "micro_batch_size": 2}), 3, 4),
        }),
    )
}

#[test]
fn an_items_rows_are_held_by_the_replica_its_pass_dealt_it_to() {
    for k in [1, 2, 4] {
        let (g, c, p) = uneven(k);
        let vision = g.modules().iter().find(|m| m.name == "vision").unwrap().id;
        let all = synthesize_all(&g, &c, &p, Limits::default(), None);
        for (b, bd) in all.iter().zip(g.boundaries()) {
            let from = bd.from;
            let mut rows = 0;
            for (u, segs) in b.forward.segments.iter().enumerate() {
                for s in segs {
                    // The item of the segment's first row (rows = patches, items in order).
                    let sizes = g.items(vision).unwrap().items_of(s.sample as usize);
                    let (mut item, mut end) = (0, u64::from(sizes[0]));
                    while s.rows.start >= end {
                        item += 1;
                        end += u64::from(sizes[item]);
                    }
                    assert!(s.rows.end <= end, "{}: a segment spans two items", b.name);
                    let d = item_replica(&g, from, p.passes(), 3, s.sample, item as u32)
                        .expect("a dealt item");
                    for &h in s.holders.iter() {
                        let at = p.module(from).grid.coord_of(h).unwrap();
                        assert_eq!(
                            at.dp, d,
                            "{} unit {u}: sample {} item {item}",
                            b.name, s.sample
                        );
                    }
                    rows += s.rows.end - s.rows.start;
                }
            }
            assert_eq!(
                rows,
                g.boundary_rows_per_batch(g.boundaries()[0].id),
                "{}",
                b.name
            );
        }
    }
}

#[test]
fn a_boundary_goes_per_pass_into_a_projector_and_per_micro_batch_into_the_llm() {
    let (g, c, p) = uneven(2);
    let all = synthesize_all(&g, &c, &p, Limits::default(), None);
    for (b, bd) in all.iter().zip(g.boundaries()) {
        let units = if b.to == "projector" { 2 } else { 4 };
        assert_eq!(b.forward.plans.len(), units, "{}", b.name);
        assert_eq!(b.backward.segments.len(), units, "{}", b.name);
        for (u, segs) in b.forward.segments.iter().enumerate() {
            let samples = unit_samples(&g, &p, bd.id, u as u32);
            assert_eq!(samples.len(), if units == 2 { 4 } else { 2 });
            assert!(
                segs.iter().all(|s| samples.contains(&s.sample)),
                "{} unit {u}",
                b.name
            );
        }
    }
}

/// A pass of a first pipeline stage (module `name`) or a boundary call (`call`, boundary
/// `name`), forward or backward, for one unit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    name: String,
    unit: u32,
    forward: bool,
    call: bool,
}

impl Event {
    fn pass(module: &str, unit: u32, forward: bool) -> Self {
        Event {
            name: module.into(),
            unit,
            forward,
            call: false,
        }
    }

    fn call(boundary: &str, unit: u32, forward: bool) -> Self {
        Event {
            call: true,
            ..Event::pass(boundary, unit, forward)
        }
    }
}

/// Per rank, the position of each boundary call and of each pass of a first pipeline stage
/// (the projector's only one, the language model's first).
fn positions(r: &[Instruction]) -> BTreeMap<Event, Vec<usize>> {
    let mut out: BTreeMap<Event, Vec<usize>> = BTreeMap::new();
    for (k, i) in r.iter().enumerate() {
        let key = match i {
            Instruction::Forward {
                module,
                micro_batch,
                stage: 0,
                chunk: 0,
            } => Event::pass(module, *micro_batch, true),
            Instruction::Backward {
                module,
                micro_batch,
                stage: 0,
                chunk: 0,
            } => Event::pass(module, *micro_batch, false),
            Instruction::BoundaryForward {
                boundary,
                micro_batch,
            } => Event::call(boundary, *micro_batch, true),
            Instruction::BoundaryBackward {
                boundary,
                micro_batch,
            } => Event::call(boundary, *micro_batch, false),
            _ => continue,
        };
        out.entry(key).or_default().push(k);
    }
    out
}

/// On every rank, each boundary call of `projector->llm` for micro-batch j is made once, after
/// the projector's forward of pass j / k and before the language model's forward of j (where
/// the rank holds them), and backward the other way round; k is the pass size.
fn check_projector_calls(p: &Program, k: u32) {
    for r in &p.ranks {
        let at = positions(&r.instructions);
        let one = |e: Event| at.get(&e).map(|v| v[0]);
        for j in 0..p.micro_batches {
            for fwd in [true, false] {
                let call = at.get(&Event::call("projector->llm", j, fwd));
                let proj = one(Event::pass("projector", j / k, fwd));
                let llm = one(Event::pass("llm", j, fwd));
                if proj.is_none() && llm.is_none() {
                    continue;
                }
                let call = call.unwrap_or_else(|| panic!("rank {}: no call for {j}", r.rank));
                assert_eq!(
                    call.len(),
                    1,
                    "rank {}: micro-batch {j} called twice",
                    r.rank
                );
                let (first, then) = if fwd { (proj, llm) } else { (llm, proj) };
                assert!(
                    first.is_none_or(|x| x < call[0]),
                    "rank {} micro-batch {j}",
                    r.rank
                );
                assert!(
                    then.is_none_or(|x| call[0] < x),
                    "rank {} micro-batch {j}",
                    r.rank
                );
            }
        }
    }
}

#[test]
fn boundary_calls_sit_between_the_pass_that_makes_the_rows_and_the_one_that_takes_them() {
    let (g, c, p) = uneven(1);
    check_projector_calls(&lower(&g, &c, &p).unwrap(), 1);
    let (g, c, p) = setup(
        json!({"kind": "colocated_sequential"}),
        json!({
            "vision": at(json!({"dp": 4}), 0, 4),
            "projector": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true}), 0, 4),
            "llm": at(json!({"tp": 2, "dp": 2, "micro_batch_size": 1}), 0, 4),
        }),
    );
    check_projector_calls(&lower(&g, &c, &p).unwrap(), 1);
}

#[test]
fn a_pass_of_two_micro_batches_sends_both_after_its_forward_and_takes_both_gradients_before_its_backward(
) {
    let (g, c, p) = uneven(2);
    let program = lower(&g, &c, &p).unwrap();
    assert_eq!(program.encoder_chunk, 2);
    check_projector_calls(&program, 2);
}
