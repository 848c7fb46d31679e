//! Boundary synthesis: the oracle accepts every synthesized plan, bytes meet the lower bound,
//! colocated rows cost nothing, and each e-graph rule does what its name says.

use egg::{RecExpr, Runner};
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph, Plan};
use hetpar_planner::boundary::egraph::{
    self, classify, direct_term, Delivery, FlowAnalysis, FlowInfo, Links, Strategy as Chosen,
};
use hetpar_planner::boundary::oracle;
use hetpar_planner::boundary::{synthesize_all, BoundaryReshard, Limits};
use proptest::prelude::*;
use serde_json::{json, Value};

fn model(per_sample: &[Vec<u32>], merge: u32, seq: u32, two_encoders: bool) -> ModelGraph {
    let enc = |layers: u32| {
        json!({"kind": "vision_encoder",
            "transformer": {"layers": layers, "hidden": 32, "heads": 4, "ffn_hidden": 64, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional"},
            "embedding": {"kind": "linear", "in_features": 48}, "positions": {"kind": "rope"}})
    };
    let mut modules = json!({
        "vision": enc(2),
        "projector": {"kind": "projector", "mlp": {"widths": [32 * merge, 64, 64], "activation": "gelu", "token_merge": merge}},
        "llm": {"kind": "language_model",
            "transformer": {"layers": 4, "hidden": 64, "heads": 4, "ffn_hidden": 128, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "causal"},
            "positions": {"kind": "rope"}, "vocab_size": 128}
    });
    let mut boundaries = vec![
        json!({"from": "vision", "to": "projector", "landing": "rows"}),
        json!({"from": "projector", "to": "llm", "landing": "placeholders"}),
    ];
    let mut encoders = json!({"vision": {"per_sample": per_sample}});
    if two_encoders {
        let mut audio = enc(2);
        audio["kind"] = json!("audio_encoder");
        modules["audio"] = audio;
        modules["audio_projector"] =
            json!({"kind": "projector", "mlp": {"widths": [32, 64], "activation": "gelu"}});
        boundaries.push(json!({"from": "audio", "to": "audio_projector", "landing": "rows"}));
        boundaries.push(json!({"from": "audio_projector", "to": "llm", "landing": "placeholders"}));
        encoders["audio"] = json!({"items_per_sample": 1, "tokens_per_item": 8});
    }
    let m = json!({"kind": "model", "format_version": 1, "name": "t", "modules": modules, "boundaries": boundaries,
        "data": {"global_batch": per_sample.len(), "sequence_length": seq, "precision": "bf16", "optimizer": "adam", "encoders": encoders}});
    load_model(&m.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0
}

fn cluster(nodes: u32, gpus: u32) -> Cluster {
    load_cluster(&json!({"kind": "cluster", "format_version": 1, "name": "c", "nodes": nodes, "gpus_per_node": gpus, "gpu": {"model": "h100_sxm_80gb"}}).to_string())
        .unwrap()
}

fn plan(m: &ModelGraph, c: &Cluster, p: Value) -> Result<Plan, String> {
    load_plan(&p.to_string(), m, c)
        .map(|x| x.0)
        .map_err(|d| d.to_string())
}

/// Runs the oracle on every boundary, direction and micro-batch; returns the syntheses.
fn check_all(m: &ModelGraph, c: &Cluster, p: &Plan) -> Vec<BoundaryReshard> {
    let all = synthesize_all(m, c, p, Limits::default(), None);
    for b in &all {
        for r in [&b.forward, &b.backward] {
            // A folded forward moves partial sums: the reduction oracle checks it row by row.
            let folded =
                b.fold_forward && r.direction == hetpar_planner::boundary::Direction::Forward;
            if !folded {
                assert_eq!(
                    r.bytes, r.lower_bound_bytes,
                    "{} {:?}: bytes must meet the lower bound",
                    b.name, r.direction
                );
            }
            assert!(
                r.time_s <= r.egraph.direct_time_s * (1.0 + 1e-12),
                "{} {:?}: the chosen program costs more than the direct one",
                b.name,
                r.direction
            );
            for (segs, mb) in r.segments.iter().zip(&r.plans) {
                let errors = if folded {
                    oracle::check_reduce(segs, mb)
                } else {
                    oracle::check(segs, mb)
                };
                assert!(
                    errors.is_empty(),
                    "{} {:?} micro-batch {}: {:?}",
                    b.name,
                    r.direction,
                    mb.micro_batch,
                    &errors[..errors.len().min(5)]
                );
            }
        }
    }
    all
}

fn layout(tp: u32, cp: u32, pp: u32, dp: u32, sp: bool, mbs: u32) -> Value {
    json!({"tp": tp, "cp": cp, "pp": pp, "dp": dp, "sequence_parallel": sp, "micro_batch_size": mbs})
}

fn placement(offset: u32, count: u32) -> Value {
    json!({"ranks": {"offset": offset, "count": count}})
}

#[test]
fn identical_colocated_layouts_move_nothing() {
    let m = model(&vec![vec![16]; 8], 1, 64, false);
    let c = cluster(1, 8);
    let l = layout(2, 1, 1, 4, true, 1);
    let p = plan(&m, &c, json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "colocated_sequential"},
        "modules": {"vision": {"layout": l, "placement": placement(0, 8)}, "projector": {"layout": l, "placement": placement(0, 8)},
                    "llm": {"layout": l, "placement": placement(0, 8)}}}))
    .unwrap();
    let all = check_all(&m, &c, &p);
    let vp = all.iter().find(|b| b.name == "vision->projector").unwrap();
    assert_eq!(
        vp.forward.bytes, 0,
        "rows already on the GPU that needs them cost nothing"
    );
    assert_eq!(vp.backward.bytes, 0);
}

