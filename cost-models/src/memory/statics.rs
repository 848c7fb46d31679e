//! Weights, gradients and optimizer state of the parameters a rank holds.
//!
//! Bytes per parameter with mixed precision and Adam: 2 (16-bit weight) + 4 (fp32 main
//! gradient) + 12 (fp32 master weight, first and second moments). With a distributed optimizer
//! the 12 are sharded over the ranks that hold a replica of the parameter: dp x cp for dense
//! parameters, the expert-data-parallel group dp x cp / ep for routed experts (ep has already
//! split the experts over those ranks). Gradients stay whole: Megatron's distributed optimizer
//! keeps a full fp32 main-gradient buffer and reduce-scatters it (Megatron-LM,
//! `docs/source/distrib_optimizer.md`: 6 + 12/d bytes per parameter). fp32 training: 4 + 4 + 8.

use hetpar_ir::layout::Layout;
use hetpar_ir::model::counts::{attention_params, ffn_layer_params, module_params};
use hetpar_ir::model::{Body, Module, Optimizer, Precision};

/// Parameters of one pipeline stage on one rank, split by the group their optimizer state
/// shards over.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StageParameters {
    /// Replicated over dp x cp: attention, norms, dense FFNs, routers, shared experts,
    /// embeddings and heads.
    pub dense: f64,
    /// Routed experts, split by ep (and tp): replicated over dp x cp / ep only.
    pub expert: f64,
}

impl StageParameters {
    /// Parameters that are all dense (no experts).
    pub fn dense(p: f64) -> Self {
        StageParameters {
            dense: p,
            expert: 0.0,
        }
    }

    pub fn total(&self) -> f64 {
        self.dense + self.expert
    }
}

/// Static memory of one module on one rank, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StaticMemory {
    /// Parameters the rank holds.
    pub parameters: f64,
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
}

impl StaticMemory {
    pub fn total(&self) -> f64 {
        self.weights + self.gradients + self.optimizer
    }

    pub fn add(&mut self, o: &StaticMemory) {
        self.parameters += o.parameters;
        self.weights += o.weights;
        self.gradients += o.gradients;
        self.optimizer += o.optimizer;
    }
}

/// Parameters of pipeline stage `stage` (all its chunks) on one rank of the stage.
pub fn stage_parameters(module: &Module, layout: &Layout, stage: u32) -> StageParameters {
    let mut p = StageParameters::default();
    let mut first_layer = 0u32;
    for (i, &n) in layout.chunk_layers.iter().enumerate() {
        if i as u32 % layout.pp == stage {
            let l = layer_range_params(module, layout, first_layer, n);
            p.dense += l.dense;
            p.expert += l.expert;
        }
        first_layer += n;
    }
    let holds_first = !layout.chunk_layers.is_empty() && stage == 0;
    let last_chunk = layout.chunk_layers.len().saturating_sub(1) as u32;
    let holds_last = last_chunk % layout.pp == stage;
    p.dense += edge_params(module, layout.tp, holds_first, holds_last);
    p
}

/// Parameters outside the layers on a stage holding the module's first and/or last layer:
/// embeddings (vocabulary tables split by tp, learned positions whole; an encoder's patch or
/// frame embedding whole on every tp rank, as Megatron's vision encoders hold it), heads, the
/// encoder's pre-norm, the final norm.
fn edge_params(module: &Module, tp: u32, holds_first: bool, holds_last: bool) -> f64 {
    let tp = f64::from(tp);
    let emb = module_params(module).embedding as f64;
    let final_norm = match &module.body {
        Body::Encoder {
            final_norm: false, ..
        } => 0.0,
        _ => module
            .transformer()
            .map_or(0, |t| t.norm.params(u64::from(t.hidden))) as f64,
    };
    let mut p = 0.0;
    match &module.body {
        Body::LanguageModel {
            transformer,
            vocab_size,
            tied_embeddings,
            ..
        } => {
            let table = f64::from(*vocab_size) * f64::from(transformer.hidden);
            let tables = if *tied_embeddings { 1.0 } else { 2.0 };
            if holds_first {
                p += table / tp + (emb - tables * table);
            }
            // The head; a tied head on another stage holds its own copy of the table.
            if holds_last && !(*tied_embeddings && holds_first) {
                p += table / tp;
            }
        }
        Body::Encoder {
            pre_norm,
            transformer,
            ..
        } if holds_first => {
            let pre = if *pre_norm {
                transformer.norm.params(u64::from(transformer.hidden))
            } else {
                0
            };
            p += emb + pre as f64;
        }
        Body::Generator { .. } if holds_last => p += emb / tp,
        _ => {}
    }
    if holds_last {
        p += final_norm;
    }
    p
}

