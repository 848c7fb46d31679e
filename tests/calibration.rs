//! `hetpar profile` writes a calibration that the estimating commands read with
//! `--calibration`; a calibration of another device is refused, naming both; `hetpar
//! autotune` prints its report, logs its measurements and writes the fitted calibration.

mod common;
use common::{hetpar, scratch, stderr, stdout};

const MODEL: &str = "examples/models/reference-tiny.json";
const CPU: &str = "examples/clusters/cpu-2.json";

#[test]
fn a_profiled_calibration_changes_the_estimate_and_fits_only_its_device() {
    let dir = scratch("calibration-profile");
    let cal = dir.join("calibration.json");
    let o = hetpar(&["profile", "--cluster", CPU, "-o", cal.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("GFLOP/s"), "{}", stderr(&o));
    let text = std::fs::read_to_string(&cal).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "calibration");
    assert!(
        v["hardware"]["dense_flops"].as_f64().unwrap() > 0.0,
        "{text}"
    );
    assert!(!v["measurements"].as_array().unwrap().is_empty());

    let plan = dir.join("plan.json");
    let o = hetpar(&[
        "plan",
        "--model",
        MODEL,
        "--cluster",
        CPU,
        "-o",
        plan.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let est = |extra: &[&str]| {
        let mut args = vec![
            "estimate",
            "--model",
            MODEL,
            "--cluster",
            CPU,
            "--plan",
            plan.to_str().unwrap(),
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let o = hetpar(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["iteration_time_s"].as_f64().unwrap()
    };
    let (plain, calibrated) = (est(&[]), est(&["--calibration", cal.to_str().unwrap()]));
    assert_ne!(plain, calibrated, "the calibration changed nothing");

    let o = hetpar(&[
        "estimate",
        "--model",
        "examples/models/llava-1.5-7b.json",
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        "examples/plans/llava-1.5-7b-colocated-8.json",
        "--calibration",
        cal.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("cpu_thread") && e.contains("h100_sxm_80gb"),
        "{e}"
    );
}

#[test]
fn autotune_reports_logs_and_writes_a_calibration_the_planner_reads() {
    let dir = scratch("calibration-autotune");
    let (log, out) = (dir.join("log.jsonl"), dir.join("calibrated.json"));
    let o = hetpar(&[
        "autotune",
        "--model",
        MODEL,
        "--cluster",
        CPU,
        "--top",
        "2",
        "--steps",
        "3",
        "--log",
        log.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    for want in [
        "measured (ms)",
        "error after",
        "fit: rms log error",
        "choice:",
    ] {
        assert!(s.contains(want), "{want:?} missing in:\n{s}");
    }
    let lines = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(lines >= 1, "no measurement logged");
    let o = hetpar(&[
        "plan",
        "--model",
        MODEL,
        "--cluster",
        CPU,
        "--calibration",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}
