//! The reference configuration of a hetpar model, when the model is one the reference
//! implementation computes: one vision encoder (linear patch embedding, learned positions, no
//! pre-norm, GELU MLP, LayerNorm, biases), a projector `Hv -> Hp -> H` with GELU, and a causal
//! language model of the same block kind with learned positions and an untied head. Every
//! difference is reported at once.

use hetpar_ir::model::{
    Activation, AttentionKind, Body, EmbeddingKind, FfnKind, ModelGraph, ModuleKind, NormKind,
    PositionKind, TransformerSpec,
};

use hetpar_ir::model::placeholders::placeholder_spans;

use super::batch::{Batch, IGNORE};
use super::params::Config;
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
        let projectors: Vec<_> = g
            .modules()
            .iter()
            .filter(|m| m.kind == ModuleKind::Projector)
            .collect();
        if encoders.len() != 1 || encoders[0].kind != ModuleKind::VisionEncoder {
            problems.push(format!(
                "one vision encoder expected, found {} encoder(s)",
                encoders.len()
            ));
        }
        if projectors.len() != 1 {
            problems.push(format!(
                "one projector expected, found {}",
                projectors.len()
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
        };
        if let Some(Body::Encoder {
            transformer: t,
            embedding,
            positions,
            pre_norm,
            ..
        }) = encoders.first().map(|m| &m.body)
        {
            block_problems("vision", t, AttentionKind::Bidirectional, &mut problems);
            if embedding.kind != EmbeddingKind::Linear {
                problems.push(
                    "vision: the patch embedding is not one linear layer over a flattened patch"
                        .into(),
                );
            }
            if positions.kind != PositionKind::Learned {
                problems.push("vision: positions are not a learned table".into());
            }
            if *pre_norm {
                problems.push("vision: the reference has no pre-norm".into());
            }
            cfg.lv = t.layers as usize;
            cfg.hv = t.hidden as usize;
            cfg.av = t.heads as usize;
            cfg.fv = t.ffn_hidden as usize;
            cfg.p = embedding.row_input_len() as usize;
            cfg.np = positions.max_positions.unwrap_or(0) as usize;
        }
        if let Some(Body::Projector(mlp)) = projectors.first().map(|m| &m.body) {
            if mlp.widths.len() != 3
                || mlp.activation != Activation::Gelu
                || !mlp.bias
                || mlp.token_merge != 1
                || mlp.input_norm.is_some()
            {
                problems.push("projector: the reference's is Hv -> Hp -> H with GELU and biases, no token merge, no input norm".into());
            }
            cfg.hp = mlp.widths.get(1).copied().unwrap_or(0) as usize;
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
        let encoder = g
            .modules()
            .iter()
            .find(|m| m.kind.is_encoder())
            .ok_or_else(|| RuntimeError::Unsupported("the model has no encoder".into()))?;
        let items = g.items(encoder.id);
        let mut rng = SplitMix64::new(seed);
        let image = cfg.v as i64;
        let mut tokens = vec![0i64; b * s];
        let mut patch_counts = Vec::new();
        let mut sample_images = Vec::with_capacity(b);
        for sample in 0..b {
            let counts = items.map(|i| i.items_of(sample)).unwrap_or_default();
            sample_images.push(counts.len() as i64);
            patch_counts.extend(counts.iter().map(|&c| i64::from(c)));
            let row = &mut tokens[sample * s..(sample + 1) * s];
            for t in row.iter_mut() {
                *t = rng.below(cfg.v as u64) as i64;
            }
            for span in placeholder_spans(g, sample) {
                for p in span.position..span.position + span.len {
                    row[p as usize] = image;
                }
            }
        }
        let mut targets = vec![IGNORE; b * s];
        for sample in 0..b {
            for p in 0..s.saturating_sub(1) {
                let next = tokens[sample * s + p + 1];
                if next != image {
                    targets[sample * s + p] = next;
                }
            }
        }
        let rows: i64 = patch_counts.iter().sum();
        let mut patches = Tensor::zeros(&[rows as usize, cfg.p]);
        for v in patches.data_mut() {
            *v = rng.symmetric(1.0);
        }
        let batch = Batch {
            batch_size: b,
            seq_len: s,
            tokens,
            targets,
            patches,
            patch_counts,
            sample_images,
            image_token_id: image,
        };
        batch.layout(cfg)?;
        Ok(batch)
    }
}