#[test]
fn colocated_fan_in_meets_the_lower_bound_and_beats_the_baseline() {
    // Encoder DP 8 into an LLM of TP 4 x DP 2 on the same 8 GPUs, uneven images per sample.
    let m = model(
        &[
            vec![16],
            vec![8, 8],
            vec![],
            vec![32],
            vec![8],
            vec![16, 8],
            vec![24],
            vec![8],
        ],
        1,
        128,
        false,
    );
    let c = cluster(1, 8);
    let enc = layout(1, 1, 1, 8, false, 1);
    let p = plan(&m, &c, json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "colocated_sequential"},
        "modules": {"vision": {"layout": enc, "placement": placement(0, 8)}, "projector": {"layout": enc, "placement": placement(0, 8)},
                    "llm": {"layout": layout(4, 1, 1, 2, true, 4), "placement": placement(0, 8)}}}))
    .unwrap();
    let all = check_all(&m, &c, &p);
    let b = all.iter().find(|b| b.name == "projector->llm").unwrap();
    assert!(b.forward.bytes > 0);
    assert!(
        b.forward.bytes < b.baseline.bytes,
        "{} vs baseline {}",
        b.forward.bytes,
        b.baseline.bytes
    );
}

#[test]
fn non_colocated_many_to_few_with_cp_and_sp_meets_the_lower_bound() {
    let m = model(
        &[
            vec![16, 16],
            vec![32],
            vec![8],
            vec![24, 8],
            vec![16],
            vec![8, 8, 8],
            vec![32],
            vec![16],
        ],
        1,
        256,
        false,
    );
    let c = cluster(2, 8);
    let enc = layout(1, 1, 1, 8, false, 1);
    let p = plan(&m, &c, json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"vision": {"layout": enc, "placement": placement(0, 8)}, "projector": {"layout": enc, "placement": placement(0, 8)},
                    "llm": {"layout": layout(2, 2, 2, 1, true, 8), "placement": placement(8, 8)}}}))
    .unwrap();
    let all = check_all(&m, &c, &p);
    let b = all.iter().find(|b| b.name == "projector->llm").unwrap();
    assert!(
        b.forward.network_bytes > 0,
        "disjoint nodes: the rows cross the network"
    );
    assert!(b.forward.bytes < b.baseline.bytes);
}

#[test]
fn replicated_cross_node_needs_go_once_per_node_then_over_nvlink() {
    // LLM TP 4 without sequence parallel on another node: every TP rank needs every row. Flows
    // of a few hundred KiB, where a network copy per rank costs more than one plus NVLink.
    let m = model(&vec![vec![1024, 1024]; 8], 1, 4096, false);
    let c = cluster(2, 8);
    let enc = layout(1, 1, 1, 8, false, 1);
    let p = plan(&m, &c, json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"vision": {"layout": enc, "placement": placement(0, 8)}, "projector": {"layout": enc, "placement": placement(0, 8)},
                    "llm": {"layout": layout(4, 1, 1, 2, false, 4), "placement": placement(8, 8)}}}))
    .unwrap();
    let all = check_all(&m, &c, &p);
    let b = all.iter().find(|b| b.name == "projector->llm").unwrap();
    assert_eq!(
        b.forward.network_bytes * 4,
        b.forward.bytes,
        "one network copy per destination node, 4 TP ranks served"
    );
    assert!(b.forward.broadcasts + b.forward.all_gathers > 0);
    assert!(
        b.forward.stats.rules_fired.contains_key("via-leader"),
        "{:?}",
        b.forward.stats
    );
}

