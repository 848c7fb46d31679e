//! Derived sizes: parameters and FLOPs of every module, from its architecture alone.
//!
//! FLOPs count multiply-adds as 2 and follow the public closed forms (Narayanan et al. 2021):
//! linears cost 2 x parameters per row; attention scores and context cost 2 x 2 x head_dim x
//! heads per (query, key) pair. Causal attention counts only the unmasked pairs,
//! n(n+1)/2 for n tokens. A training step costs 3x the forward (backward = 2x forward), before
//! any recompute.

use super::arch::{AttentionKind, EmbeddingKind, FfnKind, MlpSpec, PositionKind, TransformerSpec};
use super::graph::{Body, ModelGraph, Module};
use crate::ids::ModuleId;

/// Parameters of one module.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParamCount {
    /// Every parameter the module stores.
    pub total: u64,
    /// Parameters one token passes through (MoE: routed top-k and shared experts only).
    pub active: u64,
    /// Embedding tables and output heads (a subset of `total`).
    pub embedding: u64,
}

fn ffn_params(h: u64, f: u64, kind: FfnKind, bias: bool) -> u64 {
    match kind {
        FfnKind::GeluMlp => 2 * h * f + if bias { f + h } else { 0 },
        FfnKind::Swiglu => 3 * h * f + if bias { 2 * f + h } else { 0 },
    }
}

/// Parameters of the attention block of one layer (no norms).
pub fn attention_params(t: &TransformerSpec) -> u64 {
    let h = u64::from(t.hidden);
    let q = u64::from(t.heads) * u64::from(t.head_dim());
    let kv = u64::from(t.kv_heads()) * u64::from(t.head_dim());
    let weights = h * q + 2 * h * kv + q * h;
    let bias = if t.qkv_bias { q + 2 * kv } else { 0 } + if t.linear_bias { h } else { 0 };
    weights + bias
}

/// Parameters of the FFN of layer `i`: (total, active per token).
pub fn ffn_layer_params(t: &TransformerSpec, i: u32) -> (u64, u64) {
    let h = u64::from(t.hidden);
    match &t.moe {
        Some(m) if t.is_moe_layer(i) => {
            let one = ffn_params(h, u64::from(m.expert_ffn_hidden), t.ffn_kind, t.linear_bias);
            let router = h * u64::from(m.experts);
            let shared = u64::from(m.shared_experts) * one;
            (
                router + u64::from(m.experts) * one + shared,
                router + u64::from(m.top_k) * one + shared,
            )
        }
        _ => {
            let p = ffn_params(h, u64::from(t.ffn_hidden), t.ffn_kind, t.linear_bias);
            (p, p)
        }
    }
}

/// Parameters of the whole stack: layers plus a final norm.
pub fn stack_params(t: &TransformerSpec) -> (u64, u64) {
    let h = u64::from(t.hidden);
    let per_layer_fixed = attention_params(t) + 2 * t.norm.params(h);
    let mut total = t.norm.params(h);
    let mut active = total;
    for i in 0..t.layers {
        let (ft, fa) = ffn_layer_params(t, i);
        total += per_layer_fixed + ft;
        active += per_layer_fixed + fa;
    }
    (total, active)
}

fn mlp_params(mlp: &MlpSpec) -> u64 {
    let linears: u64 = mlp
        .widths
        .windows(2)
        .map(|w| u64::from(w[0]) * u64::from(w[1]) + if mlp.bias { u64::from(w[1]) } else { 0 })
        .sum();
    let norm = mlp.input_norm.map_or(0, |n| {
        n.params(u64::from(
            mlp.widths.first().copied().unwrap_or(0) / mlp.token_merge.max(1),
        ))
    });
    linears + norm
}

