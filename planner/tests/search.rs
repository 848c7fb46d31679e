//! The plan search is sane: its plans pass the verifier and fit memory, it returns the
//! homogeneous optimum when heterogeneity is off, it claims no large gain for a tiny encoder
//! beside a large LLM, it keeps a large encoder's CP at 1 under a long-context LLM, and on a
//! small space it finds what brute force finds.

use std::collections::BTreeMap;

use hetpar_cost::{estimate_with_boundaries, Options};
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::plan::{ModulePlanSpec, PlanFile, ScheduleKind, ScheduleSpec};
use hetpar_ir::{load_cluster, load_model, Cluster, ModelGraph, Plan};
use hetpar_planner::boundary::boundary_times;
use hetpar_planner::search::space::{layouts, micro_batch_counts, Bounds};
use hetpar_planner::search::{entry, search, upstream_splits, CandidateKind, SearchOptions};
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
fn with_heterogeneity_off_the_search_returns_the_homogeneous_optimum() {
    let m = vlm((12, 768, 12), (16, 2048, 16), 32, 2048, 1, 576);
    let c = cluster(1, 8);
    let r = search(
        &m,
        &c,
        SearchOptions {
            heterogeneous: false,
            ..SearchOptions::default()
        },
    );
    let best = r.best.expect("a plan");
    let h = r.homogeneous.expect("a homogeneous plan");
    assert_eq!(best.kind, CandidateKind::Homogeneous);
    assert_eq!(best.plan, h.plan);
    // Every module takes the language model's tensor parallelism.
    let tp = best.plan.modules["llm"].layout.tp;
    assert!(best
        .plan
        .modules
        .values()
        .all(|p| p.layout.tp == tp || p.layout.tp == 1));
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
    assert!(
        gain >= 0.0,
        "the best plan is never slower than the homogeneous one"
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
    assert_eq!(
        best.plan.modules["vision"].layout.cp, 1,
        "CP on a 1024-token image is pure overhead"
    );
    assert_eq!(best.kind, CandidateKind::Heterogeneous, "{:?}", best.plan);
}

#[test]
fn brute_force_over_a_small_space_finds_no_better_plan_than_the_search() {
    // Four GPUs, a small VLM: every combination of micro-batch count, placement, module
    // layouts and schedule, each simulated.
    let m = vlm((4, 256, 4), (8, 512, 8), 8, 1024, 1, 256);
    let c = cluster(1, 4);
    let r = search(&m, &c, SearchOptions::default());
    let searched = time(r.best.as_ref().expect("a plan"));
    let world = 4;
    let g = 4;
    let mut best = f64::INFINITY;
    let mut count = 0;
    for mc in micro_batch_counts(8) {
        let mut placements = vec![0u32];
        placements.extend(upstream_splits(&m, &c, world));
        for n_up in placements {
            let colocated = n_up == 0;
            let (up_n, lm_off, lm_n) = if colocated {
                (world, 0, world)
            } else {
                (n_up, n_up, world - n_up)
            };
            let up = Bounds {
                gpus_per_node: g,
                allow_pp: false,
                allow_vpp: false,
                allow_cp: false,
            };
            let lb = Bounds {
                gpus_per_node: g,
                allow_pp: true,
                allow_vpp: !colocated,
                allow_cp: true,
            };
            let enc = layouts(&m, m.module_by_name("vision").unwrap(), up_n, mc, up);
            let proj = layouts(&m, m.module_by_name("projector").unwrap(), up_n, mc, up);
            let llm = layouts(&m, m.module_by_name("llm").unwrap(), lm_n, mc, lb);
            for le in &enc {
                for lp in &proj {
                    for ll in &llm {
                        let kinds: Vec<ScheduleSpec> = if colocated {
                            let mut v = vec![ScheduleSpec {
                                kind: ScheduleKind::ColocatedThreePhase,
                                encoder_chunk: None,
                            }];
                            if ll.pp == 1 {
                                v.push(ScheduleSpec {
                                    kind: ScheduleKind::ColocatedSequential,
                                    encoder_chunk: None,
                                });
                            }
                            v
                        } else if ll.vpp > 1 {
                            vec![ScheduleSpec {
                                kind: ScheduleKind::PipelineInterleaved,
                                encoder_chunk: None,
                            }]
                        } else {
                            vec![ScheduleSpec {
                                kind: ScheduleKind::Pipeline1f1b,
                                encoder_chunk: None,
                            }]
                        };
                        for sch in kinds {
                            let modules: BTreeMap<String, ModulePlanSpec> = [
                                ("vision".to_string(), entry(le.clone(), 0, up_n)),
                                ("projector".to_string(), entry(lp.clone(), 0, up_n)),
                                ("llm".to_string(), entry(ll.clone(), lm_off, lm_n)),
                            ]
                            .into_iter()
                            .collect();
                            let file = PlanFile {
                                kind: "plan".into(),
                                format_version: FORMAT_VERSION,
                                model: None,
                                cluster: None,
                                schedule: sch,
                                modules,
                            };
                            let Ok((plan, _)) = Plan::build(file, &m, &c) else {
                                continue;
                            };
                            count += 1;
                            let times = boundary_times(&m, &c, &plan);
                            if let Ok(e) =
                                estimate_with_boundaries(&m, &c, &plan, &Options::default(), &times)
                            {
                                if e.feasible {
                                    best = best.min(e.iteration_time_s);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(count > 100, "brute force covered {count} plans");
    assert!(
        searched <= best * 1.02,
        "the search found {searched:.6} s, brute force {best:.6} s over {count} plans"
    );
}