#[test]
fn two_encoders_land_at_disjoint_positions_of_one_sequence() {
    let m = model(&vec![vec![16, 8]; 4], 1, 128, true);
    for s in 0..4 {
        let spans = hetpar_ir::model::placeholders::placeholder_spans(&m, s);
        assert_eq!(spans.len(), 3, "two images and one clip");
        for w in spans.windows(2) {
            assert!(w[0].position + w[0].len <= w[1].position, "{spans:?}");
        }
        assert!(spans.last().map_or(0, |x| x.position + x.len) <= 128);
        assert_ne!(
            spans[0].boundary, spans[1].boundary,
            "items alternate between encoders"
        );
    }
    let c = cluster(1, 8);
    let l = layout(1, 1, 1, 4, false, 1);
    let l2 = layout(2, 1, 1, 2, true, 2);
    let p = plan(&m, &c, json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"vision": {"layout": l, "placement": placement(0, 4)}, "projector": {"layout": l, "placement": placement(0, 4)},
                    "audio": {"layout": l, "placement": placement(0, 4)}, "audio_projector": {"layout": l, "placement": placement(0, 4)},
                    "llm": {"layout": l2, "placement": placement(4, 4)}}}))
    .unwrap();
    check_all(&m, &c, &p);
}

// ---------------------------------------------------------------------------------------------
// Each e-graph rule alone.

fn links() -> Links {
    let c = cluster(2, 8);
    let k = hetpar_cost::Constants::for_gpu(c.gpu_model);
    Links {
        network: hetpar_cost::collective::Link::of_class(&c, &k, true),
        nvlink: hetpar_cost::collective::Link::of_class(&c, &k, false),
    }
}

fn run_rule(name: &str, expr: &str) -> (egraph::DeliveryGraph, egg::Id) {
    let rules: Vec<_> = egraph::rules()
        .into_iter()
        .filter(|r| r.name.as_str() == name)
        .collect();
    assert_eq!(rules.len(), 1, "rule {name} exists");
    let e: RecExpr<Delivery> = expr.parse().unwrap();
    let runner = Runner::<Delivery, FlowAnalysis>::default()
        .with_expr(&e)
        .with_iter_limit(4)
        .run(&rules);
    let root = runner.roots[0];
    (runner.egraph, root)
}

fn equivalent(g: &egraph::DeliveryGraph, root: egg::Id, other: &str) -> bool {
    let e: RecExpr<Delivery> = other.parse().unwrap();
    g.lookup_expr(&e)
        .is_some_and(|id| g.find(id) == g.find(root))
}

#[test]
fn via_leader_rule_adds_a_relay_for_cross_node_flows_only() {
    let (g, r) = run_rule("via-leader", "(send holders needers (flow 1000 4 1 1))");
    assert!(equivalent(
        &g,
        r,
        "(send leader needers (send holders leader (flow 1000 4 1 1)))"
    ));
    let (g, r) = run_rule("via-leader", "(send holders needers (flow 1000 4 1 0))");
    assert!(
        !equivalent(
            &g,
            r,
            "(send leader needers (send holders leader (flow 1000 4 1 0)))"
        ),
        "inside a node a relay gains nothing"
    );
}

#[test]
fn via_parts_rule_adds_scatter_then_all_gather_for_several_needers_only() {
    let (g, r) = run_rule("via-parts", "(send holders needers (flow 1000 4 2 1))");
    assert!(equivalent(
        &g,
        r,
        "(send parts needers (send holders parts (flow 1000 4 2 1)))"
    ));
    let (g, r) = run_rule("via-parts", "(send holders needers (flow 1000 1 2 1))");
    assert!(
        !equivalent(
            &g,
            r,
            "(send parts needers (send holders parts (flow 1000 1 2 1)))"
        ),
        "one needer has nothing to gather"
    );
}

#[test]
fn extraction_relays_large_replicated_flows_and_keeps_small_ones_direct() {
    let big = FlowInfo {
        bytes: 64 << 20,
        k: 8,
        holders: 1,
        cross: true,
    };
    let single = FlowInfo {
        bytes: 64 << 20,
        k: 1,
        holders: 1,
        cross: true,
    };
    let (chosen, stats) = egraph::choose(&[big, single], links(), Limits::default());
    assert_ne!(
        chosen[0],
        Chosen::Direct,
        "8 network copies lose to one copy plus NVLink"
    );
    assert_eq!(chosen[1], Chosen::Direct);
    assert!(stats.stop_reason == "saturated", "{}", stats.stop_reason);
    assert_eq!(classify(&direct_term(single)), Chosen::Direct);
}

