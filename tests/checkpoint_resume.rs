//! Saving and resuming (`--save DIR --save-every N`, `--resume DIR`) with the oracle's Llama
//! from its Hugging Face directory: N steps saved and resumed for N more are bit for bit the 2N
//! steps of one run; resumed under another plan the weights and Adam's state reshard and the
//! loss continues within float tolerance; a save cut short leaves the previous one to resume
//! from; a save is a sharded Hugging Face directory hetpar starts from again.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hetpar::runtime::tensor::Tensor;

use common::{scratch, stderr, REF_CLUSTER as CLUSTER};

fn llama() -> PathBuf {
    common::root().join("tests/oracle/golden/hf/llama")
}

const TP2_DP2: &str = r#"{"tp": 2, "dp": 2, "micro_batch_size": 1, "distributed_optimizer": true}"#;
const PP2_DP2: &str = r#"{"pp": 2, "dp": 2, "micro_batch_size": 1}"#;
const ONE: &str = r#"{"micro_batch_size": 4}"#;

/// A plan of the language model under `layout` on `ranks` ranks, written into `dir`.
fn plan(dir: &Path, name: &str, layout: &str, ranks: u32) -> PathBuf {
    let p = dir.join(format!("{name}.json"));
    let text = format!(
        r#"{{"kind": "plan", "format_version": 1, "cluster": "h100-8",
            "schedule": {{"kind": "pipeline_1f1b"}},
            "modules": {{"llm": {{"layout": {layout},
                "placement": {{"ranks": {{"offset": 0, "count": {ranks}}}}}}}}}}}"#
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// `hetpar run PLAN` with `args`, consolidated files of at most `shard` bytes.
fn run(plan: &Path, args: &[&str], shard: usize) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .arg("run")
        .arg(plan)
        .args(["--cluster", CLUSTER])
        .args(args)
        .current_dir(common::root())
        .env("HETPAR_SAVE_SHARD_BYTES", shard.to_string())
        .output()
        .expect("hetpar runs");
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// The arguments that start from the oracle's Llama directory.
fn start() -> Vec<String> {
    start_from(&llama())
}

/// The arguments that start from the Hugging Face directory `dir` (a batch of 4 × 16).
fn start_from(dir: &Path) -> Vec<String> {
    [
        "--checkpoint",
        dir.to_str().unwrap(),
        "--global-batch",
        "4",
        "--sequence-length",
        "16",
    ]
    .map(String::from)
    .to_vec()
}

fn read(p: &Path) -> BTreeMap<String, Tensor> {
    hetpar::runtime::dump::from_bytes(&std::fs::read(p).unwrap()).unwrap()
}

fn losses(dump: &Path) -> Vec<f32> {
    read(&dump.join("losses.safetensors"))["loss"]
        .data()
        .to_vec()
}

/// Steps 1..=4 of one run and of a run saved after 2 and resumed for 2 more, under `first`
/// then `second`: (the whole run's losses and dump, the resumed run's).
fn split_run(dir: &Path, first: &Path, second: &Path) -> (PathBuf, PathBuf) {
    split_run_from(&llama(), dir, first, second)
}

/// [`split_run`] from the Hugging Face directory `ckpt`.
fn split_run_from(ckpt: &Path, dir: &Path, first: &Path, second: &Path) -> (PathBuf, PathBuf) {
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (whole, save, resumed) = (dir.join("whole"), dir.join("save"), dir.join("resumed"));
    let mut a = start_from(ckpt);
    a.extend(["--steps", "4", "--dump", &s(&whole)].map(String::from));
    run(
        first,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        1 << 30,
    );
    let mut b = start_from(ckpt);
    b.extend(["--steps", "2", "--save", &s(&save), "--save-every", "1"].map(String::from));
    run(
        first,
        &b.iter().map(String::as_str).collect::<Vec<_>>(),
        1 << 30,
    );
    let c = [
        "--resume",
        &s(&save),
        "--steps",
        "2",
        "--dump",
        &s(&resumed),
    ];
    run(second, &c, 1 << 30);
    (whole, resumed)
}

