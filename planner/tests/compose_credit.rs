//! A fold is credited in the step: where the chosen program folds a projector's last
//! collectives into the boundary, the projector's cost drops them and the boundary is charged
//! the folded program whole. The step then falls by the collectives (priced here from the
//! rows, independently of the cost model's projector) less what the folded transfer costs over
//! the direct one; an e-graph that keeps every direct program gives the step of no
//! composition; and the plan search's terms price the fold as the simulation does.

use hetpar_cost::collective::{collective_time, CollectiveKind, Link};
use hetpar_cost::quick::module_terms;
use hetpar_cost::{estimate_quick, estimate_with_boundaries, Constants, Folds, Options};
use hetpar_ir::model::ModelGraph;
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, Plan};
use hetpar_planner::boundary::{
    boundary_step_time, boundary_times_limited, synthesize_all, BoundaryReshard, Limits,
};
use serde_json::json;

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The reference model with one image of 8 patches per sample (8 samples), and a plan on one
/// node: vision and a tp 2 projector (sequence parallel or not) over dp 2 on ranks 0-3, the
/// language model tp 2 pp 2 on ranks 4-7, one micro-batch: every step of the chain is on the
/// step's critical path.
fn setup(sp: bool) -> (ModelGraph, Cluster, Plan) {
    let mut m: serde_json::Value =
        serde_json::from_str(&example("models/reference-tiny.json")).unwrap();
    m["data"]["encoders"]["vision"] = json!({"items_per_sample": 1});
    m["modules"]["vision"]["tokens_per_item"] = json!(8);
    let model = load_model(&m.to_string()).unwrap().0;
    let cluster = load_cluster(&example("clusters/h100-8.json")).unwrap();
    let at = |layout: serde_json::Value, offset: u32| json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": 4}}});
    let plan = json!({
        "kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {
            "vision": at(json!({"dp": 4}), 0),
            "projector": at(json!({"tp": 2, "dp": 2, "sequence_parallel": sp}), 0),
            "llm": at(json!({"tp": 2, "pp": 2, "dp": 1, "sequence_parallel": true,
                             "micro_batch_size": 8}), 4),
        }
    });
    let plan = load_plan(&plan.to_string(), &model, &cluster).unwrap().0;
    (model, cluster, plan)
}

/// The projector's output collectives of one step, from its rows: 4 samples of 8 rows of
/// width 16 in fp32 per replica, one pass, over tp ranks 0 and 1. (forward, backward): the
/// all-reduce, or under sequence parallelism the reduce-scatter and the gradient's gather.
fn collectives(cluster: &Cluster, sp: bool) -> (f64, f64) {
    let bytes = (4 * 8 * 16 * 4) as f64;
    let c = Constants::for_gpu(cluster.gpu_model);
    let link = Link::of_group(cluster, &c, &[0, 1]);
    let t = |k| collective_time(k, bytes, 2, link);
    if sp {
        (
            t(CollectiveKind::ReduceScatter),
            t(CollectiveKind::AllGather),
        )
    } else {
        (t(CollectiveKind::AllReduce), 0.0)
    }
}

fn projector_boundary(all: Vec<BoundaryReshard>) -> BoundaryReshard {
    all.into_iter().find(|b| b.from == "projector").unwrap()
}

fn step(model: &ModelGraph, cluster: &Cluster, plan: &Plan, limits: Limits) -> f64 {
    let times = boundary_times_limited(model, cluster, plan, None, limits);
    estimate_with_boundaries(model, cluster, plan, &Options::default(), &times)
        .unwrap()
        .iteration_time_s
}

fn direct() -> Limits {
    Limits {
        compose: false,
        ..Limits::default()
    }
}

