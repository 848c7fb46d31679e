//! The gain warning uses the cost model's stated time error for the cluster's GPU model
//! (`hetpar_cost::stated_error`): a gain over the homogeneous plan below it is flagged, one
//! above it is not.

use hetpar_cost::{estimate, stated_error, Options};
use hetpar_ir::gpu::GpuModel;
use hetpar_ir::plan::PlanFile;
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph};
use hetpar_planner::search::warnings::warnings;
use hetpar_planner::search::{Candidate, CandidateKind};

const MODEL: &str = include_str!("../../examples/models/tiny-uneven.json");
const PLAN: &str = include_str!("../../examples/plans/tiny-uneven-colocated-8.json");

/// One node of 8 `gpu`s, named as the example plan names its cluster.
fn cluster(gpu: GpuModel) -> Cluster {
    let text = format!(
        r#"{{"kind": "cluster", "format_version": 1, "name": "h100-8", "nodes": 1,
            "gpus_per_node": 8, "gpu": {{"model": "{}"}}}}"#,
        gpu.as_str()
    );
    load_cluster(&text).expect("a valid cluster")
}

/// The best plan, and a different homogeneous plan `gain` slower (same estimate otherwise).
fn pair(model: &ModelGraph, cluster: &Cluster, gain: f64) -> (Candidate, Candidate) {
    let (plan, _) = load_plan(PLAN, model, cluster).expect("the example plan loads");
    let e = estimate(model, cluster, &plan, &Options::default()).expect("it estimates");
    let file: PlanFile = plan.file().clone();
    let mut other = file.clone();
    other.schedule.encoder_chunk = Some(1);
    let candidate = |plan: PlanFile, time: f64| {
        let mut e = e.clone();
        e.iteration_time_s = time;
        Candidate {
            kind: CandidateKind::Homogeneous,
            plan,
            quick_time_s: time,
            quick_peak_memory_bytes: 0.0,
            estimate: Some(e),
            modules: Vec::new(),
        }
    };
    let t = e.iteration_time_s;
    (candidate(file, t), candidate(other, t * (1.0 + gain)))
}

fn gain_warning(gpu: GpuModel, gain: f64) -> Option<String> {
    let model = load_model(MODEL).expect("the example model loads").0;
    let c = cluster(gpu);
    let (best, homogeneous) = pair(&model, &c, gain);
    warnings(&model, &c, Some(&best), Some(&homogeneous))
        .into_iter()
        .find(|w| w.contains("gain over the homogeneous plan"))
}

#[test]
fn a_gain_below_the_gpus_stated_time_error_is_flagged_with_that_error() {
    let h100 = stated_error(GpuModel::H100Sxm80gb).time;
    let w = gain_warning(GpuModel::H100Sxm80gb, 0.5 * h100).expect("a gain warning");
    assert!(w.contains(&format!("{:.0}%", 100.0 * h100)), "{w}");
    assert!(w.contains("h100_sxm_80gb"), "{w}");
}

#[test]
fn a_gain_above_the_gpus_stated_time_error_is_not_flagged() {
    let h100 = stated_error(GpuModel::H100Sxm80gb).time;
    assert_eq!(gain_warning(GpuModel::H100Sxm80gb, 1.5 * h100), None);
}

#[test]
fn the_same_gain_is_flagged_on_a_gpu_whose_stated_error_is_wider() {
    let (h100, b200) = (
        stated_error(GpuModel::H100Sxm80gb).time,
        stated_error(GpuModel::B200).time,
    );
    let gain = 0.5 * (h100 + b200);
    assert_eq!(gain_warning(GpuModel::H100Sxm80gb, gain), None);
    assert!(gain_warning(GpuModel::B200, gain).is_some());
}