#[test]
fn n_steps_saved_and_resumed_for_n_more_are_bit_for_bit_the_2n_steps_of_one_run() {
    let dir = scratch("ckpt-resume-bits");
    let p = plan(&dir, "tp2-dp2", TP2_DP2, 4);
    let (whole, resumed) = split_run(&dir, &p, &p);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&losses(&whole)[2..]), bits(&losses(&resumed)));
    let (a, b) = (
        read(&whole.join("weights.safetensors")),
        read(&resumed.join("weights.safetensors")),
    );
    assert_eq!(a.len(), b.len());
    for (n, t) in &a {
        assert_eq!(bits(t.data()), bits(b[n].data()), "{n} after 4 steps");
    }
}

#[test]
fn resuming_under_another_plan_reshards_weights_and_adam_state() {
    let dir = scratch("ckpt-resume-reshard");
    let (p1, p2) = (
        plan(&dir, "tp2-dp2", TP2_DP2, 4),
        plan(&dir, "pp2-dp2", PP2_DP2, 4),
    );
    let (whole, resumed) = split_run(&dir, &p1, &p2);
    for (a, b) in losses(&whole)[2..].iter().zip(losses(&resumed)) {
        assert!(
            ((a - b) / a).abs() < 1e-5,
            "resumed loss {b} against {a} uninterrupted"
        );
    }
    // Back again, onto one device, from the save the second plan made.
    let one = plan(&dir, "one", ONE, 1);
    let save2 = dir.join("save2");
    let s = save2.to_str().unwrap();
    let r = dir.join("save").join("step-00000002");
    run(
        &p2,
        &["--resume", r.to_str().unwrap(), "--steps", "1", "--save", s],
        1 << 30,
    );
    let d = dir.join("dump-one");
    run(
        &one,
        &["--resume", s, "--steps", "1", "--dump", d.to_str().unwrap()],
        1 << 30,
    );
    let (a, b) = (losses(&whole)[3], losses(&d)[0]);
    assert!(((a - b) / a).abs() < 1e-5, "{b} against {a}");
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_to_resume_from() {
    let dir = scratch("ckpt-interrupted");
    let p = plan(&dir, "one", ONE, 1);
    let save = dir.join("save");
    std::fs::create_dir_all(&save).unwrap();
    // Step 2's partial directory cannot be made: its save fails half way.
    std::fs::write(save.join(".step-00000002.partial"), b"in the way").unwrap();
    let mut a = start();
    a.extend(
        [
            "--steps",
            "3",
            "--save",
            save.to_str().unwrap(),
            "--save-every",
            "1",
        ]
        .map(String::from),
    );
    let o = Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .arg("run")
        .arg(&p)
        .args(["--cluster", CLUSTER])
        .args(&a)
        .current_dir(common::root())
        .output()
        .unwrap();
    assert!(!o.status.success(), "the save of step 2 was to fail");
    assert!(
        stderr(&o).contains(".step-00000002.partial"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(save.join("latest")).unwrap(),
        "step-00000001\n"
    );
    assert!(!save.join("step-00000002").exists());
    let d = dir.join("dump");
    let o = run(
        &p,
        &[
            "--resume",
            save.to_str().unwrap(),
            "--steps",
            "1",
            "--dump",
            d.to_str().unwrap(),
        ],
        1 << 30,
    );
    assert!(stderr(&o).contains("step 1/1"), "{}", stderr(&o));
}

#[test]
fn a_save_is_a_sharded_hugging_face_directory_hetpar_starts_from_again() {
    let dir = scratch("ckpt-save-layout");
    let p = plan(&dir, "tp2-dp2", TP2_DP2, 4);
    let save = dir.join("save");
    let mut a = start();
    a.extend(
        [
            "--steps",
            "1",
            "--lr",
            "0",
            "--save",
            save.to_str().unwrap(),
        ]
        .map(String::from),
    );
    run(
        &p,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        20_000,
    );
    let step = save.join("step-00000001");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(step.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let given = read(&llama().join("model.safetensors"));
    assert_eq!(map.len(), given.len());
    let mut files: Vec<&str> = map.values().map(|f| f.as_str().unwrap()).collect();
    files.dedup();
    assert!(files.len() > 1, "a sharded save: {files:?}");
    // Under a zero learning rate, every tensor is written back as it was read.
    for (name, file) in map {
        let t = read(&step.join(file.as_str().unwrap()));
        assert_eq!(t[name].data(), given[name].data(), "{name}");
    }
    assert_eq!(
        std::fs::read(step.join("config.json")).unwrap(),
        std::fs::read(llama().join("config.json")).unwrap()
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(step.join("hetpar/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"], 1);
    let ckpt = [
        "--checkpoint",
        step.to_str().unwrap(),
        "--global-batch",
        "4",
    ];
    let mut b: Vec<&str> = ckpt.to_vec();
    b.extend(["--sequence-length", "16", "--steps", "1"]);
    run(&p, &b, 1 << 30);
}

#[test]
fn ranks_launched_as_processes_save_what_ranks_as_threads_resume_bit_for_bit() {
    let dir = scratch("ckpt-launch");
    let p = plan(&dir, "tp2-dp2", TP2_DP2, 4);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (whole, save, resumed) = (dir.join("whole"), dir.join("save"), dir.join("resumed"));
    let mut a = start();
    a.extend(["--steps", "4", "--dump", &s(&whole)].map(String::from));
    run(
        &p,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        1 << 30,
    );
    let mut b = vec![
        "launch".to_string(),
        s(&p),
        "--cluster".into(),
        CLUSTER.into(),
    ];
    b.extend(start());
    b.extend(["--nproc-per-node", "4", "--steps", "2", "--save", &s(&save)].map(String::from));
    let o = common::hetpar(&b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let c = [
        "--resume",
        &s(&save),
        "--steps",
        "2",
        "--dump",
        &s(&resumed),
    ];
    run(&p, &c, 1 << 30);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&losses(&whole)[2..]), bits(&losses(&resumed)));
}

/// The reference model (a vision encoder, its projector and a language model, under hetpar's
/// own tensor names) saved under a non-colocated plan resumes under a colocated one.
#[test]
fn a_vision_language_model_saved_non_colocated_resumes_colocated() {
    let dir = scratch("ckpt-colocated");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (whole, save, resumed) = (dir.join("whole"), dir.join("save"), dir.join("resumed"));
    let model = ["--model", common::REF_MODEL];
    let plan = Path::new(common::REF_PLAN);
    let mut a = model.to_vec();
    let w = s(&whole);
    a.extend(["--steps", "4", "--dump", &w]);
    run(plan, &a, 1 << 30);
    let mut b = model.to_vec();
    let v = s(&save);
    b.extend(["--steps", "2", "--save", &v]);
    run(plan, &b, 1 << 30);
    let colocated = Path::new("examples/plans/reference-tiny-colocated-4.json");
    run(
        colocated,
        &["--resume", &v, "--steps", "2", "--dump", &s(&resumed)],
        1 << 30,
    );
    for (a, b) in losses(&whole)[2..].iter().zip(losses(&resumed)) {
        assert!(((a - b) / a).abs() < 1e-5, "resumed {b} against {a}");
    }
}

/// Mixtral from its bf16 directory, saved under dp 2 × ep 2 (each routed expert written by the
/// rank holding it) and resumed under tp 2 without expert parallelism, then the other way.
#[test]
fn a_mixture_of_experts_resumes_under_another_expert_parallel_degree() {
    let dir = scratch("ckpt-resume-ep");
    let mixtral = common::root().join("tests/oracle/golden/hf_checkpoint/mixtral_sharded");
    let ep = plan(
        &dir,
        "dp2-ep2",
        r#"{"dp": 2, "ep": 2, "micro_batch_size": 1}"#,
        2,
    );
    let tp = plan(
        &dir,
        "tp2",
        r#"{"tp": 2, "sequence_parallel": true, "micro_batch_size": 4}"#,
        2,
    );
    for (first, second, name) in [(&ep, &tp, "ep-to-tp"), (&tp, &ep, "tp-to-ep")] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (whole, resumed) = split_run_from(&mixtral, &d, first, second);
        for (a, b) in losses(&whole)[2..].iter().zip(losses(&resumed)) {
            assert!(
                ((a - b) / a).abs() < 1e-5,
                "{name}: resumed {b} against {a}"
            );
        }
    }
}
