//! The composition at a boundary: the producer's last collective, the transfer and the
//! consumer's first collective as one program, chosen by an e-graph (see `docs/boundary.md`).
//!
//! `term` is the language, its ownership analysis and the rules; `price` what each operator
//! costs from the boundary's syntheses; `extract` the exact extraction; `reduce` the folded
//! forward's `Reduce` operations. A boundary composes where its producer ends in a
//! row-parallel product over tp > 1 ranks (a projector): elsewhere its rows leave whole and
//! the transfer is the whole program.

pub mod extract;
mod floor;
pub mod price;
pub mod reduce;
pub mod term;

use egg::{Id, Language, RecExpr, Runner};
use hetpar_ir::model::ModuleKind;
use hetpar_ir::BoundaryId;

use super::ownership::{source_maps_whole, Segment, SideMap};
use super::synth::{
    backward_segments, forward_segments_of, synthesize, Composition, Context, Direction, Reshard,
};
pub use extract::Stop;
use price::{collectives, Priced};
use term::{rules, Coll, CollGraph, Own};

/// Limits of one composition (counts, never time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub iterations: usize,
    pub nodes: usize,
    pub selections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            iterations: 8,
            nodes: 1_000,
            selections: 10_000,
        }
    }
}

/// Whether boundary `b`'s producer ends in a row-parallel product over several tp ranks.
pub fn composable(cx: &Context<'_>, b: BoundaryId) -> bool {
    let from = cx.model.boundary(b).from;
    matches!(cx.model.module(from).kind, ModuleKind::Projector)
        && cx.plan.module(from).layout.tp > 1
}

/// Both directions of a composable boundary, each the e-graph's cheapest program, from the
/// layout's segments `fwd` (`synth::forward_segments`) and the destination's maps `dst`
/// they were cut from. Returns (forward, backward, folded forward, folded backward).
pub fn compose(
    cx: &Context<'_>,
    b: BoundaryId,
    fwd: Vec<Vec<Segment>>,
    dst: &[SideMap],
) -> (Reshard, Reshard, bool, bool) {
    let sp = cx
        .plan
        .module(cx.model.boundary(b).from)
        .layout
        .sequence_parallel;
    let bwd = backward_segments(&fwd);
    let floor = floor::folded_floor(cx, b, &fwd, sp);
    let coll = collectives(cx, b, fwd.len());
    // The direct programs side by side, and beside them the whole ownership a folded
    // program is synthesized from (almost always needed: a fold's floor rarely rules out
    // both directions).
    let (deliver, send_layout, whole) = std::thread::scope(|s| {
        let d = s.spawn(|| synthesize(cx, b, Direction::Forward, fwd.clone()));
        let w = s.spawn(|| {
            if sp {
                forward_segments_of(&source_maps_whole(cx.model, cx.plan, b), dst)
            } else {
                fwd.clone()
            }
        });
        let l = synthesize(cx, b, Direction::Backward, bwd);
        (
            d.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            l,
            w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
        )
    });
    // The folded ones only where their floor leaves them a chance against the direct ones
    // (producer collective included).
    let (rs_or_ar, ag) = if sp {
        (sum(&coll.reduce_scatter), sum(&coll.all_gather))
    } else {
        (sum(&coll.all_reduce), 0.0)
    };
    let try_f = floor.0 < deliver.time_s + rs_or_ar;
    let try_b = sp && floor.1 < send_layout.time_s + ag;
    let (reduce, send_whole) = std::thread::scope(|s| {
        let r = s.spawn(|| try_f.then(|| reduce::synthesize_reduce(cx, b, &whole)));
        let w = try_b.then(|| synthesize(cx, b, Direction::Backward, backward_segments(&whole)));
        (r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), w)
    });
    // The floors must never exceed what they bound (checked wherever tests synthesize).
    debug_assert!(reduce
        .as_ref()
        .is_none_or(|r| floor.0 <= r.time_s * (1.0 + 1e-9)));
    debug_assert!(send_whole
        .as_ref()
        .is_none_or(|r| floor.1 <= r.time_s * (1.0 + 1e-9)));
    let priced = Priced {
        sp,
        coll: &coll,
        deliver: Some(&deliver),
        reduce: reduce.as_ref(),
        send_layout: Some(&send_layout),
        send_whole: send_whole.as_ref(),
    };
    // The boundary's iteration limit bounds this e-graph too (0: the direct programs).
    let limits = Limits {
        iterations: cx.limits.iterations,
        ..Limits::default()
    };
    let (f_root, b_root) = if sp {
        (
            "(deliver (reduce-scatter (partial)))",
            "(all-gather (send-parts (grads)))",
        )
    } else {
        ("(deliver (all-reduce (partial)))", "(send-whole (grads))")
    };
    let f = choose(f_root, &priced, limits);
    let bk = choose(b_root, &priced, limits);
    let fold_f = has(&f.0, |n| matches!(n, Coll::ReduceDeliver(_)));
    let fold_b = sp && has(&bk.0, |n| matches!(n, Coll::SendWhole(_)));
    // The producer's collective in the direct program, which its module's cost counts.
    let none = vec![0.0; coll.all_gather.len()];
    let (producer_f, producer_b) = if sp {
        (&coll.reduce_scatter, &coll.all_gather)
    } else {
        (&coll.all_reduce, &none)
    };
    let forward = match (fold_f, reduce) {
        (true, Some(r)) => finish(r, f.1, &none),
        _ => finish(deliver, f.1, producer_f),
    };
    let backward = match (fold_b, send_whole) {
        (true, Some(w)) => finish(w, bk.1, &none),
        _ => finish(send_layout, bk.1, producer_b),
    };
    (forward, backward, fold_f, fold_b)
}

