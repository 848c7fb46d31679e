//! `hetpar codegen`: the generated crate is golden-tested, formatted as rustfmt would, and
//! builds and trains to exactly the interpreter's losses.

use std::process::Command;

use expect_test::expect_file;

mod common;
use common::{
    free_port, hetpar, losses, root, scratch, stderr, stdout, REF_CLUSTER as CLUSTER,
    REF_MODEL as MODEL, REF_PLAN as PLAN,
};

#[test]
fn the_generated_crate_is_stable_formatted_and_trains_like_the_interpreter() {
    let dir = scratch("codegen-build");
    // The scratch directory is target/test-scratch/codegen-build: three levels below the root.
    let o = hetpar(&[
        "codegen",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "-o",
        dir.to_str().unwrap(),
        "--runtime",
        "../../../runtime",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &str| std::fs::read_to_string(dir.join(p)).unwrap();
    expect_file!["golden/codegen/main.rs.golden"].assert_eq(&read("src/main.rs"));
    expect_file!["golden/codegen/Cargo.toml.golden"].assert_eq(&read("Cargo.toml"));
    expect_file!["golden/codegen/launch.sh.golden"].assert_eq(&read("launch.sh"));
    expect_file!["golden/codegen/sbatch.sh.golden"].assert_eq(&read("sbatch.sh"));
    assert_eq!(
        read("model.json"),
        std::fs::read_to_string(root().join(MODEL)).unwrap()
    );

    match Command::new("rustfmt")
        .args(["--edition", "2021", "--check"])
        .arg(dir.join("src/main.rs"))
        .output()
    {
        Ok(f) => assert!(
            f.status.success(),
            "rustfmt would change the generated code:\n{}",
            String::from_utf8_lossy(&f.stdout)
        ),
        Err(e) => eprintln!("skipping the format check: rustfmt cannot run ({e})"),
    }

    // Build it against this checkout's runtime, with its locked versions, sharing the target
    // directory.
    let generated = build_and_run(&dir, 3, &[]);
    let interpreted = hetpar(&[
        "run",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--steps",
        "3",
    ]);
    assert!(interpreted.status.success(), "{}", stderr(&interpreted));
    let interpreted = losses(&stdout(&interpreted));
    assert_eq!(generated.len(), 3);
    assert_eq!(
        generated, interpreted,
        "generated code and interpreter differ"
    );

    // The same binary as eight processes, as `hetpar launch` or `srun` start it.
    let exe = root()
        .join("target")
        .join("debug")
        .join("hetpar-generated-reference-tiny");
    let master = free_port();
    let children: Vec<_> = (0..8)
        .map(|r| {
            Command::new(&exe)
                .args(["--steps", "3"])
                .env("HETPAR_RANK", r.to_string())
                .env("HETPAR_WORLD", "8")
                .env("HETPAR_MASTER", &master)
                .env("HETPAR_TOKEN", "codegen-test")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the generated binary starts")
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let processes = losses(&String::from_utf8_lossy(&outs[0].stdout));
    assert_eq!(
        processes, interpreted,
        "generated code as processes differs"
    );
}

#[test]
fn codegen_of_a_program_equals_codegen_of_its_plan() {
    let dir = scratch("codegen-program");
    let program = common::lowered_reference(&dir);
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (input, out) in [(PLAN, &a), (program.to_str().unwrap(), &b)] {
        let o = hetpar(&[
            "codegen",
            input,
            "--model",
            MODEL,
            "--cluster",
            CLUSTER,
            "-o",
            out.to_str().unwrap(),
            "--runtime",
            "/opt/hetpar/runtime",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    for f in ["src/main.rs", "Cargo.toml", "program.json", "launch.sh"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// A Llama imported from its Hugging Face `config.json`, planned with tensor and sequence
/// parallelism and a vocabulary-parallel head: the generated crate builds and, started from the
/// Hugging Face directory (`--checkpoint`), trains to the interpreter's losses from it.
#[test]
fn the_generated_crate_trains_a_hugging_face_llama_like_the_interpreter() {
    let dir = scratch("codegen-llama");
    let model = common::import_oracle_llama(&dir);
    let plan = dir.join("plan.json");
    std::fs::write(
        &plan,
        r#"{"kind": "plan", "format_version": 1, "model": "llama", "cluster": "h100-8",
            "schedule": {"kind": "pipeline_1f1b"},
            "modules": {"llm": {"layout": {"tp": 2, "pp": 2, "sequence_parallel": true,
                                           "micro_batch_size": 2},
                                "placement": {"ranks": {"offset": 0, "count": 4}}}}}"#,
    )
    .unwrap();
    let (plan, model) = (plan.to_str().unwrap(), model.to_str().unwrap());
    generated_trains_like_the_interpreter(&dir, plan, model, CLUSTER, "llama");
}

/// LLaVA (CLIP tower, projector, Llama) from its Hugging Face directory: the generated crate
/// of `examples/plans/llava-tiny-tp2-2.json` (tp 2 with sequence parallelism on every module)
/// trains three steps to the interpreter's losses.
#[test]
fn the_generated_crate_trains_a_hugging_face_llava_like_the_interpreter() {
    let dir = scratch("codegen-llava");
    generated_trains_like_the_interpreter(
        &dir,
        "examples/plans/llava-tiny-tp2-2.json",
        "examples/models/llava-tiny.json",
        "examples/clusters/cpu-2.json",
        "llava",
    );
}

/// The crate `codegen` generates for `plan` into `dir`, started from the oracle's Hugging Face
/// directory of `case` (`--checkpoint`), trains three steps to the interpreter's losses.
fn generated_trains_like_the_interpreter(
    dir: &std::path::Path,
    plan: &str,
    model: &str,
    cluster: &str,
    case: &str,
) {
    let out = dir.join("crate");
    let o = hetpar(&[
        "codegen",
        plan,
        "--model",
        model,
        "--cluster",
        cluster,
        "-o",
        out.to_str().unwrap(),
        "--runtime",
        "../../../../runtime",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = root().join(format!("tests/oracle/golden/hf/{case}"));
    let ckpt = ckpt.to_str().unwrap();
    let generated = build_and_run(&out, 3, &["--checkpoint", ckpt]);
    let interpreted = hetpar(&[
        "run",
        plan,
        "--model",
        model,
        "--cluster",
        cluster,
        "--steps",
        "3",
        "--checkpoint",
        ckpt,
    ]);
    assert!(interpreted.status.success(), "{}", stderr(&interpreted));
    assert_eq!(generated.len(), 3);
    assert_eq!(generated, losses(&stdout(&interpreted)));
}

/// Builds the generated crate in `dir` against this checkout's runtime (its locked versions,
/// the shared target directory) and runs it for `steps` steps with `more` arguments: the losses
/// it prints.
fn build_and_run(dir: &std::path::Path, steps: usize, more: &[&str]) -> Vec<f32> {
    std::fs::copy(root().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let steps = steps.to_string();
    let built = Command::new(&cargo)
        .args(["run", "--quiet", "--", "--steps", &steps])
        .args(more)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", root().join("target"))
        .output()
        .expect("cargo runs");
    assert!(
        built.status.success(),
        "the generated crate fails:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    losses(&String::from_utf8_lossy(&built.stdout))
}
