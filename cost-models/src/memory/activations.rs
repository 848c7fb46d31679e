//! Activations one unit (micro-batch or encoder pass) leaves for backward in one pipeline
//! chunk (Korthikanti et al. 2022, 16-bit), and what one layer's terms are, which the
//! recompute transient (`transient.rs`) reuses.

use hetpar_ir::layout::{Layout, RecomputePolicy};
use hetpar_ir::model::{AttentionKind, Body, FfnKind, Module};

use crate::compute::Work;

/// How attention stores what backward needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKernel {
    /// Fused (flash) attention: no score matrix is kept.
    #[default]
    Flash,
    /// Scores, softmax and its dropout are materialized (Megatron-LM of 2022): 5 bytes per
    /// (query, key) pair and head are kept.
    Materialized,
}

/// One transformer layer's activation terms for work `w` on one rank, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LayerActivations {
    /// `rows x h x (10 / sp + (4 + 4 kv/heads + ffn) / tp)`: everything but the scores.
    pub per_layer: f64,
    /// Materialized attention's `5 x heads / tp x square`; 0 for flash attention.
    pub scores: f64,
    /// The layer's input, `2 x rows x h / sp`: all full recompute keeps.
    pub input: f64,
}

/// The terms of one layer of a transformer module (`None` for a projector): rows are the
/// work's rows over cp, 16-bit activations scaled by `act_bytes / 2`.
pub fn layer_activations(
    module: &Module,
    layout: &Layout,
    w: Work,
    act_bytes: f64,
    kernel: AttentionKernel,
) -> Option<LayerActivations> {
    let t = match &module.body {
        Body::Projector(_) => return None,
        _ => module.transformer()?,
    };
    let tp = f64::from(layout.tp);
    let sp = if layout.sequence_parallel { tp } else { 1.0 };
    let rows = w.rows / f64::from(layout.cp);
    let scale = act_bytes / 2.0;
    let h = f64::from(t.hidden);
    let kv_ratio = f64::from(t.kv_heads()) / f64::from(t.heads.max(1));
    let f = match &t.moe {
        Some(m) => f64::from(m.expert_ffn_hidden) * f64::from(m.top_k),
        None => f64::from(t.ffn_hidden),
    };
    let ffn = match t.ffn_kind {
        FfnKind::GeluMlp => 4.0 * f / h,
        FfnKind::Swiglu => 6.0 * f / h,
    };
    let scores = match kernel {
        // The whole square is stored, masked entries included.
        AttentionKernel::Materialized => {
            let square = match t.attention {
                AttentionKind::Causal => 2.0 * w.pairs,
                AttentionKind::Bidirectional => w.pairs,
            };
            5.0 * f64::from(t.heads) / tp * square / f64::from(layout.cp)
        }
        AttentionKernel::Flash => 0.0,
    };
    Some(LayerActivations {
        per_layer: rows * h * (10.0 / sp + (4.0 + 4.0 * kv_ratio + ffn) / tp) * scale,
        scores,
        input: rows * h * 2.0 / sp * scale,
    })
}

/// Layers of chunk `chunk` that recompute (all of them unless `recompute.layers` caps it).
pub fn recomputed_layers(layout: &Layout, chunk: usize) -> u32 {
    let n = layout.chunk_layers.get(chunk).copied().unwrap_or(0);
    match layout.recompute.policy {
        RecomputePolicy::None => 0,
        _ => layout.recompute.layers.unwrap_or(n).min(n),
    }
}

/// Activation bytes one micro-batch of work `w` leaves for backward in chunk `chunk` on one
/// rank: per layer `rows x h x (10 / sp + (4 + 4 kv/heads + ffn) / tp)` with 16-bit
/// activations (ffn: 4 f/h for a GELU MLP, 6 f/h for SwiGLU; sp = tp under sequence
/// parallel, else 1), plus `5 x heads/tp x pairs` for materialized attention. Selective
/// recompute drops the score term; full recompute keeps only each layer's input.
pub fn chunk_activations(
    module: &Module,
    layout: &Layout,
    chunk: usize,
    w: Work,
    act_bytes: f64,
    kernel: AttentionKernel,
) -> f64 {
    let n = layout.chunk_layers.get(chunk).copied().unwrap_or(0);
    if let Body::Projector(mlp) = &module.body {
        // Inputs of each linear and of the activation, kept for backward.
        let widths: f64 = mlp.widths.iter().map(|&x| f64::from(x)).sum();
        let rows = w.rows / f64::from(layout.cp);
        return rows * widths * act_bytes / f64::from(layout.tp);
    }
    let Some(a) = layer_activations(module, layout, w, act_bytes, kernel) else {
        return 0.0;
    };
    let rc = recomputed_layers(layout, chunk);
    let normal = f64::from(n - rc) * (a.per_layer + a.scores);
    let recomputed = f64::from(rc)
        * match layout.recompute.policy {
            RecomputePolicy::Full => a.input,
            RecomputePolicy::Selective => a.per_layer,
            RecomputePolicy::None => a.per_layer + a.scores,
        };
    normal + recomputed
}
