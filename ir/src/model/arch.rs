//! Module architectures as written in a model file: transformer stacks, mixture of experts,
//! input embeddings of encoders, position encodings and projector MLPs.
//!
//! Parameter counts and FLOPs are derived from these (see `counts.rs`), never typed in.

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// The feed-forward block of a transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    /// Two linear layers with a GELU (or similar ungated activation) between them.
    GeluMlp,
    /// Gated: `down(silu(gate(x)) * up(x))`, three weight matrices.
    Swiglu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    /// Weight and bias per channel.
    LayerNorm,
    /// Weight per channel.
    RmsNorm,
}

impl NormKind {
    /// Parameters of one norm over `width` channels.
    pub fn params(self, width: u64) -> u64 {
        match self {
            NormKind::LayerNorm => 2 * width,
            NormKind::RmsNorm => width,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// Every token attends to every token of its item (encoders).
    Bidirectional,
    /// Token i attends to tokens 0..=i (language models).
    Causal,
}

/// Mixture of experts replacing the dense FFN in some layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoeSpec {
    pub experts: u32,
    pub top_k: u32,
    /// FFN hidden size of one expert.
    pub expert_ffn_hidden: u32,
    /// Experts every token passes through in addition to the routed ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shared_experts: u32,
    /// Every `layer_frequency`-th layer is a MoE layer (1: all of them).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub layer_frequency: u32,
}

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A stack of identical pre-norm transformer layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransformerSpec {
    pub layers: u32,
    pub hidden: u32,
    pub heads: u32,
    /// Key/value heads (grouped-query attention); equal to `heads` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<u32>,
    /// Size of one head; `hidden / heads` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<u32>,
    pub ffn_hidden: u32,
    pub ffn_kind: FfnKind,
    pub norm: NormKind,
    pub attention: AttentionKind,
    /// Biases on the query, key and value projections.
    #[serde(default, skip_serializing_if = "is_false")]
    pub qkv_bias: bool,
    /// Biases on the attention output projection and the FFN linears.
    #[serde(default, skip_serializing_if = "is_false")]
    pub linear_bias: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeSpec>,
    /// The FFN's activation (the gate's, for `swiglu`); absent: `gelu` for `gelu_mlp`,
    /// `silu` for `swiglu`. Costs do not depend on it; execution does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<Activation>,
    /// The norms' epsilon; absent: 1e-5 (execution only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<Real>,
}

impl TransformerSpec {
    /// The FFN's activation, its default filled in.
    pub fn activation(&self) -> Activation {
        self.activation.unwrap_or(match self.ffn_kind {
            FfnKind::GeluMlp => Activation::Gelu,
            FfnKind::Swiglu => Activation::Silu,
        })
    }

    /// The norms' epsilon, its default filled in.
    pub fn norm_eps(&self) -> f64 {
        self.norm_eps.map_or(1e-5, |e| e.0)
    }

    pub fn kv_heads(&self) -> u32 {
        self.kv_heads.unwrap_or(self.heads)
    }

    /// Head size; 0 only for an invalid spec that the verifier rejects.
    pub fn head_dim(&self) -> u32 {
        self.head_dim
            .unwrap_or_else(|| self.hidden.checked_div(self.heads).unwrap_or(0))
    }

    /// Whether layer `i` (0-based) uses the mixture of experts.
    pub fn is_moe_layer(&self, i: u32) -> bool {
        match &self.moe {
            Some(m) if m.layer_frequency > 0 => (i + 1).is_multiple_of(m.layer_frequency),
            _ => false,
        }
    }

    /// Number of MoE layers in the stack.
    pub fn moe_layers(&self) -> u32 {
        (0..self.layers).filter(|&i| self.is_moe_layer(i)).count() as u32
    }
}

/// How an encoder turns its raw input into rows of width `hidden`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingKind {
    /// A convolution with stride = kernel = patch over images (or video with a temporal patch).
    Patch,
    /// A stack of 1-D convolutions over a spectrogram (audio).
    Conv1d,
    /// One linear layer over a flattened input vector.
    Linear,
}

/// The input embedding of an encoder. Which fields apply depends on `kind`:
/// `patch`: `patch_size`, `channels`, optional `temporal_patch_size`;
/// `conv1d`: `in_features`, `kernel_size`, `conv_layers`; `linear`: `in_features`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingSpec {
    pub kind: EmbeddingKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_patch_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_features: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_layers: Option<u32>,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
}

impl EmbeddingSpec {
    /// Length of the input vector of one row (flattened patch, spectrogram frame window, ...).
    pub fn row_input_len(&self) -> u64 {
        let g = |v: Option<u32>| u64::from(v.unwrap_or(1));
        match self.kind {
            EmbeddingKind::Patch => {
                g(self.channels)
                    * g(self.patch_size)
                    * g(self.patch_size)
                    * g(self.temporal_patch_size)
            }
            EmbeddingKind::Conv1d | EmbeddingKind::Linear => g(self.in_features),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// A learned table of `max_positions` rows (adds parameters).
    Learned,
    /// Rotary embeddings (no parameters).
    Rope,
    /// No position encoding.
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionsSpec {
    pub kind: PositionKind,
    /// Rows of a learned table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_positions: Option<u32>,
    /// The rotary base (Hugging Face's `rope_theta`); no cost depends on it, an export does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_base: Option<u32>,
    /// A rescaling of the rotary frequencies (Hugging Face's `rope_scaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

/// A real number of a model file, finite by the verifier, so compared by value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Real(pub f64);

impl Eq for Real {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeScalingKind {
    /// Llama 3.1's: long wavelengths divided by `factor`, short ones kept, those between
    /// blended (`transformers`' `_compute_llama3_parameters`).
    Llama3,
}

/// Hugging Face's `rope_scaling` of `rope_type` `llama3`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RopeScaling {
    pub kind: RopeScalingKind,
    pub factor: Real,
    pub low_freq_factor: Real,
    pub high_freq_factor: Real,
    pub original_max_positions: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The exact GELU, `x·Φ(x)` (Hugging Face's `gelu`).
    Gelu,
    /// GELU's tanh approximation (`gelu_pytorch_tanh`, `gelu_new`; the reference model's).
    GeluTanh,
    /// `x·σ(1.702·x)` (CLIP's `quick_gelu`).
    QuickGelu,
    Silu,
    Relu,
}

/// A projector: an MLP `widths[0] -> widths[1] -> ... -> widths[n]`, optionally merging
/// `token_merge` consecutive input rows into one (Qwen2-VL's 2x2 patch merger: 4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlpSpec {
    pub widths: Vec<u32>,
    pub activation: Activation,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub bias: bool,
    /// Input rows merged into one output row; the first width is the merged width.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub token_merge: u32,
    /// A norm over the unmerged input rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_norm: Option<NormKind>,
}
