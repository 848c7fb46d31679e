//! Memory per rank against hand counts: the mixture-of-experts optimizer sharding (Mixtral
//! 8x7B at ep 8), the transient peak as the largest moment rather than the sum of every
//! buffer, NCCL buffers per communicator, and every rank's parameters over the stages.

use hetpar_cost::memory::{stage_parameters, Moment};
use hetpar_cost::{estimate, Estimate, Options};
use hetpar_ir::hf::{import, ImportOptions};
use hetpar_ir::json::to_canonical_json;
use hetpar_ir::layout::Layout;
use hetpar_ir::model::counts::module_params;
use hetpar_ir::model::Body;
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph};
use serde_json::{json, Value};

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

fn example(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Mixtral 8x7B imported from its Hugging Face config as `hetpar import hf` does.
fn mixtral() -> ModelGraph {
    let config: Value = serde_json::from_str(&example("hf/mixtral-8x7b-v0.1.config.json"))
        .expect("the example config is JSON");
    let file = import(&config, &ImportOptions::default()).unwrap_or_else(|d| panic!("{d}"));
    load_model(&to_canonical_json(&file))
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

fn h100_8() -> Cluster {
    load_cluster(&example("clusters/h100-8.json")).unwrap_or_else(|d| panic!("{d}"))
}

fn estimate_layout(model: &ModelGraph, cluster: &Cluster, layout: Value, ranks: u32) -> Estimate {
    let p = json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"llm": {"layout": layout, "placement": {"ranks": {"offset": 0, "count": ranks}}}}});
    let (plan, _) = load_plan(&p.to_string(), model, cluster).unwrap_or_else(|d| panic!("{d}"));
    estimate(model, cluster, &plan, &Options::default()).expect("estimates")
}

#[test]
fn mixtral_8x7b_at_ep8_shards_expert_optimizer_state_over_the_expert_data_parallel_group() {
    // Issue 15's plan: 8 H100s, tp 1, cp 2, dp 4, ep 8, distributed optimizer, bf16 + Adam.
    let m = mixtral();
    let layout = json!({"cp": 2, "dp": 4, "ep": 8, "distributed_optimizer": true});
    let e = estimate_layout(&m, &h100_8(), layout, 8);

    // By hand, from the architecture (32 layers, hidden 4096, 32 heads of 128 with 8 kv heads,
    // 8 experts of SwiGLU width 14336, vocabulary 32000, untied, RMSNorm):
    // attention per layer: q 4096 x 4096 + k, v 2 x 4096 x (8 x 128) + o 4096 x 4096
    let attention = 4096.0 * 4096.0 + 2.0 * 4096.0 * 1024.0 + 4096.0 * 4096.0; // 41,943,040
    let norms = 2.0 * 4096.0; // two RMSNorm weights per layer
    let router = 4096.0 * 8.0; // replicated, dense
    let expert = 3.0 * 4096.0 * 14336.0; // 176,160,768 (gate, up, down)
    let table = 32000.0 * 4096.0; // 131,072,000, the input table and the head each
    let final_norm = 4096.0;
    // ep 8 splits 8 experts over 8 ranks: one expert per layer per rank.
    let expert_per_rank = 32.0 * expert; // 5,637,144,576: the "about 5.6B" holds
    let dense_per_rank = 32.0 * (attention + norms + router) + 2.0 * table + final_norm; // 1,605,636,096
    let params = expert_per_rank + dense_per_rank; // 7,242,780,672
    assert_eq!(expert_per_rank, 5_637_144_576.0);
    assert_eq!(dense_per_rank, 1_605_636_096.0);

    let weights = 2.0 * params; // bf16
    let gradients = 4.0 * params; // fp32 main gradients, whole on every rank
                                  // 12 bytes (fp32 master, two moments): dense over dp x cp = 8 ranks, experts over the
                                  // expert-data-parallel group dp x cp / ep = 1 rank, i.e. not sharded at all.
    let dense_optimizer = 12.0 * dense_per_rank / 8.0; // 2.24 GiB
    let expert_optimizer = 12.0 * expert_per_rank / 1.0; // 63.0 GiB: the issue's ~63 GiB holds
    assert_eq!(expert_optimizer, 63.0 * GIB);
    let optimizer = dense_optimizer + expert_optimizer; // 70,054,189,056 = 65.24 GiB

    for r in &e.per_rank {
        let got = &r.memory;
        assert_eq!(got.weights, weights, "ranks {:?}", r.ranks);
        assert_eq!(got.gradients, gradients, "ranks {:?}", r.ranks);
        assert_eq!(got.optimizer, optimizer, "ranks {:?}", r.ranks);
    }
    // 105.7 GiB of static memory alone: over an H100's 80 GB, whatever the activations.
    assert!(!e.feasible, "{:?}", e.per_rank[0].memory);
}

