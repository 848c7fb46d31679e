//! The cost model fitted to a committed autotune log (`tests/fixtures/autotune/`: a CPU profile
//! and every measured round of colocated and pipelined plans on two CPU ranks), so no time is
//! measured here. After the fit, pipelined plans are predicted as well as colocated ones when
//! both are fitted to, and held-out pipelines far better than before gradient sums were priced
//! one tensor at a time (`docs/autotune.md`, "Pipelined plans").
//!
//! `regenerate_the_fixture` (ignored) measures the plans again and rewrites the log.

use std::collections::BTreeMap;

use hetpar::autotune::{fit_plans, read_log, scale_rounds, AutotuneOptions, Measured, Role, Row};
use hetpar::cost::calibration::Calibration;
use hetpar::ir::plan::PlanFile;
use serde_json::{json, Value};

mod common;
use common::root;

const MODEL: &str = include_str!("../examples/models/reference-tiny.json");
const CLUSTER: &str = include_str!("../examples/clusters/cpu-2.json");
const DIR: &str = "tests/fixtures/autotune";

fn plan(schedule: &str, modules: Value) -> PlanFile {
    serde_json::from_value(json!({
        "kind": "plan", "format_version": 1, "model": "reference-tiny", "cluster": "cpu-2",
        "schedule": {"kind": schedule}, "modules": modules,
    }))
    .expect("a plan file")
}

fn at(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

/// The measured plans: colocated ones over both ranks, and pipelines with the encoder and
/// projector on rank 0, the language model on rank 1.
fn plans() -> Vec<PlanFile> {
    let dp = |mbs: u32| json!({"dp": 2, "micro_batch_size": mbs});
    let one = |mbs: u32| json!({"dp": 1, "micro_batch_size": mbs});
    let mut v = Vec::new();
    for (llm, projector) in [(4, dp(1)), (2, dp(1)), (1, dp(1))] {
        v.push(plan(
            "colocated_sequential",
            json!({"vision": at(dp(1), 0, 2), "projector": at(projector, 0, 2),
                   "llm": at(dp(llm), 0, 2)}),
        ));
    }
    v.push(plan(
        "colocated_sequential",
        json!({"vision": at(dp(1), 0, 2), "projector": at(dp(1), 0, 2),
               "llm": at(json!({"cp": 2, "dp": 1, "micro_batch_size": 2}), 0, 2)}),
    ));
    v.push(plan(
        "colocated_sequential",
        json!({"vision": at(json!({"tp": 2, "dp": 1, "sequence_parallel": true}), 0, 2),
               "projector": at(dp(1), 0, 2),
               "llm": at(json!({"tp": 2, "dp": 1, "sequence_parallel": true,
                                "micro_batch_size": 8}), 0, 2)}),
    ));
    for llm in [1, 2, 4, 8] {
        v.push(plan(
            "pipeline_1f1b",
            json!({"vision": at(one(1), 0, 1), "projector": at(one(1), 0, 1),
                   "llm": at(one(llm), 1, 1)}),
        ));
    }
    v
}

fn is_pipeline(p: &PlanFile) -> bool {
    !p.schedule.kind.is_colocated()
}

/// The log's measurements, one per plan of `plans()`, each the median of its scaled rounds.
fn measured() -> Vec<Measured> {
    let log = read_log(&root().join(DIR).join("cpu-2-log.jsonl"));
    let mut by_plan: BTreeMap<String, Vec<Measured>> = BTreeMap::new();
    for m in log.into_values() {
        by_plan
            .entry(hetpar::ir::json::to_canonical_json(&m.plan))
            .or_default()
            .push(m);
    }
    let per_round: Vec<Vec<Measured>> = plans()
        .iter()
        .map(|p| {
            let mut v = by_plan[&hetpar::ir::json::to_canonical_json(p)].clone();
            v.sort_by_key(|m| m.round);
            v
        })
        .collect();
    scale_rounds(&per_round).0
}

/// Fits to the plans `fitted` says, and returns every plan's row.
fn fit_with(fitted: &dyn Fn(&PlanFile) -> bool) -> Vec<Row> {
    let (model, _) = hetpar::ir::load_model(MODEL).unwrap();
    let mut cluster = hetpar::ir::load_cluster(CLUSTER).unwrap();
    let text = std::fs::read_to_string(root().join(DIR).join("cpu-2-profile.json")).unwrap();
    let profile: Calibration = serde_json::from_str(&text).expect("a calibration");
    let mut opts = hetpar::cost::Options::default();
    profile.apply(&mut cluster, &mut opts).unwrap();
    let plans: Vec<_> = plans()
        .into_iter()
        .zip(measured())
        .map(|(p, m)| {
            let role = if fitted(&p) {
                Role::Fitted
            } else {
                Role::HeldOut
            };
            (p, role, m)
        })
        .collect();
    let before = opts.constants.unwrap();
    let (rows, _) = fit_plans(
        &model,
        &cluster,
        before,
        &AutotuneOptions::default(),
        &plans,
    )
    .expect("the plans price");
    for r in &rows {
        eprintln!(
            "{:>8?} before {:+5.0}% after {:+5.0}%  {}",
            r.role,
            (r.predicted_before_s / r.measured.step_s - 1.0) * 100.0,
            (r.predicted_after_s / r.measured.step_s - 1.0) * 100.0,
            r.label
        );
    }
    rows
}

fn worst(rows: &[Row], pick: &dyn Fn(&Row) -> bool) -> f64 {
    rows.iter()
        .filter(|r| pick(r))
        .map(|r| (r.predicted_after_s / r.measured.step_s - 1.0).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fitted_together_pipelined_plans_land_within_20_percent_and_every_plan_within_25() {
    let rows = fit_with(&|_| true);
    let pipe = worst(&rows, &|r| is_pipeline(&r.measured.plan));
    let all = worst(&rows, &|_| true);
    assert!(pipe <= 0.20, "pipelined plans off by up to {pipe:.2}");
    assert!(all <= 0.25, "plans off by up to {all:.2}");
}

/// Out of sample: the colocated plans alone do not tell compute from messages as well as both
/// kinds together, so the bound is looser (`docs/autotune.md`); before the per-tensor sums,
/// 73% to 97%.
#[test]
fn fitted_to_colocated_plans_alone_held_out_pipelines_land_within_60_percent() {
    let rows = fit_with(&|p| !is_pipeline(p));
    let held = worst(&rows, &|r| r.role == Role::HeldOut);
    assert!(
        held <= 0.60,
        "held-out pipelined plans off by up to {held:.2}"
    );
}

/// Measures every plan of `plans()` in 7 rounds on this machine and rewrites the fixture
/// (profile and log): `cargo test --test autotune_fit -- --ignored`.
#[test]
#[ignore]
fn regenerate_the_fixture() {
    let (model, _) = hetpar::ir::load_model(MODEL).unwrap();
    let cluster = hetpar::ir::load_cluster(CLUSTER).unwrap();
    let dir = root().join(DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let profile = hetpar::autotune::profile_cpu(&cluster).unwrap();
    let text = hetpar::ir::json::to_canonical_json(&profile);
    std::fs::write(dir.join("cpu-2-profile.json"), text).unwrap();
    let mut lines = String::new();
    for round in 0..7 {
        for p in plans() {
            let mut m = hetpar::autotune::measure(&model, &cluster, &p, 6).unwrap();
            m.round = round;
            lines += &format!("{}\n", serde_json::to_string(&m).unwrap());
        }
    }
    std::fs::write(dir.join("cpu-2-log.jsonl"), lines).unwrap();
}
