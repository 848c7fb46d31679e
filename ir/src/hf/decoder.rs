//! Plain decoders (Llama, Mistral, Qwen2, Mixtral, and the Qwen-VL text models) as a hetpar
//! language model. The sizes are required; every other field takes the default of its
//! `transformers` config class, noted.

use super::fields::Fields;
use crate::model::{
    Activation, AttentionKind, FfnKind, ModuleKind, ModuleSpec, MoeSpec, NormKind, PositionKind,
    PositionsSpec, Real, TransformerSpec,
};

/// Whether a decoder's sizes must be given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sizes {
    /// A config's own decoder: a missing size is an error.
    Required,
    /// LLaVA's `text_config`, which `LlavaConfig` builds with its class's defaults (published
    /// LLaVA-1.5 configs give only the vocabulary): a missing size takes the default, noted.
    ClassDefaults,
}

/// The `transformers` class of a decoder `model_type`, and its defaults: hidden, FFN, layers,
/// heads, vocabulary, and KV heads (`None`: as many as the attention heads).
fn class_of(model_type: &str) -> (&'static str, [u32; 5], Option<u32>) {
    match model_type {
        "mistral" => ("MistralConfig", [4096, 14336, 32, 32, 32000], Some(8)),
        "mixtral" => ("MixtralConfig", [4096, 14336, 32, 32, 32000], Some(8)),
        "qwen2" => ("Qwen2Config", [4096, 22016, 32, 32, 151936], Some(32)),
        "qwen2_vl" => ("Qwen2VLTextConfig", [8192, 29568, 80, 64, 152064], Some(8)),
        "qwen2_5_vl" => (
            "Qwen2_5_VLTextConfig",
            [8192, 29568, 80, 64, 152064],
            Some(8),
        ),
        _ => ("LlamaConfig", [4096, 11008, 32, 32, 32000], None),
    }
}

/// Reads a decoder config of `model_type` (its own object or a VLM's text part).
pub(crate) fn import(f: &Fields<'_>, model_type: &str, sizes: Sizes) -> Option<ModuleSpec> {
    let (class, d, kv_default) = class_of(model_type);
    let f = f.as_class(class);
    let size = |key: &str, default: u32| match sizes {
        Sizes::Required => f.u32_required(key),
        Sizes::ClassDefaults => Some(f.u32_default_because(
            key,
            default,
            format!("LlavaConfig builds text_config as a {class}, whose default this is"),
        )),
    };
    let hidden = size("hidden_size", d[0]);
    let ffn = size("intermediate_size", d[1]);
    let layers = size("num_hidden_layers", d[2]);
    let heads = size("num_attention_heads", d[3]);
    let vocab = size("vocab_size", d[4]);
    let (hidden, ffn, layers, heads, vocab) = (hidden?, ffn?, layers?, heads?, vocab?);
    let kv_heads = match kv_default {
        Some(kv) => f.u32_default("num_key_value_heads", kv),
        None => f.u32_default_because(
            "num_key_value_heads",
            heads,
            format!("{class} takes num_attention_heads when it is absent"),
        ),
    };
    let head_dim = f.u32_opt("head_dim");
    if f.get("head_dim").is_none() {
        let derived = hidden / heads.max(1);
        let why = "hidden_size / num_attention_heads, as transformers derives it".to_string();
        f.note("head_dim", derived, why);
    }
    // Every config class of these families defaults `rope_theta` to 10000.
    let rope_base = Some(match super::rope::theta(&f) {
        Some(theta) => theta.round().clamp(1.0, f64::from(u32::MAX)) as u32,
        None => {
            f.note(
                "rope_theta",
                10000,
                format!("{class} takes 10000 when it is absent"),
            );
            10000
        }
    });
    let moe = (model_type == "mixtral").then(|| MoeSpec {
        experts: f.u32_default("num_local_experts", 8),
        top_k: f.u32_default("num_experts_per_tok", 2),
        expert_ffn_hidden: ffn,
        shared_experts: 0,
        layer_frequency: 1,
    });
    // Only LlamaConfig has bias switches; the others fix their biases (Qwen2: on the QKV
    // projections, always).
    let llama = class == "LlamaConfig";
    // MixtralConfig's default is 1e-5; the other classes' 1e-6.
    let eps_default = if model_type == "mixtral" { 1e-5 } else { 1e-6 };
    let qkv_bias =
        model_type.starts_with("qwen2") || (llama && f.bool_default("attention_bias", false));
    let linear_bias = llama && f.bool_default("mlp_bias", false);
    Some(ModuleSpec {
        kind: ModuleKind::LanguageModel,
        transformer: Some(TransformerSpec {
            layers,
            hidden,
            heads,
            kv_heads: Some(kv_heads),
            head_dim,
            ffn_hidden: ffn,
            ffn_kind: FfnKind::Swiglu,
            norm: NormKind::RmsNorm,
            attention: AttentionKind::Causal,
            qkv_bias,
            linear_bias,
            moe,
            activation: Some(f.activation_default("hidden_act", Activation::Silu)),
            norm_eps: Some(Real(f.positive_default("rms_norm_eps", eps_default))),
        }),
        positions: Some(PositionsSpec {
            kind: PositionKind::Rope,
            max_positions: None,
            rope_base,
            rope_scaling: super::rope::scaling(&f),
        }),
        vocab_size: Some(vocab),
        tied_embeddings: Some(f.bool_default("tie_word_embeddings", false)),
        embedding: None,
        tokens_per_item: None,
        pre_norm: None,
        class_token: None,
        final_norm: None,
        token_id: None,
        mlp: None,
        out_features: None,
    })
}