#[test]
fn search_limits_are_reported_as_the_stop_reason() {
    let shapes: Vec<FlowInfo> = (1..200)
        .map(|i| FlowInfo {
            bytes: i * 4096,
            k: 8,
            holders: 2,
            cross: true,
        })
        .collect();
    let (_, stats) = egraph::choose(
        &shapes,
        links(),
        Limits {
            iterations: 1,
            nodes: 100_000,
            compose: true,
        },
    );
    assert!(
        stats.stop_reason == "iteration limit (1)",
        "{}",
        stats.stop_reason
    );
    let (_, stats) = egraph::choose(
        &shapes,
        links(),
        Limits {
            iterations: 10,
            nodes: 500,
            compose: true,
        },
    );
    assert!(
        stats.stop_reason.starts_with("node limit ("),
        "{}",
        stats.stop_reason
    );
}

// ---------------------------------------------------------------------------------------------
// Random layouts, placements and token counts.

#[derive(Debug, Clone)]
struct Case {
    items: Vec<Vec<u32>>,
    merge: u32,
    enc: (u32, u32, u32, bool),
    llm: (u32, u32, u32, bool),
    micro_batches: u32,
    /// Micro-batches per encoder pass, the pass size (capped at the micro-batches of a step).
    per_pass: u32,
    placement: u8,
}

fn case() -> impl Strategy<Value = Case> {
    let items = prop::collection::vec(
        prop::collection::vec(prop::sample::select(vec![8u32, 16, 24, 32]), 0..3),
        8,
    );
    let enc = (
        prop::sample::select(vec![1u32, 2]),
        prop::sample::select(vec![1u32, 2]),
        prop::sample::select(vec![1u32, 2]),
        any::<bool>(),
    );
    let llm = (
        prop::sample::select(vec![1u32, 2, 4]),
        prop::sample::select(vec![1u32, 2]),
        prop::sample::select(vec![1u32, 2]),
        any::<bool>(),
    );
    (
        items,
        prop::sample::select(vec![1u32, 2]),
        enc,
        llm,
        prop::sample::select(vec![1u32, 2, 4]),
        prop::sample::select(vec![1u32, 2, 4]),
        0u8..4,
    )
        .prop_map(
            |(items, merge, enc, llm, micro_batches, per_pass, placement)| Case {
                items,
                merge,
                enc,
                llm,
                micro_batches,
                per_pass,
                placement,
            },
        )
}

/// A random plan: colocated on 8 ranks, disjoint halves, partially overlapping, or an
/// encoder of dp 3 (items that do not divide) beside the language model; encoders and
/// projectors deal their items per encoder pass of `per_pass` micro-batches.
fn build(case: &Case) -> Option<(ModelGraph, Cluster, Plan)> {
    let seq = 256;
    let m = model(&case.items, case.merge, seq, false);
    let c = cluster(2, 4);
    let (ranks_e, off_e, ranks_l, off_l, kind) = match case.placement {
        0 => (8u32, 0, 8u32, 0, "colocated_chunked"),
        1 => (4, 0, 4, 4, "pipeline_1f1b"),
        2 => (4, 0, 4, 2, "pipeline_1f1b"),
        _ => (3, 0, 4, 4, "pipeline_1f1b"),
    };
    let b = case.items.len() as u32;
    let enc_axes = if ranks_e == 3 {
        (1, 1, 1, false)
    } else {
        case.enc
    };
    let (tp, cp, pp, sp) = enc_axes;
    if !ranks_e.is_multiple_of(tp * cp * pp) {
        return None;
    }
    let enc = layout(tp, cp, pp, ranks_e / (tp * cp * pp), sp && tp > 1, 1);
    let mut proj = enc.clone();
    proj["cp"] = json!(1);
    proj["dp"] = json!(ranks_e / (tp * pp));
    let (tp, cp, pp, sp) = case.llm;
    let per = tp * cp * pp;
    if !ranks_l.is_multiple_of(per) {
        return None;
    }
    let dp = ranks_l / per;
    if !b.is_multiple_of(case.micro_batches * dp) {
        return None;
    }
    let llm = layout(tp, cp, pp, dp, sp && tp > 1, b / (case.micro_batches * dp));
    let per_pass = case.per_pass.min(case.micro_batches);
    let p = json!({"kind": "plan", "format_version": 1,
        "schedule": {"kind": kind, "encoder_chunk": per_pass},
        "modules": {"vision": {"layout": enc, "placement": placement(off_e, ranks_e)},
                    "projector": {"layout": proj, "placement": placement(off_e, ranks_e)},
                    "llm": {"layout": llm, "placement": placement(off_l, ranks_l)}}});
    let plan = plan(&m, &c, p).ok()?;
    Some((m, c, plan))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn every_synthesized_plan_delivers_exactly_the_needed_rows_at_the_lower_bound(case in case()) {
        let built = build(&case);
        prop_assume!(built.is_some());
        let (m, c, p) = built.unwrap();
        check_all(&m, &c, &p);
    }
}
