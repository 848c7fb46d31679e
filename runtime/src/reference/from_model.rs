//! The runtime's configuration of a hetpar model, when the runtime computes it: a causal
//! language model (LayerNorm or RMSNorm, a GELU MLP or a gated FFN, biases as the model says,
//! grouped-query attention, learned or rotary positions, a tied or untied head), optionally
//! with a vision encoder and an audio encoder (a linear or patch embedding, learned positions,
//! optionally CLIP's class row, pre-norm and no final norm), each with a projector
//! `H_enc -> Hp -> H`. Every difference is reported at once.

use hetpar_ir::model::{
    Activation, AttentionKind, Body, EmbeddingKind, FfnKind, ModelGraph, Module, ModuleKind,
    NormKind, PositionKind, PositionsSpec, RopeScalingKind, TransformerSpec,
};

use hetpar_ir::model::placeholders::placeholder_spans;

use super::arch::{Act, BlockArch, Ffn, Llama3Scaling, Moe, Norm, Rope, Stack};
use super::batch::{Batch, EncoderBatch, IGNORE};
use super::params::{Config, EncoderConfig, LlmConfig, Source};
use super::rng::SplitMix64;
use crate::tensor::Tensor;
use crate::RuntimeError;

fn act_of(who: &str, a: Activation, out: &mut Vec<String>) -> Act {
    match a {
        Activation::Gelu => Act::Gelu,
        Activation::GeluTanh => Act::GeluTanh,
        Activation::QuickGelu => Act::QuickGelu,
        Activation::Silu => Act::Silu,
        Activation::Relu => {
            out.push(format!("{who}: the runtime has no ReLU"));
            Act::Silu
        }
    }
}

/// The stack of `t`, or its problems pushed to `out`.
fn stack_of(
    who: &str,
    t: &TransformerSpec,
    attention: AttentionKind,
    out: &mut Vec<String>,
) -> Stack {
    if t.attention != attention {
        out.push(format!(
            "{who}: attention is {:?}, the runtime computes {attention:?} here",
            t.attention
        ));
    }
    let moe = t.moe.as_ref().map(|m| {
        if attention != AttentionKind::Causal {
            out.push(format!(
                "{who}: the runtime computes a mixture of experts in the language model only"
            ));
        }
        if m.shared_experts > 0 {
            out.push(format!("{who}: the runtime has no shared experts"));
        }
        if t.ffn_kind != FfnKind::Swiglu || t.linear_bias {
            out.push(format!(
                "{who}: the runtime's experts are gated FFNs without biases (Mixtral's)"
            ));
        }
        Moe {
            experts: m.experts as usize,
            top_k: m.top_k as usize,
            expert_ffn: m.expert_ffn_hidden as usize,
            layer_frequency: m.layer_frequency as usize,
        }
    });
    let act = act_of(who, t.activation(), out);
    let eps = t.norm_eps();
    Stack {
        layers: t.layers as usize,
        hidden: t.hidden as usize,
        heads: t.heads as usize,
        kv_heads: t.kv_heads() as usize,
        head_dim: t.head_dim() as usize,
        ffn: t.ffn_hidden as usize,
        block: BlockArch {
            norm: match t.norm {
                NormKind::LayerNorm => Norm::Layer { eps },
                NormKind::RmsNorm => Norm::Rms { eps },
            },
            ffn: match t.ffn_kind {
                FfnKind::GeluMlp => Ffn::Mlp(act),
                FfnKind::Swiglu => Ffn::Gated(act),
            },
            qkv_bias: t.qkv_bias,
            linear_bias: t.linear_bias,
            rope: None,
        },
        moe,
    }
}

fn rope_of(p: &PositionsSpec) -> Rope {
    Rope {
        base: f64::from(p.rope_base.unwrap_or(10_000)),
        llama3: p.rope_scaling.as_ref().map(|s| match s.kind {
            RopeScalingKind::Llama3 => Llama3Scaling {
                factor: s.factor.0,
                low_freq_factor: s.low_freq_factor.0,
                high_freq_factor: s.high_freq_factor.0,
                original_max_positions: f64::from(s.original_max_positions),
            },
        }),
    }
}

