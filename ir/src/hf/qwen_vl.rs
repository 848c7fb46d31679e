//! Qwen2-VL and Qwen2.5-VL: a ViT with 3-D patches (`temporal_patch_size`) and rotary
//! positions, a merger that joins `spatial_merge_size`^2 patches into one LLM token, and a
//! Qwen2 decoder whose fields sit at the top level (original layout) or under `text_config`
//! (later re-serializations).
//!
//! Qwen2-VL's tower: LayerNorm, GELU MLP of `embed_dim * mlp_ratio`, output width `hidden_size`.
//! Qwen2.5-VL's: RMSNorm, gated SiLU MLP of `intermediate_size`, output width `out_hidden_size`.
//! Window attention in Qwen2.5-VL changes FLOPs, not parameters; it is not modelled.

use std::cell::RefCell;

use serde_json::Value;

use super::fields::Fields;
use super::{decoder, vlm_boundaries, ImportOptions, Parts};
use crate::diag::Diagnostics;
use crate::model::{
    Activation, AttentionKind, EmbeddingKind, EmbeddingSpec, FfnKind, MlpSpec, ModuleKind,
    ModuleSpec, NormKind, PositionKind, PositionsSpec, TransformerSpec,
};

/// Encoder patches per image when the config fixes no image size: 448 x 448 at patch 14.
const DEFAULT_PATCHES: u32 = 1024;

pub(crate) fn import(
    config: &Value,
    _opts: &ImportOptions,
    v25: bool,
    cell: &RefCell<Diagnostics>,
) -> Option<Parts> {
    let top = Fields::new(Some(config), "", cell);
    let v = Fields::new(top.get("vision_config"), "vision_config", cell);
    let text = if top.get("text_config").is_some() {
        Fields::new(top.get("text_config"), "text_config", cell)
    } else {
        top
    };
    let lm = decoder::import(&text, "qwen2")?;
    let lm_hidden = lm.transformer.as_ref().map_or(0, |x| x.hidden);
    let (hidden, ffn, ffn_kind, norm, out) = if v25 {
        (
            v.u32_or("hidden_size", 1280),
            v.u32_or("intermediate_size", 3420),
            FfnKind::Swiglu,
            NormKind::RmsNorm,
            v.u32_or("out_hidden_size", lm_hidden),
        )
    } else {
        let embed = v.u32_or("embed_dim", 1280);
        (
            embed,
            embed.saturating_mul(v.u32_or("mlp_ratio", 4)),
            FfnKind::GeluMlp,
            NormKind::LayerNorm,
            v.u32_or("hidden_size", lm_hidden),
        )
    };
    let merge = v.u32_or("spatial_merge_size", 2);
    let merge = merge.saturating_mul(merge);
    let encoder = ModuleSpec {
        kind: ModuleKind::VisionEncoder,
        transformer: Some(TransformerSpec {
            layers: v.u32_or("depth", 32),
            hidden,
            heads: v.u32_or("num_heads", 16),
            kv_heads: None,
            head_dim: None,
            ffn_hidden: ffn,
            ffn_kind,
            norm,
            attention: AttentionKind::Bidirectional,
            qkv_bias: true,
            linear_bias: true,
            moe: None,
        }),
        embedding: Some(EmbeddingSpec {
            kind: EmbeddingKind::Patch,
            patch_size: Some(v.u32_or("patch_size", 14)),
            temporal_patch_size: Some(v.u32_or("temporal_patch_size", 2)),
            channels: Some(v.u32_or("in_chans", v.u32_or("in_channels", 3))),
            in_features: None,
            kernel_size: None,
            conv_layers: None,
            bias: false,
        }),
        positions: Some(PositionsSpec {
            kind: PositionKind::Rope,
            max_positions: None,
        }),
        tokens_per_item: Some(DEFAULT_PATCHES),
        pre_norm: None,
        mlp: None,
        vocab_size: None,
        tied_embeddings: None,
        out_features: None,
    };
    let merged = hidden.saturating_mul(merge);
    let projector = ModuleSpec {
        kind: ModuleKind::Projector,
        mlp: Some(MlpSpec {
            widths: vec![merged, merged, out],
            activation: Activation::Gelu,
            bias: true,
            token_merge: merge,
            input_norm: Some(norm),
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
            ("merger".into(), projector),
            ("llm".into(), lm),
        ],
        boundaries: vlm_boundaries("vision", "merger", "llm"),
        encoders: vec![("vision".into(), DEFAULT_PATCHES)],
    })
}
