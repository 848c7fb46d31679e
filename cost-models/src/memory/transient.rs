//! Transient memory: buffers alive only at particular moments of a step, not for the whole of
//! a unit's life as activations are. A rank runs one task at a time, so its transient peak is
//! its largest *moment* (the terms alive together at that moment), not the sum of every
//! transient buffer. Each moment is taken to coincide with the activations' peak: under 1F1B
//! that peak is reached as the first backward after the warm-up starts, and that backward
//! begins with the loss (on the last stage) and the backward of the last layer (where the
//! recomputed layer is rebuilt); elsewhere it is an upper bound.

use hetpar_ir::layout::{Layout, RecomputePolicy};
use hetpar_ir::model::{Body, Module};

use super::activations::{layer_activations, recomputed_layers, AttentionKernel};
use crate::compute::Work;

/// When a rank's transient buffers peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Moment {
    /// No transient buffer.
    #[default]
    None,
    /// The backward of one layer: the layer rebuilt by recompute and, under sequence
    /// parallelism, the gathered input its weight gradient re-gathers.
    Backward,
    /// The language model's loss on its last stage: the fp32 logits, their gradient and, under
    /// sequence parallelism, the head's gathered input.
    Loss,
    /// A boundary's receive and send buffers for one unit at a module's first stage.
    Boundary,
}

/// The transient terms alive at one moment, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Transient {
    pub moment: Moment,
    /// One layer's activations rebuilt during its backward: full recompute rebuilds all but
    /// the kept input, selective recompute the materialized attention scores.
    pub recompute: f64,
    /// The all-gathered input of the linear being computed under sequence parallelism,
    /// `rows / cp x width` 16-bit (Megatron keeps one gathered copy per linear at a time).
    pub sp_gather: f64,
    /// fp32 logits of one unit and their gradient, `2 x rows / cp x vocab / tp x 4`: the
    /// loss writes the gradient beside the logits (hetpar's runtime; Megatron's fused
    /// cross-entropy writes it in place of its fp32 copy, which this then overstates).
    pub logits: f64,
    /// A boundary's receive and send buffers for one unit, `2 x rows x width`.
    pub boundary: f64,
}

impl Transient {
    pub fn total(&self) -> f64 {
        self.recompute + self.sp_gather + self.logits + self.boundary
    }

    /// The larger of two moments (the first on a tie, for determinism).
    pub fn max(self, o: Transient) -> Transient {
        if o.total() > self.total() {
            o
        } else {
            self
        }
    }
}

/// The largest moment of one module's pipeline stage `stage` on a rank whose replica's
/// largest unit is `w`.
pub fn stage_transient(
    module: &Module,
    layout: &Layout,
    stage: u32,
    w: Work,
    act_bytes: f64,
    kernel: AttentionKernel,
) -> Transient {
    let gather = sp_gather(module, layout, w, act_bytes);
    let mut out = Transient::default();
    if layout.stage_layers(stage) > 0 {
        out = out.max(Transient {
            moment: Moment::Backward,
            recompute: recompute(module, layout, stage, w, act_bytes, kernel),
            sp_gather: gather,
            ..Default::default()
        });
    }
    if let Body::LanguageModel { vocab_size, .. } = &module.body {
        if stage + 1 == layout.pp {
            let rows = w.rows / f64::from(layout.cp);
            out = out.max(Transient {
                moment: Moment::Loss,
                logits: 2.0 * rows * f64::from(*vocab_size) / f64::from(layout.tp) * 4.0,
                sp_gather: gather,
                ..Default::default()
            });
        }
    }
    if let (0, Some(width)) = (stage, module.input_width()) {
        out = out.max(Transient {
            moment: Moment::Boundary,
            boundary: 2.0 * w.rows * f64::from(width) * act_bytes,
            ..Default::default()
        });
    }
    if out.total() == 0.0 {
        return Transient::default();
    }
    out
}

/// The layer a backward rebuilds on `stage`, if any of its chunks recomputes.
fn recompute(
    module: &Module,
    layout: &Layout,
    stage: u32,
    w: Work,
    act_bytes: f64,
    kernel: AttentionKernel,
) -> f64 {
    let recomputes =
        (0..layout.vpp).any(|c| recomputed_layers(layout, (c * layout.pp + stage) as usize) > 0);
    let Some(a) = layer_activations(module, layout, w, act_bytes, kernel) else {
        return 0.0;
    };
    match layout.recompute.policy {
        _ if !recomputes => 0.0,
        RecomputePolicy::Full => a.per_layer + a.scores - a.input,
        RecomputePolicy::Selective => a.scores,
        RecomputePolicy::None => 0.0,
    }
}

/// The gathered input of a column-parallel linear under sequence parallelism: the layer's
/// hidden width for a transformer, the first linear's input for a projector.
fn sp_gather(module: &Module, layout: &Layout, w: Work, act_bytes: f64) -> f64 {
    if !layout.sequence_parallel || layout.tp < 2 {
        return 0.0;
    }
    let width = match &module.body {
        Body::Projector(mlp) => mlp.widths.first().copied().unwrap_or(0),
        _ => module.transformer().map_or(0, |t| t.hidden),
    };
    w.rows / f64::from(layout.cp) * f64::from(width) * act_bytes
}
