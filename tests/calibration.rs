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

#[test]
fn autotune_json_report_holds_every_plan_the_fit_and_its_stop_reason_and_logs_beside_the_output() {
    let dir = scratch("calibration-autotune-json");
    let (cwd, out_dir) = (dir.join("cwd"), dir.join("out"));
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("calibrated.json");
    let root = common::root();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .current_dir(&cwd)
        .args(["autotune", "--model"])
        .arg(root.join(MODEL))
        .arg("--cluster")
        .arg(root.join(CPU))
        .args([
            "--top", "1", "--steps", "2", "--rounds", "1", "--format", "json", "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The log goes beside the output, not into the current directory.
    assert!(
        out_dir.join("autotune-log.jsonl").is_file(),
        "no log beside -o"
    );
    assert!(
        !cwd.join("autotune-log.jsonl").exists(),
        "log in the current directory"
    );

    let s = stdout(&o);
    let v: serde_json::Value = serde_json::from_str(&s).expect("one JSON document");
    assert_eq!(v["kind"], "autotune_report");
    let plans = v["plans"].as_array().unwrap();
    assert!(plans.len() >= 2, "{s}");
    for p in plans {
        let m = p["measured_s"].as_f64().unwrap();
        assert!(m > 0.0, "{p}");
        for (pred, err) in [
            ("predicted_before_s", "relative_error_before"),
            ("predicted_after_s", "relative_error_after"),
        ] {
            let (pred, err) = (p[pred].as_f64().unwrap(), p[err].as_f64().unwrap());
            assert!((err - (pred / m - 1.0)).abs() < 1e-9, "{p}");
        }
        assert_eq!(p["plan"]["kind"], "plan");
        assert!(p["role"].is_string());
    }
    let fit = &v["fit"];
    assert!(fit["constants"]["matmul_max_efficiency"].as_f64().unwrap() > 0.0);
    assert!(!fit["stop_reason"].as_str().unwrap().is_empty(), "{fit}");
    assert!(fit["evaluations"].as_u64().unwrap() > 0);
    let n = plans.len() as u64;
    assert!(v["uncalibrated_choice"].as_u64().unwrap() < n);
    assert!(v["calibrated_choice"].as_u64().unwrap() < n);
}

/// The A100 file cut to its two 22B rows (fast to fit), written to `dir`.
fn small_measurements(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(common::root().join("cost-models/data/korthikanti-2022-a100.json"))
            .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows: Vec<serde_json::Value> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"].as_str().unwrap().starts_with("22B"))
        .cloned()
        .collect();
    v["rows"] = serde_json::Value::Array(rows);
    v["fit"]["train"] = serde_json::json!(["22B full"]);
    let p = dir.join("measurements.json");
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p
}

#[test]
fn calibrate_fits_the_named_constants_and_reports_held_out_and_leave_one_out_errors() {
    let dir = scratch("calibrate-fit");
    let data = small_measurements(&dir);
    let out = dir.join("constants.json");
    let o = hetpar(&[
        "calibrate",
        data.to_str().unwrap(),
        "--format",
        "json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("fit 3/3"),
        "one fit on the training row, one per row left out: {}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = v["fitted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[0].as_str().unwrap())
        .collect();
    assert_eq!(names, ["matmul_max_efficiency", "attention_efficiency"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["trained"], false, "22B seq+sel is held out");
    for r in rows {
        assert!(r["error"].as_f64().unwrap().abs() < 0.5, "{r}");
        assert!(r["left_out_error"].as_f64().unwrap().is_finite(), "{r}");
    }
    assert!(v["held_out_mae"].as_f64().unwrap() >= 0.0);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        written["matmul_max_efficiency"],
        v["constants"]["matmul_max_efficiency"]
    );
}

#[test]
fn calibrate_refuses_a_bad_file_naming_it_and_every_problem_and_never_overwrites_it() {
    let dir = scratch("calibrate-bad");
    let data = small_measurements(&dir);
    let text = std::fs::read_to_string(&data)
        .unwrap()
        .replace("\"22B full\"\n", "\"22B fuller\"\n")
        .replace("\"attention_efficiency\"", "\"launch_speed\"");
    let bad = dir.join("bad.json");
    std::fs::write(&bad, text).unwrap();
    let o = hetpar(&["calibrate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("bad.json"), "{e}");
    assert!(
        e.contains("fit.train[0]: no row is named \"22B fuller\""),
        "{e}"
    );
    assert!(
        e.contains("fit.constants[1]: \"launch_speed\" cannot be fitted"),
        "{e}"
    );
    let o = hetpar(&[
        "calibrate",
        data.to_str().unwrap(),
        "-o",
        data.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the input file"), "{}", stderr(&o));
}
