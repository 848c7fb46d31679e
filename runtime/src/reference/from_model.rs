//! The reference configuration of a hetpar model, when the model is one the reference
//! implementation computes: one vision encoder and optionally one audio encoder (linear patch
//! embedding, learned positions, no pre-norm, GELU MLP, LayerNorm, biases), each with a
//! projector `H_enc -> Hp -> H` with GELU, and a causal language model of the same block kind
//! with learned positions and an untied head. Every difference is reported at once.

use hetpar_ir::model::{
    Activation, AttentionKind, Body, EmbeddingKind, FfnKind, ModelGraph, ModuleKind, NormKind,
    PositionKind, TransformerSpec,
};

use hetpar_ir::model::placeholders::placeholder_spans;

use super::batch::{Batch, EncoderBatch, IGNORE};
use super::params::{Config, EncoderConfig, Source};
use super::rng::SplitMix64;
use crate::tensor::Tensor;
use crate::RuntimeError;

fn block_problems(who: &str, t: &TransformerSpec, attention: AttentionKind, out: &mut Vec<String>) {
    if t.ffn_kind != FfnKind::GeluMlp {
        out.push(format!("{who}: the FFN is not a GELU MLP"));
    }
    if t.norm != NormKind::LayerNorm {
        out.push(format!("{who}: the norm is not LayerNorm"));
    }
    if t.attention != attention {
        out.push(format!(
            "{who}: attention is {:?}, the reference uses {attention:?}",
            t.attention
        ));
    }
    if !(t.qkv_bias && t.linear_bias) {
        out.push(format!("{who}: the reference's linears all have biases"));
    }
    if t.kv_heads() != t.heads || t.head_dim.is_some_and(|d| d * t.heads != t.hidden) {
        out.push(format!(
            "{who}: the reference uses multi-head attention with head size hidden / heads"
        ));
    }
    if t.moe.is_some() {
        out.push(format!("{who}: the reference has no mixture of experts"));
    }
}

impl Config {
    /// The configuration of `g`, or every reason the reference cannot compute it.
    pub fn from_model(g: &ModelGraph) -> Result<Config, RuntimeError> {
        let mut problems: Vec<String> = Vec::new();
        let encoders: Vec<_> = g.modules().iter().filter(|m| m.kind.is_encoder()).collect();
        let count = |k: ModuleKind| encoders.iter().filter(|m| m.kind == k).count();
        if count(ModuleKind::VisionEncoder) != 1
            || count(ModuleKind::AudioEncoder) > 1
            || count(ModuleKind::VideoEncoder) > 0
        {
            problems.push(format!(
                "one vision encoder and at most one audio encoder expected, found {} encoder(s) \
                 ({} vision, {} audio, {} video)",
                encoders.len(),
                count(ModuleKind::VisionEncoder),
                count(ModuleKind::AudioEncoder),
                count(ModuleKind::VideoEncoder)
            ));
        }
        if g.modules().iter().any(|m| m.kind == ModuleKind::Generator) {
            problems.push("the reference has no generator".into());
        }
        let mut cfg = Config {
            lv: 0,
            hv: 0,
            av: 0,
            fv: 0,
            p: 0,
            np: 0,
            hp: 0,
            l: 0,
            h: 0,
            a: 0,
            f: 0,
            v: 0,
            s: 0,
            audio: None,
        };
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
        for m in &encoders {
            let who = m.name.as_str();
            let mut e = EncoderConfig {
                l: 0,
                h: 0,
                a: 0,
                f: 0,
                p: 0,
                np: 0,
                hp: 0,
            };
            if let Body::Encoder {
                transformer: t,
                embedding,
                positions,
                pre_norm,
                ..
            } = &m.body
            {
                block_problems(who, t, AttentionKind::Bidirectional, &mut problems);
                if embedding.kind != EmbeddingKind::Linear {
                    problems.push(format!(
                        "{who}: the embedding is not one linear layer over a flattened patch"
                    ));
                }
                if positions.kind != PositionKind::Learned {
                    problems.push(format!("{who}: positions are not a learned table"));
                }
                if *pre_norm {
                    problems.push(format!("{who}: the reference has no pre-norm"));
                }
                e.l = t.layers as usize;
                e.h = t.hidden as usize;
                e.a = t.heads as usize;
                e.f = t.ffn_hidden as usize;
                e.p = embedding.row_input_len() as usize;
                e.np = positions.max_positions.unwrap_or(0) as usize;
            }
            // Its projector: where its rows go.
            let projector = g
                .outgoing(m.id)
                .into_iter()
                .map(|b| g.module(g.boundary(b).to))
                .find(|p| p.kind == ModuleKind::Projector);
            match projector.map(|p| (&p.name, &p.body)) {
                Some((name, Body::Projector(mlp))) => {
                    if mlp.widths.len() != 3
                        || mlp.activation != Activation::Gelu
                        || !mlp.bias
                        || mlp.token_merge != 1
                        || mlp.input_norm.is_some()
                    {
                        problems.push(format!(
                            "{name}: the reference's projector is H_enc -> Hp -> H with GELU \
                             and biases, no token merge, no input norm"
                        ));
                    }
                    e.hp = mlp.widths.get(1).copied().unwrap_or(0) as usize;
                }
                _ => problems.push(format!("{who}: its rows do not go to a projector")),
            }
            if m.kind == ModuleKind::AudioEncoder {
                cfg.audio = Some(e);
            } else {
                cfg.lv = e.l;
                cfg.hv = e.h;
                cfg.av = e.a;
                cfg.fv = e.f;
                cfg.p = e.p;
                cfg.np = e.np;
                cfg.hp = e.hp;
            }
        }
        if let Body::LanguageModel {
            transformer: t,
            vocab_size,
            tied_embeddings,
            positions,
        } = &g.module(g.language_model()).body
        {
            block_problems("llm", t, AttentionKind::Causal, &mut problems);
            if *tied_embeddings {
                problems.push("llm: the reference's head is not tied to the embedding".into());
            }
            if positions.kind != PositionKind::Learned
                || positions
                    .max_positions
                    .is_some_and(|n| n < g.data().sequence_length)
            {
                problems
                    .push("llm: positions are not a learned table covering the sequence".into());
            }
            cfg.l = t.layers as usize;
            cfg.h = t.hidden as usize;
            cfg.a = t.heads as usize;
            cfg.f = t.ffn_hidden as usize;
            cfg.v = *vocab_size as usize;
            cfg.s = g.data().sequence_length as usize;
        }
        if problems.is_empty() {
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
            Source::Vision => cfg.v as i64,
            Source::Audio => cfg.v as i64 + 1,
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
                *t = rng.below(cfg.v as u64) as i64;
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
        let placeholder = |t: i64| t >= cfg.v as i64;
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
            let mut patches = Tensor::zeros(&[rows as usize, e.p]);
            for v in patches.data_mut() {
                *v = rng.symmetric(1.0);
            }
            inputs.push((patches, patch_counts, sample_images));
        }
        let mut inputs = inputs.into_iter();
        let (patches, patch_counts, sample_images) = inputs.next().expect("a vision encoder");
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
