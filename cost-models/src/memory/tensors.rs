//! Parameter tensors of one pipeline stage: how many separate gradient buffers a stage
//! synchronizes when it reduces them one tensor at a time, as hetpar's runtime does (one
//! all-reduce per tensor, each paying the link's latency per ring step: `sync::grad_sync`).
//! Counted the way the runtime holds them: q, k, v and the output projection as separate
//! weights, a bias beside each weight that has one.

use hetpar_ir::layout::Layout;
use hetpar_ir::model::{Body, FfnKind, Module, NormKind, PositionKind, TransformerSpec};

fn norm(t: &TransformerSpec) -> u32 {
    match t.norm {
        NormKind::LayerNorm => 2,
        NormKind::RmsNorm => 1,
    }
}

/// Tensors of one FFN: its weights and, with `linear_bias`, a bias each.
fn ffn(t: &TransformerSpec) -> u32 {
    let w = match t.ffn_kind {
        FfnKind::GeluMlp => 2,
        FfnKind::Swiglu => 3,
    };
    w * (1 + u32::from(t.linear_bias))
}

/// Tensors of transformer layer `i` on one rank (routed experts split by `ep`).
fn layer(t: &TransformerSpec, i: u32, ep: u32) -> u32 {
    let attention = 4 + 3 * u32::from(t.qkv_bias) + u32::from(t.linear_bias);
    let ffns = match &t.moe {
        Some(m) if t.is_moe_layer(i) => 1 + (m.experts / ep.max(1) + m.shared_experts) * ffn(t),
        _ => ffn(t),
    };
    2 * norm(t) + attention + ffns
}

/// Parameter tensors of pipeline stage `stage` (all its chunks) of `module` on one rank.
pub fn stage_tensors(module: &Module, layout: &Layout, stage: u32) -> f64 {
    let mut n = 0u32;
    let mut first = 0u32;
    for (c, &len) in layout.chunk_layers.iter().enumerate() {
        if c as u32 % layout.pp == stage {
            n += match (&module.body, module.transformer()) {
                (Body::Projector(mlp), _) => len * (1 + u32::from(mlp.bias)),
                (_, Some(t)) => (first..first + len).map(|i| layer(t, i, layout.ep)).sum(),
                _ => 0,
            };
        }
        first += len;
    }
    let holds_first = !layout.chunk_layers.is_empty() && stage == 0;
    let last_chunk = layout.chunk_layers.len().saturating_sub(1) as u32;
    let holds_last = last_chunk % layout.pp == stage;
    let learned = |p: PositionKind| u32::from(p == PositionKind::Learned);
    match &module.body {
        Body::Encoder {
            transformer,
            positions,
            pre_norm,
            ..
        } if holds_first => {
            // The embedding's weight and bias, the position table, the pre-norm.
            n += 2 + learned(positions.kind) + u32::from(*pre_norm) * norm(transformer);
        }
        Body::LanguageModel {
            positions,
            tied_embeddings,
            ..
        } => {
            if holds_first {
                n += 1 + learned(positions.kind);
            }
            if holds_last && !(*tied_embeddings && holds_first) {
                n += 1;
            }
        }
        Body::Generator { .. } if holds_last => n += 1,
        _ => {}
    }
    if holds_last {
        n += module.transformer().map_or(0, norm);
    }
    f64::from(n)
}
