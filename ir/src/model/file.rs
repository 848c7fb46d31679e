//! The model file (`"kind": "model"`): modules, the boundaries between them, and the training
//! data. This is the serialized form; `ModelGraph` is the built, verified form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::arch::{EmbeddingSpec, MlpSpec, PositionsSpec, TransformerSpec};

/// What a module is. The kind decides which parts it must have (see `verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    VisionEncoder,
    AudioEncoder,
    VideoEncoder,
    Projector,
    LanguageModel,
    Generator,
}

impl ModuleKind {
    pub fn is_encoder(self) -> bool {
        matches!(
            self,
            ModuleKind::VisionEncoder | ModuleKind::AudioEncoder | ModuleKind::VideoEncoder
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::VisionEncoder => "vision_encoder",
            ModuleKind::AudioEncoder => "audio_encoder",
            ModuleKind::VideoEncoder => "video_encoder",
            ModuleKind::Projector => "projector",
            ModuleKind::LanguageModel => "language_model",
            ModuleKind::Generator => "generator",
        }
    }
}

/// One module. Parts by kind:
/// encoders: `transformer`, `embedding`, `positions`, `tokens_per_item`, optional `pre_norm`,
/// `class_token`, `final_norm`, `token_id`;
/// projector: `mlp`;
/// language model: `transformer`, `vocab_size`, `positions`, optional `tied_embeddings`;
/// generator: `transformer`, optional `out_features`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleSpec {
    pub kind: ModuleKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<EmbeddingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<PositionsSpec>,
    /// Rows one input item (image, clip) yields when the data gives only item counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_item: Option<u32>,
    /// An extra norm before the first layer (CLIP's pre-layernorm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_norm: Option<bool>,
    /// A learned class row leading every item (CLIP's): it takes the first position, attends
    /// with the item's rows, and is dropped from the encoder's output (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_token: Option<bool>,
    /// A norm after the encoder's last layer (absent: true). LLaVA reads CLIP's features
    /// before its `post_layernorm`: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_norm: Option<bool>,
    /// The token id marking this encoder's rows in a sample's token ids (Hugging Face's
    /// `image_token_index`). Only reading a Hugging Face batch needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp: Option<MlpSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tied_embeddings: Option<bool>,
    /// Width of a generator's output head (absent: no head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_features: Option<u32>,
}

/// Where the rows a boundary carries go in its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Landing {
    /// Row i of the source is row i of the destination's input (encoder -> projector).
    Rows,
    /// The source rows of a sample fill, in order, the placeholder positions its items hold in
    /// the destination's sequence (projector -> language model).
    Placeholders,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundarySpec {
    /// Unique name; `"{from}->{to}"` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub from: String,
    pub to: String,
    pub landing: Landing,
}

impl BoundarySpec {
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}->{}", self.from, self.to))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Bf16,
    Fp16,
    Fp32,
    Fp8,
}

impl Precision {
    /// Bytes of one activation element.
    pub fn activation_bytes(self) -> u64 {
        match self {
            Precision::Bf16 | Precision::Fp16 => 2,
            Precision::Fp32 => 4,
            // fp8 training keeps activations that cross modules in 16 bits.
            Precision::Fp8 => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Adam,
    Adamw,
    Sgd,
}

/// The items one encoder sees per sample: a fixed count of fixed size, or a per-sample list of
/// token counts (one inner list per sample of the global batch, one entry per item).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderDataSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_per_sample: Option<u32>,
    /// Tokens of one item; the encoder's `tokens_per_item` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_item: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_sample: Option<Vec<Vec<u32>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Samples per optimizer step.
    pub global_batch: u32,
    /// Tokens of one sample in the language model (text and placeholders together).
    pub sequence_length: u32,
    pub precision: Precision,
    pub optimizer: Optimizer,
    /// Inputs of each encoder, keyed by encoder module name.
    #[serde(default)]
    pub encoders: BTreeMap<String, EncoderDataSpec>,
}

/// A whole model file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFile {
    pub kind: String,
    pub format_version: u32,
    pub name: String,
    pub modules: BTreeMap<String, ModuleSpec>,
    #[serde(default)]
    pub boundaries: Vec<BoundarySpec>,
    pub data: DataSpec,
}
