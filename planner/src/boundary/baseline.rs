//! The reference system's boundary, as the baseline to beat: per destination replica, one
//! leader receives every row of the replica's micro-batch and broadcasts the whole tensor to
//! its tp x cp group (non-colocated); colocated, the replica's rows are all-gathered along the
//! batch. Either way every rank of the destination replica's group ends with all its rows.

use std::collections::{BTreeMap, BTreeSet};

use hetpar_cost::collective::{collective_time, CollectiveKind, Link};
use hetpar_ir::placement::Coord;
use hetpar_ir::{BoundaryId, Rank};

use super::ownership::Segment;
use super::synth::Context;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Baseline {
    pub bytes: u64,
    pub time_s: f64,
}

/// The baseline's bytes and time, forward, from the forward segments.
pub fn leader_broadcast(cx: &Context<'_>, b: BoundaryId, fwd: &[Vec<Segment>]) -> Baseline {
    let bd = cx.model.boundary(b);
    let mp = cx.plan.module(bd.to);
    let l = &mp.layout;
    let row_bytes = u64::from(bd.width) * cx.model.data().precision.activation_bytes();
    let mut out = Baseline::default();
    // Modules on the same ranks with the same data parallelism need no boundary at all in the
    // reference (an encoder and its projector are one module there; equal DP is free).
    let src = cx.plan.module(bd.from);
    let same_ranks = src.grid.ranks().iter().collect::<BTreeSet<_>>()
        == mp.grid.ranks().iter().collect::<BTreeSet<_>>();
    if same_ranks && src.layout.dp == l.dp {
        return out;
    }
    for segs in fwd {
        // Per destination replica: its rows, and what each rank of its group already holds.
        let mut rows: BTreeMap<u32, u64> = BTreeMap::new();
        // Rows each rank of a destination group holds (a rank is in one replica's group).
        let mut held: BTreeMap<Rank, u64> = BTreeMap::new();
        let mut colocated: BTreeSet<u32> = BTreeSet::new();
        for s in segs {
            // The destination replica that needs the rows (one per row, forward).
            let Some(d) = s
                .needers
                .first()
                .and_then(|&q| mp.grid.coord_of(q))
                .map(|c| c.dp)
            else {
                continue;
            };
            let n = s.rows.end - s.rows.start;
            *rows.entry(d).or_default() += n;
            for &h in s.holders.iter() {
                if mp.grid.coord_of(h).is_some_and(|c| c.dp == d && c.pp == 0) {
                    *held.entry(h).or_default() += n;
                    colocated.insert(d);
                }
            }
        }
        let mut t_mb = 0.0f64;
        for (&d, &r) in &rows {
            let group: Vec<Rank> = (0..l.cp)
                .flat_map(|c| (0..l.tp).map(move |t| (c, t)))
                .map(|(c, t)| {
                    mp.grid.rank_at(Coord {
                        tp: t,
                        cp: c,
                        dp: d,
                        pp: 0,
                    })
                })
                .collect();
            // Each row lies in exactly one segment.
            let bytes: u64 = group
                .iter()
                .map(|&q| r.saturating_sub(held.get(&q).copied().unwrap_or(0)) * row_bytes)
                .sum();
            out.bytes += bytes;
            let link = Link::of_group(cx.cluster, &cx.constants, &group);
            let t = if colocated.contains(&d) {
                collective_time(
                    CollectiveKind::AllGather,
                    (r * row_bytes) as f64,
                    group.len() as u32,
                    link,
                )
            } else {
                let net = Link::of_class(cx.cluster, &cx.constants, true);
                (r * row_bytes) as f64 / net.bandwidth
                    + net.latency
                    + collective_time(
                        CollectiveKind::Broadcast,
                        (r * row_bytes) as f64,
                        group.len() as u32,
                        link,
                    )
            };
            t_mb = t_mb.max(t);
        }
        out.time_s += t_mb;
    }
    out
}
