//! Where `run` and `launch` start from and save to (`docs/checkpoints.md`): the model
//! description and its weights from a Hugging Face directory (`--checkpoint`) or a saved run
//! (`--resume`), each checked against `--model` when both are given; and `--save DIR
//! --save-every N`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::Value;

use hetpar::ir::hf::{import, ImportOptions};
use hetpar::ir::json::to_canonical_json;
use hetpar::runtime::checkpoint::resume::{read_state, step_directory};
use hetpar::runtime::checkpoint::save::STATE_DIR;
use hetpar::runtime::checkpoint::{HfDir, Resume, SaveSpec, TrainingState, WeightSource};
use hetpar::runtime::reference::Config;

/// `--checkpoint`, `--resume` and the data sizes a Hugging Face config lacks.
#[derive(clap::Args, Clone, Default)]
pub struct StartArgs {
    /// Start from a Hugging Face model directory: config.json and model.safetensors, or the
    /// shards model.safetensors.index.json names (F32 or BF16). The model is its config.json's
    /// unless --model is given (and agrees); each rank reads only the slices it holds.
    #[arg(long, conflicts_with = "resume")]
    pub checkpoint: Option<PathBuf>,
    /// Continue a run saved with --save: DIR (the step its `latest` names) or one step
    /// directory; weights and Adam's state reshard to this run's plan.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Samples per step, for a model taken from --checkpoint's config.json.
    #[arg(long)]
    pub global_batch: Option<u32>,
    /// Tokens per sample, for a model taken from --checkpoint's config.json.
    #[arg(long)]
    pub sequence_length: Option<u32>,
}

/// `--save --save-every`.
#[derive(clap::Args, Clone, Default)]
pub struct SaveArgs {
    /// Save checkpoints here: step directories (a Hugging Face model directory plus hetpar's
    /// training state under hetpar/), and `latest`, naming the newest complete one.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Save after every N steps, and after the last [default: only after the last].
    #[arg(long, requires = "save")]
    pub save_every: Option<usize>,
}

/// A model description's text and the name its diagnostics carry.
pub struct ModelText {
    pub text: String,
    pub name: String,
    /// The Hugging Face config.json it came from, if one.
    pub config_json: Option<String>,
}

fn read(p: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
}

impl StartArgs {
    /// The model: `--model`, checked against the checkpoint's or save's when one is given;
    /// else the save's, else the checkpoint's config.json imported with the data sizes.
    pub fn model(&self, model: Option<&Path>) -> anyhow::Result<ModelText> {
        let sizes = self.global_batch.is_some() || self.sequence_length.is_some();
        if sizes && (model.is_some() || self.checkpoint.is_none()) {
            bail!(
                "--global-batch and --sequence-length size a model imported from --checkpoint's \
                 config.json; here the model file says them"
            );
        }
        let given = model
            .map(|p| -> anyhow::Result<_> { Ok((read(p)?, p.display().to_string())) })
            .transpose()?;
        if let Some(dir) = &self.resume {
            let step = step_directory(dir)?;
            let path = step.join(STATE_DIR).join("model.json");
            let saved = read(&path)?;
            let config_json = std::fs::read_to_string(step.join("config.json")).ok();
            let name = path.display().to_string();
            return Ok(match given {
                Some((text, name)) => {
                    agree(&text, &saved, &name, &path.display().to_string())?;
                    ModelText {
                        text,
                        name,
                        config_json,
                    }
                }
                None => ModelText {
                    text: saved,
                    name,
                    config_json,
                },
            });
        }
        let Some(dir) = &self.checkpoint else {
            let Some((text, name)) = given else {
                bail!("give --model (or --checkpoint DIR, whose config.json describes the model)");
            };
            return Ok(ModelText {
                text,
                name,
                config_json: None,
            });
        };
        let config_path = dir.join("config.json");
        let config_json = read(&config_path)?;
        let config: Value = serde_json::from_str(&config_json)
            .with_context(|| format!("{}: not JSON", config_path.display()))?;
        let imported = |b: u32, s: u32| -> anyhow::Result<String> {
            let opts = ImportOptions {
                global_batch: b,
                sequence_length: s,
                items_per_sample: 0,
                ..Default::default()
            };
            let file = import(&config, &opts).map_err(|ds| {
                super::print_diagnostics(&ds.with_file(&config_path.display().to_string()));
                anyhow::anyhow!("{}: cannot import it", config_path.display())
            })?;
            Ok(to_canonical_json(&file))
        };
        if let Some((text, name)) = given {
            let d = hetpar::ir::load_model(&text).map(|(g, _)| g.file().data.clone());
            let (b, s) = d.map_or((1, 1), |d| (d.global_batch, d.sequence_length));
            agree(
                &text,
                &imported(b, s)?,
                &name,
                &config_path.display().to_string(),
            )?;
            return Ok(ModelText {
                text,
                name,
                config_json: Some(config_json),
            });
        }
        let (Some(b), Some(s)) = (self.global_batch, self.sequence_length) else {
            bail!(
                "--checkpoint {} without --model: give --global-batch and --sequence-length \
                 (a config.json says nothing of the data)",
                dir.display()
            );
        };
        Ok(ModelText {
            text: imported(b, s)?,
            name: config_path.display().to_string(),
            config_json: Some(config_json),
        })
    }

