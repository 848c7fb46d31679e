//! What each operator of a boundary program costs: the producer's tp collectives as its own
//! cost model prices them (what a fold takes from it), and the transfers as `synth` lowers
//! and prices them.

use hetpar_cost::fold::producer_collectives;
use hetpar_ir::placement::{Axis, RankGrid};
use hetpar_ir::{BoundaryId, Rank};

use super::super::synth::{Context, Reshard};
use super::term::{Coll, Own};

/// The producer's tp collectives per unit of the boundary, s.
#[derive(Clone, Debug, Default)]
pub struct Collectives {
    pub all_reduce: Vec<f64>,
    pub reduce_scatter: Vec<f64>,
    pub all_gather: Vec<f64>,
}

/// Per unit of boundary `b` (`units` of them), the producer's output collectives as its own
/// cost prices them (`hetpar_cost::fold::producer_collectives`: per encoder pass, on the
/// replica with the most rows): the very seconds a fold takes from the producer. A pass that
/// feeds several micro-batches is shared evenly among them.
pub fn collectives(cx: &Context<'_>, b: BoundaryId, units: usize) -> Collectives {
    let (model, plan) = (cx.model, cx.plan);
    let bd = model.boundary(b);
    let opts = hetpar_cost::Options {
        constants: Some(cx.constants),
        ..Default::default()
    };
    let per_pass = producer_collectives(model, cx.cluster, plan, &opts, bd.from);
    let passes = plan.passes();
    // A destination in passes takes one pass per unit; one in micro-batches, its share.
    let in_passes = model.item_origin(bd.to).is_some();
    let mut out = Collectives::default();
    for u in 0..units as u32 {
        let (p, share) = if in_passes {
            (u, 1.0)
        } else {
            let p = passes.pass_of(u);
            (p, passes.micro_batches_of(p).len().max(1) as f64)
        };
        let c = per_pass.get(p as usize).copied().unwrap_or_default();
        out.all_reduce.push(c.all_reduce / share);
        out.reduce_scatter.push(c.reduce_scatter / share);
        out.all_gather.push(c.all_gather / share);
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
