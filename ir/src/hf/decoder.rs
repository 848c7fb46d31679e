//! Plain decoders (Llama, Mistral, Qwen2, Mixtral) as a hetpar language model, with the
//! defaults of their `transformers` config classes.

use super::fields::Fields;
use crate::model::{
    AttentionKind, FfnKind, ModuleKind, ModuleSpec, MoeSpec, NormKind, PositionKind, PositionsSpec,
    TransformerSpec,
};

/// Reads a decoder config of `model_type` (its own object or a VLM's text part).
pub(crate) fn import(f: &Fields<'_>, model_type: &str) -> Option<ModuleSpec> {
    // Defaults of LlamaConfig, MistralConfig, Qwen2Config, MixtralConfig.
    let (hidden, ffn, layers, heads, vocab) = match model_type {
        "mistral" => (4096, 14336, 32, 32, 32000),
        "mixtral" => (4096, 14336, 32, 32, 32000),
        "qwen2" | "qwen2_vl" | "qwen2_5_vl" => (4096, 22016, 32, 32, 151936),
        _ => (4096, 11008, 32, 32, 32000),
    };
    let kv_default = match model_type {
        "mistral" | "mixtral" => 8,
        _ => f.u32_or("num_attention_heads", heads),
    };
    let heads = f.u32_or("num_attention_heads", heads);
    let moe = (model_type == "mixtral").then(|| MoeSpec {
        experts: f.u32_or("num_local_experts", 8),
        top_k: f.u32_or("num_experts_per_tok", 2),
        expert_ffn_hidden: f.u32_or("intermediate_size", ffn),
        shared_experts: 0,
        layer_frequency: 1,
    });
    let qwen = model_type.starts_with("qwen2");
    Some(ModuleSpec {
        kind: ModuleKind::LanguageModel,
        transformer: Some(TransformerSpec {
            layers: f.u32_or("num_hidden_layers", layers),
            hidden: f.u32_or("hidden_size", hidden),
            heads,
            kv_heads: Some(f.u32_or("num_key_value_heads", kv_default)),
            head_dim: f.u32_opt("head_dim"),
            ffn_hidden: f.u32_or("intermediate_size", ffn),
            ffn_kind: FfnKind::Swiglu,
            norm: NormKind::RmsNorm,
            attention: AttentionKind::Causal,
            qkv_bias: qwen || f.bool_or("attention_bias", false),
            linear_bias: f.bool_or("mlp_bias", false),
            moe,
        }),
        positions: Some(PositionsSpec {
            kind: PositionKind::Rope,
            max_positions: None,
        }),
        vocab_size: Some(f.u32_or("vocab_size", vocab)),
        tied_embeddings: Some(f.bool_or("tie_word_embeddings", false)),
        embedding: None,
        tokens_per_item: None,
        pre_norm: None,
        mlp: None,
        out_features: None,
    })
}
