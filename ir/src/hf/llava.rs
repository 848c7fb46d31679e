//! LLaVA style: a CLIP vision tower (`vision_config`), a two-layer MLP projector, and a decoder
//! (`text_config`). Missing fields take the defaults of CLIPVisionConfig and of the text
//! config's class (LlamaConfig for Vicuna).

use std::cell::RefCell;

use serde_json::Value;

use super::fields::Fields;
use super::{decoder, vlm_boundaries, ImportOptions, Parts};
use crate::diag::Diagnostics;
use crate::model::{
    Activation, AttentionKind, EmbeddingKind, EmbeddingSpec, FfnKind, MlpSpec, ModuleKind,
    ModuleSpec, NormKind, PositionKind, PositionsSpec, TransformerSpec,
};
use crate::rule::Rule;

pub(crate) fn import(
    config: &Value,
    _opts: &ImportOptions,
    cell: &RefCell<Diagnostics>,
) -> Option<Parts> {
    let top = Fields::new(Some(config), "", cell);
    let v = Fields::new(top.get("vision_config"), "vision_config", cell);
    let t = Fields::new(top.get("text_config"), "text_config", cell);
    let text_type = t.string("model_type").unwrap_or_else(|| "llama".into());
    if !matches!(text_type.as_str(), "llama" | "mistral" | "qwen2") {
        cell.borrow_mut().error(
            "text_config.model_type",
            Rule::JsonType,
            format!("text model \"{text_type}\" is not supported inside LLaVA; supported: llama, mistral, qwen2"),
        );
    }
    // CLIPVisionConfig defaults.
    let hidden = v.u32_or("hidden_size", 768);
    let image = v.u32_or("image_size", 224);
    let patch = v.u32_or("patch_size", 32).max(1);
    let side = image / patch;
    let patches = side.saturating_mul(side);
    let encoder = ModuleSpec {
        kind: ModuleKind::VisionEncoder,
        transformer: Some(TransformerSpec {
            layers: v.u32_or("num_hidden_layers", 12),
            hidden,
            heads: v.u32_or("num_attention_heads", 12),
            kv_heads: None,
            head_dim: None,
            ffn_hidden: v.u32_or("intermediate_size", 3072),
            ffn_kind: FfnKind::GeluMlp,
            norm: NormKind::LayerNorm,
            attention: AttentionKind::Bidirectional,
            qkv_bias: true,
            linear_bias: true,
            moe: None,
        }),
        embedding: Some(EmbeddingSpec {
            kind: EmbeddingKind::Patch,
            patch_size: Some(patch),
            temporal_patch_size: None,
            channels: Some(v.u32_or("num_channels", 3)),
            in_features: None,
            kernel_size: None,
            conv_layers: None,
            bias: false,
        }),
        // The table holds the class token's position too.
        positions: Some(PositionsSpec {
            kind: PositionKind::Learned,
            max_positions: Some(patches.saturating_add(1)),
        }),
        tokens_per_item: Some(patches),
        pre_norm: Some(true),
        mlp: None,
        vocab_size: None,
        tied_embeddings: None,
        out_features: None,
    };
    let lm = decoder::import(&t, &text_type)?;
    let lm_hidden = lm.transformer.as_ref().map_or(0, |x| x.hidden);
    let projector = ModuleSpec {
        kind: ModuleKind::Projector,
        mlp: Some(MlpSpec {
            widths: vec![hidden, lm_hidden, lm_hidden],
            activation: Activation::Gelu,
            bias: top.bool_or("multimodal_projector_bias", true),
            token_merge: 1,
            input_norm: None,
        }),
        transformer: None,
        embedding: None,
        positions: None,
        tokens_per_item: None,
        pre_norm: None,
        vocab_size: None,
        tied_embeddings: None,
        out_features: None,
    };
    Some(Parts {
        modules: vec![
            ("vision".into(), encoder),
            ("projector".into(), projector),
            ("llm".into(), lm),
        ],
        boundaries: vlm_boundaries("vision", "projector", "llm"),
        encoders: vec![("vision".into(), patches)],
    })
}
