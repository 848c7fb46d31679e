//! Import of Hugging Face `config.json` files into hetpar model files.
//!
//! Families (one file each): LLaVA style (`vision_config` + `text_config`), Qwen2-VL and
//! Qwen2.5-VL (vision tower + merger + Qwen2 decoder, flat or nested text config), and plain
//! decoders (Llama, Mistral, Qwen2, Mixtral). The fields that set a model's size are required
//! (a missing one is an error, never a guess); any other field missing from a config takes the
//! default of its `transformers` config class, as the library itself would, and the import
//! returns a `Note` for each.
//!
//! A config has no training data; `ImportOptions` supplies batch, sequence and item counts.

mod decoder;
mod fields;
mod llava;
mod qwen_vl;
mod rope;

use std::collections::BTreeMap;

use serde_json::Value;

use crate::diag::Diagnostics;
use crate::json::FORMAT_VERSION;
use crate::model::{
    BoundarySpec, DataSpec, EncoderDataSpec, Landing, ModelFile, ModuleSpec, Optimizer, Precision,
};
use crate::rule::Rule;
use decoder::Sizes;
use fields::{Fields, Log};

/// A field a config left out and the value the import gave it: its path in the config, the
/// value, and why that value (the default of which `transformers` class, or how derived).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Note {
    pub path: String,
    pub value: String,
    pub why: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {} ({})", self.path, self.value, self.why)
    }
}

/// Training data for an imported model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportOptions {
    pub name: Option<String>,
    pub global_batch: u32,
    pub sequence_length: u32,
    pub items_per_sample: u32,
    /// Encoder tokens (patches) per image; from the vision config when it fixes the image size,
    /// else 1024 (a 448 x 448 image at patch 14).
    pub tokens_per_item: Option<u32>,
    pub precision: Precision,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            name: None,
            global_batch: 128,
            sequence_length: 4096,
            items_per_sample: 1,
            tokens_per_item: None,
            precision: Precision::Bf16,
        }
    }
}

/// The `model_type` values this importer reads.
pub const SUPPORTED: &[&str] = &[
    "llava",
    "qwen2_vl",
    "qwen2_5_vl",
    "llama",
    "mistral",
    "qwen2",
    "mixtral",
];

/// Imports a parsed `config.json`. `name` defaults to the config's `_name_or_path` or its
/// model type.
pub fn import(config: &Value, opts: &ImportOptions) -> Result<ModelFile, Diagnostics> {
    import_noted(config, opts).map(|(m, _)| m)
}

/// Imports a parsed `config.json`, with a note for every field that took a default.
pub fn import_noted(
    config: &Value,
    opts: &ImportOptions,
) -> Result<(ModelFile, Vec<Note>), Diagnostics> {
    let log = Log::default();
    let f = Fields::new(Some(config), "", "PretrainedConfig", &log);
    let model_type = f.string("model_type");
    if model_type.is_none() && config.is_object() {
        log.ds.borrow_mut().error(
            "model_type",
            Rule::JsonType,
            "missing: a Hugging Face config names its model_type",
        );
    }
    let name = opts
        .name
        .clone()
        .or_else(|| {
            config
                .get("_name_or_path")
                .and_then(Value::as_str)
                .map(|s| s.rsplit('/').next().unwrap_or(s).to_lowercase())
        })
        .unwrap_or_else(|| model_type.clone().unwrap_or_default());
    let parts = match model_type.as_deref() {
        Some("llava") => llava::import(config, opts, &log),
        Some("qwen2_vl") => qwen_vl::import(config, opts, false, &log),
        Some("qwen2_5_vl") => qwen_vl::import(config, opts, true, &log),
        Some(t @ ("llama" | "mistral" | "qwen2" | "mixtral")) => {
            decoder::import(&f, t, Sizes::Required).map(|lm| Parts {
                modules: vec![("llm".into(), lm)],
                boundaries: vec![],
                encoders: vec![],
            })
        }
        Some(other) => {
            log.ds.borrow_mut().error(
                "model_type",
                Rule::JsonType,
                format!(
                    "model type \"{other}\" is not supported; supported: {}",
                    SUPPORTED.join(", ")
                ),
            );
            None
        }
        None => None,
    };
    let ds = log.ds.into_inner();
    let Some(parts) = parts else {
        return Err(ds);
    };
    if ds.has_errors() {
        return Err(ds);
    }
    let mut encoders = BTreeMap::new();
    for (enc, tokens) in parts.encoders {
        encoders.insert(
            enc,
            EncoderDataSpec {
                items_per_sample: Some(opts.items_per_sample),
                tokens_per_item: Some(opts.tokens_per_item.unwrap_or(tokens)),
                per_sample: None,
            },
        );
    }
    let model = ModelFile {
        kind: "model".into(),
        format_version: FORMAT_VERSION,
        name,
        modules: parts.modules.into_iter().collect(),
        boundaries: parts.boundaries,
        data: DataSpec {
            global_batch: opts.global_batch,
            sequence_length: opts.sequence_length,
            precision: opts.precision,
            optimizer: Optimizer::Adam,
            encoders,
        },
    };
    Ok((model, log.notes.into_inner()))
}

/// What a family importer returns: modules, boundaries, and per encoder its default tokens per
/// item.
pub(crate) struct Parts {
    pub modules: Vec<(String, ModuleSpec)>,
    pub boundaries: Vec<BoundarySpec>,
    pub encoders: Vec<(String, u32)>,
}

/// The usual chain: encoder -> projector -> language model.
pub(crate) fn vlm_boundaries(encoder: &str, projector: &str, llm: &str) -> Vec<BoundarySpec> {
    vec![
        BoundarySpec {
            name: None,
            from: encoder.into(),
            to: projector.into(),
            landing: Landing::Rows,
        },
        BoundarySpec {
            name: None,
            from: projector.into(),
            to: llm.into(),
            landing: Landing::Placeholders,
        },
    ]
}
