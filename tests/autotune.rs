//! Autotune on the CPU backend, on committed measurements: fitting the cost model's constants
//! to the measured steps of the search's candidates brings the predictions of held-out plans
//! (measured, not fitted to; a pipelined one among them) within 25% of what they measured, a
//! pipelined candidate's too, and the calibrated choice is at least as fast, measured, as the
//! uncalibrated one.
//!
//! The measurements are a fixture (`tests/fixtures/autotune/`: the machine's profile and the
//! autotune log of `tiny-uneven` on two CPU ranks), so the test asserts nothing about this
//! machine's speed; `UPDATE_EXPECT=1 cargo test --test autotune` measures them again (profile,
//! 7 rounds of every plan) and rewrites the fixture. The test then runs autotune on the log:
//! every plan is found there, none is run.
use hetpar::autotune::{autotune, AutotuneOptions, Role};
use hetpar::cost::calibration::Calibration;
use hetpar::ir::plan::PlanFile;
use serde_json::{json, Value};

mod common;
use common::scratch;

const FIXTURE: &str = "tests/fixtures/autotune";

const MODEL: &str = include_str!("../examples/models/tiny-uneven.json");
const CLUSTER: &str = include_str!("../examples/clusters/cpu-2.json");

fn plan(schedule: &str, modules: Value) -> PlanFile {
    serde_json::from_value(json!({
        "kind": "plan", "format_version": 1, "model": "tiny-uneven", "cluster": "cpu-2",
        "schedule": {"kind": schedule}, "modules": modules,
    }))
    .expect("a plan file")
}

fn at(layout: Value, offset: u32, count: u32) -> Value {
    json!({"layout": layout, "placement": {"ranks": {"offset": offset, "count": count}}})
}

/// Plans the search does not return: other layouts on the same two ranks.
fn held_out() -> Vec<PlanFile> {
    let same = |l: Value| json!({"vision": at(l.clone(), 0, 2), "projector": at(l.clone(), 0, 2), "llm": at(l, 0, 2)});
    vec![
        plan(
            "colocated_sequential",
            same(json!({"dp": 2, "micro_batch_size": 1})),
        ),
        plan(
            "colocated_sequential",
            json!({
                "vision": at(json!({"dp": 2, "micro_batch_size": 1}), 0, 2),
                "projector": at(json!({"dp": 2, "micro_batch_size": 1}), 0, 2),
                "llm": at(json!({"cp": 2, "dp": 1, "micro_batch_size": 2}), 0, 2),
            }),
        ),
        plan(
            "colocated_sequential",
            json!({
                "vision": at(json!({"tp": 2, "dp": 1, "sequence_parallel": true}), 0, 2),
                "projector": at(json!({"dp": 2}), 0, 2),
                "llm": at(json!({"tp": 2, "dp": 1, "sequence_parallel": true,
                                 "micro_batch_size": 8}), 0, 2),
            }),
        ),
        // A pipeline other than the search's: the encoder and projector on rank 0, the
        // language model on rank 1 in micro-batches of 2.
        plan(
            "pipeline_1f1b",
            json!({
                "vision": at(json!({"dp": 1}), 0, 1),
                "projector": at(json!({"dp": 1}), 0, 1),
                "llm": at(json!({"dp": 1, "micro_batch_size": 2}), 1, 1),
            }),
        ),
    ]
}

/// The profile and the log: read from the fixture, or (`UPDATE_EXPECT=1`) measured here.
fn measurements(cluster: &hetpar::ir::Cluster, log: &std::path::Path) -> (Calibration, bool) {
    let dir = common::root().join(FIXTURE);
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let _ = std::fs::remove_file(log);
    if update {
        let profiled = hetpar::autotune::profile_cpu(cluster).expect("the profile runs");
        std::fs::create_dir_all(&dir).unwrap();
        let text = serde_json::to_string_pretty(&profiled).unwrap();
        std::fs::write(dir.join("profile.json"), text + "\n").unwrap();
        return (profiled, true);
    }
    std::fs::copy(dir.join("log.jsonl"), log).expect("the committed log");
    let text = std::fs::read_to_string(dir.join("profile.json")).expect("the committed profile");
    (serde_json::from_str(&text).expect("a calibration"), false)
}

#[test]
fn calibration_on_committed_measurements_predicts_held_out_plans_within_25_percent_and_chooses_no_slower(
) {
    let (model, _) = hetpar::ir::load_model(MODEL).unwrap();
    let cluster = hetpar::ir::load_cluster(CLUSTER).unwrap();
    let log = scratch("autotune").join("log.jsonl");
    let opts = AutotuneOptions {
        top: 4,
        steps: 6,
        rounds: 7,
        ..AutotuneOptions::default()
    };
    let (profiled, update) = measurements(&cluster, &log);
    let mut ran = 0;
    let report = autotune(
        &model,
        &cluster,
        Some(&profiled),
        &opts,
        &held_out(),
        &log,
        &mut |_, _, _| ran += 1,
    )
    .expect("autotune runs");
    eprintln!("{}", hetpar::autotune::render(&report));
    if update {
        std::fs::copy(&log, common::root().join(FIXTURE).join("log.jsonl")).unwrap();
    } else {
        assert_eq!(ran, 0, "every plan is in the committed log");
    }
    for r in &report.rows {
        let err = (r.predicted_after_s / r.measured.step_s - 1.0).abs();
        assert!(
            err <= 0.25,
            "{:?} {}: predicted {} s, measured {} s",
            r.role,
            r.label,
            r.predicted_after_s,
            r.measured.step_s
        );
    }
    let held = report.rows.iter().filter(|r| r.role == Role::HeldOut);
    assert_eq!(held.clone().count(), held_out().len());
    assert!(
        held.clone().any(|r| r.label.contains("pipeline")),
        "a pipelined plan among the held out"
    );
    // The calibrated choice, measured, is no slower than the uncalibrated one: the same plan,
    // or a different one within the spread of their own rounds (at least 5%).
    let (u, f) = (
        &report.rows[report.uncalibrated_choice],
        &report.rows[report.final_choice],
    );
    let noise = u.measured.spread.max(f.measured.spread).max(1.05);
    assert!(
        f.measured.step_s <= u.measured.step_s * noise,
        "calibrated choice {} measured {} s, uncalibrated {} measured {} s",
        f.label,
        f.measured.step_s,
        u.label,
        u.measured.step_s
    );
}