/// An encoder's configuration and its projector's, or their problems pushed to `out`.
fn encoder_of(g: &ModelGraph, m: &Module, out: &mut Vec<String>) -> Option<EncoderConfig> {
    let who = m.name.as_str();
    let Body::Encoder {
        transformer: t,
        embedding,
        positions,
        pre_norm,
        class_token,
        final_norm,
        token_id,
        ..
    } = &m.body
    else {
        return None;
    };
    let stack = stack_of(who, t, AttentionKind::Bidirectional, out);
    // A patch convolution of stride = kernel is one linear layer over each flattened patch.
    let image_patch = match embedding.kind {
        EmbeddingKind::Linear => None,
        EmbeddingKind::Patch if embedding.temporal_patch_size.unwrap_or(1) == 1 => Some((
            embedding.channels.unwrap_or(1) as usize,
            embedding.patch_size.unwrap_or(1) as usize,
        )),
        EmbeddingKind::Patch => {
            out.push(format!("{who}: the runtime has no temporal patches"));
            None
        }
        EmbeddingKind::Conv1d => {
            out.push(format!("{who}: the runtime has no 1-D convolution stack"));
            None
        }
    };
    if positions.kind != PositionKind::Learned {
        out.push(format!("{who}: positions are not a learned table"));
    }
    let projector = g
        .outgoing(m.id)
        .into_iter()
        .map(|b| g.module(g.boundary(b).to))
        .find(|p| p.kind == ModuleKind::Projector);
    let (hidden, act) = match projector.map(|p| (&p.name, &p.body)) {
        Some((name, Body::Projector(mlp))) => {
            if mlp.widths.len() != 3
                || !mlp.bias
                || mlp.token_merge != 1
                || mlp.input_norm.is_some()
            {
                out.push(format!(
                    "{name}: the runtime's projector is H_enc -> Hp -> H with biases, no token \
                     merge, no input norm"
                ));
            }
            let act = act_of(name, mlp.activation, out);
            (mlp.widths.get(1).copied().unwrap_or(0) as usize, act)
        }
        _ => {
            out.push(format!("{who}: its rows do not go to a projector"));
            (0, Act::GeluTanh)
        }
    };
    Some(EncoderConfig {
        stack,
        patch_len: embedding.row_input_len() as usize,
        max_rows: positions.max_positions.unwrap_or(0) as usize,
        projector_hidden: hidden,
        projector_act: act,
        embed_bias: embedding.bias,
        class_token: *class_token,
        pre_norm: *pre_norm,
        final_norm: *final_norm,
        image_patch,
        token_id: token_id.map(i64::from),
    })
}

fn llm_of(g: &ModelGraph, out: &mut Vec<String>) -> LlmConfig {
    let seq_len = g.data().sequence_length as usize;
    let Body::LanguageModel {
        transformer: t,
        vocab_size,
        tied_embeddings,
        positions,
    } = &g.module(g.language_model()).body
    else {
        out.push("the model has no language model".into());
        return LlmConfig {
            stack: Stack::reference(0, 0, 0, 0),
            vocab: 0,
            seq_len,
            learned_positions: true,
            tied_embeddings: false,
        };
    };
    let mut stack = stack_of("llm", t, AttentionKind::Causal, out);
    match positions.kind {
        PositionKind::Learned => {
            if positions
                .max_positions
                .is_some_and(|n| (n as usize) < seq_len)
            {
                out.push("llm: the learned position table does not cover the sequence".into());
            }
        }
        PositionKind::Rope => stack.block.rope = Some(rope_of(positions)),
        PositionKind::None => out.push("llm: the runtime needs positions".into()),
    }
    LlmConfig {
        stack,
        vocab: *vocab_size as usize,
        seq_len,
        learned_positions: positions.kind == PositionKind::Learned,
        tied_embeddings: *tied_embeddings,
    }
}

impl Config {
    /// The configuration of `g`, or every reason the runtime cannot compute it.
    pub fn from_model(g: &ModelGraph) -> Result<Config, RuntimeError> {
        let mut problems: Vec<String> = Vec::new();
        let encoders: Vec<_> = g.modules().iter().filter(|m| m.kind.is_encoder()).collect();
        let count = |k: ModuleKind| encoders.iter().filter(|m| m.kind == k).count();
        if count(ModuleKind::VisionEncoder) > 1
            || count(ModuleKind::AudioEncoder) > 1
            || count(ModuleKind::VideoEncoder) > 0
            || (count(ModuleKind::AudioEncoder) == 1 && count(ModuleKind::VisionEncoder) == 0)
        {
            problems.push(format!(
                "at most one vision encoder and one audio encoder (with a vision encoder) \
                 expected, found {} encoder(s) ({} vision, {} audio, {} video)",
                encoders.len(),
                count(ModuleKind::VisionEncoder),
                count(ModuleKind::AudioEncoder),
                count(ModuleKind::VideoEncoder)
            ));
        }
        if g.modules().iter().any(|m| m.kind == ModuleKind::Generator) {
            problems.push("the runtime has no generator".into());
        }
        let projectors = g
            .modules()
            .iter()
            .filter(|m| m.kind == ModuleKind::Projector)
            .count();
        if projectors != encoders.len() {
            problems.push(format!(
                "one projector per encoder expected, found {projectors} for {} encoder(s)",
                encoders.len()
            ));
        }
        let mut cfg = Config {
            vision: None,
            audio: None,
            llm: llm_of(g, &mut problems),
        };
        for m in &encoders {
            let e = encoder_of(g, m, &mut problems);
            match m.kind {
                ModuleKind::AudioEncoder => cfg.audio = e,
                _ => cfg.vision = e,
            }
        }
        if problems.is_empty() {
            cfg.validate()?;
            Ok(cfg)
        } else {
            Err(RuntimeError::Unsupported(problems.join("; ")))
        }
    }
}