/// Parameters of layers `first..first+n` on one rank: TP-sharded, routed experts also
/// EP-sharded, the router whole on every rank (Megatron replicates it over tp), and so are
/// the biases of row-parallel linears (attention's output, a dense FFN's or a projector's
/// second linear), added once after the sum over tp.
fn layer_range_params(module: &Module, layout: &Layout, first: u32, n: u32) -> StageParameters {
    let tp = f64::from(layout.tp);
    match &module.body {
        Body::Projector(mlp) => StageParameters::dense(
            mlp.widths
                .windows(2)
                .enumerate()
                .filter(|(i, _)| (*i as u32) >= first && (*i as u32) < first + n)
                .map(|(i, w)| {
                    let weight = f64::from(w[0]) * f64::from(w[1]);
                    let bias = if mlp.bias { f64::from(w[1]) } else { 0.0 };
                    // Column-parallel, then row-parallel.
                    if i % 2 == 0 {
                        (weight + bias) / tp
                    } else {
                        weight / tp + bias
                    }
                })
                .sum(),
        ),
        _ => {
            let Some(t) = module.transformer() else {
                return StageParameters::default();
            };
            let h = u64::from(t.hidden);
            let norms = (2 * t.norm.params(h)) as f64;
            let out_bias = if t.linear_bias { h as f64 } else { 0.0 };
            let mut p = StageParameters::default();
            for i in first..first + n {
                p.dense += (attention_params(t) as f64 - out_bias) / tp + out_bias + norms;
                let (ffn_total, _) = ffn_layer_params(t, i);
                match &t.moe {
                    Some(m) if t.is_moe_layer(i) => {
                        // ffn_total = router + (experts + shared) x one expert.
                        let router = (h * u64::from(m.experts)) as f64;
                        let one = (ffn_total as f64 - router)
                            / f64::from((m.experts + m.shared_experts).max(1));
                        p.dense += router + f64::from(m.shared_experts) * one / tp;
                        p.expert += f64::from(m.experts) * one / (tp * f64::from(layout.ep));
                    }
                    _ => p.dense += (ffn_total as f64 - out_bias) / tp + out_bias,
                }
            }
            p
        }
    }
}

/// Weights, gradients and optimizer state of `params` on one rank.
pub fn static_memory(
    params: StageParameters,
    layout: &Layout,
    precision: Precision,
    optimizer: Optimizer,
) -> StaticMemory {
    let (w, g, o) = match precision {
        Precision::Fp32 => (4.0, 4.0, 0.0),
        _ => (2.0, 4.0, 4.0),
    };
    let states = match optimizer {
        Optimizer::Adam | Optimizer::Adamw => 8.0,
        Optimizer::Sgd => 4.0,
    };
    let (dense_shard, expert_shard) = if layout.distributed_optimizer {
        let dp_cp = f64::from(layout.dp) * f64::from(layout.cp);
        // The verifier makes ep divide dp x cp.
        (dp_cp, (dp_cp / f64::from(layout.ep.max(1))).max(1.0))
    } else {
        (1.0, 1.0)
    };
    let total = params.total();
    StaticMemory {
        parameters: total,
        weights: total * w,
        gradients: total * g,
        optimizer: (o + states) * (params.dense / dense_shard + params.expert / expert_shard),
    }
}
