//! The runtime's static memory per rank against the cost model's terms: for plans of
//! `examples/models/reference-tiny.json` with and without a distributed optimizer (dp 2 and 4,
//! tp 2, cp 2, sequence parallelism, pipeline stages), every rank's bytes of weights,
//! gradients and optimizer state after a step equal `hetpar_cost::memory`'s `static_memory`
//! of the module stages it holds, at the model's precision: fp32, which is what the CPU
//! runtime holds (f32 weights, f32 gradients, Adam's two f32 moments: 4 + 4 + 8 bytes a
//! parameter, the 8 sharded over dp × cp under a distributed optimizer). Every tensor of these
//! plans divides into its dp × cp shards evenly, so the shares are exact.

mod common;

use common::parity::{at, batches, model, opts, CLUSTER, SEED};
use hetpar::cost::memory::{stage_parameters, static_memory};
use hetpar::ir::model::{ModelGraph, Precision};
use hetpar::ir::{ModuleId, Plan};
use hetpar::runtime::exec::{run, StaticBytes};
use hetpar::runtime::reference::Params;
use serde_json::{json, Value};

/// The plan of `modules` under `schedule`, verified.
fn plan(g: &ModelGraph, schedule: &str, modules: &Value) -> Plan {
    let cluster = hetpar::ir::load_cluster(CLUSTER).expect("the cluster verifies");
    let p = json!({
        "kind": "plan", "format_version": 1, "model": g.name(), "cluster": "h100-8",
        "schedule": {"kind": schedule}, "modules": modules,
    });
    hetpar::ir::plan_from_value(&p, g, &cluster)
        .unwrap_or_else(|d| panic!("the plan verifies: {d:?}"))
        .0
}

/// The cost model's static terms of `rank`: the module stages it holds, summed, as
/// `rank_memory` sums them.
fn predicted(g: &ModelGraph, plan: &Plan, rank: u32) -> StaticBytes {
    let data = g.data();
    let (mut w, mut gr, mut o) = (0.0, 0.0, 0.0);
    for (m, mp) in plan.modules().iter().enumerate() {
        let Some(c) = mp.grid.coord_of(rank) else {
            continue;
        };
        let module = g.module(ModuleId::new(m));
        let params = stage_parameters(module, &mp.layout, c.pp);
        let s = static_memory(params, &mp.layout, data.precision, data.optimizer);
        (w, gr, o) = (w + s.weights, gr + s.gradients, o + s.optimizer);
    }
    let exact = |x: f64| {
        assert_eq!(x.fract(), 0.0, "rank {rank}: a fraction of a byte, {x}");
        x as usize
    };
    StaticBytes {
        weights: exact(w),
        grads: exact(gr),
        optimizer: exact(o),
    }
}

/// (name, schedule, modules): every module's layout with `d` as its distributed optimizer.
fn plans(d: bool) -> Vec<(&'static str, &'static str, Value)> {
    let o = "distributed_optimizer";
    vec![
        (
            "tp2 dp2 for every module",
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2, o: d}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2, o: d}), 0, 4),
                "llm": at(json!({"tp": 2, "dp": 2, "micro_batch_size": 2, o: d}), 0, 4),
            }),
        ),
        (
            "dp4 for every module",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4, o: d}), 0, 4),
                "projector": at(json!({"dp": 4, o: d}), 0, 4),
                "llm": at(json!({"dp": 4, "micro_batch_size": 1, o: d}), 0, 4),
            }),
        ),
        (
            "encoder dp4, llm tp2 cp2 with sequence parallelism",
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 4, o: d}), 0, 4),
                "projector": at(json!({"dp": 4, o: d}), 0, 4),
                "llm": at(json!({"tp": 2, "cp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 4, o: d}), 0, 4),
            }),
        ),
        (
            "encoder tp2 sp dp2 on 0-3, llm pp2 dp2 on 4-7",
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"tp": 2, "dp": 2, "sequence_parallel": true, o: d}), 0, 4),
                "projector": at(json!({"tp": 2, "dp": 2, o: d}), 0, 4),
                "llm": at(json!({"pp": 2, "dp": 2, "micro_batch_size": 2, o: d}), 4, 4),
            }),
        ),
    ]
}

#[test]
fn every_ranks_weights_gradients_and_optimizer_state_are_the_cost_models_terms() {
    let (g, cfg) = model();
    assert_eq!(
        g.data().precision,
        Precision::Fp32,
        "the CPU runtime holds f32 weights, gradients and moments"
    );
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let verbose = std::env::var("PARITY_VERBOSE").is_ok();
    for d in [false, true] {
        for (name, schedule, modules) in plans(d) {
            let p = plan(&g, schedule, &modules);
            let cluster = hetpar::ir::load_cluster(CLUSTER).unwrap();
            let program = hetpar::planner::lower::lower(&g, &cluster, &p).expect("it lowers");
            let out = run(&program, &cfg, &init, &batches[..1], &opts(1))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for (rank, got) in &out.static_bytes {
                let want = predicted(&g, &p, *rank);
                if verbose {
                    eprintln!("{name} (distributed optimizer {d}): rank {rank}: {got:?}");
                }
                assert_eq!(
                    *got, want,
                    "{name} (distributed optimizer {d}): rank {rank}: the runtime holds {got:?}, \
                     the cost model counts {want:?}"
                );
            }
        }
    }
}

#[test]
fn a_distributed_optimizer_shards_only_the_optimizer_state() {
    let (g, cfg) = model();
    let init = Params::init(&cfg, SEED).unwrap();
    let batches = batches(&g, &cfg);
    let cluster = hetpar::ir::load_cluster(CLUSTER).unwrap();
    let run_of = |d: bool| {
        let (_, schedule, modules) = plans(d).swap_remove(1);
        let p = plan(&g, schedule, &modules);
        let program = hetpar::planner::lower::lower(&g, &cluster, &p).expect("it lowers");
        run(&program, &cfg, &init, &batches[..1], &opts(1)).unwrap()
    };
    let (plain, sharded) = (run_of(false), run_of(true));
    for ((r, a), (_, b)) in plain.static_bytes.iter().zip(&sharded.static_bytes) {
        assert_eq!((a.weights, a.grads), (b.weights, b.grads), "rank {r}");
        assert_eq!(
            a.optimizer,
            4 * b.optimizer,
            "rank {r}: dp 4 shards Adam's moments"
        );
    }
}