    /// The initial weights (and Adam's state, resuming) for `cfg`: the checkpoint's or the
    /// save's, opened and checked now, before any rank starts; `None` when neither is given.
    pub fn source(&self, cfg: &Config) -> anyhow::Result<Option<Box<dyn WeightSource>>> {
        if let Some(dir) = &self.resume {
            return Ok(Some(Box::new(Resume::open(dir, cfg)?)));
        }
        if let Some(dir) = &self.checkpoint {
            return Ok(Some(Box::new(HfDir::open(dir, cfg)?)));
        }
        Ok(None)
    }

    /// The saved training state, resuming.
    pub fn state(&self) -> anyhow::Result<Option<TrainingState>> {
        let Some(dir) = &self.resume else {
            return Ok(None);
        };
        Ok(Some(read_state(&step_directory(dir)?)?))
    }

    /// Command-line arguments giving the same start (for launched workers).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(x) = value {
                v.push(flag.to_string());
                v.push(x);
            }
        };
        push(
            "--checkpoint",
            self.checkpoint.as_ref().map(|p| p.display().to_string()),
        );
        push(
            "--resume",
            self.resume.as_ref().map(|p| p.display().to_string()),
        );
        push("--global-batch", self.global_batch.map(|x| x.to_string()));
        push(
            "--sequence-length",
            self.sequence_length.map(|x| x.to_string()),
        );
        v
    }
}

/// Refuses two model descriptions whose modules differ (names, data and precision aside),
/// naming every differing field.
fn agree(given: &str, other: &str, given_name: &str, other_name: &str) -> anyhow::Result<()> {
    let modules = |text: &str, name: &str| -> anyhow::Result<Value> {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{name}: not JSON"))?;
        let mut v =
            serde_json::json!({ "modules": v.get("modules"), "boundaries": v.get("boundaries") });
        strip(&mut v);
        Ok(v)
    };
    let (a, b) = (modules(given, given_name)?, modules(other, other_name)?);
    let mut diffs = Vec::new();
    diff(&a, &b, String::new(), &mut diffs);
    if diffs.is_empty() {
        return Ok(());
    }
    bail!(
        "{given_name} disagrees with {other_name}: {}",
        diffs.join("; ")
    )
}

/// Drops what does not shape the weights: precision, and absent boundaries.
fn strip(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("precision");
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip);
        }
        Value::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

fn diff(a: &Value, b: &Value, path: String, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(w)) => diff(u, w, p, out),
                    (Some(u), None) => out.push(format!("{p} is {u} here, absent there")),
                    (None, Some(w)) => out.push(format!("{p} is absent here, {w} there")),
                    (None, None) => {}
                }
            }
        }
        _ if a != b => out.push(format!("{path} is {a} here, {b} there")),
        _ => {}
    }
}

impl SaveArgs {
    /// The runtime's save, for `model`'s run from step `first_step` (0 unless resumed).
    pub fn spec(&self, model: &ModelText, seed: u64, lr: f64, first_step: u64) -> Option<SaveSpec> {
        let dir = self.save.clone()?;
        Some(SaveSpec {
            dir,
            every: self.save_every.unwrap_or(usize::MAX),
            first_step,
            seed,
            lr,
            config_json: model.config_json.as_deref().map(f32_config),
            model_json: model.text.clone(),
            max_shard_bytes: max_shard_bytes(),
        })
    }

    /// `--save`'s directory made now, so that one it cannot write fails before training.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.save else {
            return Ok(());
        };
        if self.save_every == Some(0) {
            bail!("--save-every 0: give a number of steps of 1 or more");
        }
        if dir.exists() && !dir.is_dir() {
            bail!("--save {}: it exists and is not a directory", dir.display());
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--save {}: cannot create it", dir.display()))
    }

    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(d) = &self.save {
            v.extend(["--save".to_string(), d.display().to_string()]);
        }
        if let Some(n) = self.save_every {
            v.extend(["--save-every".to_string(), n.to_string()]);
        }
        v
    }
}

/// A config.json naming the dtype of the f32 files a save writes: `transformers` loads a
/// model in its config's dtype unless told otherwise. The text is kept as written otherwise.
fn f32_config(text: &str) -> String {
    let mut out = text.to_string();
    for key in ["\"dtype\"", "\"torch_dtype\""] {
        for from in ["bfloat16", "float16"] {
            out = out.replace(
                &format!("{key}: \"{from}\""),
                &format!("{key}: \"float32\""),
            );
        }
    }
    out
}

/// The largest consolidated weights file: 2 GiB, as `save_pretrained`'s shards are of that
/// order; `HETPAR_SAVE_SHARD_BYTES` sets it (tests make sharded saves of tiny models with it).
fn max_shard_bytes() -> usize {
    std::env::var("HETPAR_SAVE_SHARD_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30)
}
