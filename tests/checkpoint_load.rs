//! Starting from a Hugging Face model directory (`--checkpoint`): `save_pretrained`'s sharded
//! directories (`tests/oracle/hf_checkpoint.py`: Llama in float32, Mixtral in bfloat16) give
//! `transformers`' first-step loss under single-device and parallel plans; each rank reads only
//! the slices its layout holds; every problem of a directory is reported at once before
//! training, naming the tensor and the file; and a `--model` that disagrees with the
//! directory's config.json is refused, naming the field.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hetpar::ir::hf::{import, ImportOptions};
use hetpar::ir::model::ModelGraph;
use hetpar::runtime::checkpoint::{HfDir, WeightSource};
use hetpar::runtime::exec::shard_params::Split;
use hetpar::runtime::reference::{Batch, Config};
use hetpar::runtime::tensor::Tensor;
use hetpar::runtime::RuntimeError;
use serde_json::{json, Value};

use common::parity::{at, lower_with, opts};
use common::{hetpar, scratch, stderr, REF_CLUSTER as CLUSTER};

fn golden(case: &str) -> PathBuf {
    common::root().join(format!("tests/oracle/golden/hf_checkpoint/{case}_sharded"))
}

/// The case's model imported from its directory's config.json, and its batch.
fn case(name: &str) -> (ModelGraph, Config, Batch) {
    let batch = std::fs::read(
        common::root().join(format!("tests/oracle/golden/hf/{name}/batch.safetensors")),
    )
    .unwrap();
    // The batch's shape, from its token ids: the model's data sizes.
    let shape = safetensors::SafeTensors::deserialize(&batch)
        .unwrap()
        .tensor("input_ids")
        .unwrap()
        .shape()
        .to_vec();
    let text = std::fs::read_to_string(golden(name).join("config.json")).unwrap();
    let config: Value = serde_json::from_str(&text).unwrap();
    let o = ImportOptions {
        name: Some(name.into()),
        global_batch: shape[0] as u32,
        sequence_length: shape[1] as u32,
        items_per_sample: 0,
        ..Default::default()
    };
    let (g, _) = hetpar::ir::model::verify::build(import(&config, &o).unwrap()).unwrap();
    let cfg = Config::from_model(&g).unwrap();
    let batch = hetpar::runtime::dump::batch_from_bytes(&batch, &cfg).unwrap();
    (g, cfg, batch)
}

fn golden_loss(name: &str) -> f64 {
    let bytes = std::fs::read(golden(name).join("expect.safetensors")).unwrap();
    f64::from(hetpar::runtime::dump::from_bytes(&bytes).unwrap()["loss"].data()[0])
}

/// A source that counts the values every slice asked of it holds.
struct Counting<'a> {
    inner: &'a HfDir,
    values: Mutex<usize>,
}

impl WeightSource for Counting<'_> {
    fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    fn slice(&self, name: &str, split: Split, t: usize, tp: usize) -> Result<Tensor, RuntimeError> {
        let x = self.inner.slice(name, split, t, tp)?;
        *self.values.lock().unwrap() += x.numel();
        Ok(x)
    }
}

/// One step of `layout` on `ranks` ranks from the directory: the loss, and the values read
/// against the values the ranks hold.
fn first_step(name: &str, layout: Value, ranks: u32) -> (f32, usize, usize) {
    let (g, cfg, batch) = case(name);
    let dir = HfDir::open(&golden(name), &cfg).unwrap_or_else(|e| panic!("{e}"));
    let source = Counting {
        inner: &dir,
        values: Mutex::new(0),
    };
    let program = lower_with(
        &g,
        json!({"kind": "pipeline_1f1b"}),
        json!({ "llm": at(layout, 0, ranks) }),
    );
    let mut o = opts(1);
    o.lr = 0.0;
    let out = hetpar::runtime::exec::run(&program, &cfg, &source, &[batch], &o)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let held: usize = out.static_bytes.iter().map(|(_, s)| s.weights / 4).sum();
    let read = *source.values.lock().unwrap();
    (out.losses[0], read, held)
}

