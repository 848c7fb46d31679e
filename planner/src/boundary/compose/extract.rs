//! Exact extraction: every selection of one e-node per reachable e-class is priced, each
//! e-class counted once however many parents share it, and the cheapest is kept. Boundary
//! programs have a handful of e-classes, so enumeration is exact and small; a count limit
//! bounds it and the stop reason says whether it was reached.

use std::collections::BTreeMap;

use egg::{Id, Language, RecExpr};

use super::term::{Coll, CollGraph, Own};

/// Why extraction stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// Every selection was priced: the result is the optimum.
    Exhausted,
    /// The selection limit was reached: the result is the best of those priced.
    SelectionLimit,
}

/// The cheapest program found.
#[derive(Clone, Debug)]
pub struct Extracted {
    pub term: RecExpr<Coll>,
    pub cost: f64,
    pub selections: usize,
    pub stop: Stop,
}

struct Search<'a> {
    g: &'a CollGraph,
    cost: &'a dyn Fn(&Coll, Option<Own>) -> f64,
    limit: usize,
    root: Id,
    seen: usize,
    best: Option<(f64, BTreeMap<Id, usize>)>,
}

impl Search<'_> {
    fn node_cost(&self, class: Id, i: usize) -> f64 {
        let n = &self.g[class].nodes[i];
        let child = n.children().first().map(|c| self.g[*c].data);
        (self.cost)(n, child)
    }

    /// Assigns the classes in `pending` (and those they reach), adding to `sum`.
    fn go(&mut self, chosen: &mut BTreeMap<Id, usize>, pending: &mut Vec<Id>, sum: f64) {
        if self.seen >= self.limit {
            return;
        }
        if self.best.as_ref().is_some_and(|b| sum >= b.0) {
            return; // costs are never negative: this branch cannot win
        }
        let Some(class) = pending.pop() else {
            self.seen += 1;
            let root = self.root;
            let acyclic = build(
                self.g,
                chosen,
                root,
                &mut RecExpr::default(),
                &mut Vec::new(),
            );
            if sum.is_finite() && acyclic.is_some() {
                self.best = Some((sum, chosen.clone()));
            }
            return;
        };
        let class = self.g.find(class);
        if chosen.contains_key(&class) {
            self.go(chosen, pending, sum);
            pending.push(class);
            return;
        }
        for i in 0..self.g[class].nodes.len() {
            let c = self.node_cost(class, i);
            if !c.is_finite() {
                continue;
            }
            chosen.insert(class, i);
            let children: Vec<Id> = self.g[class].nodes[i]
                .children()
                .iter()
                .map(|&k| self.g.find(k))
                .collect();
            let depth = pending.len();
            pending.extend(children);
            self.go(chosen, pending, sum + c);
            pending.truncate(depth);
            chosen.remove(&class);
        }
        pending.push(class);
    }
}

/// The cheapest program rooted at `root` under `cost` (an e-node's own cost given its child's
/// state; infinite for one that cannot execute), pricing at most `limit` selections.
pub fn extract(
    g: &CollGraph,
    root: Id,
    cost: &dyn Fn(&Coll, Option<Own>) -> f64,
    limit: usize,
) -> Option<Extracted> {
    let mut s = Search {
        g,
        cost,
        limit: limit.max(1),
        root: g.find(root),
        seen: 0,
        best: None,
    };
    s.go(&mut BTreeMap::new(), &mut vec![root], 0.0);
    let stop = if s.seen >= s.limit {
        Stop::SelectionLimit
    } else {
        Stop::Exhausted
    };
    let (cost, chosen) = s.best?;
    let mut term = RecExpr::default();
    build(g, &chosen, g.find(root), &mut term, &mut Vec::new())?;
    Some(Extracted {
        term,
        cost,
        selections: s.seen,
        stop,
    })
}

/// Adds the chosen term of `class` to `out`; `None` on a cycle.
fn build(
    g: &CollGraph,
    chosen: &BTreeMap<Id, usize>,
    class: Id,
    out: &mut RecExpr<Coll>,
    path: &mut Vec<Id>,
) -> Option<Id> {
    if path.contains(&class) {
        return None;
    }
    path.push(class);
    let node = g[class].nodes[*chosen.get(&class)?].clone();
    let mut kids = Vec::new();
    for &k in node.children() {
        kids.push(build(g, chosen, g.find(k), out, path)?);
    }
    path.pop();
    let mut it = kids.into_iter();
    let node = node.map_children(|_| it.next().expect("one id per child"));
    Some(out.add(node))
}
