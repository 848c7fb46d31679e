//! `hetpar export megatron`: golden arguments for a language model and a non-colocated VLM,
//! every flag the exporter can write defined by the Megatron-LM release it targets (the table
//! `tests/oracle/megatron_flags.py` extracts from its source), uneven stages as Megatron takes
//! them, and each of Megatron's and MIMO's rules refused by name.

use std::process::Command;

use hetpar::ir::{load_cluster, load_model, plan_from_value};
use hetpar::planner::export::megatron::export;
use serde_json::{json, Value};

const TABLE: &str = include_str!("oracle/golden/megatron-flags-core_v0.19.0.tsv");

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", root())).unwrap()
}

fn export_cli(plan: &str, model: &str, cluster: &str) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .args([
            "export",
            "megatron",
            plan,
            "--model",
            model,
            "--cluster",
            cluster,
        ])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn a_language_model_and_a_non_colocated_vlm_export_their_golden_arguments() {
    let gpt = export_cli(
        "examples/plans/llama-3-8b-homogeneous-8.json",
        "examples/models/llama-3-8b.json",
        "examples/clusters/h100-8.json",
    );
    expect_test::expect_file!["golden/export-llama-3-8b.txt"].assert_eq(&gpt);
    let mimo = export_cli(
        "examples/plans/llava-1.5-7b-noncolocated-8.json",
        "examples/models/llava-1.5-7b.json",
        "examples/clusters/h100-8.json",
    );
    expect_test::expect_file!["golden/export-llava-1.5-7b-noncolocated.txt"].assert_eq(&mimo);
}