#[test]
fn sharded_save_pretrained_directories_give_transformers_first_step_loss_under_every_plan() {
    let plans = [
        ("llama", json!({"micro_batch_size": 4}), 1),
        (
            "llama",
            json!({"tp": 2, "sequence_parallel": true, "micro_batch_size": 4}),
            2,
        ),
        ("llama", json!({"pp": 2, "micro_batch_size": 1}), 2),
        (
            "llama",
            json!({"tp": 2, "dp": 2, "micro_batch_size": 1, "distributed_optimizer": true}),
            4,
        ),
        ("mixtral", json!({"micro_batch_size": 4}), 1),
        (
            "mixtral",
            json!({"dp": 2, "ep": 2, "tp": 2, "micro_batch_size": 2}),
            4,
        ),
        (
            "mixtral",
            json!({"pp": 2, "dp": 2, "ep": 2, "micro_batch_size": 1}),
            4,
        ),
    ];
    for (name, layout, ranks) in plans {
        let what = format!("{name} {layout}");
        let (loss, read, held) = first_step(name, layout, ranks);
        let want = golden_loss(name);
        let rel = (f64::from(loss) - want).abs() / want;
        assert!(
            rel <= 1e-5,
            "{what}: loss {loss} against {want} ({rel:.2e})"
        );
        // Every value read is one a rank holds: no rank reads a whole tensor to keep a slice.
        assert_eq!(read, held, "{what}: values read against values held");
    }
}

/// A copy of the Llama directory in `dir`, `edit` applied to the named shard's tensors.
fn edited_copy(
    dir: &Path,
    shard: &str,
    edit: &dyn Fn(&mut std::collections::BTreeMap<String, Tensor>),
) -> PathBuf {
    let out = dir.join("ckpt");
    std::fs::create_dir_all(&out).unwrap();
    for e in std::fs::read_dir(golden("llama")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, out.join(p.file_name().unwrap())).unwrap();
    }
    let path = out.join(shard);
    let mut t = hetpar::runtime::dump::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut t);
    let bytes = hetpar::runtime::dump::to_bytes(t.iter().map(|(n, x)| (n.clone(), x))).unwrap();
    std::fs::write(&path, bytes).unwrap();
    out
}

const PLAN_TP2: &str = r#"{"kind": "plan", "format_version": 1, "cluster": "h100-8",
    "schedule": {"kind": "pipeline_1f1b"},
    "modules": {"llm": {"layout": {"tp": 2, "micro_batch_size": 4},
                        "placement": {"ranks": {"offset": 0, "count": 2}}}}}"#;

fn run_from(dir: &Path, ckpt: &Path, more: &[&str]) -> std::process::Output {
    let plan = dir.join("plan.json");
    std::fs::write(&plan, PLAN_TP2).unwrap();
    let mut args = vec![
        "run",
        plan.to_str().unwrap(),
        "--cluster",
        CLUSTER,
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--steps",
        "1",
    ];
    args.extend_from_slice(more);
    hetpar(&args)
}

#[test]
fn a_missing_an_extra_and_a_misshaped_tensor_are_all_named_with_their_file_before_training() {
    let dir = scratch("ckpt-bad-tensors");
    let first = "model-00001-of-00006.safetensors";
    let names: Vec<String> =
        hetpar::runtime::dump::from_bytes(&std::fs::read(golden("llama").join(first)).unwrap())
            .unwrap()
            .into_keys()
            .collect();
    let (gone, bent) = (names[0].clone(), names[1].clone());
    let ckpt = edited_copy(&dir, first, &|t| {
        t.remove(&gone);
        let shape = t[&bent].shape().to_vec();
        let n: usize = shape.iter().product();
        t.insert(
            bent.clone(),
            Tensor::from_vec(&[n + 1], vec![0.0; n + 1]).unwrap(),
        );
        t.insert(
            "model.layers.9.mlp.up_proj.weight".into(),
            Tensor::zeros(&[2, 2]),
        );
    });
    // The index must list what the file holds, so the extra is listed there too.
    let index = ckpt.join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]["model.layers.9.mlp.up_proj.weight"] = json!(first);
    std::fs::write(&index, v.to_string()).unwrap();
    let o = run_from(
        &dir,
        &ckpt,
        &["--global-batch", "4", "--sequence-length", "16"],
    );
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(!err.contains("step 1"), "training started: {err}");
    for want in [
        format!("`{gone}` is missing"),
        format!("`{bent}` in {first} has shape"),
        format!("`model.layers.9.mlp.up_proj.weight` in {first} is not a tensor of this model"),
    ] {
        assert!(err.contains(&want), "no `{want}` in: {err}");
    }
}

