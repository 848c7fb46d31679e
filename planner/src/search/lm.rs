//! The language model's options in one arrangement: every layout of `space::lm_layouts` on
//! the GPUs the arrangement gives it, each pipelined layout with its even split and its
//! cost-balanced split of layers over stages (`stages`). Layouts start as candidates with a
//! floor under their time (`hetpar_cost::floor`) and are priced, once, when the search
//! reaches that floor (`LmPool`).

use std::collections::BTreeMap;

use hetpar_cost::combine::{Arrangement, ModuleQuick};
use hetpar_cost::floor::unit_floor;
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

/// A language-model layout (even stages, the runtime's communication) not yet priced, with a
/// floor under its closed-form step time alone in every split and variant (`floor_time`).
#[derive(Clone, Debug)]
pub struct LmCandidate {
    pub layout: LayoutSpec,
    pub ranks: Ranks,
    pub floor: f64,
}

/// The floor of the closed-form step time of a language model alone (`combine` without
/// others) whose per-micro-batch stage times sum to at least `unit` over its `pp` stages:
/// each stage's step is M of its units, so the slowest stage takes at least M `unit / pp`
/// and the pipeline fill adds the other stages' units (over vpp where the arrangement is a
/// pipeline); with the slowest stage at `unit / pp` both are least.
pub fn floor_time(arr: Arrangement, unit: f64, m: u32, pp: u32, vpp: u32) -> f64 {
    let (m, pp) = (f64::from(m.max(1)), f64::from(pp.max(1)));
    let slowest = unit / pp;
    match arr {
        Arrangement::Disjoint => m * slowest + (unit - slowest) / f64::from(vpp.max(1)),
        Arrangement::Colocated | Arrangement::Nested => (m - 1.0) * slowest + unit,
    }
}

/// What decides a layout's floor: everything but its extent over dp and pp.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct FloorKey(String);

fn floor_key(l: &LayoutSpec) -> FloorKey {
    let mut k = l.clone();
    k.dp = None;
    k.pp = 1;
    k.vpp = 1;
    k.distributed_optimizer = false;
    FloorKey(format!("{k:?}"))
}

/// Every language-model layout of an arrangement with its floor, unpriced.
pub fn candidates(
    pricer: &Pricer<'_>,
    arr: Arrangement,
    world: u32,
    b: Bounds,
) -> Vec<LmCandidate> {
    let model = pricer.model;
    let id = model.language_model();
    let lm = model.module(id);
    let mut floors: BTreeMap<FloorKey, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for dp in lm_dps(model.data().global_batch, world) {
        for l in lm_layouts(model, lm, dp, b) {
            let Some(ranks) = ranks_of(arr, &l, world) else {
                continue;
            };
            let unit = *floors
                .entry(floor_key(&l))
                .or_insert_with(|| unit_floor(model, pricer.cluster, id, &l, &pricer.opts));
            let m = super::space::micro_batches(model, &l);
            out.push(LmCandidate {
                floor: floor_time(arr, unit, m, l.pp, l.vpp),
                layout: l,
                ranks,
            });
        }
    }
    out
}

/// The language-model candidates of one arrangement, priced on demand (a candidate's splits
/// and communication variants become its options) and kept: the nested arrangement's serve
/// both the heterogeneous and the homogeneous search.
pub struct LmPool {
    pub arrangement: Arrangement,
    pub candidates: Vec<LmCandidate>,
    pub options: Vec<LmOption>,
    /// Per candidate, the indices of its options once priced.
    priced: Vec<Option<Vec<usize>>>,
    /// Balance stages with the nested encoders' load on the first (their bounds).
    balance: Option<Bounds>,
}

impl LmPool {
    pub fn new(pricer: &Pricer<'_>, arr: Arrangement, world: u32, b: Bounds) -> Self {
        let candidates = candidates(pricer, arr, world, b);
        LmPool {
            arrangement: arr,
            priced: vec![None; candidates.len()],
            candidates,
            options: Vec::new(),
            balance: (arr == Arrangement::Nested).then_some(b),
        }
    }

    /// Candidate `c`'s option indices, once it is priced.
    pub fn options_of(&self, c: usize) -> Option<&[usize]> {
        self.priced.get(c)?.as_deref()
    }

    /// Prices the candidates `cs` not priced yet, on both cores (each half by a pricer of its
    /// own), their options appended in the order of `cs`.
    pub fn price(&mut self, pricer: &mut Pricer<'_>, cs: &[usize]) {
        let todo: Vec<usize> = cs
            .iter()
            .copied()
            .filter(|&c| self.priced[c].is_none())
            .collect();
        let (model, cluster, opts, runnable) =
            (pricer.model, pricer.cluster, pricer.opts, pricer.runnable);
        let (arr, balance, cands) = (self.arrangement, self.balance, &self.candidates);
        let half = todo.len().div_ceil(2).max(1);
        let parts: Vec<(Vec<Vec<LmOption>>, [usize; 3])> = std::thread::scope(|scope| {
            let handles: Vec<_> = todo
                .chunks(half)
                .map(|part| {
                    scope.spawn(move || {
                        let mut p = Pricer::new(model, cluster, opts);
                        p.runnable = runnable;
                        let out: Vec<Vec<LmOption>> = part
                            .iter()
                            .map(|&c| price_candidate(&mut p, arr, &cands[c], balance))
                            .collect();
                        (out, [p.priced, p.invalid, p.synthesized])
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let mut at = todo.iter();
        for (v, [priced, invalid, synthesized]) in parts {
            pricer.priced += priced;
            pricer.invalid += invalid;
            pricer.synthesized += synthesized;
            for opts in v {
                let Some(&c) = at.next() else { break };
                let first = self.options.len();
                self.options.extend(opts);
                self.priced[c] = Some((first..self.options.len()).collect());
            }
        }
    }
}

/// A candidate's options: its splits, each with its communication variants that survive.
fn price_candidate(
    p: &mut Pricer<'_>,
    arr: Arrangement,
    c: &LmCandidate,
    balance: Option<Bounds>,
) -> Vec<LmOption> {
    let model = p.model;
    let lm = model.language_model();
    let extra0 = |p: &mut Pricer<'_>, l: &LayoutSpec| match balance {
        Some(b) => super::baseline::first_stage_load(p, l, b),
        None => 0.0,
    };
    let mut out = Vec::new();
    for split in splits(p, arr, c.layout.clone(), c.ranks, &extra0) {
        // The communication variants last, per split: few survive.
        let sched = schedule(model, arr, &split, 1);
        for (layout, terms) in p.variants(lm, &split, c.ranks, &split, &sched) {
            out.push(LmOption {
                layout,
                ranks: c.ranks,
                terms,
            });
        }
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
    extra0: &dyn Fn(&mut Pricer<'_>, &LayoutSpec) -> f64,
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
