//! Qwen2-VL and Qwen2.5-VL: a ViT with 3-D patches (`temporal_patch_size`) and rotary
//! positions, a merger that joins `spatial_merge_size`^2 patches into one LLM token, and a
//! Qwen2 decoder whose fields sit at the top level (original layout) or under `text_config`
//! (later re-serializations).
//!
//! Qwen2-VL's tower: LayerNorm, GELU MLP of `embed_dim * mlp_ratio`, output width `hidden_size`.
//! Qwen2.5-VL's: RMSNorm, gated SiLU MLP of `intermediate_size`, output width `out_hidden_size`.
//! Window attention in Qwen2.5-VL changes FLOPs, not parameters; it is not modelled.

use serde_json::Value;

use super::decoder::{self, Sizes};
use super::fields::{Fields, Log};
use super::{vlm_boundaries, ImportOptions, Parts};
use crate::model::{
    Activation, AttentionKind, EmbeddingKind, EmbeddingSpec, FfnKind, MlpSpec, ModuleKind,
    ModuleSpec, NormKind, PositionKind, PositionsSpec, TransformerSpec,
};

/// Encoder patches per image when the config fixes no image size: 448 x 448 at patch 14.
const DEFAULT_PATCHES: u32 = 1024;

pub(crate) fn import(config: &Value, opts: &ImportOptions, v25: bool, log: &Log) -> Option<Parts> {
    let (class, vclass) = if v25 {
        ("Qwen2_5_VLConfig", "Qwen2_5_VLVisionConfig")
    } else {
        ("Qwen2VLConfig", "Qwen2VLVisionConfig")
    };
    let top = Fields::new(Some(config), "", class, log);
    // Without a vision_config, transformers assumes its default tower: a model nobody gave.
    if top.get("vision_config").is_none() {
        top.error(
            "vision_config",
            "missing: a Qwen-VL config describes its vision tower, and hetpar does not guess one"
                .into(),
        );
    }
    let v = Fields::new(top.get("vision_config"), "vision_config", vclass, log);
    let text = if top.get("text_config").is_some() {
        Fields::new(top.get("text_config"), "text_config", class, log)
    } else {
        top
    };
    let text_type = if v25 { "qwen2_5_vl" } else { "qwen2_vl" };
    let lm = decoder::import(&text, text_type, Sizes::Required);
    // The tower's sizes, and the merger's output width, are required.
    let (hidden, ffn, ffn_kind, norm, out) = if v25 {
        (
            v.u32_required("hidden_size"),
            v.u32_required("intermediate_size"),
            FfnKind::Swiglu,
            NormKind::RmsNorm,
            v.u32_required("out_hidden_size"),
        )
    } else {
        let embed = v.u32_required("embed_dim");
        let ratio = v.u32_default("mlp_ratio", 4);
        (
            embed,
            embed.map(|e| e.saturating_mul(ratio)),
            FfnKind::GeluMlp,
            NormKind::LayerNorm,
            v.u32_required("hidden_size"),
        )
    };
    let (layers, heads) = (v.u32_required("depth"), v.u32_required("num_heads"));
    let merge = v.u32_default("spatial_merge_size", 2);
    let merge = merge.saturating_mul(merge);
    let patch = v.u32_default("patch_size", 14);
    let temporal = v.u32_default("temporal_patch_size", 2);
    // The original configs say in_chans; transformers' class says in_channels.
    let channels = match v.u32_opt("in_chans") {
        Some(c) => c,
        None => v.u32_default("in_channels", 3),
    };
    let (lm, hidden, ffn, out, layers, heads) = (lm?, hidden?, ffn?, out?, layers?, heads?);
    if opts.tokens_per_item.is_none() {
        top.note_option(
            "data.encoders.vision.tokens_per_item",
            DEFAULT_PATCHES,
            "--tokens-per-item not given and a Qwen-VL config fixes no image size: a 448 x 448 \
             image at patch 14"
                .into(),
        );
    }
    let encoder = ModuleSpec {
        kind: ModuleKind::VisionEncoder,
        transformer: Some(TransformerSpec {
            layers,
            hidden,
            heads,
            kv_heads: None,
            head_dim: None,
            ffn_hidden: ffn,
            ffn_kind,
            norm,
            attention: AttentionKind::Bidirectional,
            qkv_bias: true,
            linear_bias: true,
            moe: None,
            activation: None,
            norm_eps: None,
        }),
        embedding: Some(EmbeddingSpec {
            kind: EmbeddingKind::Patch,
            patch_size: Some(patch),
            temporal_patch_size: Some(temporal),
            channels: Some(channels),
            in_features: None,
            kernel_size: None,
            conv_layers: None,
            bias: false,
        }),
        positions: Some(PositionsSpec {
            kind: PositionKind::Rope,
            max_positions: None,
            rope_base: None,
            rope_scaling: None,
        }),
        tokens_per_item: Some(DEFAULT_PATCHES),
        pre_norm: None,
        class_token: None,
        final_norm: None,
        token_id: None,
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
        class_token: None,
        final_norm: None,
        token_id: None,
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
