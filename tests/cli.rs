//! End-to-end tests of the `hetpar` binary: exit codes, where output goes, golden outputs
//! (`UPDATE_EXPECT=1 cargo test` rewrites them), and error messages that name file, path, rule.

use std::path::Path;

use expect_test::expect_file;

mod common;
use common::{hetpar, root, scratch, stderr, stdout};

#[test]
fn describe_without_arguments_prints_the_embedded_llava_example() {
    let o = hetpar(&["describe"]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_file!["golden/describe-default.txt"].assert_eq(&stdout(&o));
}

#[test]
fn describe_json_of_the_two_encoder_model_is_stable() {
    let o = hetpar(&[
        "describe",
        "examples/models/vision-audio-7b.json",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&stdout(&o)).expect("describe --format json prints JSON");
    assert_eq!(v["modules"].as_array().unwrap().len(), 5);
    expect_file!["golden/describe-vision-audio-7b.json"].assert_eq(&stdout(&o));
}

#[test]
fn every_example_model_cluster_and_plan_validates() {
    let sets: &[[&str; 3]] = &[
        [
            "models/llava-1.5-7b.json",
            "clusters/h100-8.json",
            "plans/llava-1.5-7b-colocated-8.json",
        ],
        [
            "models/vit6b-70b-32k.json",
            "clusters/h100-1024.json",
            "plans/vit6b-70b-32k-noncolocated-1024.json",
        ],
        [
            "models/vision-audio-7b.json",
            "clusters/h100-64.json",
            "plans/vision-audio-7b-colocated-64.json",
        ],
        [
            "models/llama-3-8b.json",
            "clusters/h100-8.json",
            "plans/llama-3-8b-homogeneous-8.json",
        ],
        [
            "models/reference-tiny.json",
            "clusters/h100-8.json",
            "plans/reference-tiny-noncolocated-8.json",
        ],
    ];
    for set in sets {
        let args: Vec<String> = std::iter::once("validate".to_string())
            .chain(set.iter().map(|f| format!("examples/{f}")))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = hetpar(&args);
        assert!(o.status.success(), "{set:?}\n{}{}", stdout(&o), stderr(&o));
        assert!(stdout(&o).contains("0 error(s)"), "{}", stdout(&o));
    }
}

#[test]
fn validate_reports_every_plan_error_with_file_path_and_rule_and_exits_1() {
    let dir = scratch("bad-plan");
    let plan = std::fs::read_to_string(root().join("examples/plans/llava-1.5-7b-colocated-8.json"))
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&plan).unwrap();
    v["modules"]["vision"]["layout"]["tp"] = 3.into();
    v["modules"]["llm"]["layout"]["micro_batch_size"] = 0.into();
    v["modules"]["projector"]["placement"]["ranks"]["count"] = 9.into();
    let bad = dir.join("plan.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = hetpar(&[
        "validate",
        "examples/models/llava-1.5-7b.json",
        "examples/clusters/h100-8.json",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for want in [
        "modules.vision.layout.tp: 3 does not divide heads 16 [layout.tp]",
        "modules.llm.layout.micro_batch_size: must be at least 1 [layout.positive]",
        "modules.projector.placement.ranks: ranks 0..9 reach outside the cluster's 8 GPUs",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains(&bad.display().to_string()),
        "the file is named:\n{err}"
    );
}

#[test]
fn validate_json_lists_diagnostics_with_paths() {
    let dir = scratch("bad-model-json");
    let model = std::fs::read_to_string(root().join("examples/models/llava-1.5-7b.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&model).unwrap();
    v["modules"]["llm"]["transformer"]["kv_heads"] = 5.into();
    v["modules"]["vision"]["transformer"]["colour"] = "blue".into();
    let bad = dir.join("model.json");
    std::fs::write(&bad, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    let o = hetpar(&["validate", bad.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["valid"], false);
    let paths: Vec<&str> = r["files"][0]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    // The unknown field and the rule violation are reported together.
    assert_eq!(
        paths,
        [
            "modules.vision.transformer.colour",
            "modules.llm.transformer.kv_heads"
        ],
        "{r}"
    );
}

#[test]
fn malformed_json_is_reported_with_line_and_column() {
    let dir = scratch("malformed");
    let bad = dir.join("cluster.json");
    std::fs::write(&bad, "{\n  \"kind\": \"cluster\",\n  \"nodes\": 8,,\n}\n").unwrap();
    let o = hetpar(&["validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&format!("{}:3:14", bad.display())), "{err}");
    assert!(err.contains("[json.syntax]"), "{err}");
}

#[test]
fn a_file_of_unknown_kind_is_named_as_such() {
    let dir = scratch("unknown-kind");
    let bad = dir.join("x.json");
    std::fs::write(&bad, "{\"hello\": 1}").unwrap();
    let o = hetpar(&["validate", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot tell what this file is"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_plan_without_its_model_and_cluster_is_an_error() {
    let o = hetpar(&["validate", "examples/plans/llava-1.5-7b-colocated-8.json"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("found 0 model(s) and 0 cluster(s)"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn import_hf_reproduces_the_committed_example_byte_for_byte() {
    let dir = scratch("import");
    let out = dir.join("llava.json");
    let o = hetpar(&[
        "import",
        "hf",
        "examples/hf/llava-1.5-7b.config.json",
        "--name",
        "llava-1.5-7b",
        "--global-batch",
        "256",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "-o writes the file, not stdout");
    let written = std::fs::read_to_string(&out).unwrap();
    let committed =
        std::fs::read_to_string(root().join("examples/models/llava-1.5-7b.json")).unwrap();
    assert_eq!(written, committed);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file is left behind: {leftovers:?}"
    );
}

#[test]
fn import_hf_rejects_an_unsupported_model_type_naming_the_supported_ones() {
    let dir = scratch("import-unsupported");
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, "{\"model_type\": \"gpt_bigcode\"}").unwrap();
    let o = hetpar(&["import", "hf", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("model_type: model type \"gpt_bigcode\" is not supported"),
        "{err}"
    );
    assert!(err.contains("llava, qwen2_vl"), "{err}");
}

#[test]
fn import_hf_reports_options_that_make_the_model_invalid() {
    let o = hetpar(&[
        "import",
        "hf",
        "examples/hf/llava-1.5-7b.config.json",
        "--sequence-length",
        "512",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("[data.sequence]"), "{}", stderr(&o));
}

#[test]
fn every_command_help_shows_an_example() {
    for cmd in [
        &["--help"][..],
        &["validate", "--help"],
        &["describe", "--help"],
        &["import", "hf", "--help"],
    ] {
        let o = hetpar(cmd);
        assert!(o.status.success());
        assert!(
            stdout(&o).contains("Example"),
            "{cmd:?} help has no example:\n{}",
            stdout(&o)
        );
    }
}

#[test]
fn verbose_flag_sends_logs_to_stderr_only() {
    let o = hetpar(&["-v", "describe", "--format", "json"]);
    assert!(o.status.success());
    assert!(stderr(&o).contains("described"), "{}", stderr(&o));
    serde_json::from_str::<serde_json::Value>(&stdout(&o)).expect("stdout stays pure JSON");
}

#[test]
fn describe_output_option_writes_the_same_bytes_as_stdout() {
    let dir = scratch("describe-o");
    let out = dir.join("d.json");
    let a = hetpar(&["describe", "--format", "json"]);
    let b = hetpar(&["describe", "--format", "json", "-o", out.to_str().unwrap()]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(
        stdout(&a),
        std::fs::read_to_string(Path::new(&out)).unwrap()
    );
}

#[test]
fn estimate_prints_the_required_json_fields_for_every_rank() {
    let o = hetpar(&[
        "estimate",
        "--model",
        "examples/models/vision-audio-7b.json",
        "--cluster",
        "examples/clusters/h100-64.json",
        "--plan",
        "examples/plans/vision-audio-7b-colocated-64.json",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    for field in [
        "feasible",
        "iteration_time_s",
        "tokens_per_s",
        "tflops_per_gpu",
        "mfu",
        "peak_memory_bytes",
        "per_rank",
    ] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    // H100's stated error, as fractions with their basis.
    let e = &v["stated_error"];
    let h100 = hetpar::cost::stated_error(hetpar::ir::gpu::GpuModel::H100Sxm80gb);
    assert_eq!(
        (e["time"].as_f64(), e["memory"].as_f64()),
        (Some(h100.time), Some(h100.memory))
    );
    assert!(
        e["basis"].as_str().is_some_and(|b| b.contains("H100")),
        "{e}"
    );
    let ranks: usize = v["per_rank"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ranks"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        ranks, 64,
        "every GPU of the plan appears in exactly one per_rank entry"
    );
}

#[test]
fn estimate_of_the_llava_example_is_stable() {
    let o = hetpar(&[
        "estimate",
        "--model",
        "examples/models/llava-1.5-7b.json",
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        "examples/plans/llava-1.5-7b-colocated-8.json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    expect_file!["golden/estimate-llava-1.5-7b.txt"].assert_eq(&stdout(&o));
}

/// Every term of a rank's memory, in the JSON's names; they add up to `total`.
const MEMORY_TERMS: [&str; 11] = [
    "weights",
    "gradients",
    "optimizer",
    "activations",
    "recompute",
    "sp_gather",
    "logits",
    "boundary",
    "nccl",
    "allocator_margin",
    "cuda_context",
];

/// The rows of `estimate`'s human memory table: per rank group, its eleven terms and its
/// total, in GiB as printed.
fn memory_table(human: &str) -> Vec<(Vec<f64>, f64)> {
    let mut lines = human
        .lines()
        .skip_while(|l| !l.starts_with("ranks "))
        .skip(2);
    let mut out = Vec::new();
    for line in lines.by_ref() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.len() != 15 || !cells[0].starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
        let nums: Vec<f64> = cells[1..13].iter().map(|c| c.parse().unwrap()).collect();
        out.push((nums[..11].to_vec(), nums[11]));
    }
    out
}

#[test]
fn estimate_memory_terms_add_up_to_the_total_in_the_human_table_and_the_json() {
    // Ranks whose transient peak is a layer's backward, the loss or a boundary's buffers.
    let args = [
        "estimate",
        "--model",
        "examples/models/vit6b-70b-32k.json",
        "--cluster",
        "examples/clusters/h100-1024.json",
        "--plan",
        "examples/plans/vit6b-70b-32k-noncolocated-1024.json",
    ];
    let o = hetpar(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let human = stdout(&o);
    let rows = memory_table(&human);
    assert!(!rows.is_empty(), "no memory table in\n{human}");
    for (terms, total) in &rows {
        // Each cell is rounded to 0.005 GiB.
        let sum: f64 = terms.iter().sum();
        assert!(
            (sum - total).abs() <= 0.06,
            "{terms:?} add up to {sum}, not {total}"
        );
    }
    let o = hetpar(&[&args[..], &["--format", "json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let mut moments = std::collections::BTreeSet::new();
    for r in v["per_rank"].as_array().unwrap() {
        let m = &r["memory"];
        moments.insert(m["peak_moment"].as_str().unwrap_or_default().to_string());
        let sum: f64 = MEMORY_TERMS
            .iter()
            .map(|t| {
                m[t].as_f64()
                    .unwrap_or_else(|| panic!("no memory.{t} in {m}"))
            })
            .sum();
        let total = m["total"].as_f64().unwrap();
        assert!((sum - total).abs() <= 1e-9 * total, "{m}");
    }
    assert_eq!(
        moments.into_iter().collect::<Vec<_>>(),
        ["backward", "boundary", "loss"]
    );
}

#[test]
fn estimate_of_mixtral_at_ep8_shows_the_expert_optimizer_state_unsharded() {
    // Issue 15: Mixtral 8x7B on 8 H100s at tp 1, cp 2, dp 4, ep 8 was reported with 10.1 GiB
    // of optimizer state. Each rank owns 32 x 3 x 4096 x 14336 expert parameters whose 12
    // bytes have no replica to shard over (63.0 GiB), plus 12 / 8 bytes of its 1.61 G dense
    // ones (2.24 GiB): 65.24 GiB (`cost-models/tests/memory.rs` counts it by hand).
    let dir = scratch("estimate-mixtral");
    let model = dir.join("mixtral.json");
    let o = hetpar(&[
        "import",
        "hf",
        "examples/hf/mixtral-8x7b-v0.1.config.json",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let plan = dir.join("plan.json");
    let p = serde_json::json!({"kind": "plan", "format_version": 1, "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"llm": {"layout": {"cp": 2, "dp": 4, "ep": 8, "distributed_optimizer": true},
            "placement": {"ranks": {"offset": 0, "count": 8}}}}});
    std::fs::write(&plan, p.to_string()).unwrap();
    let o = hetpar(&[
        "estimate",
        "--model",
        model.to_str().unwrap(),
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        plan.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let human = stdout(&o);
    assert!(human.contains("INFEASIBLE"), "{human}");
    let rows = memory_table(&human);
    assert_eq!(rows.len(), 4, "{human}");
    for (terms, _) in rows {
        // weights, gradients, optimizer (GiB)
        assert_eq!(terms[..3], [13.49, 26.98, 65.24], "{human}");
    }
}

#[test]
fn estimate_rejects_a_plan_for_another_model_with_exit_1() {
    let o = hetpar(&[
        "estimate",
        "--model",
        "examples/models/llama-3-8b.json",
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        "examples/plans/llava-1.5-7b-colocated-8.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("the plan is for model \"llava-1.5-7b\""),
        "{err}"
    );
    assert!(err.contains("[plan.modules]"), "{err}");
}

#[test]
fn reshard_json_reports_bytes_lower_bound_and_time_for_both_directions() {
    let o = hetpar(&[
        "reshard",
        "--model",
        "examples/models/vit6b-70b-32k.json",
        "--cluster",
        "examples/clusters/h100-1024.json",
        "--plan",
        "examples/plans/vit6b-70b-32k-noncolocated-1024.json",
        "--boundary",
        "projector->llm",
        "--format",
        "json",
        "--explain",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let b = &v["boundaries"][0];
    assert_eq!(b["name"], "projector->llm");
    for dir in ["forward", "backward"] {
        let d = &b[dir];
        assert_eq!(
            d["bytes"], d["lower_bound_bytes"],
            "{dir} meets the lower bound"
        );
        assert!(d["time_s"].as_f64().unwrap() > 0.0);
        assert!(
            d["stats"]["stop_reason"].is_string(),
            "--explain adds the e-graph statistics"
        );
    }
    assert!(b["baseline"]["bytes"].as_u64().unwrap() > b["forward"]["bytes"].as_u64().unwrap());
}

#[test]
fn reshard_names_the_boundaries_when_asked_for_an_unknown_one() {
    let o = hetpar(&[
        "reshard",
        "--model",
        "examples/models/llava-1.5-7b.json",
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        "examples/plans/llava-1.5-7b-colocated-8.json",
        "--boundary",
        "nope",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("vision->projector, projector->llm"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn reshard_transfers_lists_every_send_with_its_row_ranges() {
    let o = hetpar(&[
        "reshard",
        "--model",
        "examples/models/tiny-uneven.json",
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        "examples/plans/tiny-uneven-colocated-8.json",
        "--boundary",
        "projector->llm",
        "--format",
        "json",
        "--transfers",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    let fwd = &v["boundaries"][0]["forward"];
    let ops = fwd["micro_batches"][0]["ops"]
        .as_array()
        .expect("ops of micro-batch 0");
    assert_eq!(
        ops.len() as u64,
        fwd["sends"].as_u64().unwrap()
            + fwd["broadcasts"].as_u64().unwrap()
            + fwd["all_gathers"].as_u64().unwrap()
    );
    let send = ops.iter().find(|o| o["op"] == "send").expect("a send");
    assert!(
        send["src"].is_u64() && send["dst"].is_u64() && send["rows"].is_array(),
        "{send}"
    );
}

#[test]
fn plan_writes_a_plan_every_other_command_accepts_and_reports_the_homogeneous_gain() {
    let dir = scratch("plan");
    let out = dir.join("plan.json");
    let o = hetpar(&["plan", "--format", "json", "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
    for field in ["plan", "metrics", "homogeneous", "gain", "top", "stats"] {
        assert!(v.get(field).is_some(), "missing {field}");
    }
    assert!(v["stats"]["candidates"].as_u64().unwrap() > 0);
    assert!(v["metrics"]["feasible"].as_bool().unwrap());
    let h100 = hetpar::cost::stated_error(hetpar::ir::gpu::GpuModel::H100Sxm80gb);
    assert_eq!(
        v["metrics"]["stated_error"]["time"].as_f64(),
        Some(h100.time)
    );
    // The written plan is the reported one, and it validates and estimates.
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(written, v["plan"]);
    let p = out.to_str().unwrap();
    let val = hetpar(&[
        "validate",
        "examples/models/llava-1.5-7b.json",
        "examples/clusters/h100-8.json",
        p,
    ]);
    assert!(val.status.success(), "{}", stderr(&val));
    let est = hetpar(&[
        "estimate",
        "--model",
        "examples/models/llava-1.5-7b.json",
        "--cluster",
        "examples/clusters/h100-8.json",
        "--plan",
        p,
    ]);
    assert!(est.status.success(), "{}", stderr(&est));
}

#[test]
fn plan_explain_compares_the_winner_with_the_homogeneous_plan() {
    let o = hetpar(&["plan", "--explain", "--top", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for want in [
        "best plan",
        "best homogeneous plan",
        "gain over the homogeneous plan",
        "against the homogeneous plan",
        "s ± 8.6% per step",
        "stated error: time ± 8.6%, memory ± 10%",
        "search:",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
}

#[test]
fn lower_writes_a_program_with_every_used_rank() {
    let dir = scratch("lower");
    let out = dir.join("program.json");
    let o = hetpar(&[
        "lower",
        "examples/plans/vit6b-70b-32k-noncolocated-1024.json",
        "--model",
        "examples/models/vit6b-70b-32k.json",
        "--cluster",
        "examples/clusters/h100-1024.json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["kind"], "program");
    assert_eq!(
        v["ranks"].as_array().unwrap().len(),
        48 + 768,
        "the plan uses 816 GPUs"
    );
}
