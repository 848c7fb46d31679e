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
fn run_refuses_a_plan_without_cluster_and_a_model_the_reference_cannot_compute() {
    let o = hetpar(&["run", PLAN, "--model", MODEL]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("give --cluster"), "{}", stderr(&o));
    let o = hetpar(&[
        "run",
        "examples/plans/llava-1.5-7b-colocated-8.json",
        "--model",
        "examples/models/llava-1.5-7b.json",
        "--cluster",
        CLUSTER,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("reference model cannot compute") && e.contains("llm"),
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
