//! The plan search's objective (`combine` over each module's terms) agrees with the whole-plan
//! closed form (`estimate_quick`): the same time where every replica of a module gets equal
//! work, and never less memory, in each arrangement the search produces.

use hetpar_cost::combine::{combine, Arrangement, Others};
use hetpar_cost::{estimate_quick, Constants, Options};
use hetpar_ir::{load_cluster, load_model, load_plan};

fn example(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// (model, cluster, plan, arrangement) of the examples, with equal items per sample.
const CASES: &[(&str, &str, &str, Arrangement)] = &[
    (
        "models/llava-1.5-7b.json",
        "clusters/h100-8.json",
        "plans/llava-1.5-7b-colocated-8.json",
        Arrangement::Colocated,
    ),
    (
        "models/vision-audio-7b.json",
        "clusters/h100-64.json",
        "plans/vision-audio-7b-colocated-64.json",
        Arrangement::Colocated,
    ),
    (
        "models/vit6b-70b-32k.json",
        "clusters/h100-1024.json",
        "plans/vit6b-70b-32k-noncolocated-1024.json",
        Arrangement::Disjoint,
    ),
];

#[test]
fn the_search_objective_equals_the_closed_form_time_and_bounds_its_memory() {
    for &(m, c, p, arr) in CASES {
        let (model, _) = load_model(&example(m)).unwrap_or_else(|d| panic!("{d}"));
        let cluster = load_cluster(&example(c)).unwrap_or_else(|d| panic!("{d}"));
        let (plan, _) = load_plan(&example(p), &model, &cluster).unwrap_or_else(|d| panic!("{d}"));
        let q = estimate_quick(&model, &cluster, &plan, &Options::default());
        let lm = model.language_model().index();
        let others: Vec<_> = q
            .modules
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lm)
            .map(|(_, t)| t)
            .collect();
        let (t, mem) = combine(
            arr,
            &q.modules[lm],
            plan.module(model.language_model()).layout.vpp,
            plan.passes().count(),
            Others::of(&others, 0.0),
        );
        let quick = q.time.as_secs().expect("feasible");
        assert!(
            (t - quick).abs() <= 1e-9 * quick,
            "{p}: combine {t:.9} s, estimate_quick {quick:.9} s"
        );
        let context = Constants::for_gpu(cluster.gpu_model).cuda_context_bytes;
        assert!(
            mem + context >= q.peak_memory_bytes * (1.0 - 1e-12),
            "{p}: combine {} bytes < estimate_quick {}",
            mem + context,
            q.peak_memory_bytes
        );
    }
}