#[test]
fn a_fold_drops_the_step_by_the_producers_collectives_less_the_folded_transfers_extra_cost() {
    for sp in [false, true] {
        let (model, cluster, plan) = setup(sp);
        let chosen = projector_boundary(synthesize_all(
            &model,
            &cluster,
            &plan,
            Limits::default(),
            None,
        ));
        let kept = projector_boundary(synthesize_all(&model, &cluster, &plan, direct(), None));
        assert!(chosen.fold_forward, "sp {sp}: the reduction is folded");
        assert_eq!(chosen.fold_backward, sp, "sp {sp}: the gather is folded");
        let (rf, gb) = collectives(&cluster, sp);
        // What the folded transfers cost over the direct ones (each direction's transfer).
        let extra = (chosen.forward.charged_time_s - kept.forward.charged_time_s)
            + (chosen.backward.charged_time_s - kept.backward.charged_time_s);
        let want = rf + gb - extra;
        let got = step(&model, &cluster, &plan, direct())
            - step(&model, &cluster, &plan, Limits::default());
        assert!(want > 0.0, "sp {sp}: the fold pays here ({want})");
        assert!(
            (got - want).abs() <= 1e-12 + 1e-9 * want,
            "sp {sp}: the step drops by {got} s, expected {want} s ({rf} + {gb} - {extra})"
        );
    }
}

#[test]
fn an_egraph_that_keeps_every_direct_program_gives_the_step_without_composition() {
    for sp in [false, true] {
        let (model, cluster, plan) = setup(sp);
        // No rewrite at all: the e-graph can only extract the direct programs.
        let none = Limits {
            iterations: 0,
            ..Limits::default()
        };
        let b = projector_boundary(synthesize_all(&model, &cluster, &plan, none, None));
        assert!(!b.fold_forward && !b.fold_backward, "sp {sp}");
        let off = Limits {
            compose: false,
            ..none
        };
        assert_eq!(
            step(&model, &cluster, &plan, none),
            step(&model, &cluster, &plan, off),
            "sp {sp}"
        );
    }
}

/// LLaVA-1.5-7B's example with a tp 4 sequence-parallel projector beside the language model,
/// where the e-graph keeps both direct programs.
fn llava_kept() -> (ModelGraph, Cluster, Plan) {
    let model = load_model(&example("models/llava-1.5-7b.json")).unwrap().0;
    let cluster = load_cluster(&example("clusters/h100-8.json")).unwrap();
    let plan = load_plan(
        &example("plans/llava-1.5-7b-tp-projector-colocated-8.json"),
        &model,
        &cluster,
    )
    .unwrap()
    .0;
    (model, cluster, plan)
}

#[test]
fn the_search_prices_a_fold_as_the_simulation_charges_it() {
    // (plan, its projector's sequence parallelism where it folds: None where nothing folds)
    let cases = [
        (setup(false), Some(false)),
        (setup(true), Some(true)),
        (llava_kept(), None),
    ];
    for ((model, cluster, plan), folded) in cases {
        let opts = Options::default();
        let projector = model
            .modules()
            .iter()
            .find(|m| m.name == "projector")
            .unwrap()
            .id;
        let b = model
            .boundaries()
            .iter()
            .find(|b| b.from == projector)
            .unwrap()
            .id;
        // The search: the projector without its output collectives, the boundary whole.
        let every = Folds::every_projector(&model);
        let terms = module_terms(&model, &cluster, &plan, &opts, &every, projector).unwrap();
        let search = terms.work() + boundary_step_time(&model, &cluster, &plan, None, b);
        // The simulation's pricing: the projector with every collective (its cost when
        // nothing folds), the boundary charged its transfers, less what the folds take.
        let full = estimate_quick(&model, &cluster, &plan, &opts).modules[projector.index()].work();
        let times = boundary_times_limited(&model, &cluster, &plan, None, Limits::default());
        let charged: f64 = times.units[&b].iter().map(|(f, bk)| f + bk).sum();
        let fold = times.folds.of(projector);
        let (rf, gb) = folded.map_or((0.0, 0.0), |sp| collectives(&cluster, sp));
        assert_eq!(fold.forward, folded.is_some(), "{}", model.name());
        let want = full + charged - rf - gb;
        assert!(
            (search - want).abs() <= 1e-12 + 1e-9 * want,
            "{}: the search prices {search} s, the simulation {want} s",
            model.name()
        );
    }
}
