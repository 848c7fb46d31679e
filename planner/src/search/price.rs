//! Pricing: each module option's closed-form terms (`hetpar_cost::combine::ModuleQuick`),
//! computed once per context that decides them and cached, and each boundary's synthesized
//! step time, cached per pair of layout shapes.
//!
//! A module's terms depend on its own layout and ranks, the micro-batch count M, the pass
//! size k and the language model's pipeline (pp, vpp: how many units the schedule keeps in
//! flight); never on another module's layout. They are read from a probe plan: the option in
//! question beside every other module at a fixed probe layout (tp 1, recompute none), or the
//! context's language-model layout.

use std::collections::BTreeMap;

use hetpar_cost::combine::ModuleQuick;
use hetpar_cost::quick::module_terms;
use hetpar_cost::Options;
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::layout::{LayoutSpec, RecomputeSpec};
use hetpar_ir::model::ModelGraph;
use hetpar_ir::placement::{PlacementSpec, RanksSpec};
use hetpar_ir::plan::{ModulePlanSpec, PlanFile, ScheduleSpec};
use hetpar_ir::{BoundaryId, Cluster, ModuleId, Plan};

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
        }
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
                module_terms(self.model, self.cluster, &plan, &self.opts, m)
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