#[test]
fn a_model_that_disagrees_with_the_config_is_refused_naming_the_field() {
    let dir = scratch("ckpt-model-disagrees");
    let model = common::import_oracle_llama(&dir);
    let ok = run_from(
        &dir,
        &golden("llama"),
        &["--model", model.to_str().unwrap()],
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    let layers = &mut v["modules"]["llm"]["transformer"]["layers"];
    assert!(layers.is_u64(), "the imported model names its layers: {v}");
    *layers = json!(2);
    std::fs::write(&model, v.to_string()).unwrap();
    let o = run_from(
        &dir,
        &golden("llama"),
        &["--model", model.to_str().unwrap()],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("modules.llm.transformer.layers is 2 here, 4 there"),
        "{err}"
    );
    // Data sizes belong to a model imported here, not to a model file.
    let o = run_from(
        &dir,
        &golden("llama"),
        &["--model", model.to_str().unwrap(), "--global-batch", "8"],
    );
    assert!(
        stderr(&o).contains("here the model file says them"),
        "{}",
        stderr(&o)
    );
    // Without --model the data sizes are needed.
    let o = run_from(&dir, &golden("llama"), &[]);
    assert!(stderr(&o).contains("--global-batch"), "{}", stderr(&o));
}

#[test]
fn every_slice_of_a_bf16_directory_is_that_slice_of_its_whole_tensors_widened() {
    let (_, cfg, _) = case("mixtral");
    let dir = HfDir::open(&golden("mixtral"), &cfg).unwrap();
    // The float32 weights the bf16 shards were rounded from.
    let f32s = hetpar::runtime::dump::from_bytes(
        &std::fs::read(common::root().join("tests/oracle/golden/hf/mixtral/model.safetensors"))
            .unwrap(),
    )
    .unwrap();
    let bits = |t: &Tensor| t.data().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for name in dir.names() {
        let whole = dir.slice(&name, Split::Replicated, 0, 1).unwrap();
        let hf = hetpar::runtime::hf_names::to_hf(&name).unwrap();
        for (x, y) in whole.data().iter().zip(f32s[&hf].data()) {
            assert!(
                (x - y).abs() <= y.abs() / 256.0,
                "{hf}: {x} is not {y} in bf16"
            );
        }
        for split in [Split::Column, Split::Row] {
            if split == Split::Row && whole.shape().len() != 2 {
                continue;
            }
            for tp in [2, 4] {
                for t in 0..tp {
                    let part = dir.slice(&name, split, t, tp).unwrap();
                    let want = hetpar::runtime::exec::shard_params::slice(&whole, split, t, tp);
                    assert_eq!(part.shape(), want.shape(), "{name} {split:?} {t}/{tp}");
                    assert_eq!(bits(&part), bits(&want), "{name} {split:?} {t}/{tp}");
                }
            }
        }
    }
}

#[test]
fn an_index_that_names_a_file_outside_its_directory_is_refused() {
    let dir = scratch("ckpt-index-outside");
    let ckpt = edited_copy(&dir, "model-00001-of-00006.safetensors", &|_| {});
    let index = ckpt.join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    v["weight_map"]["lm_head.weight"] = json!("../elsewhere.safetensors");
    std::fs::write(&index, v.to_string()).unwrap();
    let (_, cfg, _) = case("llama");
    let err = HfDir::open(&ckpt, &cfg).err().expect("refused").to_string();
    assert!(
        err.contains("weight_map.lm_head.weight is not a file name beside it"),
        "{err}"
    );
}
