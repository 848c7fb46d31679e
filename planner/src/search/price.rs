//! Pricing: each module option's closed-form terms (`hetpar_cost::combine::ModuleQuick`),
//! computed once per context that decides them and cached, and each boundary's synthesized
//! step time, cached per pair of layout shapes.
//!
//! A module's terms depend on its own layout and ranks, the micro-batch count M, the pass
//! size k and the language model's pipeline (pp, vpp: how many units the schedule keeps in
//! flight); never on another module's layout. They are read from a probe plan: the option in
//! question beside every other module at a fixed probe layout (tp 1, recompute none), or the
//! context's language-model layout.

use std::collections::{BTreeMap, BTreeSet};

use hetpar_cost::combine::ModuleQuick;
use hetpar_cost::quick::module_terms;
use hetpar_cost::{Folds, Options};
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::layout::{CpComm, LayoutSpec, RecomputeSpec};
use hetpar_ir::model::ModelGraph;
use hetpar_ir::placement::{PlacementSpec, RanksSpec};
use hetpar_ir::plan::{ModulePlanSpec, PlanFile, ScheduleSpec};
use hetpar_ir::{BoundaryId, Cluster, ModuleId, Plan};

use super::space::{with_knobs, CommKnob};

/// Where the modules sit: the language model's ranks and the others' ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ranks {
    pub lm: RankRange,
    pub others: RankRange,
}

/// The contiguous ranks `[offset, offset + count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RankRange {
    pub offset: u32,
    pub count: u32,
}

impl RankRange {
    pub fn new(offset: u32, count: u32) -> Self {
        RankRange { offset, count }
    }
}

/// A knob the cost model does not price for a module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Unpriced {
    module: ModuleId,
    knob: CommKnob,
}

/// Adds variant `v` with terms `t` to `kept` unless a kept one is no worse on every term (so
/// of equal ones the first stays), dropping those it beats.
pub fn admit(kept: &mut Vec<(LayoutSpec, ModuleQuick)>, v: LayoutSpec, t: ModuleQuick) {
    if kept.iter().any(|(_, u)| no_worse(u, &t)) {
        return;
    }
    kept.retain(|(_, u)| !no_worse(&t, u));
    kept.push((v, t));
}

/// Whether terms `a` are no worse than `b` in every stage's time and memory and the tail: the
/// closed form grows with each, so `b` is never the only best choice.
fn no_worse(a: &ModuleQuick, b: &ModuleQuick) -> bool {
    let le = |x: &[f64], y: &[f64]| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p <= q);
    a.units == b.units
        && le(&a.stage_unit, &b.stage_unit)
        && le(&a.stage_step, &b.stage_step)
        && le(&a.stage_memory, &b.stage_memory)
        && a.tail <= b.tail
}

/// A module plan on the contiguous ranks `at`.
pub fn entry(layout: LayoutSpec, at: RankRange) -> ModulePlanSpec {
    ModulePlanSpec {
        layout,
        placement: PlacementSpec {
            ranks: RanksSpec {
                offset: Some(at.offset),
                count: Some(at.count),
                list: None,
            },
            axis_order: None,
        },
    }
}

/// The probe layout of a module on `gpus` GPUs: tp 1, every GPU a replica.
pub fn probe(gpus: u32) -> LayoutSpec {
    LayoutSpec {
        tp: 1,
        cp: 1,
        pp: 1,
        dp: Some(gpus),
        ep: 1,
        vpp: 1,
        sequence_parallel: false,
        tp_comm_overlap: false,
        cp_comm: CpComm::default(),
        recompute: RecomputeSpec::default(),
        distributed_optimizer: gpus > 1,
        micro_batch_size: 1,
        stage_layers: None,
    }
}

