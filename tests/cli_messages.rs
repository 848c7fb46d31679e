//! Errors and labels a new user reads (issue 20, item 6): each message names the right rule, in
//! the file's own terms, and each report is laid out for a terminal.

mod common;
use common::{hetpar, root, scratch, stderr, stdout, REF_CLUSTER, REF_MODEL, REF_PLAN};

/// `examples/models/tiny-uneven.json` with `edit` applied, written to `dir/name`.
fn tiny_model(dir: &std::path::Path, name: &str, edit: impl Fn(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(root().join("examples/models/tiny-uneven.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit(&mut v);
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn a_file_that_cannot_be_read_is_a_file_read_error_not_a_json_syntax_error() {
    for args in [
        &["describe", "no/such/model.json"][..],
        &["validate", "no/such/model.json"],
    ] {
        let o = hetpar(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("no/such/model.json"), "{err}");
        assert!(err.contains("[file.read]"), "{err}");
        assert!(!err.contains("[json.syntax]"), "{err}");
    }
}

#[test]
fn a_plan_for_another_cluster_is_labelled_plan_cluster() {
    let dir = scratch("messages-cluster");
    let text = std::fs::read_to_string(root().join(REF_PLAN)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cluster"] = "h100-64".into();
    let plan = dir.join("plan.json");
    std::fs::write(&plan, v.to_string()).unwrap();
    let o = hetpar(&["validate", REF_MODEL, REF_CLUSTER, plan.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("h100-64"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains(": cluster: ") && line.ends_with("[plan.cluster]"),
        "{line}"
    );
}

#[test]
fn a_number_of_the_wrong_type_or_range_is_described_in_json_terms() {
    let dir = scratch("messages-types");
    for (value, found) in [
        (serde_json::json!(-1), "integer `-1`"),
        (serde_json::json!(1.5), "floating point `1.5`"),
        (serde_json::json!("4"), "string \"4\""),
        (serde_json::json!(1u64 << 40), "integer `1099511627776`"),
    ] {
        let model = tiny_model(&dir, "m.json", |m| {
            m["modules"]["llm"]["transformer"]["layers"] = value.clone();
        });
        let o = hetpar(&["describe", &model]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(
            err.contains("modules.llm.transformer.layers")
                && err.contains(found)
                && err.contains("expected a JSON integer from 0 to 4294967295")
                && !err.contains("u32"),
            "{err}"
        );
    }
}

#[test]
fn reshard_explain_speaks_words_not_rust_debug_output() {
    let o = hetpar(&[
        "reshard",
        "--model",
        REF_MODEL,
        "--cluster",
        REF_CLUSTER,
        "--plan",
        REF_PLAN,
        "--explain",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(" forward: ") && out.contains(" backward: "),
        "{out}"
    );
    assert!(out.contains("stop: saturated"), "{out}");
    for debug in [
        "Some(",
        "Forward",
        "Backward",
        "Saturated",
        "Direct",
        "ViaLeader",
    ] {
        assert!(!out.contains(debug), "`{debug}` in\n{out}");
    }
}

#[test]
fn import_hf_help_points_at_the_flags_where_they_are() {
    let o = hetpar(&["import", "hf", "--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    let options = help.find("Options:").expect("an options list");
    let text = help
        .find("has no training data")
        .expect("the training-data note");
    assert!(text > options, "{help}");
    assert!(!help.contains("flags below"), "{help}");
    assert!(help.contains("--global-batch, --sequence-length"), "{help}");
}

#[test]
fn codegen_into_a_directory_with_a_trailing_slash_names_launch_sh_once() {
    let dir = scratch("messages-codegen");
    let out = format!("{}/", dir.display());
    let o = hetpar(&[
        "codegen",
        REF_PLAN,
        "--model",
        REF_MODEL,
        "--cluster",
        REF_CLUSTER,
        "-o",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}/launch.sh", dir.display())),
        "{err}"
    );
    assert!(!err.contains("//launch.sh"), "{err}");
}

/// Terminal columns of `s`: CJK ideographs take two.
fn columns(s: &str) -> usize {
    s.chars()
        .map(|c| {
            if ('\u{4e00}'..='\u{9fff}').contains(&c) {
                2
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn table_columns_line_up_with_wide_module_names() {
    let dir = scratch("messages-width");
    let model = tiny_model(&dir, "m.json", |m| {
        let modules = m["modules"].as_object_mut().unwrap();
        let vision = modules.remove("vision").unwrap();
        modules.insert("视觉编码器".into(), vision);
        m["boundaries"][0]["from"] = "视觉编码器".into();
        let data = m["data"]["encoders"].as_object_mut().unwrap();
        let items = data.remove("vision").unwrap();
        data.insert("视觉编码器".into(), items);
    });
    let o = hetpar(&["describe", &model]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    // The module table: its head, its rule, one row per module; "kind" starts at one column.
    let lines: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("module "))
        .take(5)
        .collect();
    let at = |l: &str, word: &str| columns(&l[..l.rfind(word).unwrap_or_else(|| panic!("{l}"))]);
    let kind = at(lines[0], "kind");
    assert!(lines.iter().any(|l| l.starts_with("视觉编码器")), "{out}");
    for l in &lines[2..] {
        let word = ["vision_encoder", "projector", "language_model"]
            .into_iter()
            .find(|w| l.contains(w))
            .unwrap_or_else(|| panic!("{l}"));
        assert_eq!(at(l, word), kind, "{out}");
    }
}

#[test]
fn plan_and_describe_refuse_an_unbounded_layer_count_naming_the_limit() {
    // Item 3: 10^7 layers made `plan` run for minutes, 2^32 - 1 made `describe` take seconds.
    let dir = scratch("messages-layers");
    for (layers, cmd) in [(10_000_000u32, "plan"), (u32::MAX, "describe")] {
        let model = tiny_model(&dir, "m.json", |m| {
            m["modules"]["llm"]["transformer"]["layers"] = layers.into();
        });
        let args: &[&str] = if cmd == "plan" {
            &["plan", "--model", &model, "--cluster", REF_CLUSTER]
        } else {
            &["describe", &model]
        };
        let o = hetpar(args);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("modules.llm.transformer.layers")
                && err.contains(&format!("{layers} is above hetpar's limit of 1024"))
                && err.contains("[arch.positive]"),
            "{err}"
        );
    }
}

#[test]
fn validate_and_estimate_warn_when_a_plan_leaves_gpus_idle() {
    // Item 7: the example uses 816 of 1,024 GPUs.
    let files = [
        "examples/models/vit6b-70b-32k.json",
        "examples/clusters/h100-1024.json",
        "examples/plans/vit6b-70b-32k-noncolocated-1024.json",
    ];
    let o = hetpar(&[&["validate"][..], &files].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let want =
        "uses 816 of the cluster's 1024 GPUs; 208 are idle: ranks 816-1023 [placement.unused]";
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("0 error(s), 1 warning(s)"),
        "{}",
        stdout(&o)
    );
    let (m, c, p) = (files[0], files[1], files[2]);
    let o = hetpar(&["estimate", "--model", m, "--cluster", c, "--plan", p]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
}

#[test]
fn a_plan_checked_against_a_cluster_that_kept_its_name_but_not_its_size_warns() {
    let dir = scratch("messages-cluster-size");
    let plan = dir.join("plan.json");
    let plan = plan.to_str().unwrap();
    let model = "examples/models/tiny-uneven.json";
    let o = hetpar(&[
        "plan",
        "--model",
        model,
        "--cluster",
        REF_CLUSTER,
        "-o",
        plan,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(plan).unwrap()).unwrap();
    assert_eq!(written["cluster_gpus"], 8, "{written}");
    // Same name, twice the GPUs.
    let text = std::fs::read_to_string(root().join(REF_CLUSTER)).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["nodes"] = 2.into();
    let cluster = dir.join("cluster.json");
    std::fs::write(&cluster, v.to_string()).unwrap();
    let o = hetpar(&["validate", model, cluster.to_str().unwrap(), plan]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(
            "cluster_gpus: the plan was made for a cluster of 8 GPUs; cluster \"h100-8\" has 16 \
             [plan.cluster_size]"
        ),
        "{err}"
    );
    assert!(
        err.contains("8 are idle: ranks 8-15 [placement.unused]"),
        "{err}"
    );
}
