//! LLaVA style: a CLIP vision tower (`vision_config`), a two-layer MLP projector, and a decoder
//! (`text_config`). The vision tower's sizes are required; its other missing fields take
//! CLIPVisionConfig's defaults, and the text model's missing fields (sizes included: published
//! LLaVA-1.5 configs give only the vocabulary) its class's (LlamaConfig for Vicuna), each noted.

use serde_json::Value;

use super::decoder::{self, Sizes};
use super::fields::{Fields, Log};
use super::{vlm_boundaries, ImportOptions, Parts};
use crate::model::{
    Activation, AttentionKind, EmbeddingKind, EmbeddingSpec, FfnKind, MlpSpec, ModuleKind,
    ModuleSpec, NormKind, PositionKind, PositionsSpec, Real, TransformerSpec,
};
use crate::rule::Rule;

pub(crate) fn import(config: &Value, _opts: &ImportOptions, log: &Log) -> Option<Parts> {
    let top = Fields::new(Some(config), "", "LlavaConfig", log);
    // Without a vision_config, LlavaConfig assumes a CLIP-L/14 tower: a model nobody gave.
    if top.get("vision_config").is_none() {
        top.error(
            "vision_config",
            "missing: a LLaVA config describes its vision tower, and hetpar does not guess one"
                .into(),
        );
    }
    let v = Fields::new(
        top.get("vision_config"),
        "vision_config",
        "CLIPVisionConfig",
        log,
    );
    let t = Fields::new(top.get("text_config"), "text_config", "LlamaConfig", log);
    let text_type = t.string("model_type").unwrap_or_else(|| "llama".into());
    if !matches!(text_type.as_str(), "llama" | "mistral" | "qwen2") {
        log.ds.borrow_mut().error(
            "text_config.model_type",
            Rule::JsonType,
            format!("text model \"{text_type}\" is not supported inside LLaVA; supported: llama, mistral, qwen2"),
        );
    }
    let (hidden, layers, heads, ffn) = (
        v.u32_required("hidden_size"),
        v.u32_required("num_hidden_layers"),
        v.u32_required("num_attention_heads"),
        v.u32_required("intermediate_size"),
    );
    // CLIPVisionConfig defaults for the rest.
    let image = v.u32_default("image_size", 224);
    let patch = v.u32_default("patch_size", 32).max(1);
    let channels = v.u32_default("num_channels", 3);
    let lm = decoder::import(&t, &text_type, Sizes::ClassDefaults);
    let (hidden, layers, heads, ffn, lm) = (hidden?, layers?, heads?, ffn?, lm?);
    let layers = feature_layers(&top, layers)?;
    check_select_strategy(&top);
    let side = image / patch;
    let patches = side.saturating_mul(side);
    let encoder = ModuleSpec {
        kind: ModuleKind::VisionEncoder,
        transformer: Some(TransformerSpec {
            layers,
            hidden,
            heads,
            kv_heads: None,
            head_dim: None,
            ffn_hidden: ffn,
            ffn_kind: FfnKind::GeluMlp,
            norm: NormKind::LayerNorm,
            attention: AttentionKind::Bidirectional,
            qkv_bias: true,
            linear_bias: true,
            moe: None,
            activation: Some(v.activation_default("hidden_act", Activation::QuickGelu)),
            norm_eps: Some(Real(v.positive_default("layer_norm_eps", 1e-5))),
        }),
        embedding: Some(EmbeddingSpec {
            kind: EmbeddingKind::Patch,
            patch_size: Some(patch),
            temporal_patch_size: None,
            channels: Some(channels),
            in_features: None,
            kernel_size: None,
            conv_layers: None,
            bias: false,
        }),
        // The table holds the class token's position too.
        positions: Some(PositionsSpec {
            kind: PositionKind::Learned,
            max_positions: Some(patches.saturating_add(1)),
            rope_base: None,
            rope_scaling: None,
        }),
        tokens_per_item: Some(patches),
        pre_norm: Some(true),
        class_token: Some(true),
        // LLaVA takes a layer's hidden state, before CLIP's post_layernorm.
        final_norm: Some(false),
        token_id: image_token(&top),
        mlp: None,
        vocab_size: None,
        tied_embeddings: None,
        out_features: None,
    };
    let lm_hidden = lm.transformer.as_ref().map_or(0, |x| x.hidden);
    let projector = ModuleSpec {
        kind: ModuleKind::Projector,
        mlp: Some(MlpSpec {
            widths: vec![hidden, lm_hidden, lm_hidden],
            activation: top.activation_default("projector_hidden_act", Activation::Gelu),
            bias: top.bool_default("multimodal_projector_bias", true),
            token_merge: 1,
            input_norm: None,
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
            ("projector".into(), projector),
            ("llm".into(), lm),
        ],
        boundaries: vlm_boundaries("vision", "projector", "llm"),
        encoders: vec![("vision".into(), patches)],
    })
}

/// The CLIP layers LLaVA runs: those up to `vision_feature_layer` (a hidden-state index,
/// negative from the end; 0 is the embeddings), default -2. The layers after it feed nothing.
fn feature_layers(top: &Fields<'_>, layers: u32) -> Option<u32> {
    const KEY: &str = "vision_feature_layer";
    let at = match top.get(KEY) {
        None => {
            top.note(KEY, -2, "the default of LlavaConfig".into());
            -2
        }
        Some(v) => match v.as_i64() {
            Some(k) => k,
            None => {
                top.error(
                    KEY,
                    "expected one integer; features concatenated from several layers are not \
                     supported"
                        .into(),
                );
                return None;
            }
        },
    };
    let used = if at < 0 {
        i64::from(layers) + 1 + at
    } else {
        at
    };
    if used < 1 || used > i64::from(layers) {
        top.error(
            KEY,
            format!(
                "{at} selects no layer's output of the tower's {layers}: use -{layers}..=-1 or \
                 1..={layers}"
            ),
        );
        return None;
    }
    if used < i64::from(layers) {
        top.note_option(
            KEY,
            used,
            format!(
                "layers run: hidden state {at} of {layers} layers is layer {used}'s output; the \
                 tower's later layers and post_layernorm feed nothing and are not modelled"
            ),
        );
    }
    u32::try_from(used).ok()
}

/// LLaVA's `default` strategy drops the class row from the features; `full` keeps it, which
/// hetpar's boundaries do not model.
fn check_select_strategy(top: &Fields<'_>) {
    const KEY: &str = "vision_feature_select_strategy";
    match top.string(KEY).as_deref() {
        None => top.note(KEY, "default", "the default of LlavaConfig".into()),
        Some("default") => {}
        Some(other) => top.error(
            KEY,
            format!(
                "\"{other}\" is not supported: hetpar models the \"default\" strategy (the \
                 class row dropped)"
            ),
        ),
    }
}

/// The image token: `image_token_index` (`image_token_id` in newer configs), default 32000.
fn image_token(top: &Fields<'_>) -> Option<u32> {
    let key = if top.get("image_token_id").is_some() {
        "image_token_id"
    } else {
        "image_token_index"
    };
    Some(top.u32_default(key, 32000))
}
