//! The language model's options in one arrangement: every layout of `space::lm_layouts` on
//! the GPUs the arrangement gives it, each pipelined layout with its even split and its
//! cost-balanced split of layers over stages (`stages`), priced once.

use hetpar_cost::combine::{Arrangement, ModuleQuick};
use hetpar_ir::layout::LayoutSpec;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::{ScheduleKind, ScheduleSpec};

use super::price::{Pricer, RankRange, Ranks};
use super::space::{lm_dps, lm_layouts, Bounds};
use super::stages;

/// One priced language-model option.
#[derive(Clone, Debug)]
pub struct LmOption {
    pub layout: LayoutSpec,
    pub ranks: Ranks,
    pub terms: ModuleQuick,
}

/// The schedule of an arrangement for a language-model layout and a pass size `k` (a lone
/// language model takes the pipeline schedules).
pub fn schedule(model: &ModelGraph, arr: Arrangement, l: &LayoutSpec, k: u32) -> ScheduleSpec {
    let per_pass = (k > 1).then_some(k);
    let lone = model.modules().len() == 1;
    let kind = match arr {
        _ if l.vpp > 1 => ScheduleKind::PipelineInterleaved,
        _ if lone => ScheduleKind::Pipeline1f1b,
        Arrangement::Disjoint => ScheduleKind::Pipeline1f1b,
        _ if l.pp == 1 => ScheduleKind::ColocatedSequential,
        _ => ScheduleKind::ColocatedChunked,
    };
    ScheduleSpec {
        kind,
        encoder_chunk: if kind == ScheduleKind::ColocatedChunked {
            Some(k.max(1))
        } else {
            per_pass
        },
    }
}

/// The ranks of an arrangement: colocated, everything on every GPU; nested, the others on the
/// language model's first stage; disjoint, the others on the first `world - n_lm` GPUs.
pub fn ranks_of(arr: Arrangement, l: &LayoutSpec, world: u32) -> Option<Ranks> {
    let n_lm = l.tp * l.cp * l.pp * l.dp.unwrap_or(1);
    match arr {
        Arrangement::Colocated => (n_lm == world).then_some(Ranks {
            lm: RankRange::new(0, world),
            others: RankRange::new(0, world),
        }),
        Arrangement::Nested => (n_lm == world).then_some(Ranks {
            lm: RankRange::new(0, world),
            others: RankRange::new(0, world / l.pp),
        }),
        Arrangement::Disjoint => {
            let up = world.checked_sub(n_lm).filter(|&u| u > 0)?;
            // The language model's tensor-parallel groups must not straddle a node.
            up.is_multiple_of(l.tp).then_some(Ranks {
                lm: RankRange::new(up, n_lm),
                others: RankRange::new(0, up),
            })
        }
    }
}

/// Every priced language-model option of an arrangement; `extra0` is work per micro-batch the
/// first stage carries besides its layers (the nested encoders), for balancing. The options
/// are priced on both cores, each half by a pricer of its own, and returned in one order.
pub fn options(
    pricer: &mut Pricer<'_>,
    arr: Arrangement,
    world: u32,
    b: Bounds,
    extra0: &(dyn Fn(&mut Pricer<'_>, &LayoutSpec) -> f64 + Sync),
) -> Vec<LmOption> {
    let model = pricer.model;
    let lm = model.module(model.language_model());
    let mut layouts: Vec<(LayoutSpec, Ranks)> = Vec::new();
    for dp in lm_dps(model.data().global_batch, world) {
        for l in lm_layouts(model, lm, dp, b) {
            if let Some(ranks) = ranks_of(arr, &l, world) {
                layouts.push((l, ranks));
            }
        }
    }
    let (cluster, opts, runnable) = (pricer.cluster, pricer.opts, pricer.runnable);
    let half = layouts.len().div_ceil(2).max(1);
    let parts: Vec<(Vec<LmOption>, [usize; 3])> = std::thread::scope(|scope| {
        let handles: Vec<_> = layouts
            .chunks(half)
            .map(|part| {
                scope.spawn(move || {
                    let mut p = Pricer::new(model, cluster, opts);
                    p.runnable = runnable;
                    let mut out = Vec::new();
                    for (l, ranks) in part {
                        for split in splits(&mut p, arr, l.clone(), *ranks, extra0) {
                            // The communication variants last, per split: few survive.
                            let sched = schedule(model, arr, &split, 1);
                            let lm = model.language_model();
                            for (layout, terms) in p.variants(lm, &split, *ranks, &split, &sched) {
                                out.push(LmOption {
                                    layout,
                                    ranks: *ranks,
                                    terms,
                                });
                            }
                        }
                    }
                    (out, [p.priced, p.invalid, p.synthesized])
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let mut out = Vec::new();
    for (v, [priced, invalid, synthesized]) in parts {
        pricer.priced += priced;
        pricer.invalid += invalid;
        pricer.synthesized += synthesized;
        out.extend(v);
    }
    out
}

fn price(
    pricer: &mut Pricer<'_>,
    arr: Arrangement,
    l: &LayoutSpec,
    ranks: Ranks,
) -> Option<ModuleQuick> {
    let lm = pricer.model.language_model();
    pricer.terms(lm, l, ranks, l, &schedule(pricer.model, arr, l, 1))
}

/// A layout with per-stage layers `n` (chunked for vpp); no `stage_layers` when even.
fn with_split(l: &LayoutSpec, n: &[u32]) -> Option<LayoutSpec> {
    let chunks = stages::chunked(n, l.vpp)?;
    let mut out = l.clone();
    out.stage_layers = (chunks.iter().any(|&c| c != chunks[0])).then_some(chunks);
    Some(out)
}

/// The even split and, when it differs, the split the closed form balances.
fn splits(
    pricer: &mut Pricer<'_>,
    arr: Arrangement,
    l: LayoutSpec,
    ranks: Ranks,
    extra0: &(dyn Fn(&mut Pricer<'_>, &LayoutSpec) -> f64 + Sync),
) -> Vec<LayoutSpec> {
    let layers = pricer
        .model
        .module(pricer.model.language_model())
        .layer_count();
    if l.pp == 1 {
        return vec![l];
    }
    let na = stages::even(layers, l.pp);
    let Some(even) = with_split(&l, &na) else {
        return Vec::new();
    };
    let mut out = vec![even.clone()];
    // A second pricing with one layer moved from the last stage to the first.
    let mut nb = na.clone();
    let last = nb.len() - 1;
    if nb[last] <= l.vpp {
        return out;
    }
    nb[last] -= 1;
    nb[0] += 1;
    let (Some(moved), Some(ta)) = (with_split(&l, &nb), price(pricer, arr, &even, ranks)) else {
        return out;
    };
    let Some(tb) = price(pricer, arr, &moved, ranks) else {
        return out;
    };
    let Some((t, mut extras)) = stages::per_layer_model(&ta.stage_unit, &na, &tb.stage_unit, &nb)
    else {
        return out;
    };
    extras[0] += extra0(pricer, &l);
    if let Some(bal) = stages::balance(layers, &extras, t).and_then(|n| with_split(&l, &n)) {
        if bal != even {
            out.push(bal);
        }
    }
    out
}