/// A module after the language model (a generator): on the language model's ranks with its
/// tp where that divides the module (else 1), unpipelined, the same micro-batches. `None` when
/// no micro-batch size gives them.
pub fn follower(
    model: &ModelGraph,
    m: &hetpar_ir::model::Module,
    lm: &LayoutSpec,
    gpus: u32,
) -> Option<LayoutSpec> {
    let tp = if super::space::tp_ok(m, lm.tp) {
        lm.tp
    } else {
        1
    };
    let dp = gpus / tp;
    let batch = model.data().global_batch;
    let per = dp.checked_mul(super::space::micro_batches(model, lm))?;
    if per == 0 || !batch.is_multiple_of(per) {
        return None;
    }
    let mut l = probe(dp);
    l.tp = tp;
    l.sequence_parallel = tp > 1;
    l.micro_batch_size = batch / per;
    Some(l)
}

/// The shape of a layout that boundary synthesis sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Shape {
    pub tp: u32,
    pub cp: u32,
    pub pp: u32,
    /// 0 where the layout leaves dp to its ranks.
    pub dp: u32,
    pub sequence_parallel: bool,
    pub micro_batch_size: u32,
}

pub fn shape(l: &LayoutSpec) -> Shape {
    Shape {
        tp: l.tp,
        cp: l.cp,
        pp: l.pp,
        dp: l.dp.unwrap_or(0),
        sequence_parallel: l.sequence_parallel,
        micro_batch_size: l.micro_batch_size,
    }
}

/// What of the language model another module's terms see: its micro-batches per step (the
/// passes and their items) and its pp and vpp (the units in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LmContext {
    micro_batches: u32,
    pp: u32,
    vpp: u32,
}

/// What decides a module's terms. Layout and schedule by their `Debug` text: every field,
/// including any added later, takes part.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TermKey {
    module: ModuleId,
    layout: String,
    ranks: Ranks,
    /// `None` for the language model itself.
    lm: Option<LmContext>,
    schedule: String,
}

/// What decides a boundary's synthesized time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BoundaryKey {
    boundary: BoundaryId,
    from: Shape,
    to: Shape,
    ranks: Ranks,
    micro_batches: u32,
    pass_size: u32,
}

/// Caches of module terms and boundary times, with counters for the statistics.
pub struct Pricer<'a> {
    pub model: &'a ModelGraph,
    pub cluster: &'a Cluster,
    pub opts: Options,
    terms: BTreeMap<TermKey, Option<ModuleQuick>>,
    boundaries: BTreeMap<BoundaryKey, f64>,
    /// Probe plans priced in closed form.
    pub priced: usize,
    /// Probe plans the verifier rejected.
    pub invalid: usize,
    /// Boundaries synthesized.
    pub synthesized: usize,
    /// Keep to what hetpar's runtime executes (`space::comm_variants`).
    pub runnable: bool,
    /// Knobs found to price exactly as the default, per module: not priced again.
    unpriced: BTreeSet<Unpriced>,
    /// Every projector's last collectives, which its boundary prices
    /// (`boundary::boundary_step_time`).
    folds: Folds,
}

impl<'a> Pricer<'a> {
    pub fn new(model: &'a ModelGraph, cluster: &'a Cluster, opts: Options) -> Self {
        Pricer {
            model,
            cluster,
            opts,
            terms: BTreeMap::new(),
            boundaries: BTreeMap::new(),
            priced: 0,
            invalid: 0,
            synthesized: 0,
            runnable: false,
            unpriced: BTreeSet::new(),
            folds: Folds::every_projector(model),
        }
    }

