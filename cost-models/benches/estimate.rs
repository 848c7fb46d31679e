//! Cost-model speed: the planner calls `estimate_quick` on every candidate and `estimate`
//! (task graph + event simulation) on the short list.
//!
//! - `quick_estimate`: the vision-audio-7b example plan on 64 GPUs (target: under 1 ms);
//! - `simulate_1024_gpus_128_micro_batches`: `estimate` of Llama-3-8B at tp8 pp4 dp32 on 1024
//!   GPUs, global batch 4096, micro-batch size 1, so 128 micro-batches (target: under 50 ms);
//!   `simulate_only_...` times the event simulation of the same task graph alone;
//! - `simulate_1024_gpus_non_colocated`: `estimate` of Qwen2.5-VL-7B with the vision encoder and
//!   merger at tp4 dp32 on 128 GPUs upstream of the LLM at tp4 pp7 dp32 on 896 GPUs, 128
//!   micro-batches.
//!
//! Run with `cargo bench -p hetpar-cost --bench estimate`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hetpar_cost::estimate::estimate_with_tasks;
use hetpar_cost::simulate::simulate;
use hetpar_cost::{estimate, estimate_quick, Options};
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph, Plan};
use serde_json::{json, Value};

const VISION_AUDIO_MODEL: &str = include_str!("../../examples/models/vision-audio-7b.json");
const VISION_AUDIO_PLAN: &str =
    include_str!("../../examples/plans/vision-audio-7b-colocated-64.json");
const H100_64: &str = include_str!("../../examples/clusters/h100-64.json");
const H100_1024: &str = include_str!("../../examples/clusters/h100-1024.json");
const LLAMA_3_8B: &str = include_str!("../../examples/models/llama-3-8b.json");
const QWEN_VL: &str = include_str!("../../examples/models/qwen2.5-vl-7b.json");

fn load(model: &str, cluster: &str, plan: &str) -> (ModelGraph, Cluster, Plan) {
    let m = load_model(model).unwrap_or_else(|d| panic!("{d}")).0;
    let c = load_cluster(cluster).unwrap_or_else(|d| panic!("{d}"));
    let p = load_plan(plan, &m, &c).unwrap_or_else(|d| panic!("{d}")).0;
    (m, c, p)
}

/// A model file with its global batch replaced.
fn with_batch(model: &str, batch: u32) -> String {
    let mut v: Value = serde_json::from_str(model).expect("example model is JSON");
    v["data"]["global_batch"] = json!(batch);
    v.to_string()
}

fn entry(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

fn homogeneous_1024() -> (ModelGraph, Cluster, Plan) {
    let plan = json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"llm": entry(json!({"tp": 8, "pp": 4, "dp": 32, "sequence_parallel": true,
            "distributed_optimizer": true, "micro_batch_size": 1}), 0, 1024)}});
    let (m, c, p) = load(&with_batch(LLAMA_3_8B, 4096), H100_1024, &plan.to_string());
    assert_eq!(p.modules()[0].layout.micro_batches, 128);
    (m, c, p)
}

fn non_colocated_1024() -> (ModelGraph, Cluster, Plan) {
    let enc = json!({"tp": 4, "dp": 32, "micro_batch_size": 1});
    let plan = json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {
            "vision": entry(enc.clone(), 0, 128),
            "merger": entry(enc, 0, 128),
            "llm": entry(json!({"tp": 4, "pp": 7, "dp": 32, "sequence_parallel": true,
                "distributed_optimizer": true, "micro_batch_size": 1}), 128, 896)}});
    let (m, c, p) = load(&with_batch(QWEN_VL, 4096), H100_1024, &plan.to_string());
    assert!(p.modules().iter().all(|mp| mp.layout.micro_batches == 128));
    (m, c, p)
}

fn benches(cr: &mut Criterion) {
    let opts = Options::default();

    let (m, c, p) = load(VISION_AUDIO_MODEL, H100_64, VISION_AUDIO_PLAN);
    cr.bench_function("quick_estimate", |b| {
        b.iter(|| estimate_quick(black_box(&m), black_box(&c), black_box(&p), &opts))
    });

    let (m, c, p) = homogeneous_1024();
    let (e, (graph, _)) = estimate_with_tasks(&m, &c, &p, &opts).expect("estimates");
    eprintln!(
        "homogeneous 1024: {} lanes, {} tasks, iteration {:.3} s",
        graph.lanes.len(),
        graph.tasks.len(),
        e.iteration_time_s
    );
    let mut group = cr.benchmark_group("simulate");
    group.sample_size(20);
    group.bench_function("simulate_1024_gpus_128_micro_batches", |b| {
        b.iter(|| estimate(black_box(&m), black_box(&c), black_box(&p), &opts).unwrap())
    });
    group.bench_function("simulate_only_1024_gpus_128_micro_batches", |b| {
        b.iter(|| simulate(black_box(&graph)).unwrap())
    });

    let (m, c, p) = non_colocated_1024();
    let (e, (graph, _)) = estimate_with_tasks(&m, &c, &p, &opts).expect("estimates");
    eprintln!(
        "non-colocated 1024: {} lanes, {} tasks, iteration {:.3} s",
        graph.lanes.len(),
        graph.tasks.len(),
        e.iteration_time_s
    );
    group.bench_function("simulate_1024_gpus_non_colocated", |b| {
        b.iter(|| estimate(black_box(&m), black_box(&c), black_box(&p), &opts).unwrap())
    });
    group.finish();
}

criterion_group!(estimate_benches, benches);
criterion_main!(estimate_benches);