impl Batch {
    /// A batch shaped like the model's training data: every sample's images with their patch
    /// counts, their placeholders where the boundary synthesis puts them
    /// ([`placeholder_spans`]), `image_token_id` V (outside the vocabulary); text tokens,
    /// patches (standard deviation 1) drawn from one splitmix64 stream seeded with `seed`;
    /// each target the next token, `-100` where that is a placeholder or past the end.
    pub fn for_model(g: &ModelGraph, cfg: &Config, seed: u64) -> Result<Batch, RuntimeError> {
        let data = g.data();
        let (b, s) = (data.global_batch as usize, data.sequence_length as usize);
        let source_of = |k: ModuleKind| match k {
            ModuleKind::AudioEncoder => Some(Source::Audio),
            ModuleKind::VisionEncoder => Some(Source::Vision),
            _ => None,
        };
        let token_of = |src: Source| match src {
            Source::Vision => cfg.llm.vocab as i64,
            Source::Audio => cfg.llm.vocab as i64 + 1,
        };
        let mut rng = SplitMix64::new(seed);
        let mut tokens = vec![0i64; b * s];
        // Per encoder (vision, audio): patch counts and items per sample.
        let encoders = cfg.encoders();
        let mut counts: Vec<(Vec<i64>, Vec<i64>)> = vec![(Vec::new(), Vec::new()); encoders.len()];
        for sample in 0..b {
            for ((src, _), (patch_counts, sample_images)) in encoders.iter().zip(&mut counts) {
                let items = g
                    .modules()
                    .iter()
                    .find(|m| source_of(m.kind) == Some(*src))
                    .and_then(|m| g.items(m.id))
                    .map(|i| i.items_of(sample))
                    .unwrap_or_default();
                sample_images.push(items.len() as i64);
                patch_counts.extend(items.iter().map(|&c| i64::from(c)));
            }
            let row = &mut tokens[sample * s..(sample + 1) * s];
            for t in row.iter_mut() {
                *t = rng.below(cfg.llm.vocab as u64) as i64;
            }
            for span in placeholder_spans(g, sample) {
                let origin = g.module(g.boundary(span.boundary).origin).kind;
                let Some(src) = source_of(origin) else {
                    return Err(RuntimeError::Unsupported(format!(
                        "rows of a {origin:?} land in the sequence"
                    )));
                };
                for p in span.position..span.position + span.len {
                    row[p as usize] = token_of(src);
                }
            }
        }
        let placeholder = |t: i64| t >= cfg.llm.vocab as i64;
        let mut targets = vec![IGNORE; b * s];
        for sample in 0..b {
            for p in 0..s.saturating_sub(1) {
                let next = tokens[sample * s + p + 1];
                if !placeholder(next) {
                    targets[sample * s + p] = next;
                }
            }
        }
        let mut inputs = Vec::with_capacity(encoders.len());
        for ((_, e), (patch_counts, sample_images)) in encoders.iter().zip(counts) {
            let rows: i64 = patch_counts.iter().sum();
            let mut patches = Tensor::zeros(&[rows as usize, e.patch_len]);
            for v in patches.data_mut() {
                *v = rng.symmetric(1.0);
            }
            inputs.push((patches, patch_counts, sample_images));
        }
        let mut inputs = inputs.into_iter();
        // A text-only model's batch has no images (an audio encoder comes with a vision one).
        let (patches, patch_counts, sample_images) = match cfg.vision {
            Some(_) => inputs
                .next()
                .expect("the vision encoder's inputs come first"),
            None => (Tensor::zeros(&[0, 1]), Vec::new(), vec![0; b]),
        };
        let audio = inputs
            .next()
            .map(|(patches, patch_counts, sample_images)| EncoderBatch {
                patches,
                patch_counts,
                sample_images,
                token_id: token_of(Source::Audio),
            });
        let batch = Batch {
            batch_size: b,
            seq_len: s,
            tokens,
            targets,
            patches,
            patch_counts,
            sample_images,
            image_token_id: token_of(Source::Vision),
            audio,
        };
        batch.layout(cfg)?;
        Ok(batch)
    }
}