/// A direction's result: the transfer `r` of the chosen program, whose time adds the
/// producer's collective `own` per unit where the program keeps it. The step is charged the
/// transfer alone: a kept collective stays in its module's cost, a folded one leaves it
/// (`hetpar_cost::fold`), so a folded program is charged whole.
fn finish(mut r: Reshard, egraph: Composition, own: &[f64]) -> Reshard {
    r.time_s = 0.0;
    r.charged_time_s = 0.0;
    r.micro_batch_times.clear();
    for (u, t) in r.unit_times.iter_mut().enumerate() {
        r.charged_time_s += *t;
        r.micro_batch_times.push(*t);
        *t += own.get(u).copied().unwrap_or(0.0);
        r.time_s += *t;
    }
    r.max_micro_batch_time_s = r.unit_times.iter().copied().fold(0.0, f64::max);
    r.egraph = egraph;
    r
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

/// Whether the term has a node `f` holds for.
fn has(e: &RecExpr<Coll>, f: impl Fn(&Coll) -> bool) -> bool {
    e.as_ref().iter().any(f)
}

/// Saturates `root` under the rules and extracts its cheapest program.
fn choose(root: &str, priced: &Priced<'_>, limits: Limits) -> (RecExpr<Coll>, Composition) {
    let start: RecExpr<Coll> = root.parse().expect("a well-formed root term");
    let mut runner = Runner::default()
        .with_explanations_enabled()
        .with_expr(&start)
        .with_iter_limit(limits.iterations)
        .with_node_limit(limits.nodes)
        .with_time_limit(std::time::Duration::from_secs(u64::MAX / 4))
        .run(&rules());
    let id: Id = runner.roots[0];
    let cost = |n: &Coll, c: Option<Own>| priced.cost(n, c);
    let direct = program_cost(&start, priced);
    let best = extract::extract(&runner.egraph, id, &cost, limits.selections);
    let (term, selections, stop) = match best {
        Some(x) if x.cost < direct => (x.term, x.selections, x.stop),
        Some(x) => (start.clone(), x.selections, x.stop),
        None => (start.clone(), 0, Stop::Exhausted),
    };
    let rules_fired = fired(&mut runner.egraph, &start, &term);
    let stop_reason = match stop {
        Stop::Exhausted => "exhausted",
        Stop::SelectionLimit => "selection_limit",
    };
    let comp = Composition {
        program: term.to_string(),
        rules_fired,
        direct_time_s: direct,
        selections,
        stop_reason: stop_reason.into(),
    };
    (term, comp)
}

/// The cost of one whole term, each node once.
pub fn program_cost(e: &RecExpr<Coll>, priced: &Priced<'_>) -> f64 {
    let nodes = e.as_ref();
    let mut own: Vec<Own> = Vec::with_capacity(nodes.len());
    let mut total = 0.0;
    for n in nodes {
        let child = n.children().first().map(|c| own[usize::from(*c)]);
        total += priced.cost(n, child);
        own.push(Own::after(n, child));
    }
    total
}

/// The rules a proof from `from` to `to` uses, in order, each once.
fn fired(g: &mut CollGraph, from: &RecExpr<Coll>, to: &RecExpr<Coll>) -> Vec<String> {
    if from == to {
        return Vec::new();
    }
    let mut expl = g.explain_equivalence(from, to);
    let mut out: Vec<String> = Vec::new();
    fn walk(t: &egg::FlatTerm<Coll>, out: &mut Vec<String>) {
        for r in [t.forward_rule, t.backward_rule].into_iter().flatten() {
            if !out.iter().any(|x| x == r.as_str()) {
                out.push(r.to_string());
            }
        }
        for c in &t.children {
            walk(c, out);
        }
    }
    for t in expl.make_flat_explanation() {
        walk(t, &mut out);
    }
    out
}