    /// Module `m`'s communication variants of `layout` (`space::comm_variants`; the language
    /// model's are their own context) with their terms, keeping those no other variant matches
    /// or beats on every term. Of equal ones the first stays, the one the runtime executes, so
    /// plans do not flip between variants that price the same. A knob whose variant prices
    /// exactly as the default once (a cost model that does not read the field) is not priced
    /// again for the module; a layout whose default does not price offers no variant.
    pub fn variants(
        &mut self,
        m: ModuleId,
        layout: &LayoutSpec,
        ranks: Ranks,
        lm: &LayoutSpec,
        schedule: &ScheduleSpec,
    ) -> Vec<(LayoutSpec, ModuleQuick)> {
        let is_lm = m == self.model.language_model();
        let unpriced =
            |set: &BTreeSet<Unpriced>, knob: CommKnob| set.contains(&Unpriced { module: m, knob });
        let knobs: Vec<CommKnob> = CommKnob::of(layout, self.runnable)
            .into_iter()
            .filter(|&k| !unpriced(&self.unpriced, k))
            .collect();
        let cx = if is_lm { layout } else { lm };
        let Some(base) = self.terms(m, layout, ranks, cx, schedule) else {
            return Vec::new();
        };
        if knobs.is_empty() {
            return vec![(layout.clone(), base)];
        }
        let mut out = vec![(layout.clone(), base.clone())];
        for v in with_knobs(layout, &knobs).into_iter().skip(1) {
            let set = CommKnob::set_in(&v);
            // A knob found unpriced earlier in this loop.
            if set.iter().any(|&k| unpriced(&self.unpriced, k)) {
                continue;
            }
            let cx = if is_lm { &v } else { lm };
            let Some(t) = self.terms(m, &v, ranks, cx, schedule) else {
                continue;
            };
            if let [knob] = set[..] {
                if t == base {
                    self.unpriced.insert(Unpriced { module: m, knob });
                }
            }
            admit(&mut out, v, t);
        }
        out
    }

    /// A full plan: `layouts` where given, the language model at `lm`, others at the probe.
    pub fn plan(
        &mut self,
        ranks: Ranks,
        lm: &LayoutSpec,
        layouts: &BTreeMap<ModuleId, LayoutSpec>,
        schedule: &ScheduleSpec,
    ) -> Option<(PlanFile, Plan)> {
        let model = self.model;
        let lm_id = model.language_model();
        let mut modules = BTreeMap::new();
        for m in model.modules() {
            let spec = if m.id == lm_id {
                entry(lm.clone(), ranks.lm)
            } else if model.item_origin(m.id).is_some() {
                let l = layouts
                    .get(&m.id)
                    .cloned()
                    .unwrap_or_else(|| probe(ranks.others.count));
                entry(l, ranks.others)
            } else {
                let l = follower(model, m, lm, ranks.lm.count)?;
                entry(l, ranks.lm)
            };
            modules.insert(m.name.clone(), spec);
        }
        let file = PlanFile {
            kind: "plan".into(),
            format_version: FORMAT_VERSION,
            model: Some(model.name().to_string()),
            cluster: Some(self.cluster.name.clone()),
            cluster_gpus: None,
            schedule: schedule.clone(),
            modules,
        };
        match Plan::build(file.clone(), model, self.cluster) {
            Ok((p, _)) => Some((file, p)),
            Err(_) => {
                self.invalid += 1;
                None
            }
        }
    }

    /// Module `m`'s terms at `layout` (the language model's own layout when `m` is it) in
    /// the context (ranks, language model, schedule).
    pub fn terms(
        &mut self,
        m: ModuleId,
        layout: &LayoutSpec,
        ranks: Ranks,
        lm: &LayoutSpec,
        schedule: &ScheduleSpec,
    ) -> Option<ModuleQuick> {
        let is_lm = m == self.model.language_model();
        let key = TermKey {
            module: m,
            layout: format!("{layout:?}"),
            ranks,
            lm: (!is_lm).then(|| LmContext {
                micro_batches: super::space::micro_batches(self.model, lm),
                pp: lm.pp,
                vpp: lm.vpp,
            }),
            schedule: format!("{schedule:?}"),
        };
        if let Some(t) = self.terms.get(&key) {
            return t.clone();
        }
        let mut layouts = BTreeMap::new();
        if !is_lm {
            layouts.insert(m, layout.clone());
        }
        let lm_layout = if is_lm { layout } else { lm };
        let t = self
            .plan(ranks, lm_layout, &layouts, schedule)
            .and_then(|(_, plan)| {
                self.priced += 1;
                module_terms(self.model, self.cluster, &plan, &self.opts, &self.folds, m)
            })
            .filter(|t| {
                t.stage_step
                    .iter()
                    .chain(&t.stage_memory)
                    .all(|x| x.is_finite())
            });
        self.terms.insert(key, t.clone());
        t
    }