#[test]
fn every_flag_the_exporter_can_write_is_one_the_targeted_release_defines() {
    let defined: std::collections::BTreeSet<&str> = TABLE
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert!(
        defined.len() > 500,
        "the table is too small: {}",
        defined.len()
    );
    let mut checked = 0;
    for file in ["megatron.rs", "mimo.rs"] {
        let src = read(&format!("planner/src/export/{file}"));
        for flag in src
            .split('"')
            .filter(|s| s.starts_with("--") && !s.contains(' '))
        {
            assert!(
                defined.contains(flag),
                "{file} writes {flag}, which core_v0.19.0 lacks"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} flags found in the exporter");
}

/// A change to a plan's JSON.
type Edit = dyn Fn(&mut Value);

/// The LLaVA non-colocated example with `edit` applied, exported: its refusals' features.
fn refused(edit: impl Fn(&mut Value)) -> Vec<String> {
    let model = load_model(&read("examples/models/llava-1.5-7b.json"))
        .unwrap()
        .0;
    let cluster = load_cluster(&read("examples/clusters/h100-8.json")).unwrap();
    let mut plan: Value =
        serde_json::from_str(&read("examples/plans/llava-1.5-7b-noncolocated-8.json")).unwrap();
    edit(&mut plan);
    let plan = plan_from_value(&plan, &model, &cluster)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .0;
    match export(&model, &cluster, &plan) {
        Ok(_) => Vec::new(),
        Err(r) => r.into_iter().map(|r| r.feature).collect(),
    }
}

#[test]
fn each_mimo_rule_broken_is_refused_naming_the_plan_field() {
    assert!(refused(|_| {}).is_empty(), "the example exports");
    let cases: Vec<(&str, Box<Edit>)> = vec![
        (
            "schedule.encoder_chunk",
            Box::new(|p| p["schedule"]["encoder_chunk"] = json!(2)),
        ),
        (
            "modules.llm.layout.distributed_optimizer",
            Box::new(|p| p["modules"]["llm"]["layout"]["distributed_optimizer"] = json!(false)),
        ),
        (
            "layout.micro_batch_size",
            Box::new(|p| {
                for m in ["vision", "projector"] {
                    p["modules"][m]["layout"] = json!({"tp": 1, "dp": 4, "micro_batch_size": 1});
                }
                p["modules"]["llm"]["layout"]["micro_batch_size"] = json!(1);
            }),
        ),
        (
            "modules.llm.layout.cp",
            Box::new(|p| {
                p["modules"]["llm"]["layout"]["cp"] = json!(2);
                p["modules"]["llm"]["layout"]["dp"] = json!(1);
            }),
        ),
        (
            "modules.projector.layout",
            Box::new(|p| {
                p["modules"]["projector"]["layout"] =
                    json!({"tp": 1, "dp": 4, "micro_batch_size": 1})
            }),
        ),
    ];
    for (feature, edit) in cases {
        let got = refused(edit);
        assert!(
            got.iter().any(|f| f == feature),
            "{feature} not refused: {got:?}"
        );
    }
}

#[test]
fn colocated_heterogeneity_and_uneven_middle_stages_are_refused() {
    let model = load_model(&read("examples/models/llava-1.5-7b.json"))
        .unwrap()
        .0;
    let cluster = load_cluster(&read("examples/clusters/h100-8.json")).unwrap();
    let plan: Value =
        serde_json::from_str(&read("examples/plans/llava-1.5-7b-colocated-8.json")).unwrap();
    let plan = plan_from_value(&plan, &model, &cluster).unwrap().0;
    let got: Vec<String> = export(&model, &cluster, &plan)
        .unwrap_err()
        .into_iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("placement: MIMO's colocated"), "{got:?}");

    let model = load_model(&read("examples/models/llama-3-8b.json"))
        .unwrap()
        .0;
    let stages = |layers: Value| {
        let mut plan: Value =
            serde_json::from_str(&read("examples/plans/llama-3-8b-homogeneous-8.json")).unwrap();
        let l = &mut plan["modules"]["llm"]["layout"];
        l["pp"] = json!(4);
        l["tp"] = json!(1);
        l["sequence_parallel"] = json!(false);
        l["stage_layers"] = layers;
        let plan = plan_from_value(&plan, &model, &cluster).unwrap().0;
        export(&model, &cluster, &plan)
    };
    let args = stages(json!([7, 9, 9, 7])).expect("uneven first and last stages export");
    let text = args.args_text();
    assert!(
        text.contains("--decoder-first-pipeline-num-layers 7\n"),
        "{text}"
    );
    assert!(
        text.contains("--decoder-last-pipeline-num-layers 7\n"),
        "{text}"
    );
    let err = stages(json!([8, 6, 10, 8])).unwrap_err();
    assert_eq!(err[0].feature, "layout.stage_layers", "{err:?}");
}

/// Exports `plan` (JSON) of `model`, imports the arguments back, and exports again.
fn round_trip(model: &str, plan: Value) -> (String, String) {
    let cluster = load_cluster(&read("examples/clusters/h100-8.json")).unwrap();
    let m = load_model(&read(model)).unwrap().0;
    let p = plan_from_value(&plan, &m, &cluster).unwrap().0;
    let first = export(&m, &cluster, &p).expect("exports").args_text();
    let back = hetpar::ir::megatron::import(&first, 8, "h100-8", m.name()).expect("imports");
    let m2 = load_model(&back.model.to_string())
        .unwrap_or_else(|d| panic!("{d}"))
        .0;
    let p2 = plan_from_value(&back.plan, &m2, &cluster)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .0;
    (
        first,
        export(&m2, &cluster, &p2).expect("re-exports").args_text(),
    )
}

#[test]
fn arguments_imported_back_export_to_the_same_arguments() {
    let plan: Value =
        serde_json::from_str(&read("examples/plans/llama-3-8b-homogeneous-8.json")).unwrap();
    let (a, b) = round_trip("examples/models/llama-3-8b.json", plan.clone());
    assert_eq!(a, b);
    // Every layout knob at once: cp with the ring, uneven ends, block recompute, the
    // distributed optimizer and TP overlap.
    let mut knobs = plan;
    knobs["modules"]["llm"]["layout"] = json!({"tp": 2, "cp": 2, "pp": 2, "dp": 1,
        "sequence_parallel": true, "tp_comm_overlap": true, "cp_comm": "ring",
        "stage_layers": [15, 17], "recompute": {"policy": "full", "layers": 3},
        "distributed_optimizer": true, "micro_batch_size": 2});
    let (a, b) = round_trip("examples/models/llama-3-8b.json", knobs);
    assert_eq!(a, b);
    for flag in [
        "--cp-comm-type p2p",
        "--decoder-first-pipeline-num-layers 15",
        "--recompute-method block",
        "--tp-comm-overlap",
    ] {
        assert!(a.contains(flag), "{flag} missing: {a}");
    }
}

#[test]
fn arguments_that_cannot_be_read_are_named_every_one() {
    let errors = hetpar::ir::megatron::import(
        "--num-layers 32 --hidden-size x --encoder-tp 2 --global-batch-size 8",
        8,
        "c",
        "m",
    )
    .unwrap_err();
    let all = errors.join("\n");
    for expected in [
        "--hidden-size: \"x\"",
        "--num-attention-heads is required",
        "--seq-length is required",
        "--vocab-size is required",
        "--encoder-tp",
    ] {
        assert!(all.contains(expected), "{expected} not named: {all}");
    }
}

#[test]
fn the_bridge_override_of_a_llama_plan_is_golden_and_sets_only_megatron_core_fields() {
    use hetpar::planner::export::bridge::{family, overrides};
    let model = load_model(&read("examples/models/llama-3-8b.json"))
        .unwrap()
        .0;
    let cluster = load_cluster(&read("examples/clusters/h100-8.json")).unwrap();
    let mut plan: Value =
        serde_json::from_str(&read("examples/plans/llama-3-8b-homogeneous-8.json")).unwrap();
    plan["modules"]["llm"]["layout"] = json!({"tp": 2, "cp": 2, "pp": 2, "dp": 1,
        "sequence_parallel": true, "stage_layers": [15, 17], "cp_comm": "ring",
        "recompute": {"policy": "full", "layers": 3}, "distributed_optimizer": true,
        "micro_batch_size": 2});
    let plan = plan_from_value(&plan, &model, &cluster).unwrap().0;
    assert_eq!(family(&model), Ok("llama3"));
    let yaml = overrides(&model, &plan, "llama3");
    expect_test::expect_file!["golden/export-llama-3-8b-bridge.yaml"].assert_eq(&yaml);
    let fields: std::collections::BTreeSet<&str> = TABLE
        .lines()
        .filter_map(|l| l.split('\t').next()?.strip_prefix("model."))
        .collect();
    let mut section = "";
    for line in yaml.lines().filter(|l| !l.starts_with('#')) {
        match line.strip_prefix("  ") {
            None => section = line.trim_end_matches(':'),
            Some(kv) if section == "model" => {
                let key = kv.split(':').next().unwrap();
                assert!(
                    fields.contains(key),
                    "model.{key} is no Megatron Core config field"
                );
            }
            Some(_) => {}
        }
    }
    // Families Bridge v0.6.0 has no recipe for are said so.
    let llava = load_model(&read("examples/models/llava-1.5-7b.json"))
        .unwrap()
        .0;
    assert!(family(&llava).is_err());
    let qwen = load_model(&read("examples/models/qwen2.5-vl-7b.json"))
        .unwrap()
        .0;
    assert_eq!(family(&qwen), Ok("qwen25_vl"));
}