/// An LLM of 4 layers (hidden 1024, 8 heads, GELU MLP of 4096) with `vocab` words, one
/// 2048-token sample per micro-batch, bf16.
fn small_llm(vocab: u32, batch: u32) -> ModelGraph {
    let v = json!({"kind": "model", "format_version": 1, "name": "small",
        "modules": {"llm": {"kind": "language_model",
            "transformer": {"layers": 4, "hidden": 1024, "heads": 8, "ffn_hidden": 4096,
                "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "causal"},
            "positions": {"kind": "rope"}, "vocab_size": vocab}},
        "data": {"global_batch": batch, "sequence_length": 2048, "precision": "bf16", "optimizer": "adam"}});
    load_model(&v.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

#[test]
fn the_transient_peak_is_the_largest_moment_not_the_sum_of_every_buffer() {
    // tp 2 with sequence parallelism and full recompute, one 2048-token micro-batch.
    let layout = json!({"tp": 2, "sequence_parallel": true, "recompute": {"policy": "full"}});
    let rows = 2048.0;
    // Recomputed layer: Korthikanti's per-layer bytes rows x h x (10 / sp + (4 + 4 kv/heads +
    // 16) / tp) = 2048 x 1024 x (5 + 12) less the kept input 2 x rows x h / sp.
    let recompute = rows * 1024.0 * 17.0 - 2.0 * rows * 1024.0 / 2.0; // 32 MiB
                                                                      // The gathered layer input under SP: rows x h, 2 bytes.
    let gather = rows * 1024.0 * 2.0; // 4 MiB
    assert_eq!((recompute, gather), (32.0 * MIB, 4.0 * MIB));

    // A large vocabulary: the loss (fp32 logits + gradient: 2 x rows x vocab / tp x 4 bytes,
    // and the head's gathered input) outweighs a layer's backward.
    let e = estimate_layout(&small_llm(32000, 8), &h100_8(), layout.clone(), 2);
    let m = e.per_rank[0].memory;
    let logits = 2.0 * rows * 32000.0 / 2.0 * 4.0; // 250 MiB
    assert_eq!(m.peak_moment, Moment::Loss);
    assert_eq!(
        (m.logits, m.sp_gather, m.recompute, m.boundary),
        (logits, gather, 0.0, 0.0)
    );

    // A small vocabulary: the loss holds 2 x 2048 x 512 x 4 = 8 MiB + 4 MiB; a layer's backward
    // holds 32 + 4 MiB, and only that counts (not 32 + 4 + 8 + 4).
    let e = estimate_layout(&small_llm(1024, 8), &h100_8(), layout, 2);
    let m = e.per_rank[0].memory;
    assert_eq!(m.peak_moment, Moment::Backward);
    assert_eq!(
        (m.recompute, m.sp_gather, m.logits, m.boundary),
        (recompute, gather, 0.0, 0.0)
    );
}

#[test]
fn nccl_buffers_count_each_communicator_once_with_the_peers_a_rank_keeps_buffers_for() {
    // 4 MiB (NCCL_BUFFSIZE) x 16 channels = 64 MiB per peer.
    let per_peer = 4.0 * MIB * 16.0;
    let m = small_llm(1024, 8);
    let c = h100_8();
    // tp 2 x dp 4: the tp pair (1 peer), the ring of 4 data-parallel ranks (2 peers).
    let e = estimate_layout(&m, &c, json!({"tp": 2, "dp": 4}), 8);
    for r in &e.per_rank {
        assert_eq!(r.memory.nccl, 3.0 * per_peer, "ranks {:?}", r.ranks);
    }
    // Mixtral's dp x cp group of 8 is also its ep group: one communicator, whose all-to-all
    // reaches the 7 others; plus the cp pair (1 peer).
    let e = estimate_layout(
        &mixtral(),
        &c,
        json!({"cp": 2, "dp": 4, "ep": 8, "distributed_optimizer": true}),
        8,
    );
    for r in &e.per_rank {
        assert_eq!(r.memory.nccl, 8.0 * per_peer, "ranks {:?}", r.ranks);
    }
}

#[test]
fn every_rank_memory_term_adds_up_to_the_total_and_the_margin_is_a_tenth_of_allocated() {
    let e = estimate_layout(
        &small_llm(32000, 8),
        &h100_8(),
        json!({"tp": 2, "pp": 2, "sequence_parallel": true, "recompute": {"policy": "selective"}}),
        4,
    );
    for r in &e.per_rank {
        let m = r.memory;
        let allocated = m.weights
            + m.gradients
            + m.optimizer
            + m.activations
            + m.recompute
            + m.sp_gather
            + m.logits
            + m.boundary;
        let sum = allocated + m.nccl + m.allocator_margin + m.cuda_context;
        assert!((sum - m.total).abs() <= 1e-9 * m.total, "{m:?}");
        assert!((m.allocator_margin - 0.10 * allocated).abs() <= 1e-9 * allocated);
        assert_eq!(m.cuda_context, GIB);
    }
}

/// A layout of `pp` stages over `layers` layers, everything else 1 (no tp, no ep).
fn stages(layers: u32, pp: u32) -> Layout {
    Layout {
        tp: 1,
        cp: 1,
        pp,
        dp: 1,
        ep: 1,
        vpp: 1,
        sequence_parallel: false,
        tp_comm_overlap: false,
        cp_comm: Default::default(),
        recompute: Default::default(),
        distributed_optimizer: false,
        micro_batch_size: 1,
        chunk_layers: (0..pp)
            .map(|s| layers / pp + u32::from(s < layers % pp))
            .collect(),
        micro_batches: 1,
    }
}

#[test]
fn stage_parameters_over_all_stages_add_up_to_each_module_count() {
    // tp 1, ep 1: every parameter lies on exactly one stage, except a tied table, which the
    // first and the last stage each hold when they differ.
    let mut models: Vec<ModelGraph> = ["models/llama-3-8b.json", "models/llava-1.5-7b.json"]
        .iter()
        .map(|p| load_model(&example(p)).unwrap_or_else(|d| panic!("{d}")).0)
        .collect();
    models.push(mixtral());
    models.push(tied_llm());
    let mut checked = 0;
    for m in &models {
        for module in m.modules().iter().filter(|x| x.transformer().is_some()) {
            let t = module.transformer().unwrap();
            let tied = match &module.body {
                Body::LanguageModel {
                    tied_embeddings: true,
                    vocab_size,
                    ..
                } => f64::from(*vocab_size) * f64::from(t.hidden),
                _ => 0.0,
            };
            for pp in [1, 3] {
                let l = stages(t.layers, pp);
                let sum: f64 = (0..pp)
                    .map(|s| stage_parameters(module, &l, s).total())
                    .sum();
                let copy = if pp > 1 { tied } else { 0.0 };
                let want = module_params(module).total as f64 + copy;
                assert_eq!(sum, want, "{}: {} at pp {pp}", m.name(), module.name);
                checked += 1;
            }
        }
    }
    // llama, llava's vision encoder and LLM, mixtral, the tied LLM, at two depths each.
    assert_eq!(checked, 10);
}

/// A small LLM with tied embeddings and learned positions.
fn tied_llm() -> ModelGraph {
    let v = json!({"kind": "model", "format_version": 1, "name": "tied",
        "modules": {"llm": {"kind": "language_model",
            "transformer": {"layers": 6, "hidden": 256, "heads": 4, "ffn_hidden": 1024,
                "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "causal",
                "qkv_bias": true, "linear_bias": true},
            "positions": {"kind": "learned", "max_positions": 512},
            "vocab_size": 1000, "tied_embeddings": true}},
        "data": {"global_batch": 8, "sequence_length": 512, "precision": "bf16", "optimizer": "adam"}});
    load_model(&v.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}
