//! No command writes over one of its inputs (issue 20, item 2): an output that is an input,
//! spelled the same, spelled differently or reached through a link, is refused before any work,
//! and the input keeps its bytes.

use std::path::{Path, PathBuf};

mod common;
use common::{hetpar, root, scratch, stderr, REF_CLUSTER, REF_MODEL, REF_PLAN};

/// Copies the repository files `files` into a scratch directory `name`; their new paths.
fn copies(name: &str, files: &[&str]) -> (PathBuf, Vec<String>) {
    let dir = scratch(name);
    let paths = files
        .iter()
        .map(|f| {
            let to = dir.join(Path::new(f).file_name().unwrap());
            std::fs::copy(root().join(f), &to).unwrap();
            to.to_str().unwrap().to_string()
        })
        .collect();
    (dir, paths)
}

/// Runs `args` and checks that it is refused, naming the input, which keeps its bytes.
fn assert_refused(args: &[&str], input: &str) {
    let before = std::fs::read(input).unwrap();
    let o = hetpar(args);
    assert!(!o.status.success(), "{args:?} succeeded");
    let err = stderr(&o);
    assert!(
        err.contains("is the input file") && err.contains(input),
        "{args:?}: {err}"
    );
    assert_eq!(
        std::fs::read(input).unwrap(),
        before,
        "{args:?} changed {input}"
    );
}

#[test]
fn import_describe_and_lower_refuse_to_write_over_their_input() {
    let (_, p) = copies(
        "outputs-same",
        &[
            "examples/hf/llava-1.5-7b.config.json",
            "examples/models/llava-1.5-7b.json",
            REF_PLAN,
            REF_MODEL,
            REF_CLUSTER,
        ],
    );
    assert_refused(&["import", "hf", &p[0], "-o", &p[0]], &p[0]);
    assert_refused(&["describe", &p[1], "-o", &p[1]], &p[1]);
    let lower = ["lower", &p[2], "--model", &p[3], "--cluster", &p[4], "-o"];
    for input in &p[2..] {
        assert_refused(&[&lower[..], &[input.as_str()]].concat(), input);
    }
}

#[test]
fn an_output_reaching_an_input_through_a_link_or_another_spelling_is_refused() {
    let (dir, p) = copies("outputs-links", &[REF_PLAN, REF_MODEL, REF_CLUSTER]);
    let link = dir.join("link.json");
    std::os::unix::fs::symlink(&p[0], &link).unwrap();
    let hard = dir.join("hard.json");
    std::fs::hard_link(&p[1], &hard).unwrap();
    let dotted = dir.join(".").join("reference-tiny.json");
    let flags = ["--model", &p[1], "--cluster", &p[2], "--plan", &p[0]];
    for out in [&link, &hard, &dotted] {
        let out = out.to_str().unwrap();
        let input = if out.ends_with("link.json") {
            &p[0]
        } else {
            &p[1]
        };
        assert_refused(&[&["estimate"][..], &flags, &["-o", out]].concat(), input);
        assert_refused(&[&["reshard"][..], &flags, &["-o", out]].concat(), input);
    }
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

#[test]
fn plan_show_profile_autotune_calibrate_and_codegen_refuse_their_inputs_as_outputs() {
    let (dir, p) = copies(
        "outputs-others",
        &[
            REF_PLAN,
            REF_MODEL,
            REF_CLUSTER,
            "examples/clusters/cpu-1.json",
            "cost-models/data/korthikanti-2022-a100.json",
        ],
    );
    let (plan, model, cluster, cpu, data) = (&p[0], &p[1], &p[2], &p[3], &p[4]);
    assert_refused(&["plan", "--model", model, "-o", model], model);
    assert_refused(&["plan", "--cluster", cluster, "-o", cluster], cluster);
    let show = ["show", plan, "--model", model, "--cluster", cluster];
    assert_refused(&[&show[..], &["--svg", plan]].concat(), plan);
    assert_refused(&[&show[..], &["--trace", cluster]].concat(), cluster);
    assert_refused(&["profile", "--cluster", cpu, "-o", cpu], cpu);
    let tune = ["autotune", "--model", model, "--cluster", cpu];
    assert_refused(&[&tune[..], &["--log", model]].concat(), model);
    assert_refused(&[&tune[..], &["-o", cpu]].concat(), cpu);
    assert_refused(&["calibrate", data, "-o", data], data);
    // The generated crate holds a model.json: not the one it was generated from.
    let gen = dir.to_str().unwrap();
    let before = std::fs::read(model).unwrap();
    let moved = dir.join("model.json");
    std::fs::rename(model, &moved).unwrap();
    let moved = moved.to_str().unwrap();
    let args = [
        "codegen",
        plan,
        "--model",
        moved,
        "--cluster",
        cluster,
        "-o",
        gen,
    ];
    assert_refused(&args, moved);
    assert_eq!(std::fs::read(moved).unwrap(), before);
    assert!(
        !dir.join("launch.sh").exists(),
        "codegen wrote part of the crate"
    );
}
