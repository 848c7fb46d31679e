//! The modules before the language model as chains (an encoder and the projectors its rows
//! pass through), and a chain's joint options in one context: every combination of its
//! modules' layouts priced once, with its boundaries (inside the chain and into the language
//! model) when asked.

use std::collections::BTreeMap;

use hetpar_cost::combine::ModuleQuick;
use hetpar_ir::layout::LayoutSpec;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::ScheduleSpec;
use hetpar_ir::{BoundaryId, ModuleId};

use super::frontier::{Frontier, Point};
use super::price::{Pricer, Ranks};

/// An encoder and the projectors after it, in order, with the boundaries between them and the
/// one into the language model.
#[derive(Clone, Debug)]
pub struct Chain {
    pub modules: Vec<ModuleId>,
    pub inner: Vec<BoundaryId>,
    pub into_lm: Option<BoundaryId>,
}

/// Every chain of `model`, encoders in id order.
pub fn chains(model: &ModelGraph) -> Vec<Chain> {
    let lm = model.language_model();
    let mut out = Vec::new();
    for e in model.modules().iter().filter(|m| m.kind.is_encoder()) {
        let modules: Vec<ModuleId> = model
            .topological_order()
            .iter()
            .copied()
            .filter(|&m| model.item_origin(m) == Some(e.id))
            .collect();
        let mut inner = Vec::new();
        let mut into_lm = None;
        for b in model.boundaries() {
            if modules.contains(&b.from) && modules.contains(&b.to) {
                inner.push(b.id);
            } else if modules.contains(&b.from) && b.to == lm {
                into_lm = Some(b.id);
            }
        }
        out.push(Chain {
            modules,
            inner,
            into_lm,
        });
    }
    out
}

/// One joint option of a chain: a layout per module.
pub type Choice = Vec<LayoutSpec>;

/// The context a chain is priced in.
#[derive(Clone, Copy)]
pub struct Context<'c> {
    pub ranks: Ranks,
    pub lm: &'c LayoutSpec,
    pub schedule: &'c ScheduleSpec,
}

/// A chain's joint options in a context with their (work, tail, memory); with `boundaries`
/// the work includes the synthesized boundaries inside the chain and into the language model
/// (without, it is a lower bound: a boundary never takes negative time).
pub fn points(
    pricer: &mut Pricer<'_>,
    chain: &Chain,
    options: &BTreeMap<ModuleId, Vec<LayoutSpec>>,
    cx: Context<'_>,
    boundaries: bool,
) -> Vec<Point<Choice>> {
    let mut out = Vec::new();
    let lists: Vec<&Vec<LayoutSpec>> = chain.modules.iter().map(|m| &options[m]).collect();
    let total: usize = lists.iter().map(|l| l.len()).product();
    for i in 0..total {
        // Mixed-radix index into the product of the modules' options.
        let mut rest = i;
        let mut choice: Vec<&LayoutSpec> = Vec::with_capacity(lists.len());
        for l in &lists {
            choice.push(&l[rest % l.len()]);
            rest /= l.len();
        }
        out.extend(point(pricer, chain, &choice, cx, boundaries));
    }
    out
}

/// The points of one choice: each module's communication variants that survive
/// (`Pricer::variants`, almost always one), in every combination.
fn point(
    pricer: &mut Pricer<'_>,
    chain: &Chain,
    choice: &[&LayoutSpec],
    cx: Context<'_>,
    boundaries: bool,
) -> Vec<Point<Choice>> {
    let mut per: Vec<Vec<(LayoutSpec, ModuleQuick)>> = Vec::with_capacity(choice.len());
    for (&m, l) in chain.modules.iter().zip(choice) {
        let vs = pricer.variants(m, l, cx.ranks, cx.lm, cx.schedule);
        if vs.is_empty() {
            return Vec::new();
        }
        per.push(vs);
    }
    let total: usize = per.iter().map(Vec::len).product();
    let mut out = Vec::with_capacity(total);
    for i in 0..total {
        // Mixed-radix digits of i: one variant per module.
        let mut rest = i;
        let mut value: Choice = Vec::with_capacity(per.len());
        let (mut time, mut tail, mut memory) = (0.0, 0.0, 0.0);
        for vs in &per {
            let (v, q) = &vs[rest % vs.len()];
            rest /= vs.len();
            value.push(v.clone());
            time += q.work();
            tail += q.tail;
            memory += q.peak_memory();
        }
        if boundaries {
            let Some(b) = boundary_time(pricer, chain, &value, cx) else {
                continue;
            };
            time += b;
        }
        out.push(Point {
            time,
            tail,
            memory,
            value,
        });
    }
    out
}

/// The synthesized step time of a chain's boundaries, inside it and into the language model.
pub fn boundary_time(
    pricer: &mut Pricer<'_>,
    chain: &Chain,
    choice: &Choice,
    cx: Context<'_>,
) -> Option<f64> {
    let layout_of = |m: ModuleId| {
        chain
            .modules
            .iter()
            .position(|&x| x == m)
            .map(|i| &choice[i])
    };
    let model = pricer.model;
    let mut time = 0.0;
    for b in chain.inner.iter().copied().chain(chain.into_lm) {
        let bd = model.boundary(b);
        let from = layout_of(bd.from)?;
        let to = layout_of(bd.to).unwrap_or(cx.lm);
        time += pricer.boundary(b, from, to, cx.ranks, cx.lm, cx.schedule);
    }
    Some(time)
}

/// The frontier of every chain's joint options together: one choice per chain.
pub fn joint_frontier(per_chain: Vec<Vec<Point<Choice>>>) -> Frontier<Vec<Choice>> {
    let mut acc: Frontier<Vec<Choice>> = Frontier::new(vec![Point {
        time: 0.0,
        tail: 0.0,
        memory: 0.0,
        value: Vec::new(),
    }]);
    for pts in per_chain {
        let f = Frontier::new(pts);
        acc = acc.sum(&f, |a, b| {
            let mut v = a.clone();
            v.push(b.clone());
            v
        });
    }
    acc
}
