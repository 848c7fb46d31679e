//! Planted cases: models built so that the winning plan needs what the old space could not
//! express. A mixture of experts gets expert parallelism; a non-power-of-two split of the GPUs
//! between the encoder and the language model is found where it is the fastest split; an
//! uneven split of layers over stages where the head makes the last stage slow (on a sequence
//! of odd length, which left the old space without any layout).

use hetpar_ir::{load_cluster, load_model, Cluster, ModelGraph};
use hetpar_planner::search::{search, PlacementChoice, SearchOptions};
use serde_json::json;

fn cluster(nodes: u32, gpus: u32) -> Cluster {
    load_cluster(&json!({"kind": "cluster", "format_version": 1, "name": "c", "nodes": nodes, "gpus_per_node": gpus, "gpu": {"model": "h100_sxm_80gb"}}).to_string()).unwrap()
}

fn model(v: serde_json::Value) -> ModelGraph {
    load_model(&v.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

/// A Mixtral-shaped mixture of experts (8 experts, top 2) on 16 GPUs: its experts hold most of
/// its parameters, and sharding them over expert-parallel ranks is what fits and wins.
#[test]
fn a_mixture_of_experts_gets_expert_parallelism() {
    let m = model(json!({"kind": "model", "format_version": 1, "name": "moe",
        "modules": {"llm": {"kind": "language_model",
            "transformer": {"layers": 8, "hidden": 4096, "heads": 32, "kv_heads": 8, "ffn_hidden": 14336,
                "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal",
                "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 14336}},
            "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [],
        "data": {"global_batch": 64, "sequence_length": 4096, "precision": "bf16", "optimizer": "adam"}}));
    let r = search(&m, &cluster(2, 8), SearchOptions::default());
    let best = r.best.expect("a plan");
    let ep = best.plan.modules["llm"].layout.ep;
    assert!(
        ep > 1,
        "the mixture of experts got ep {ep}: {:?}",
        best.plan.modules["llm"].layout
    );
}

/// A large encoder beside a small language model on 8 GPUs, placed apart: the encoder's share
/// of the work is about 5/8, so the fastest split gives it 5 GPUs (not 4, the nearest power of
/// two the old space offered).
#[test]
fn a_non_power_of_two_split_is_found_where_it_is_fastest() {
    let m = model(
        json!({"kind": "model", "format_version": 1, "name": "split",
        "modules": {
            "vision": {"kind": "vision_encoder",
                "transformer": {"layers": 24, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional", "qkv_bias": true, "linear_bias": true},
                "embedding": {"kind": "patch", "patch_size": 14, "channels": 3}, "positions": {"kind": "rope"}},
            "projector": {"kind": "projector", "mlp": {"widths": [2048, 2048, 2048], "activation": "gelu"}},
            "llm": {"kind": "language_model",
                "transformer": {"layers": 10, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
                "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [{"from": "vision", "to": "projector", "landing": "rows"}, {"from": "projector", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": 30, "sequence_length": 4096, "precision": "bf16", "optimizer": "adam",
                 "encoders": {"vision": {"items_per_sample": 4, "tokens_per_item": 1024}}}}),
    );
    let r = search(
        &m,
        &cluster(1, 8),
        SearchOptions {
            placement: PlacementChoice::NonColocated,
            ..SearchOptions::default()
        },
    );
    let best = r.best.expect("a plan");
    let up = best.plan.modules["vision"]
        .placement
        .ranks
        .count
        .unwrap_or(0);
    assert!(
        !up.is_power_of_two(),
        "the encoder got {up} GPUs: {:#?}",
        best.plan.modules
    );
}

/// A language model whose 256k-word head makes its last pipeline stage as slow as a few
/// layers, on 2 GPUs where only a pipeline splits it (3 heads: tp 1; an odd sequence: cp 1; one
/// replica): the search balances the stages, and the even split is slower in simulation. (10
/// layers: with 12, the last stage's fp32 logits and their gradient, 15.6 GiB, leave no room
/// for moving layers onto the first stage of an 80 GB GPU.)
#[test]
fn an_uneven_stage_split_is_chosen_where_the_head_makes_the_last_stage_slow() {
    let m = model(json!({"kind": "model", "format_version": 1, "name": "head",
        "modules": {"llm": {"kind": "language_model",
            "transformer": {"layers": 10, "hidden": 4095, "heads": 3, "ffn_hidden": 16380, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
            "positions": {"kind": "rope"}, "vocab_size": 256000, "tied_embeddings": false}},
        "boundaries": [],
        "data": {"global_batch": 8, "sequence_length": 8191, "precision": "bf16", "optimizer": "adam"}}));
    let c = cluster(1, 2);
    let r = search(&m, &c, SearchOptions::default());
    let best = r.best.expect("a plan");
    let l = &best.plan.modules["llm"].layout;
    let split = l.stage_layers.clone().expect("an uneven split");
    assert!(
        l.pp == 2 && split[0] > split[1],
        "the head's stage should hold fewer layers: {l:?}"
    );
    let mut even = best.plan.clone();
    even.modules.get_mut("llm").unwrap().layout.stage_layers = None;
    let (plan, _) = hetpar_ir::Plan::build(even, &m, &c).expect("the even split is a plan");
    let e = hetpar_cost::estimate(&m, &c, &plan, &hetpar_cost::Options::default()).unwrap();
    let t = best.estimate.expect("simulated").iteration_time_s;
    assert!(
        !e.feasible || e.iteration_time_s > t,
        "the even split takes {:.3} s, the balanced one {t:.3} s",
        e.iteration_time_s
    );
}

/// A small encoder beside a 15-layer, 8192-wide language model on 8 colocated GPUs, one image
/// per sample: the encoder is fastest with a replica per GPU, more replicas than a language-
/// model micro-batch has images, so a pass covers several micro-batches (k > 1); with k = 1
/// some replicas would idle every pass. (15 layers: with 16, the encoder's whole weights on
/// every GPU no longer fit beside the language model once the allocator margin and the CUDA
/// context are counted. A sequence of 8192: at 4096 the language model's best micro-batch
/// holds 4 samples on each of 2 replicas, all 8 images, and one pass per micro-batch serves.)
#[test]
fn a_pass_size_above_one_is_chosen_where_encoder_replicas_outnumber_a_micro_batch() {
    let m = model(
        json!({"kind": "model", "format_version": 1, "name": "chunk",
        "modules": {
            "vision": {"kind": "vision_encoder",
                "transformer": {"layers": 24, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional", "qkv_bias": true, "linear_bias": true},
                "embedding": {"kind": "patch", "patch_size": 14, "channels": 3}, "positions": {"kind": "rope"}},
            "projector": {"kind": "projector", "mlp": {"widths": [1024, 8192, 8192], "activation": "gelu"}},
            "llm": {"kind": "language_model",
                "transformer": {"layers": 15, "hidden": 8192, "heads": 64, "kv_heads": 8, "ffn_hidden": 28672, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
                "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [{"from": "vision", "to": "projector", "landing": "rows"}, {"from": "projector", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": 8, "sequence_length": 8192, "precision": "bf16", "optimizer": "adam",
                 "encoders": {"vision": {"items_per_sample": 1, "tokens_per_item": 1024}}}}),
    );
    let c = cluster(1, 8);
    let r = search(
        &m,
        &c,
        SearchOptions {
            placement: PlacementChoice::Colocated,
            ..SearchOptions::default()
        },
    );
    let best = r.best.expect("a plan");
    let k = best.plan.schedule.encoder_chunk.unwrap_or(1);
    let lm = &best.plan.modules["llm"].layout;
    let per_micro_batch = lm.dp.unwrap_or(1) * lm.micro_batch_size;
    let vision_dp = best.plan.modules["vision"].layout.dp.unwrap_or(1);
    assert!(
        k > 1 && vision_dp > per_micro_batch,
        "k {k}, vision dp {vision_dp}, images per micro-batch {per_micro_batch}"
    );
    let mut one = best.plan.clone();
    one.schedule.encoder_chunk = None;
    let (plan, _) = hetpar_ir::Plan::build(one, &m, &c).expect("k = 1 is a plan");
    let e = hetpar_cost::estimate(&m, &c, &plan, &hetpar_cost::Options::default()).unwrap();
    let t = best.estimate.expect("simulated").iteration_time_s;
    assert!(
        !e.feasible || e.iteration_time_s > t,
        "k = 1 takes {:.4} s, k = {k} {t:.4} s",
        e.iteration_time_s
    );
}
