//! Builders shared by the cost model's encoder-pass tests: a small vision-language model,
//! H100 clusters and plans, built as JSON and loaded through `hetpar_ir` as a user's files
//! would be.

use hetpar_cost::estimate::estimate_with_tasks;
use hetpar_cost::simulate::Timeline;
use hetpar_cost::tasks::TaskGraph;
use hetpar_cost::{Estimate, Options};
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph, Plan};
use serde_json::{json, Value};

/// `nodes` nodes of 8 H100s (the example clusters' links).
pub fn h100(nodes: u32) -> Cluster {
    let c = json!({"kind": "cluster", "format_version": 1, "name": format!("h100-{}", 8 * nodes),
        "nodes": nodes, "gpus_per_node": 8, "gpu": {"model": "h100_sxm_80gb"},
        "intra_node": {"bandwidth_gb_per_s": 450, "latency_us": 3},
        "inter_node": {"bandwidth_gb_per_s": 50, "latency_us": 8}});
    load_cluster(&c.to_string()).unwrap_or_else(|d| panic!("{d}"))
}

/// vision (8 layers, hidden 1024) -> projector -> LLM (8 layers, hidden 2048, sequence
/// `seq`), `batch` samples with the vision items `items`.
pub fn vlm(batch: u32, seq: u32, items: Value) -> ModelGraph {
    let block = |hidden: u32, attention: &str| {
        json!({"layers": 8, "hidden": hidden, "heads": 16, "ffn_hidden": 4 * hidden,
            "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": attention})
    };
    let v = json!({"kind": "model", "format_version": 1, "name": "vlm",
        "modules": {
            "vision": {"kind": "vision_encoder", "transformer": block(1024, "bidirectional"),
                "embedding": {"kind": "linear", "in_features": 588}, "positions": {"kind": "rope"}},
            "projector": {"kind": "projector", "mlp": {"widths": [1024, 2048, 2048], "activation": "gelu"}},
            "llm": {"kind": "language_model", "transformer": block(2048, "causal"),
                "positions": {"kind": "rope"}, "vocab_size": 1024}},
        "boundaries": [{"from": "vision", "to": "projector", "landing": "rows"},
                       {"from": "projector", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": batch, "sequence_length": seq, "precision": "bf16",
            "optimizer": "adam", "encoders": {"vision": items}}});
    load_model(&v.to_string())
        .unwrap_or_else(|d| panic!("{d}\n{v:#}"))
        .0
}

pub fn images(per_sample: u32, tokens: u32) -> Value {
    json!({"items_per_sample": per_sample, "tokens_per_item": tokens})
}

fn entry(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

/// A plan: the encoder and projector with layout `enc` on `[eo, eo + en)`, the LLM with
/// `lm` on `[lo, lo + ln)`, schedule `kind` with `encoder_chunk` `k` when given.
#[allow(clippy::too_many_arguments)]
pub fn plan(
    m: &ModelGraph,
    c: &Cluster,
    kind: &str,
    k: Option<u32>,
    enc: Value,
    (eo, en): (u32, u32),
    lm: Value,
    (lo, ln): (u32, u32),
) -> Plan {
    let mut v = json!({"kind": "plan", "format_version": 1, "schedule": {"kind": kind},
        "modules": {"vision": entry(enc.clone(), eo, en), "projector": entry(enc, eo, en),
            "llm": entry(lm, lo, ln)}});
    if let Some(k) = k {
        v["schedule"]["encoder_chunk"] = json!(k);
    }
    load_plan(&v.to_string(), m, c)
        .unwrap_or_else(|d| panic!("plan does not load: {d}\n{v:#}"))
        .0
}

pub fn simulate(m: &ModelGraph, c: &Cluster, p: &Plan) -> (Estimate, TaskGraph, Timeline) {
    let (e, (g, t)) = estimate_with_tasks(m, c, p, &Options::default())
        .unwrap_or_else(|e| panic!("estimate fails: {e}"));
    (e, g, t)
}

pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}
