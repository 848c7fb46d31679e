//! The homogeneous baseline: what a Megatron user gets without heterogeneity. Every module on
//! the language model's tp (where it divides the module, else 1) and cp (where every item
//! splits into 2 cp blocks, else 1), its replicas filling the language model's first pipeline
//! stage, unpipelined. Searched over everything the heterogeneous search may use there: the
//! language model's layouts with uneven stages balanced with the encoders' load on stage 0,
//! recompute per module, micro-batch size and pass size.

use hetpar_ir::layout::{LayoutSpec, RecomputePolicy};
use hetpar_ir::model::ModelGraph;

use super::joint::ItemOptions;
use super::lm::{ranks_of, schedule, LmOption};
use super::price::Pricer;
use super::space::{item_layouts, micro_batches, tp_ok, Bounds};
use hetpar_cost::combine::Arrangement;

/// Each module's homogeneous layouts beside the language-model option `o` (one per recompute
/// policy).
pub fn options_for(model: &ModelGraph, o: &LmOption, b: Bounds) -> ItemOptions {
    let lm = &o.layout;
    let gpus = o.ranks.others.count;
    let mut out = ItemOptions::new();
    for m in model.modules() {
        if model.item_origin(m.id).is_none() {
            continue;
        }
        let tp = if tp_ok(m, lm.tp) { lm.tp } else { 1 };
        let with_cp = Bounds {
            allow_cp: lm.cp > 1,
            ..b
        };
        let all = item_layouts(model, m, gpus, with_cp);
        let cp_ok = all.iter().any(|l| l.cp == lm.cp);
        let cp = if cp_ok { lm.cp } else { 1 };
        let v: Vec<LayoutSpec> = all
            .into_iter()
            .filter(|l| l.tp == tp && l.cp == cp)
            .collect();
        out.insert(m.id, v);
    }
    out
}

/// Work per micro-batch the encoders put on the language model's first stage (their lightest
/// recompute), for balancing its stages.
pub fn first_stage_load(pricer: &mut Pricer<'_>, lm: &LayoutSpec, b: Bounds) -> f64 {
    let world = lm.tp * lm.cp * lm.pp * lm.dp.unwrap_or(1);
    let Some(ranks) = ranks_of(Arrangement::Nested, lm, world) else {
        return 0.0;
    };
    let o = LmOption {
        layout: lm.clone(),
        ranks,
        terms: Default::default(),
    };
    let sched = schedule(pricer.model, Arrangement::Nested, lm, 1);
    let units = micro_batches(pricer.model, lm);
    let mut work = 0.0;
    for (m, ls) in options_for(pricer.model, &o, b) {
        // Every layout comes with recompute none (a projector's only policy).
        let light = ls
            .iter()
            .find(|l| l.recompute.policy == RecomputePolicy::None)
            .cloned();
        if let Some(l) = light {
            if let Some(t) = pricer.terms(m, &l, ranks, lm, &sched) {
                work += t.work();
            }
        }
    }
    work / f64::from(units.max(1))
}