    /// The synthesized step time (forward + backward over every unit) of boundary `b` between
    /// its modules at `from` and `to`, in the context.
    #[allow(clippy::too_many_arguments)]
    pub fn boundary(
        &mut self,
        b: BoundaryId,
        from: &LayoutSpec,
        to: &LayoutSpec,
        ranks: Ranks,
        lm: &LayoutSpec,
        schedule: &ScheduleSpec,
    ) -> f64 {
        let model = self.model;
        let bd = model.boundary(b);
        let key = BoundaryKey {
            boundary: b,
            from: shape(from),
            to: shape(to),
            ranks,
            micro_batches: super::space::micro_batches(model, lm),
            pass_size: schedule.encoder_chunk.unwrap_or(1),
        };
        if let Some(&t) = self.boundaries.get(&key) {
            return t;
        }
        let mut layouts = BTreeMap::new();
        let lm_id = model.language_model();
        for (m, l) in [(bd.from, from), (bd.to, to)] {
            if m != lm_id {
                layouts.insert(m, l.clone());
            }
        }
        let lm_layout = if bd.to == lm_id { to } else { lm };
        let t = match self.plan(ranks, lm_layout, &layouts, schedule) {
            Some((_, plan)) => {
                self.synthesized += 1;
                crate::boundary::boundary_step_time(
                    model,
                    self.cluster,
                    &plan,
                    self.opts.constants,
                    b,
                )
            }
            None => f64::INFINITY,
        };
        self.boundaries.insert(key, t);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hetpar_ir::layout::CpComm;

    fn terms(step: f64, memory: f64) -> ModuleQuick {
        ModuleQuick {
            units: 4,
            stage_unit: vec![step / 4.0],
            stage_step: vec![step],
            stage_memory: vec![memory],
            tail: 0.1,
        }
    }

    fn overlap() -> LayoutSpec {
        let mut l = probe(8);
        l.tp_comm_overlap = true;
        l
    }

    #[test]
    fn of_variants_that_price_the_same_the_runtimes_stays() {
        let mut kept = Vec::new();
        admit(&mut kept, probe(8), terms(1.0, 5.0));
        admit(&mut kept, overlap(), terms(1.0, 5.0));
        assert_eq!(kept.len(), 1);
        assert!(!kept[0].0.tp_comm_overlap);
    }

    #[test]
    fn a_variant_better_on_every_term_replaces_the_default() {
        let mut kept = Vec::new();
        admit(&mut kept, probe(8), terms(1.0, 5.0));
        admit(&mut kept, overlap(), terms(0.9, 5.0));
        assert_eq!(kept.len(), 1);
        assert!(kept[0].0.tp_comm_overlap);
    }

    #[test]
    fn a_faster_variant_that_needs_more_memory_is_kept_beside_the_default() {
        let mut kept = Vec::new();
        admit(&mut kept, probe(8), terms(1.0, 5.0));
        admit(&mut kept, overlap(), terms(0.9, 6.0));
        let mut ring = probe(8);
        ring.cp_comm = CpComm::Ring;
        // Slower and heavier than the default: never the only best.
        admit(&mut kept, ring, terms(1.1, 5.5));
        let overlaps: Vec<bool> = kept.iter().map(|(l, _)| l.tp_comm_overlap).collect();
        assert_eq!(overlaps, vec![false, true]);
    }
}
