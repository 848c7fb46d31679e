//! The search is exact with respect to its closed-form objective: brute force over the whole
//! space of a small model on 2 nodes of 2 GPUs (every arrangement and split, every language-model
//! layout with every split of its layers over its stages, every pass size, every layout of
//! every other module, each with every communication variant), each plan priced directly (`objective::closed_form`), finds exactly
//! the search's closed-form optimum; and simulated, finds nothing more than 1% faster than the
//! search's simulated winner.

use std::collections::BTreeMap;

use hetpar_cost::combine::Arrangement;
use hetpar_cost::{estimate_with_boundaries, Options};
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::layout::LayoutSpec;
use hetpar_ir::plan::PlanFile;
use hetpar_ir::{load_cluster, load_model, Cluster, ModelGraph, ModuleId, Plan};
use hetpar_planner::boundary::boundary_times;
use hetpar_planner::search::lm::{ranks_of, schedule};
use hetpar_planner::search::objective::closed_form;
use hetpar_planner::search::price::entry;
use hetpar_planner::search::space::{
    comm_variants, item_layouts, lm_dps, lm_layouts, micro_batches, pass_sizes, Bounds,
};
use hetpar_planner::search::{baseline, lm, search, SearchOptions};
use serde_json::json;

fn small() -> (ModelGraph, Cluster) {
    let m = json!({"kind": "model", "format_version": 1, "name": "small",
        "modules": {
            "vision": {"kind": "vision_encoder",
                "transformer": {"layers": 2, "hidden": 512, "heads": 8, "ffn_hidden": 2048, "ffn_kind": "gelu_mlp", "norm": "layer_norm", "attention": "bidirectional", "qkv_bias": true, "linear_bias": true},
                "embedding": {"kind": "patch", "patch_size": 14, "channels": 3}, "positions": {"kind": "rope"}},
            "projector": {"kind": "projector", "mlp": {"widths": [512, 1024, 1024], "activation": "gelu"}},
            "llm": {"kind": "language_model",
                "transformer": {"layers": 4, "hidden": 1024, "heads": 8, "ffn_hidden": 4096, "ffn_kind": "swiglu", "norm": "rms_norm", "attention": "causal"},
                "positions": {"kind": "rope"}, "vocab_size": 32000}},
        "boundaries": [{"from": "vision", "to": "projector", "landing": "rows"}, {"from": "projector", "to": "llm", "landing": "placeholders"}],
        "data": {"global_batch": 4, "sequence_length": 1024, "precision": "bf16", "optimizer": "adam",
                 "encoders": {"vision": {"items_per_sample": 3, "tokens_per_item": 128}}}});
    let model = load_model(&m.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0;
    // Two nodes of two GPUs on a slow network: where rows cross it the boundaries cost, so
    // leaving them out of the objective changes the optimum.
    let c = json!({"kind": "cluster", "format_version": 1, "name": "c", "nodes": 2, "gpus_per_node": 2, "gpu": {"model": "h100_sxm_80gb"},
        "inter_node": {"bandwidth_gb_per_s": 1, "latency_us": 10}});
    (model, load_cluster(&c.to_string()).unwrap())
}

/// Every composition of `layers` into `pp` stages of at least `min` layers.
fn compositions(layers: u32, pp: u32, min: u32) -> Vec<Vec<u32>> {
    if pp == 1 {
        return if layers >= min {
            vec![vec![layers]]
        } else {
            vec![]
        };
    }
    let mut out = Vec::new();
    for first in min..=layers.saturating_sub(min * (pp - 1)) {
        for mut rest in compositions(layers - first, pp - 1, min) {
            rest.insert(0, first);
            out.push(rest);
        }
    }
    out
}

/// Every stage split of a language-model layout (chunked as the search chunks them).
fn splits(l: &LayoutSpec, layers: u32) -> Vec<LayoutSpec> {
    if l.pp == 1 {
        return vec![l.clone()];
    }
    compositions(layers, l.pp, l.vpp)
        .into_iter()
        .filter_map(|n| hetpar_planner::search::stages::chunked(&n, l.vpp))
        .map(|chunks| {
            let mut x = l.clone();
            x.stage_layers = chunks.iter().any(|&c| c != chunks[0]).then_some(chunks);
            x
        })
        .collect()
}

/// Every plan of the space.
fn every_plan(model: &ModelGraph, cluster: &Cluster, opts: &SearchOptions) -> Vec<PlanFile> {
    let world = 4u32;
    let lm_id = model.language_model();
    let layers = model.module(lm_id).layer_count();
    let items: Vec<ModuleId> = model
        .modules()
        .iter()
        .filter(|m| model.item_origin(m.id).is_some())
        .map(|m| m.id)
        .collect();
    let mut out = Vec::new();
    for arr in [
        Arrangement::Colocated,
        Arrangement::Disjoint,
        Arrangement::Nested,
    ] {
        let b = Bounds {
            gpus_per_node: cluster.gpus_per_node,
            max_pp: opts.max_pp,
            max_vpp: if arr == Arrangement::Disjoint {
                opts.max_vpp
            } else {
                1
            },
            allow_cp: true,
            max_mbs: opts.max_micro_batch_size,
        };
        for dp in lm_dps(model.data().global_batch, world) {
            for l in lm_layouts(model, model.module(lm_id), dp, b) {
                let Some(ranks) = ranks_of(arr, &l, world) else {
                    continue;
                };
                let o = lm::LmOption {
                    layout: l.clone(),
                    ranks,
                    terms: Default::default(),
                };
                let mut options: BTreeMap<ModuleId, Vec<LayoutSpec>> = match arr {
                    Arrangement::Nested => baseline::options_for(model, &o, b),
                    _ => items
                        .iter()
                        .map(|&m| {
                            (
                                m,
                                item_layouts(model, model.module(m), ranks.others.count, b),
                            )
                        })
                        .collect(),
                };
                for v in options.values_mut() {
                    *v = v
                        .iter()
                        .flat_map(|l| comm_variants(l, opts.runnable))
                        .collect();
                }
                let m_count = micro_batches(model, &l);
                for lx in splits(&l, layers)
                    .iter()
                    .flat_map(|x| comm_variants(x, opts.runnable))
                {
                    for k in pass_sizes(m_count, opts.max_pass_size) {
                        let sched = schedule(model, arr, &lx, k);
                        let mut combos: Vec<Vec<(ModuleId, LayoutSpec)>> = vec![vec![]];
                        for &m in &items {
                            combos = combos
                                .into_iter()
                                .flat_map(|c| {
                                    options[&m].iter().map(move |x| {
                                        let mut c = c.clone();
                                        c.push((m, x.clone()));
                                        c
                                    })
                                })
                                .collect();
                        }
                        for c in combos {
                            let mut modules = BTreeMap::new();
                            modules.insert(
                                model.module(lm_id).name.clone(),
                                entry(lx.clone(), ranks.lm),
                            );
                            for (m, x) in c {
                                modules
                                    .insert(model.module(m).name.clone(), entry(x, ranks.others));
                            }
                            out.push(PlanFile {
                                kind: "plan".into(),
                                format_version: FORMAT_VERSION,
                                model: None,
                                cluster: None,
                                cluster_gpus: None,
                                schedule: sched.clone(),
                                modules,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The best closed-form and (when `simulate`) the best simulated time of `plans` that fit,
/// and how many of them the verifier accepts.
fn brute(
    model: &ModelGraph,
    cluster: &Cluster,
    plans: &[PlanFile],
    simulate: bool,
) -> (f64, f64, usize) {
    let cost = Options::default();
    let (mut best_cf, mut best_sim, mut count) = (f64::INFINITY, f64::INFINITY, 0usize);
    for file in plans {
        let Ok((plan, _)) = Plan::build(file.clone(), model, cluster) else {
            continue;
        };
        count += 1;
        let Some((t, mem)) = closed_form(model, cluster, &plan, &cost) else {
            continue;
        };
        if mem <= cluster.gpu.hbm_bytes {
            best_cf = best_cf.min(t);
        }
        if !simulate {
            continue;
        }
        let times = boundary_times(model, cluster, &plan);
        if let Ok(e) = estimate_with_boundaries(model, cluster, &plan, &cost, &times) {
            if e.feasible {
                best_sim = best_sim.min(e.iteration_time_s);
            }
        }
    }
    (best_cf, best_sim, count)
}

/// The search's closed-form optimum and simulated winner, and brute force's over
/// `every_plan` (simulated too when `simulate`), on both cores.
fn compare(opts: SearchOptions, simulate: bool) -> (f64, f64, f64, f64, usize) {
    let (model, cluster) = small();
    let r = search(&model, &cluster, opts);
    let searched = r.stats.closed_form_best_s.expect("the search found plans");
    let winner = r
        .best
        .as_ref()
        .and_then(|b| b.estimate.as_ref())
        .expect("a simulated winner")
        .iteration_time_s;
    let plans = every_plan(&model, &cluster, &opts);
    let half = plans.len().div_ceil(2);
    let results: Vec<(f64, f64, usize)> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .chunks(half.max(1))
            .map(|part| scope.spawn(|| brute(&model, &cluster, part, simulate)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let best_cf = results.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let best_sim = results.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
    let count: usize = results.iter().map(|r| r.2).sum();
    eprintln!("brute force: {count} plans");
    (searched, winner, best_cf, best_sim, count)
}

#[test]
fn brute_force_finds_exactly_the_searched_closed_form_optimum_and_no_faster_simulated_plan() {
    // A space brute force covers in seconds: pipelines of up to 3 stages, vpp up to 2,
    // micro-batches of up to 2 samples, pass sizes up to 2 (and the whole step); the
    // communication the runtime executes (the variants: the next test).
    let opts = SearchOptions {
        max_pp: 3,
        max_vpp: 2,
        max_micro_batch_size: 2,
        max_pass_size: 2,
        runnable: true,
        ..SearchOptions::default()
    };
    let (searched, winner, best_cf, best_sim, count) = compare(opts, true);
    assert!(count > 500, "brute force covered only {count} plans");
    assert!(
        (searched - best_cf).abs() <= 1e-9 * best_cf,
        "closed form: the search's optimum {searched:.9} s, brute force's {best_cf:.9} s over {count} plans"
    );
    assert!(
        winner <= best_sim * 1.01,
        "simulated: the search's winner {winner:.6} s, brute force's best {best_sim:.6} s over {count} plans"
    );
}

#[test]
fn with_communication_variants_brute_force_finds_exactly_the_searched_closed_form_optimum() {
    // Every module with every communication variant multiplies the plans: a smaller space
    // (unpipelined, one sample per micro-batch), in closed form.
    let opts = SearchOptions {
        max_pp: 1,
        max_vpp: 1,
        max_micro_batch_size: 1,
        max_pass_size: 1,
        ..SearchOptions::default()
    };
    let (searched, _, best_cf, _, count) = compare(opts, false);
    assert!(count > 500, "brute force covered only {count} plans");
    assert!(
        (searched - best_cf).abs() <= 1e-9 * best_cf,
        "closed form: the search's optimum {searched:.9} s, brute force's {best_cf:.9} s over {count} plans"
    );
}
