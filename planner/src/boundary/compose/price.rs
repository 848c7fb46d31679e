//! What each operator of a boundary program costs, from the boundary's own syntheses: the
//! producer's tp collectives over its busiest replica's rows per unit, and the transfers as
//! `synth` lowers and prices them.

use std::collections::BTreeMap;

use hetpar_cost::collective::{collective_time, CollectiveKind, Link};
use hetpar_ir::placement::{Axis, RankGrid};
use hetpar_ir::{BoundaryId, Rank};

use super::super::ownership::Segment;
use super::super::synth::{Context, Reshard};
use super::term::{Coll, Own};

/// The producer's tp collectives per unit, s.
#[derive(Clone, Debug, Default)]
pub struct Collectives {
    pub all_reduce: Vec<f64>,
    pub reduce_scatter: Vec<f64>,
    pub all_gather: Vec<f64>,
}

/// Per unit, the busiest tp group's local rows (the holders of the layout's segments `fwd`,
/// grouped by the tp group each belongs to) priced as each collective over that group's link.
pub fn collectives(cx: &Context<'_>, b: BoundaryId, fwd: &[Vec<Segment>]) -> Collectives {
    let bd = cx.model.boundary(b);
    let row_bytes = (u64::from(bd.width) * cx.model.data().precision.activation_bytes()) as f64;
    let grid = &cx.plan.module(bd.from).grid;
    // Each holder's tp group, by its first rank.
    let mut group_of: BTreeMap<Rank, Rank> = BTreeMap::new();
    let mut groups: BTreeMap<Rank, Vec<Rank>> = BTreeMap::new();
    let mut out = Collectives::default();
    for unit in fwd {
        let mut rows: BTreeMap<Rank, u64> = BTreeMap::new();
        for s in unit {
            let Some(&h) = s.holders.first() else {
                continue;
            };
            let first = *group_of.entry(h).or_insert_with(|| {
                let g = tp_group(grid, h);
                let first = g[0];
                groups.entry(first).or_insert(g);
                first
            });
            *rows.entry(first).or_default() += s.rows.end - s.rows.start;
        }
        let busiest = rows
            .iter()
            .max_by_key(|(g, n)| (**n, std::cmp::Reverse(**g)));
        let (group, n) = busiest.map_or((&[][..], 0), |(g, n)| (&groups[g][..], *n));
        let link = Link::of_group(cx.cluster, &cx.constants, group);
        let bytes = n as f64 * row_bytes;
        let tp = group.len() as u32;
        let t = |k| collective_time(k, bytes, tp, link);
        out.all_reduce.push(t(CollectiveKind::AllReduce));
        out.reduce_scatter.push(t(CollectiveKind::ReduceScatter));
        out.all_gather.push(t(CollectiveKind::AllGather));
    }
    out
}

/// The tp group of the producer's rank `r` (its ranks by tp coordinate).
pub fn tp_group(grid: &RankGrid, r: Rank) -> Vec<Rank> {
    grid.coord_of(r)
        .map_or_else(|| vec![r], |c| grid.group_at(Axis::Tp, c))
}

/// The syntheses a direction's operators are priced from.
pub struct Priced<'a> {
    /// Whether the producer's layout is sequence parallel (its rows leave in parts).
    pub sp: bool,
    pub coll: &'a Collectives,
    /// Forward: whole rows from the layout's holders; the folded `Reduce` program.
    pub deliver: Option<&'a Reshard>,
    pub reduce: Option<&'a Reshard>,
    /// Backward: gradients to the layout's holders; to every tp rank.
    pub send_layout: Option<&'a Reshard>,
    pub send_whole: Option<&'a Reshard>,
}

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}

fn time(r: Option<&Reshard>) -> f64 {
    r.map_or(f64::INFINITY, |r| r.time_s)
}

impl Priced<'_> {
    /// An e-node's own cost given its child's state; infinite where no backend executes it
    /// (the runtime's producer holds parts only under sequence parallelism, and whole rows
    /// only without it).
    pub fn cost(&self, node: &Coll, child: Option<Own>) -> f64 {
        let sp = self.sp;
        match (node, child) {
            (Coll::Partial(_) | Coll::Grads(_), _) => 0.0,
            (Coll::AllReduce(_), Some(Own::Partial)) => sum(&self.coll.all_reduce),
            (Coll::ReduceScatter(_), Some(Own::Partial)) => sum(&self.coll.reduce_scatter),
            (Coll::AllGather(_), Some(Own::Parts | Own::SourceParts)) => sum(&self.coll.all_gather),
            (Coll::Deliver(_), Some(Own::Parts)) if sp => time(self.deliver),
            (Coll::Deliver(_), Some(Own::Whole)) if !sp => time(self.deliver),
            (Coll::ReduceDeliver(_), Some(Own::Partial)) => time(self.reduce),
            (Coll::SendParts(_), Some(Own::Owners)) if sp => time(self.send_layout),
            (Coll::SendWhole(_), Some(Own::Owners)) if sp => time(self.send_whole),
            (Coll::SendWhole(_), Some(Own::Owners)) => time(self.send_layout),
            _ => f64::INFINITY,
        }
    }
}
