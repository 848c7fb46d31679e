//! Memory outside the tensors a step allocates: NCCL's buffers per communicator. (The CUDA
//! context and the allocator margin are one constant and one fraction, `Constants`.)
//!
//! NCCL allocates, per communicator, a buffer of `NCCL_BUFFSIZE` bytes (4 MiB by default,
//! NCCL's environment-variable documentation) per channel for every peer this rank exchanges
//! with: `NCCL_BUFFSIZE x channels x peers`. Peers: 1 in a group of two, 2 (the ring's
//! previous and next rank) in a larger group running ring collectives, every other member for
//! an all-to-all (ep), the neighbouring stages for pipeline sends. Communicators are counted
//! once per member set, as hetpar's runtime creates them (`NcclGroups`); a set used both for
//! ring collectives and an all-to-all counts the all-to-all's peers.

use std::collections::BTreeMap;

use hetpar_ir::placement::{Axis, Coord};
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::Rank;

use crate::constants::Constants;

/// A rank's communicators: member set -> peers it keeps buffers for.
pub type Communicators = BTreeMap<Vec<Rank>, u32>;

/// Adds the communicators module plan `mp` puts `rank` in: tp, cp, the gradient group dp x cp,
/// the expert groups (ep, and expert data parallel dp x cp / ep), the pipeline.
pub fn add_communicators(mp: &ModulePlan, rank: Rank, out: &mut Communicators) {
    let Some(c) = mp.grid.coord_of(rank) else {
        return;
    };
    let g = &mp.grid;
    add(out, g.group_at(Axis::Tp, c), ring_peers);
    add(out, g.group_at(Axis::Cp, c), ring_peers);
    let dp_cp = dp_cp_group(mp, c);
    let ep = mp.layout.ep.max(1) as usize;
    if ep > 1 {
        // ep groups are runs of ep ranks in the dp x cp order; expert data parallel takes
        // the same position in every run.
        let i = (c.dp * g.size(Axis::Cp) + c.cp) as usize;
        let block = (i / ep) * ep;
        if let Some(run) = dp_cp.get(block..block + ep) {
            add(out, run.to_vec(), |n| n - 1);
        }
        let expert_dp = dp_cp.iter().skip(i % ep).step_by(ep).copied().collect();
        add(out, expert_dp, ring_peers);
    }
    add(out, dp_cp, ring_peers);
    let pp = mp.layout.pp;
    if pp > 1 {
        let s = c.pp;
        let wraps = mp.layout.vpp > 1;
        let mut near: Vec<u32> = [s.checked_sub(1), s.checked_add(1).filter(|&x| x < pp)]
            .into_iter()
            .flatten()
            .collect();
        if wraps {
            // Interleaving sends from the last stage's chunk to the first stage's next one.
            near.push((s + 1) % pp);
            near.push((s + pp - 1) % pp);
        }
        near.sort_unstable();
        near.dedup();
        near.retain(|&x| x != s);
        let peers = near.len() as u32;
        add(out, g.group_at(Axis::Pp, c), |_| peers);
    }
}

/// NCCL's buffers for every communicator, bytes.
pub fn nccl_bytes(comms: &Communicators, c: &Constants) -> f64 {
    let peers: u32 = comms.values().sum();
    f64::from(peers) * c.nccl_buffer_bytes * c.nccl_channels
}

/// A ring's peers: the previous and the next rank (one in a group of two).
fn ring_peers(n: u32) -> u32 {
    (n - 1).min(2)
}

fn add(out: &mut Communicators, mut members: Vec<Rank>, peers: impl Fn(u32) -> u32) {
    let n = members.len() as u32;
    if n < 2 {
        return;
    }
    let p = peers(n);
    members.sort_unstable();
    let e = out.entry(members).or_insert(0);
    *e = (*e).max(p);
}

/// The ranks of the data-parallel gradient group (dp x cp) through `at`, dp outer, cp inner.
fn dp_cp_group(mp: &ModulePlan, at: Coord) -> Vec<Rank> {
    let g = &mp.grid;
    let mut out = Vec::new();
    for dp in 0..g.size(Axis::Dp) {
        for cp in 0..g.size(Axis::Cp) {
            out.push(g.rank_at(Coord { dp, cp, ..at }));
        }
    }
    out
}
