//! The plan search is sane: its plans pass the verifier and fit memory, it claims no large
//! gain for a tiny encoder beside a large LLM, it keeps a large encoder's CP at 1 under a
//! long-context LLM (the space offers encoders CP), it respects the placement constraint,
//! labels plans by what they are and is deterministic; told to keep to what the runtime
//! executes, it prices no communication variant. Exactness against brute force is
//! `search_exact.rs`.

use hetpar_cost::Options;
use hetpar_ir::{load_cluster, load_model, Cluster, ModelGraph, Plan};
use hetpar_planner::search::{search, CandidateKind, PlacementChoice, SearchOptions};
use serde_json::json;

fn cluster(nodes: u32, gpus: u32) -> Cluster {
    load_cluster(&json!({"kind": "cluster", "format_version": 1, "name": "c", "nodes": nodes, "gpus_per_node": gpus, "gpu": {"model": "h100_sxm_80gb"}}).to_string()).unwrap()
}

/// An encoder (layers, hidden, heads) with a projector into an LLM (layers, hidden, heads).
fn vlm(
    enc: (u32, u32, u32),
    llm: (u32, u32, u32),
    batch: u32,
    seq: u32,
    images: u32,
    tokens: u32,
) -> ModelGraph {
    let m = json!({"kind": "model", "format_version": 1, "name": "vlm",
        "modules": {
            "vision": {"kind": "vision_encoder",
                "transformer": {"layers": enc.0, "hidden": enc.1, "heads": enc.2, "ffn_hidden": 4 * enc.1, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional", "qkv_bias": true, "linear_bias": true},
                "embedding": {"kind": "patch", "patch_size": 14, "channels": 3}, "positions": {"kind": "rope"}},
            "projector": {"kind": "projector", "mlp": {"widths": [enc.1, llm.1, llm.1], "activation": "gelu"}},
            "llm": {"kind": "language_model",
                "transformer": {"layers": llm.0, "hidden": llm.1, "heads": llm.2, "ffn_hidden": 4 * llm.1, "ffn_kind": "gelu_mlp", "norm": "rms_norm", "attention": "causal"},
                "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [{"from": "vision", "to": "projector", "landing": "rows"}, {"from": "projector", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": batch, "sequence_length": seq, "precision": "bf16", "optimizer": "adam",
                 "encoders": {"vision": {"items_per_sample": images, "tokens_per_item": tokens}}}});
    load_model(&m.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

fn time(c: &hetpar_planner::search::Candidate) -> f64 {
    c.estimate.as_ref().expect("simulated").iteration_time_s
}

#[test]
fn searched_plans_pass_the_verifier_and_fit_in_memory() {
    let m = vlm((12, 768, 12), (16, 2048, 16), 32, 2048, 1, 576);
    let c = cluster(1, 8);
    let r = search(&m, &c, SearchOptions::default());
    let best = r.best.as_ref().expect("a plan");
    for cand in std::iter::once(best).chain(&r.top).chain(&r.homogeneous) {
        let (plan, _) = Plan::build(cand.plan.clone(), &m, &c)
            .unwrap_or_else(|d| panic!("the verifier rejects a searched plan: {d}"));
        let e = hetpar_cost::estimate(&m, &c, &plan, &Options::default()).expect("estimates");
        assert!(e.feasible, "{:?}", e.infeasible_reason);
        assert!(cand.estimate.as_ref().unwrap().feasible);
    }
    assert!(r.stats.candidates > 0 && r.stats.simulated > 0);
}

#[test]
fn a_tiny_encoder_beside_a_large_llm_claims_no_large_gain() {
    // A 0.1 B encoder with 64 tokens per sample beside a 13 B-class LLM on 16 GPUs.
    let m = vlm((6, 512, 8), (40, 5120, 40), 64, 4096, 1, 64);
    let c = cluster(2, 8);
    let r = search(&m, &c, SearchOptions::default());
    let (b, h) = (
        time(r.best.as_ref().unwrap()),
        time(r.homogeneous.as_ref().unwrap()),
    );
    let gain = h / b - 1.0;
    assert!(
        gain < 0.05,
        "a tiny encoder claims {:.1}% over the homogeneous plan",
        100.0 * gain
    );
}

#[test]
fn long_context_with_a_large_encoder_keeps_the_encoder_at_cp_1() {
    // 64k tokens per sample (CP needed for the LLM), 16 images of 1024 tokens into a 7 B LLM.
    let m = vlm((32, 2048, 16), (32, 4096, 32), 16, 65536, 16, 1024);
    let c = cluster(2, 8);
    let r = search(&m, &c, SearchOptions::default());
    let best = r.best.expect("a plan");
    let llm_cp = best.plan.modules["llm"].layout.cp;
    assert!(
        llm_cp > 1,
        "a 64k sequence needs context parallelism: {:#?}",
        best.plan.modules["llm"].layout
    );
    // The space offers the encoder cp 2..8 (1024 tokens split into 2 cp blocks): CP on a
    // 1024-token image is pure overhead.
    assert_eq!(
        best.plan.modules["vision"].layout.cp, 1,
        "CP on a 1024-token image is pure overhead"
    );
    assert_eq!(best.kind, CandidateKind::Heterogeneous, "{:?}", best.plan);
}

#[test]
fn the_placement_constraint_binds_the_chosen_plan() {
    let m = vlm((12, 768, 12), (16, 2048, 16), 32, 2048, 1, 576);
    let c = cluster(1, 8);
    for (choice, colocated) in [
        (PlacementChoice::NonColocated, false),
        (PlacementChoice::Colocated, true),
    ] {
        let r = search(
            &m,
            &c,
            SearchOptions {
                placement: choice,
                ..SearchOptions::default()
            },
        );
        let best = r.best.expect("a plan");
        assert_eq!(
            best.plan.schedule.kind.is_colocated(),
            colocated,
            "{choice:?} chose {:?}",
            best.plan.schedule
        );
    }
}

#[test]
fn a_one_module_model_is_labelled_as_such() {
    let m = load_model(&json!({"kind": "model", "format_version": 1, "name": "lm",
        "modules": {"llm": {"kind": "language_model",
            "transformer": {"layers": 8, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
            "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [],
        "data": {"global_batch": 16, "sequence_length": 2048, "precision": "bf16", "optimizer": "adam"}}).to_string())
    .unwrap_or_else(|d| panic!("{d}"))
    .0;
    let r = search(&m, &cluster(1, 8), SearchOptions::default());
    assert_eq!(r.best.expect("a plan").kind, CandidateKind::SingleModule);
}

#[test]
fn the_same_inputs_give_the_same_plans() {
    let m = vlm((12, 768, 12), (16, 2048, 16), 32, 2048, 2, 576);
    let c = cluster(1, 8);
    let a = search(&m, &c, SearchOptions::default());
    let b = search(&m, &c, SearchOptions::default());
    let plans = |r: &hetpar_planner::search::SearchResult| {
        let mut v: Vec<String> = r
            .best
            .iter()
            .chain(&r.top)
            .chain(&r.homogeneous)
            .map(|c| hetpar_ir::json::to_canonical_json(&c.plan))
            .collect();
        v.push(format!("{:?}", r.warnings));
        v
    };
    assert_eq!(plans(&a), plans(&b));
}

#[test]
fn a_plan_is_labelled_homogeneous_only_when_every_encoder_takes_the_language_models_layout() {
    use hetpar_planner::search::result::is_homogeneous;
    let m = vlm((12, 768, 12), (16, 2048, 16), 32, 2048, 1, 576);
    let r = search(
        &m,
        &cluster(1, 8),
        SearchOptions {
            heterogeneous: false,
            ..SearchOptions::default()
        },
    );
    let h = r.homogeneous.expect("a homogeneous plan").plan;
    assert!(is_homogeneous(&m, &h), "{:#?}", h.modules);
    let lm = h.modules["llm"].layout.clone();
    let mut tp = h.clone();
    tp.modules.get_mut("vision").unwrap().layout.tp = if lm.tp == 1 { 2 } else { 1 };
    assert!(!is_homogeneous(&m, &tp), "another tp");
    let mut cp = h.clone();
    cp.modules.get_mut("vision").unwrap().layout.cp = lm.cp * 2;
    assert!(!is_homogeneous(&m, &cp), "another cp");
}

#[test]
fn a_runnable_search_prices_no_communication_variant_and_sets_no_knob() {
    let m = vlm((12, 768, 12), (16, 2048, 16), 32, 2048, 1, 576);
    let c = cluster(1, 8);
    let free = search(&m, &c, SearchOptions::default());
    let runnable = search(
        &m,
        &c,
        SearchOptions {
            runnable: true,
            ..SearchOptions::default()
        },
    );
    // The free search prices each knob at least once per module (tp 2 layouts exist here).
    assert!(
        runnable.stats.candidates < free.stats.candidates,
        "runnable {} options priced, free {}",
        runnable.stats.candidates,
        free.stats.candidates
    );
    let cands = runnable
        .best
        .iter()
        .chain(&runnable.top)
        .chain(&runnable.homogeneous);
    for cand in cands {
        for (name, mp) in &cand.plan.modules {
            let l = &mp.layout;
            assert!(
                !l.tp_comm_overlap && l.cp_comm == Default::default(),
                "{name}: {l:?}"
            );
        }
    }
}