/// Parameters of a module.
pub fn module_params(m: &Module) -> ParamCount {
    match &m.body {
        Body::Encoder {
            transformer,
            embedding,
            positions,
            pre_norm,
            class_token,
            final_norm,
            ..
        } => {
            let h = u64::from(transformer.hidden);
            let bias = if embedding.bias { h } else { 0 };
            let class = if *class_token { h } else { 0 };
            // `stack_params` counts a final norm; an encoder read before it has none.
            let no_final = if *final_norm {
                0
            } else {
                transformer.norm.params(h)
            };
            let embed = match embedding.kind {
                EmbeddingKind::Patch | EmbeddingKind::Linear => {
                    embedding.row_input_len() * h + bias
                }
                EmbeddingKind::Conv1d => {
                    let k = u64::from(embedding.kernel_size.unwrap_or(1));
                    let layers = u64::from(embedding.conv_layers.unwrap_or(1));
                    embedding.row_input_len() * h * k
                        + bias
                        + layers.saturating_sub(1) * (h * h * k + bias)
                }
            };
            let pos = learned_positions(positions, h);
            let pre = if *pre_norm {
                transformer.norm.params(h)
            } else {
                0
            };
            let (st, sa) = stack_params(transformer);
            let embed = embed + class;
            ParamCount {
                total: embed + pos + pre + st - no_final,
                active: embed + pos + pre + sa - no_final,
                embedding: embed + pos,
            }
        }
        Body::Projector(mlp) => {
            let p = mlp_params(mlp);
            ParamCount {
                total: p,
                active: p,
                embedding: 0,
            }
        }
        Body::LanguageModel {
            transformer,
            vocab_size,
            tied_embeddings,
            positions,
        } => {
            let h = u64::from(transformer.hidden);
            let v = u64::from(*vocab_size);
            let tables =
                v * h * if *tied_embeddings { 1 } else { 2 } + learned_positions(positions, h);
            let (st, sa) = stack_params(transformer);
            ParamCount {
                total: tables + st,
                active: tables + sa,
                embedding: tables,
            }
        }
        Body::Generator {
            transformer,
            out_features,
        } => {
            let head = u64::from(out_features.unwrap_or(0)) * u64::from(transformer.hidden);
            let (st, sa) = stack_params(transformer);
            ParamCount {
                total: st + head,
                active: sa + head,
                embedding: head,
            }
        }
    }
}

fn learned_positions(p: &super::arch::PositionsSpec, h: u64) -> u64 {
    match p.kind {
        PositionKind::Learned => u64::from(p.max_positions.unwrap_or(0)) * h,
        _ => 0,
    }
}

/// Forward FLOPs of the matrix products of one row through a transformer stack (active
/// parameters; norms and embedding lookups excluded).
fn stack_linear_flops_per_row(t: &TransformerSpec) -> f64 {
    let mut f = 0.0;
    for i in 0..t.layers {
        f += 2.0 * attention_params(t) as f64 + 2.0 * ffn_layer_params(t, i).1 as f64;
    }
    f
}

/// Forward FLOPs of attention scores and context for one sequence of `n` tokens.
pub fn attention_flops(t: &TransformerSpec, n: u64) -> f64 {
    let pairs = match t.attention {
        AttentionKind::Bidirectional => (n as f64) * (n as f64),
        AttentionKind::Causal => (n as f64) * (n as f64 + 1.0) / 2.0,
    };
    4.0 * f64::from(t.heads) * f64::from(t.head_dim()) * pairs * f64::from(t.layers)
}

/// FLOPs of a module over the whole global batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Flops {
    pub forward: f64,
}

impl Flops {
    /// Forward plus backward, without recompute.
    pub fn training(&self) -> f64 {
        3.0 * self.forward
    }
}

/// Forward FLOPs of module `m` over the global batch.
pub fn module_flops(g: &ModelGraph, m: ModuleId) -> Flops {
    let module = g.module(m);
    let batch = g.data().global_batch as usize;
    let forward = match &module.body {
        Body::Encoder {
            transformer,
            embedding,
            class_token,
            ..
        } => {
            let per_row = stack_linear_flops_per_row(transformer);
            let per_patch =
                2.0 * (embedding.row_input_len() * u64::from(transformer.hidden)) as f64;
            // A class row runs through the layers, not the patch embedding.
            let lead = u64::from(*class_token);
            let items = g.items(m);
            (0..batch)
                .map(|s| {
                    items.map_or(0.0, |it| {
                        it.items_of(s)
                            .iter()
                            .map(|&n| {
                                let rows = u64::from(n) + lead;
                                per_patch * f64::from(n)
                                    + per_row * rows as f64
                                    + attention_flops(transformer, rows)
                            })
                            .sum()
                    })
                })
                .sum()
        }
        Body::Projector(mlp) => {
            let per_row: f64 = mlp
                .widths
                .windows(2)
                .map(|w| 2.0 * f64::from(w[0]) * f64::from(w[1]))
                .sum();
            (0..batch)
                .map(|s| per_row * g.rows_of_sample(m, s) as f64)
                .sum()
        }
        Body::LanguageModel {
            transformer,
            vocab_size,
            ..
        } => {
            let s = u64::from(g.data().sequence_length);
            let per_row = stack_linear_flops_per_row(transformer)
                + 2.0 * f64::from(transformer.hidden) * f64::from(*vocab_size);
            batch as f64 * (per_row * s as f64 + attention_flops(transformer, s))
        }
        Body::Generator {
            transformer,
            out_features,
        } => {
            let per_row = stack_linear_flops_per_row(transformer)
                + 2.0 * f64::from(transformer.hidden) * f64::from(out_features.unwrap_or(0));
            (0..batch)
                .map(|s| {
                    let n = g.rows_of_sample(m, s);
                    per_row * n as f64 + attention_flops(transformer, n)
                })
                .sum()
        }
    };
    Flops { forward }
}
