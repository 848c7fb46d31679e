//! Memory per rank: weights, gradients and optimizer state of the layers a rank holds, the
//! activations one unit (micro-batch or encoder pass) leaves for backward in one pipeline
//! chunk (Korthikanti et al. 2022), buffers, and `rank_memory`, the one sum of them that the
//! simulation and the closed form share. How many units are alive at once follows from the
//! schedule (`simulate` along each lane's order; `schedule::steps` for the closed form).
//!
//! Bytes per parameter with mixed precision and Adam: 2 (16-bit weight) + 4 (fp32 main
//! gradient) + 12 (fp32 master weight, first and second moments) = 18; the 12 are divided over
//! the dp x cp ranks with a distributed optimizer. fp32 training: 4 + 4 + 8 = 16.

use hetpar_ir::layout::{Layout, RecomputePolicy};
use hetpar_ir::model::counts::{attention_params, ffn_layer_params, module_params};
use hetpar_ir::model::{AttentionKind, Body, FfnKind, ModelGraph, Module, Optimizer, Precision};
use hetpar_ir::{ModuleId, Plan, Rank};

use crate::compute::Work;
use crate::schedule::units::ModuleUnits;

/// Memory of one rank, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct MemoryBreakdown {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    /// Peak activations alive for backward under the schedule.
    pub activations: f64,
    /// Boundary receive/send buffers and the language model's fp32 logits of one unit.
    pub buffers: f64,
    /// CUDA context, NCCL and allocator reserve.
    pub reserve: f64,
    pub total: f64,
}

/// The activations a rank holds at its peak.
#[derive(Clone, Debug, PartialEq)]
pub enum InFlight {
    /// Found by the simulation along the rank's order.
    Simulated(f64),
    /// The closed form's: per module stage on the rank, (activation bytes of its largest
    /// unit, units alive at once).
    Counted(Vec<(f64, f64)>),
}

/// What `rank_memory` reads besides the rank and its activations.
pub struct RankInputs<'a> {
    pub model: &'a ModelGraph,
    pub plan: &'a Plan,
    /// Per module and stage.
    pub statics: &'a [Vec<StaticMemory>],
    pub units: &'a [ModuleUnits],
    pub reserve: f64,
}

/// One rank's memory: the static memory of every module stage it holds, its activations
/// in flight, the largest buffer of one unit of any of its modules (its replica's largest
/// unit) and the reserve. The simulation and the closed form both call it, so they differ
/// only in the activations.
pub fn rank_memory(inp: &RankInputs<'_>, rank: Rank, in_flight: &InFlight) -> MemoryBreakdown {
    let act_bytes = inp.model.data().precision.activation_bytes() as f64;
    let mut mem = MemoryBreakdown {
        reserve: inp.reserve,
        ..Default::default()
    };
    for (m, mp) in inp.plan.modules().iter().enumerate() {
        let Some(c) = mp.grid.coord_of(rank) else {
            continue;
        };
        let sm = &inp.statics[m][c.pp as usize];
        mem.weights += sm.weights;
        mem.gradients += sm.gradients;
        mem.optimizer += sm.optimizer;
        let module = inp.model.module(ModuleId::new(m));
        let rows = inp.units[m].peak(c.dp).rows;
        mem.buffers = mem
            .buffers
            .max(unit_buffers(module, &mp.layout, c.pp, rows, act_bytes));
    }
    mem.activations = match in_flight {
        InFlight::Simulated(peak) => *peak,
        InFlight::Counted(terms) => terms.iter().map(|(unit, alive)| unit * alive).sum(),
    };
    mem.total =
        mem.weights + mem.gradients + mem.optimizer + mem.activations + mem.buffers + mem.reserve;
    mem
}

