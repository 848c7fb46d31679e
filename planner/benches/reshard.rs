//! Boundary synthesis speed (target: two 1024-rank layouts in under 50 ms): an encoder of TP 1 x
//! DP 1024 into an LLM of TP 8 x CP 8 x PP 4 x DP 4, colocated on 1024 H100s, forward and
//! backward with the e-graph; and the same encoder on its own 1024 GPUs (non-colocated).
//!
//! `cargo bench -p hetpar-planner --bench reshard`

use criterion::{criterion_group, criterion_main, Criterion};
use hetpar_ir::{load_cluster, load_model, load_plan};
use hetpar_planner::boundary::{synthesize_all, Limits};
use serde_json::json;

fn inputs(colocated: bool) -> (hetpar_ir::ModelGraph, hetpar_ir::Cluster, hetpar_ir::Plan) {
    let model = json!({"kind": "model", "format_version": 1, "name": "vit-llm",
        "modules": {
            "vision": {"kind": "vision_encoder",
                "transformer": {"layers": 24, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional"},
                "embedding": {"kind": "patch", "patch_size": 14, "channels": 3}, "positions": {"kind": "rope"}},
            "llm": {"kind": "language_model",
                "transformer": {"layers": 32, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn_hidden": 14336, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
                "positions": {"kind": "rope"}, "vocab_size": 128000}},
        "boundaries": [{"from": "vision", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": 1024, "sequence_length": 8192, "precision": "bf16", "optimizer": "adam",
                 "encoders": {"vision": {"items_per_sample": 4, "tokens_per_item": 1024}}}});
    // The encoder's hidden size differs from the LLM's: give it a projector-free width match.
    let mut model = model;
    model["modules"]["vision"]["transformer"]["hidden"] = json!(4096);
    model["modules"]["vision"]["transformer"]["heads"] = json!(32);
    let nodes = if colocated { 128 } else { 256 };
    let cluster = json!({"kind": "cluster", "format_version": 1, "name": "h100", "nodes": nodes, "gpus_per_node": 8, "gpu": {"model": "h100_sxm_80gb"}});
    let (enc_off, llm_off, kind) = if colocated {
        (0, 0, "colocated_three_phase")
    } else {
        (1024, 0, "pipeline_1f1b")
    };
    let plan = json!({"kind": "plan", "format_version": 1, "schedule": {"kind": kind},
        "modules": {
            "vision": {"layout": {"dp": 1024, "micro_batch_size": 1}, "placement": {"ranks": {"offset": enc_off, "count": 1024}}},
            "llm": {"layout": {"tp": 8, "cp": 8, "pp": 4, "dp": 4, "sequence_parallel": true, "micro_batch_size": 256},
                    "placement": {"ranks": {"offset": llm_off, "count": 1024}}}}});
    let m = load_model(&model.to_string()).expect("model").0;
    let c = load_cluster(&cluster.to_string()).expect("cluster");
    let p = load_plan(&plan.to_string(), &m, &c)
        .unwrap_or_else(|d| panic!("{d}"))
        .0;
    (m, c, p)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("reshard");
    g.sample_size(10);
    for colocated in [true, false] {
        let (m, cl, p) = inputs(colocated);
        let name = if colocated {
            "tp1xdp1024_to_tp8xcp8xpp4xdp4_colocated"
        } else {
            "tp1xdp1024_to_tp8xcp8xpp4xdp4_disjoint"
        };
        g.bench_function(name, |b| {
            b.iter(|| synthesize_all(&m, &cl, &p, Limits::default(), None))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
