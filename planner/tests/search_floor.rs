//! The floor the search orders and prunes language-model layouts by (`lm::LmCandidate::floor`,
//! from `hetpar_cost::floor`) lies under the closed-form time every one of the candidate's
//! priced options takes alone, in every arrangement: dense and mixture-of-experts language
//! models, pipelined with uneven splits and interleaving, with CP, TP overlap and recompute.
//! Were it above, the search would bound out plans it must keep (`search_exact.rs` would see
//! that too, on a smaller space).

use hetpar_cost::combine::{combine, Arrangement, Others};
use hetpar_ir::{load_cluster, load_model, Cluster, ModelGraph};
use hetpar_planner::search::lm::LmPool;
use hetpar_planner::search::price::Pricer;
use hetpar_planner::search::space::Bounds;
use serde_json::json;

fn cluster(nodes: u32) -> Cluster {
    load_cluster(
        &json!({"kind": "cluster", "format_version": 1, "name": "c", "nodes": nodes,
        "gpus_per_node": 8, "gpu": {"model": "h100_sxm_80gb"}})
        .to_string(),
    )
    .unwrap()
}

fn example(name: &str) -> ModelGraph {
    let path = format!(
        "{}/../examples/models/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    load_model(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

fn moe() -> ModelGraph {
    load_model(&json!({"kind": "model", "format_version": 1, "name": "moe",
        "modules": {"llm": {"kind": "language_model",
            "transformer": {"layers": 8, "hidden": 2048, "heads": 16, "kv_heads": 4, "ffn_hidden": 7168,
                "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal",
                "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 7168}},
            "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [],
        "data": {"global_batch": 32, "sequence_length": 4096, "precision": "bf16", "optimizer": "adam"}})
    .to_string())
    .unwrap_or_else(|d| panic!("{d}"))
    .0
}

/// Prices every candidate of the arrangement and returns (options checked, the smallest ratio
/// of an option's time alone to its candidate's floor).
fn check(model: &ModelGraph, cluster: &Cluster, arr: Arrangement, max_vpp: u32) -> (usize, f64) {
    let b = Bounds {
        gpus_per_node: cluster.gpus_per_node,
        max_pp: 8,
        max_vpp,
        allow_cp: true,
        max_mbs: 2,
    };
    let world = u32::try_from(cluster.world_size()).unwrap();
    let mut pricer = Pricer::new(model, cluster, Default::default());
    let mut pool = LmPool::new(&pricer, arr, world, b);
    let all: Vec<usize> = (0..pool.candidates.len()).collect();
    pool.price(&mut pricer, &all);
    let (mut n, mut least) = (0, f64::INFINITY);
    for (c, cand) in pool.candidates.iter().enumerate() {
        for &i in pool.options_of(c).expect("priced") {
            let o = &pool.options[i];
            let (alone, _) = combine(arr, &o.terms, o.layout.vpp, 1, Others::default());
            assert!(
                cand.floor <= alone,
                "{arr:?}: floor {} over the time alone {alone} of {:?}",
                cand.floor,
                o.layout
            );
            n += 1;
            least = least.min(alone / cand.floor);
        }
    }
    (n, least)
}

#[test]
fn the_floor_lies_under_every_language_model_option_alone_in_every_arrangement() {
    let two = example("reference-tiny-two-encoders");
    let w1 = example("w1-vit6b-7b");
    let mut checked = 0;
    for (model, nodes) in [(&w1, 1), (&two, 1)] {
        for arr in [
            Arrangement::Colocated,
            Arrangement::Nested,
            Arrangement::Disjoint,
        ] {
            let vpp = if arr == Arrangement::Disjoint { 4 } else { 1 };
            checked += check(model, &cluster(nodes), arr, vpp).0;
        }
    }
    let (n, least) = check(&moe(), &cluster(2), Arrangement::Nested, 4);
    checked += n;
    assert!(checked > 1000, "only {checked} options checked");
    // A floor far under every option would order nothing: the MoE's tightest is close.
    assert!(
        least < 1.5,
        "the floor is loose: every option takes {least:.2}x it or more"
    );
}
