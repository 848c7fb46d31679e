//! `hetpar run`: a plan and its lowered program train alike, the dumps hold what was printed,
//! and bad inputs are refused with what is wrong.

mod common;
use common::{
    hetpar, losses, scratch, stderr, stdout, REF_CLUSTER as CLUSTER, REF_MODEL as MODEL,
    REF_PLAN as PLAN,
};

#[test]
fn a_plan_and_its_lowered_program_train_alike_and_dump_what_they_print() {
    let dir = scratch("run-plan-and-program");
    let program = common::lowered_reference(&dir);
    let dump = dir.join("dump");
    let a = hetpar(&[
        "run",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--steps",
        "3",
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert!(a.status.success(), "{}", stderr(&a));
    let b = hetpar(&[
        "run",
        program.to_str().unwrap(),
        "--model",
        MODEL,
        "--steps",
        "3",
    ]);
    assert!(b.status.success(), "{}", stderr(&b));
    let (la, lb) = (losses(&stdout(&a)), losses(&stdout(&b)));
    assert_eq!(la.len(), 3, "{}", stdout(&a));
    assert_eq!(la, lb, "plan and program give different losses");
    assert!(stdout(&a).contains("samples/s"), "{}", stdout(&a));
    let bytes = std::fs::read(dump.join("losses.safetensors")).unwrap();
    let t = hetpar::runtime::dump::from_bytes(&bytes).unwrap();
    let dumped: Vec<f32> = t["loss"]
        .data()
        .iter()
        .map(|v| (v * 1e5).round() / 1e5)
        .collect();
    let printed: Vec<f32> = la.iter().map(|v| (v * 1e5).round() / 1e5).collect();
    assert_eq!(dumped, printed);
    for f in ["weights.safetensors", "grads.safetensors"] {
        let t = hetpar::runtime::dump::from_bytes(&std::fs::read(dump.join(f)).unwrap()).unwrap();
        assert!(
            t.contains_key(if f.starts_with("grads") {
                "grad.llm.head.weight"
            } else {
                "llm.head.weight"
            }),
            "{f}"
        );
    }
}

#[test]
fn weights_and_batch_from_safetensors_replace_the_seeded_ones() {
    let dir = scratch("run-weights-batch");
    let (g, _) = hetpar::ir::load_model(&std::fs::read_to_string(MODEL).unwrap()).unwrap();
    let cfg = hetpar::runtime::reference::Config::from_model(&g).unwrap();
    let params = hetpar::runtime::reference::Params::init(&cfg, 42).unwrap();
    let batch = hetpar::runtime::reference::Batch::for_model(&g, &cfg, 5).unwrap();
    let w = dir.join("w.safetensors");
    let b = dir.join("b.safetensors");
    std::fs::write(&w, params.to_safetensors("").unwrap()).unwrap();
    std::fs::write(&b, hetpar::runtime::dump::batch_to_bytes(&batch).unwrap()).unwrap();
    let o = hetpar(&[
        "run",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--steps",
        "1",
        "--weights",
        w.to_str().unwrap(),
        "--batch",
        b.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (want, _) = hetpar::runtime::reference::loss_and_grads(&cfg, &params, &batch).unwrap();
    let got = losses(&stdout(&o));
    assert!((got[0] - want).abs() < 1e-4, "{got:?} against {want}");
}

#[test]
fn run_refuses_a_plan_without_cluster_and_a_model_the_runtime_cannot_compute() {
    let o = hetpar(&["run", PLAN, "--model", MODEL]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("give --cluster"), "{}", stderr(&o));
    let o = hetpar(&[
        "run",
        "examples/plans/vision-audio-7b-colocated-64.json",
        "--model",
        "examples/models/vision-audio-7b.json",
        "--cluster",
        "examples/clusters/h100-64.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("runtime cannot compute this model")
            && e.contains("vision: the runtime has no temporal patches")
            && e.contains("audio: the runtime has no 1-D convolution stack"),
        "{e}"
    );
}

#[test]
fn a_program_for_another_model_is_refused_naming_both() {
    let dir = scratch("run-other-model");
    let program = common::lowered_reference(&dir);
    let o = hetpar(&[
        "run",
        program.to_str().unwrap(),
        "--model",
        "examples/models/tiny-uneven.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("reference-tiny") && e.contains("tiny-uneven"),
        "{e}"
    );
}

#[test]
fn run_and_codegen_refuse_tp_comm_overlap_naming_module_and_field_and_lower_keeps_it() {
    let dir = scratch("run-not-executed");
    let plan = dir.join("plan.json");
    let text = std::fs::read_to_string(common::root().join(PLAN)).unwrap();
    // The language model's layout (tp 2, sequence parallel) asks for TP communication overlap.
    let edited = text.replace(
        r#""pp": 2,"#,
        r#""pp": 2,
        "tp_comm_overlap": true,"#,
    );
    assert_ne!(edited, text, "the edit applies");
    std::fs::write(&plan, edited).unwrap();
    let p = plan.to_str().unwrap();
    let want = "module `llm`: tp_comm_overlap = true";
    let o = hetpar(&["run", p, "--model", MODEL, "--cluster", CLUSTER]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    assert!(stdout(&o).is_empty(), "no step ran: {}", stdout(&o));
    // Lowering keeps the field, so the program is refused too.
    let program = dir.join("program.json");
    let o = hetpar(&[
        "lower",
        p,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "-o",
        program.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = hetpar(&["run", program.to_str().unwrap(), "--model", MODEL]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    let out = dir.join("crate");
    let o = hetpar(&[
        "codegen",
        p,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(want), "{}", stderr(&o));
    assert!(!out.exists(), "no crate is written");
}

fn run_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", PLAN, "--model", MODEL, "--cluster", CLUSTER];
    v.extend_from_slice(extra);
    v
}

#[test]
fn zero_steps_and_unusable_learning_rates_are_refused_before_any_work() {
    for (flags, says) in [
        (&["--steps", "0"][..], "--steps 0: give 1 to 1000000"),
        (
            &["--lr", "nan"][..],
            "--lr NaN: Adam's learning rate must be a finite number",
        ),
        (
            &["--lr", "1e30"][..],
            "--lr 1000000000000000000000000000000: Adam's",
        ),
        (&["--lr=-0.1"][..], "--lr -0.1: Adam's"),
    ] {
        let o = hetpar(&run_args(flags));
        assert!(!o.status.success(), "{flags:?} ran: {}", stdout(&o));
        assert!(stderr(&o).contains(says), "{flags:?}: {}", stderr(&o));
        assert!(losses(&stdout(&o)).is_empty(), "{flags:?} trained");
    }
    // The launcher refuses them once, before starting a worker.
    let o = hetpar(&[
        "launch",
        PLAN,
        "--model",
        MODEL,
        "--cluster",
        CLUSTER,
        "--nproc-per-node",
        "8",
        "--steps",
        "0",
    ]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o).matches("--steps 0").count(), 1, "{}", stderr(&o));
}

#[test]
fn a_dump_path_that_cannot_be_written_fails_before_training() {
    let dir = scratch("run-dump-onto-a-file");
    let file = dir.join("taken");
    std::fs::write(&file, "mine").unwrap();
    let o = hetpar(&run_args(&[
        "--steps",
        "2",
        "--dump",
        file.to_str().unwrap(),
    ]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "--dump {}: it exists and is not a directory",
            file.display()
        )),
        "{e}"
    );
    assert!(
        losses(&stdout(&o)).is_empty(),
        "it trained first: {}",
        stdout(&o)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

#[test]
fn each_step_prints_its_line_on_stderr_as_plain_text_off_a_terminal() {
    let o = hetpar(&run_args(&["--steps", "3"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = common::progress(&stderr(&o));
    let report = losses(&stdout(&o));
    assert_eq!(lines.len(), 3, "{}", stderr(&o));
    for (k, &(step, steps, loss, rate)) in lines.iter().enumerate() {
        assert_eq!((step, steps), (k + 1, 3), "{}", stderr(&o));
        assert!((loss - report[k]).abs() < 1e-5, "{loss} against {report:?}");
        assert!(rate > 0.0, "{}", stderr(&o));
    }
    // No drawing on a pipe: no carriage returns or escape sequences.
    assert!(!stderr(&o).contains(['\r', '\x1b']), "{:?}", stderr(&o));
}

#[test]
fn a_loss_that_is_not_finite_stops_the_run_at_its_step() {
    let dir = scratch("run-nan-loss");
    // Finite weights whose logits overflow: the run diverges within the first steps.
    let weights = common::weights_with_head(&dir, 3e38);
    let o = hetpar(&run_args(&[
        "--steps",
        "6",
        "--weights",
        weights.to_str().unwrap(),
    ]));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let e = stderr(&o);
    let lines = common::progress(&e);
    let (last, _, loss, _) = *lines.last().expect("a line per step");
    assert!(last < 6 && loss.is_nan(), "{e}");
    assert!(
        e.contains(&format!(
            "error: step {last}: the loss is NaN, not a finite number"
        )),
        "{e}"
    );
    assert!(
        losses(&stdout(&o)).is_empty(),
        "a report after divergence: {}",
        stdout(&o)
    );
    // A weight that is not finite is refused before any step, naming the tensor.
    let good = std::fs::read(common::weights_with_head(&dir, 0.5)).unwrap();
    let nan = dir.join("nan.safetensors");
    std::fs::write(
        &nan,
        common::with_values(&good, "llm.blocks.0.attn.o.bias", f32::NAN),
    )
    .unwrap();
    let o = hetpar(&run_args(&["--weights", nan.to_str().unwrap()]));
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("`llm.blocks.0.attn.o.bias` holds NaN, not a finite number"),
        "{e}"
    );
    assert!(common::progress(&e).is_empty(), "{e}");
}

#[test]
fn fresh_synthetic_batches_are_said_to_keep_the_loss_up_and_a_fixed_batch_makes_it_fall() {
    let o = hetpar(&run_args(&["--steps", "2"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("so the loss cannot fall"),
        "{}",
        stderr(&o)
    );
    let o = hetpar(&run_args(&["--steps", "6", "--fixed-batch"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("cannot fall"), "{}", stderr(&o));
    let l = losses(&stdout(&o));
    assert_eq!(l.len(), 6, "{}", stdout(&o));
    assert!(
        l.windows(2).all(|w| w[1] < w[0]),
        "the loss of one repeated batch did not fall: {l:?}"
    );
}

/// A Llama imported from its Hugging Face `config.json` trains from its `save_pretrained`
/// weights under a tensor-parallel plan, and the dump speaks Hugging Face's names: with a zero
/// learning rate the weights come back as they went in. On the oracle's own batch (Hugging
/// Face's `input_ids` and `labels`) the printed loss is transformers'.
#[test]
fn a_hugging_face_llama_runs_from_its_own_weights_and_batch_and_dumps_under_their_names() {
    let dir = scratch("run-llama-hf");
    let golden = common::root().join("tests/oracle/golden/hf/llama");
    let model = common::import_oracle_llama(&dir);
    let plan = dir.join("plan.json");
    let text = r#"{"kind": "plan", "format_version": 1, "model": "llama", "cluster": "h100-8",
        "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"llm": {"layout": {"tp": 2, "sequence_parallel": true, "micro_batch_size": 4},
                            "placement": {"ranks": {"offset": 0, "count": 2}}}}}"#;
    std::fs::write(&plan, text).unwrap();
    let weights = golden.join("model.safetensors");
    let dump = dir.join("dump");
    let run = |more: &[&str]| {
        let mut args = vec![
            "run",
            plan.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--cluster",
            CLUSTER,
            "--weights",
            weights.to_str().unwrap(),
        ];
        args.extend_from_slice(more);
        hetpar(&args)
    };
    let o = run(&[
        "--steps",
        "2",
        "--lr",
        "0",
        "--dump",
        dump.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let read = |p: &std::path::Path| {
        hetpar::runtime::dump::from_bytes(&std::fs::read(p).unwrap()).unwrap()
    };
    let (given, back) = (read(&weights), read(&dump.join("weights.safetensors")));
    assert_eq!(
        given.keys().collect::<Vec<_>>(),
        back.keys().collect::<Vec<_>>()
    );
    for (name, t) in &given {
        assert_eq!(t.data(), back[name].data(), "{name} changed under lr 0");
    }
    let grads = read(&dump.join("grads.safetensors"));
    assert!(grads.contains_key("grad.model.layers.0.self_attn.q_proj.weight"));
    assert_eq!(grads.len(), given.len());
    // The oracle's own batch (`input_ids`, `labels`) gives transformers' loss.
    let batch = golden.join("batch.safetensors");
    let o = run(&["--batch", batch.to_str().unwrap(), "--steps", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let expect = read(&golden.join("expect.safetensors"));
    let want = f64::from(expect["loss"].data()[0]);
    let got = f64::from(losses(&stdout(&o))[0]);
    assert!(
        ((got - want) / want).abs() < 1e-5,
        "loss {got} against transformers' {want}"
    );
}

/// A model whose weights, gradients and Adam moments cannot fit in memory (Llama 3 70B: at
/// least 1.1 TB in f32) is refused before any rank starts, saying how much it needs.
#[test]
fn a_model_too_large_for_this_machine_is_refused_before_any_work() {
    let dir = scratch("run-too-large");
    let model = dir.join("llama-3-70b.json");
    let o = hetpar(&[
        "import",
        "hf",
        "examples/hf/llama-3-70b.config.json",
        "--global-batch",
        "8",
        "--sequence-length",
        "64",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let name = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&model).unwrap())
        .unwrap()["name"]
        .clone();
    let plan = dir.join("plan.json");
    let text = serde_json::json!({
        "kind": "plan", "format_version": 1, "model": name, "cluster": "h100-8",
        "schedule": {"kind": "pipeline_1f1b"},
        "modules": {"llm": {"layout": {"tp": 8, "micro_batch_size": 1},
                            "placement": {"ranks": {"offset": 0, "count": 8}}}},
    });
    std::fs::write(&plan, text.to_string()).unwrap();
    let o = hetpar(&[
        "run",
        plan.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--cluster",
        "examples/clusters/h100-8.json",
    ]);
    let e = stderr(&o);
    assert!(!o.status.success(), "{e}");
    assert!(
        e.contains("70.554 G parameters") && e.contains("need at least 1128.9 GB"),
        "{e}"
    );
}

/// The oracle's LLaVA through the command line: its `config.json` imported (the example), its
/// `save_pretrained` weights and Hugging Face batch (1, 0, 2 and 1 images a sample, where the
/// imported model says one each) given as they are. `run` lowers the plan again for the
/// batch's images, the first loss is `transformers`' own, and `--dump` writes the gradients
/// under the checkpoint's names and shapes; a lowered program, fixed to the model's images, is
/// refused naming both.
#[test]
fn a_llava_checkpoint_and_batch_run_to_the_transformers_loss() {
    let dir = scratch("run-llava");
    let golden = |f: &str| format!("tests/oracle/golden/hf/llava/{f}");
    // examples/models/llava-tiny.json is the oracle's config.json imported (one image a
    // sample); the plan is tp 2 with sequence parallelism on every module.
    let (model, plan) = (
        "examples/models/llava-tiny.json",
        "examples/plans/llava-tiny-tp2-2.json",
    );
    let dump = dir.join("dump");
    let args = |input: &str| {
        vec![
            "run".to_string(),
            input.to_string(),
            "--model".into(),
            model.into(),
            "--cluster".into(),
            "examples/clusters/cpu-2.json".into(),
            "--steps".into(),
            "1".into(),
            "--weights".into(),
            golden("model.safetensors"),
            "--batch".into(),
            golden("batch.safetensors"),
        ]
    };
    let mut a = args(plan);
    a.extend(["--dump".into(), dump.to_str().unwrap().into()]);
    let o = hetpar(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let want =
        hetpar::runtime::dump::from_bytes(&std::fs::read(golden("expect.safetensors")).unwrap())
            .unwrap();
    let loss = want["loss"].data()[0];
    let got = losses(&stdout(&o))[0];
    assert!((got - loss).abs() <= 1e-5 * loss, "{got} against {loss}");
    let grads =
        hetpar::runtime::dump::from_bytes(&std::fs::read(dump.join("grads.safetensors")).unwrap())
            .unwrap();
    let patch = "grad.vision_tower.embeddings.patch_embedding.weight";
    assert_eq!(grads[patch].shape(), want[patch].shape(), "{patch}");
    assert!(grads.contains_key("grad.language_model.model.layers.1.mlp.up_proj.weight"));
    assert!(!grads.contains_key("grad.vision_tower.encoder.layers.1.mlp.fc1.weight"));
    // A program is lowered for the model's images: it cannot take this batch.
    let program = dir.join("program.json");
    let o = hetpar(&[
        "lower",
        plan,
        "--model",
        model,
        "--cluster",
        "examples/clusters/cpu-2.json",
        "-o",
        program.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = hetpar(
        &args(program.to_str().unwrap())
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("vision: [1, 0, 2, 1] items per sample") && e.contains("give the plan instead"),
        "{e}"
    );
}
