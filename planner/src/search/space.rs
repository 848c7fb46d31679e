//! The search space of one module: layouts it may take on a given number of GPUs for a given
//! number of micro-batches per step. Exact filters only (each candidate passes the verifier's
//! layout rules); choices the cost model can only lose with are left out where stated.

use hetpar_ir::layout::{LayoutSpec, RecomputePolicy, RecomputeSpec};
use hetpar_ir::model::{Body, ModelGraph, Module, ModuleKind};

/// What a module may use.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// GPUs per node: tensor parallelism stays inside a node.
    pub gpus_per_node: u32,
    /// Whether pipeline parallelism is allowed (not for modules sharing ranks in a pipeline).
    pub allow_pp: bool,
    /// Whether interleaving (vpp 2) is allowed (pipeline schedules only).
    pub allow_vpp: bool,
    /// Whether context parallelism is allowed.
    pub allow_cp: bool,
}

fn divides(a: u32, b: u32) -> bool {
    a != 0 && b.is_multiple_of(a)
}

fn powers_of_two(max: u32) -> impl Iterator<Item = u32> {
    (0..16).map(|i| 1u32 << i).take_while(move |&x| x <= max)
}

/// Every layout of `module` over `gpus` GPUs with `micro_batches` micro-batches per step.
pub fn layouts(
    model: &ModelGraph,
    module: &Module,
    gpus: u32,
    micro_batches: u32,
    b: Bounds,
) -> Vec<LayoutSpec> {
    let batch = model.data().global_batch;
    let seq = model.data().sequence_length;
    let layers = module.layer_count();
    let mut out = Vec::new();
    let tps: Vec<u32> = powers_of_two(b.gpus_per_node.min(gpus))
        .filter(|&tp| tp_ok(module, tp))
        .collect();
    let is_lm = module.kind == ModuleKind::LanguageModel;
    let cps: Vec<u32> = if b.allow_cp && is_lm {
        powers_of_two(8)
            .filter(|&cp| divides(2 * cp, seq))
            .collect()
    } else {
        vec![1]
    };
    let pps: Vec<u32> = if b.allow_pp && !matches!(module.body, Body::Projector(_)) {
        powers_of_two(64)
            .filter(|&pp| pp <= layers && divides(pp, layers))
            .collect()
    } else {
        vec![1]
    };
    let recomputes: Vec<RecomputePolicy> = match module.body {
        Body::Projector(_) => vec![RecomputePolicy::None],
        _ => vec![
            RecomputePolicy::None,
            RecomputePolicy::Selective,
            RecomputePolicy::Full,
        ],
    };
    for &tp in &tps {
        for &cp in &cps {
            for &pp in &pps {
                let per = tp * cp * pp;
                if !divides(per, gpus) {
                    continue;
                }
                let dp = gpus / per;
                if !divides(dp * micro_batches, batch) {
                    continue;
                }
                let mbs = batch / (dp * micro_batches);
                let vpps: Vec<u32> = if b.allow_vpp
                    && pp > 1
                    && divides(pp, micro_batches)
                    && divides(2 * pp, layers)
                {
                    vec![1, 2]
                } else {
                    vec![1]
                };
                // Expert parallelism for a mixture of experts: powers of two dividing the
                // experts and dp x cp.
                let experts = module
                    .transformer()
                    .and_then(|t| t.moe.as_ref())
                    .map_or(1, |m| m.experts);
                let eps: Vec<u32> = powers_of_two(experts)
                    .filter(|&ep| divides(ep, experts) && divides(ep, dp * cp))
                    .collect();
                for &vpp in &vpps {
                    for &ep in &eps {
                        for &policy in &recomputes {
                            out.push(LayoutSpec {
                                tp,
                                cp,
                                pp,
                                dp: Some(dp),
                                ep,
                                vpp,
                                sequence_parallel: tp > 1,
                                recompute: RecomputeSpec {
                                    policy,
                                    layers: None,
                                },
                                distributed_optimizer: dp * cp > 1,
                                micro_batch_size: mbs,
                                stage_layers: None,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// Whether `tp` divides what a module splits over tensor parallelism.
pub fn tp_ok(module: &Module, tp: u32) -> bool {
    match &module.body {
        Body::Projector(mlp) => mlp.widths[1..mlp.widths.len().saturating_sub(1)]
            .iter()
            .all(|&w| divides(tp, w)),
        _ => module.transformer().is_some_and(|t| {
            let ffn = t.moe.as_ref().map_or(t.ffn_hidden, |m| m.expert_ffn_hidden);
            divides(tp, t.heads)
                && divides(tp, t.kv_heads())
                && divides(tp, ffn)
                && divides(tp, t.ffn_hidden)
        }),
    }
}

/// Micro-batch counts worth trying: divisors of the global batch up to 256.
pub fn micro_batch_counts(batch: u32) -> Vec<u32> {
    (1..=batch.min(256))
        .filter(|m| batch.is_multiple_of(*m))
        .collect()
}