/// The largest buffer one unit of `rows` rows needs on `stage`: a boundary's receive and send
/// buffers on the first stage of a module taking rows in, the language model's fp32 logits on
/// its last stage.
pub fn unit_buffers(module: &Module, l: &Layout, stage: u32, rows: f64, act_bytes: f64) -> f64 {
    let mut out = 0.0f64;
    if stage == 0 {
        if let Some(w) = module.input_width() {
            out = out.max(2.0 * rows * f64::from(w) * act_bytes);
        }
    }
    if let Body::LanguageModel { vocab_size, .. } = &module.body {
        if stage + 1 == l.pp {
            let logits = rows / f64::from(l.cp) * f64::from(*vocab_size) / f64::from(l.tp) * 4.0;
            out = out.max(logits);
        }
    }
    out
}

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
pub fn stage_parameters(module: &Module, layout: &Layout, stage: u32) -> f64 {
    let tp = f64::from(layout.tp);
    let mut p = 0.0;
    let mut first_layer = 0u32;
    for (i, &n) in layout.chunk_layers.iter().enumerate() {
        let i = i as u32;
        let on_stage = i % layout.pp == stage;
        if on_stage {
            p += layer_range_params(module, layout, first_layer, n);
        }
        first_layer += n;
    }
    let holds_first = !layout.chunk_layers.is_empty() && stage == 0;
    let last_chunk = layout.chunk_layers.len().saturating_sub(1) as u32;
    let holds_last = last_chunk % layout.pp == stage;
    let emb = module_params(module).embedding as f64;
    match &module.body {
        Body::LanguageModel {
            tied_embeddings, ..
        } => {
            // Input table on the first stage, head on the last (both hold a copy when tied).
            let per_table = if *tied_embeddings { emb } else { emb / 2.0 };
            if holds_first {
                p += per_table / tp;
            }
            if holds_last {
                p += per_table / tp;
            }
        }
        Body::Encoder { .. } if holds_first => p += emb / tp,
        Body::Generator { .. } if holds_last => p += emb / tp,
        _ => {}
    }
    p
}

/// Parameters of layers `first..first+n` on one rank (TP-sharded; experts also EP-sharded).
fn layer_range_params(module: &Module, layout: &Layout, first: u32, n: u32) -> f64 {
    let tp = f64::from(layout.tp);
    match &module.body {
        Body::Projector(mlp) => mlp
            .widths
            .windows(2)
            .enumerate()
            .filter(|(i, _)| (*i as u32) >= first && (*i as u32) < first + n)
            .map(|(_, w)| (f64::from(w[0]) * f64::from(w[1]) + f64::from(w[1])) / tp)
            .sum(),
        _ => {
            let Some(t) = module.transformer() else {
                return 0.0;
            };
            let h = t.hidden as u64;
            let norms = 2 * t.norm.params(h);
            (first..first + n)
                .map(|i| {
                    let (ffn_total, _) = ffn_layer_params(t, i);
                    let ffn = if t.is_moe_layer(i) {
                        ffn_total as f64 / (tp * f64::from(layout.ep))
                    } else {
                        ffn_total as f64 / tp
                    };
                    attention_params(t) as f64 / tp + ffn + norms as f64
                })
                .sum()
        }
    }
}

/// Weights, gradients and optimizer state for `params` parameters on one rank.
pub fn static_memory(
    params: f64,
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
    let shard = if layout.distributed_optimizer {
        f64::from(layout.dp) * f64::from(layout.cp)
    } else {
        1.0
    };
    StaticMemory {
        parameters: params,
        weights: params * w,
        gradients: params * g,
        optimizer: params * (o + states) / shard,
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
    let tp = f64::from(layout.tp);
    let sp = if layout.sequence_parallel { tp } else { 1.0 };
    let rows = w.rows / f64::from(layout.cp);
    let scale = act_bytes / 2.0;
    match &module.body {
        Body::Projector(mlp) => {
            // Inputs of each linear and of the activation, kept for backward.
            let widths: f64 = mlp.widths.iter().map(|&x| f64::from(x)).sum();
            rows * widths * act_bytes / tp
        }
        _ => {
            let Some(t) = module.transformer() else {
                return 0.0;
            };
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
            let per_layer = rows * h * (10.0 / sp + (4.0 + 4.0 * kv_ratio + ffn) / tp) * scale;
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
            let full = rows * h * 2.0 / sp * scale;
            let rc = match layout.recompute.policy {
                RecomputePolicy::None => 0,
                _ => layout.recompute.layers.unwrap_or(n).min(n),
            };
            let normal = f64::from(n - rc) * (per_layer + scores);
            let recomputed = f64::from(rc)
                * match layout.recompute.policy {
                    RecomputePolicy::Full => full,
                    RecomputePolicy::Selective => per_layer,
                    RecomputePolicy::None => per_layer + scores,
                };
            normal + recomputed
        }
    }
}
