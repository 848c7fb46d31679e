//! The reverse direction: a checkpoint hetpar saved (`tests/oracle/golden/hetpar_saved/llama`,
//! committed, the tiny Llama trained 2 steps), which `transformers` loads as is
//! (`tests/oracle/hetpar_saved.py` recorded the logits it computes from it): hetpar computes
//! the same logits from the directory, and saving it again under any plan writes the weights
//! file byte for byte.

mod common;

use std::path::{Path, PathBuf};

use hetpar::ir::hf::{import, ImportOptions};
use hetpar::runtime::checkpoint::HfDir;
use hetpar::runtime::reference::Config;
use serde_json::{json, Value};

use common::parity::{at, lower_with, opts};
use common::{hetpar, scratch, stderr, REF_CLUSTER as CLUSTER};

fn saved() -> PathBuf {
    common::root().join("tests/oracle/golden/hetpar_saved/llama")
}

fn tensors(p: &Path) -> std::collections::BTreeMap<String, hetpar::runtime::tensor::Tensor> {
    hetpar::runtime::dump::from_bytes(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn transformers_logits_of_a_hetpar_save_are_the_logits_hetpar_computes_from_it() {
    let case = common::root().join("tests/oracle/golden/hf/llama");
    let batch = std::fs::read(case.join("batch.safetensors")).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(saved().join("config.json")).unwrap())
            .unwrap();
    let o = ImportOptions {
        name: Some("llama".into()),
        global_batch: 4,
        sequence_length: 16,
        items_per_sample: 0,
        ..Default::default()
    };
    let (g, _) = hetpar::ir::model::verify::build(import(&config, &o).unwrap()).unwrap();
    let cfg = Config::from_model(&g).unwrap();
    let batch = hetpar::runtime::dump::batch_from_bytes(&batch, &cfg).unwrap();
    let dir = HfDir::open(&saved(), &cfg).unwrap_or_else(|e| panic!("{e}"));
    let layout = json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": 4});
    let program = lower_with(
        &g,
        json!({"kind": "pipeline_1f1b"}),
        json!({ "llm": at(layout, 0, 2) }),
    );
    let mut o = opts(1);
    o.lr = 0.0;
    let out = hetpar::runtime::exec::run_with(&program, &cfg, &dir, &[batch], &o, &|st| {
        st.keep_logits();
        st.interpret()
    })
    .unwrap();
    let got = out.logits.expect("the ranks kept their logits");
    let want = &tensors(&saved().join("logits.safetensors"))["logits"];
    assert_eq!(got.shape(), want.shape());
    let scale = want.data().iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let diff = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0.0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        diff / scale <= 1e-5,
        "logits off by {:.2e} relative",
        diff / scale
    );
}

#[test]
fn a_hetpar_save_resumed_at_lr_zero_is_saved_again_byte_for_byte_under_any_plan() {
    let dir = scratch("ckpt-saved-again");
    for (name, layout, ranks) in [
        ("one", r#"{"micro_batch_size": 4}"#, 1),
        ("tp2-pp2", r#"{"tp": 2, "pp": 2, "micro_batch_size": 2}"#, 4),
        (
            "dp2-distopt",
            r#"{"dp": 2, "micro_batch_size": 2, "distributed_optimizer": true}"#,
            2,
        ),
    ] {
        let plan = dir.join(format!("{name}.json"));
        std::fs::write(
            &plan,
            format!(
                r#"{{"kind": "plan", "format_version": 1, "cluster": "h100-8",
                "schedule": {{"kind": "pipeline_1f1b"}},
                "modules": {{"llm": {{"layout": {layout},
                    "placement": {{"ranks": {{"offset": 0, "count": {ranks}}}}}}}}}}}"#
            ),
        )
        .unwrap();
        let save = dir.join(format!("save-{name}"));
        let o = hetpar(&[
            "run",
            plan.to_str().unwrap(),
            "--cluster",
            CLUSTER,
            "--resume",
            saved().to_str().unwrap(),
            "--steps",
            "1",
            "--lr",
            "0",
            "--save",
            save.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let step = save.join("step-00000003");
        for f in ["model.safetensors", "config.json"] {
            assert!(
                std::fs::read(step.join(f)).unwrap() == std::fs::read(saved().join(f)).unwrap(),
                "{name}: {f} differs from the committed save"
            );
        }
    }
}
