//! Floors under the folded programs' time from the layout's own segments, so that a fold that
//! cannot beat the direct program is never synthesized (the search prices many boundaries).
//!
//! Forward, a rank that needs a row receives the partial sums of every tp rank of the row's
//! replica but itself: tp - 1 copies over NVLink when it shares their node, tp over the
//! network when not. Backward (sequence parallel), every tp rank of the replica receives every
//! gradient row it does not hold: over NVLink from a holder on its node, else at least a
//! 1/tp part over the network (the synthesis may scatter parts over the node's needers and
//! all-gather them). A unit's time is at least its busiest rank's receive volume per link
//! class (`synth`'s model, less latencies).

use std::collections::HashMap;

use hetpar_ir::placement::Axis;
use hetpar_ir::{BoundaryId, Rank};

use super::super::ownership::Segment;
use super::super::synth::Context;

/// (forward, backward) floors, s; the backward's 0 without sequence parallelism (nothing to
/// fold there).
pub fn folded_floor(cx: &Context<'_>, b: BoundaryId, fwd: &[Vec<Segment>], sp: bool) -> (f64, f64) {
    let bd = cx.model.boundary(b);
    let row_bytes = (u64::from(bd.width) * cx.model.data().precision.activation_bytes()) as f64;
    let grid = &cx.plan.module(bd.from).grid;
    let tp = u64::from(grid.size(Axis::Tp).max(1));
    let links = cx.links();
    let node = |r: Rank| cx.cluster.node_of(r);
    // `parts`: the network volume a rank must take itself is 1/parts of what it needs.
    let busiest = |recv: &HashMap<(Rank, bool), u64>, parts: u64| {
        recv.iter()
            .map(|(&(_, net), &rows)| {
                let (l, n) = if net {
                    (links.network, parts)
                } else {
                    (links.nvlink, 1)
                };
                rows as f64 * row_bytes / n as f64 / l.bandwidth
            })
            .fold(0.0, f64::max)
    };
    let (mut forward, mut backward) = (0.0, 0.0);
    let mut groups: HashMap<Rank, Vec<Rank>> = HashMap::new();
    for unit in fwd {
        let mut f: HashMap<(Rank, bool), u64> = HashMap::new();
        let mut bk: HashMap<(Rank, bool), u64> = HashMap::new();
        for s in unit {
            let rows = s.rows.end - s.rows.start;
            let Some(&h) = s.holders.first() else {
                continue;
            };
            for &q in s.needers.iter() {
                let net = node(q) != node(h);
                *f.entry((q, net)).or_default() += rows * if net { tp } else { tp - 1 };
            }
            if sp {
                let g = groups
                    .entry(h)
                    .or_insert_with(|| super::price::tp_group(grid, h));
                for &r in g.iter().filter(|r| !s.needers.contains(r)) {
                    let net = !s.needers.iter().any(|&q| node(q) == node(r));
                    *bk.entry((r, net)).or_default() += rows;
                }
            }
        }
        forward += busiest(&f, 1);
        backward += busiest(&bk, tp);
    }
    (forward, backward)
}
