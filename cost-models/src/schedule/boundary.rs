//! Dependencies across module boundaries. The unit of a boundary is its destination's: an
//! encoder pass for a boundary into a projector, a micro-batch for one into the language
//! model (and `BoundaryTimes` is indexed by it).
//!
//! - pass -> pass (encoder -> projector): in pass p, source replica du feeds destination
//!   replica dv wherever their runs of the pass's items overlap;
//! - pass -> micro-batch (projector -> language model): micro-batch j's replica dv takes the
//!   rows of the items of its samples, from pass `pass_of(j)` of every source replica holding
//!   one; that pass's backward waits for the gradients of all its micro-batches;
//! - micro-batch -> micro-batch: micro-batch j, replicas whose samples overlap.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use hetpar_ir::model::{Boundary, ModelGraph};
use hetpar_ir::shard;
use hetpar_ir::{Plan, Rank};

use super::lanes::{first_rank, Lanes, ReplicaStage, TaskIndex};
use super::units::{ModuleUnits, PassItems, UnitKind};
use super::Inputs;
use crate::collective::{p2p_time, Link};
use crate::tasks::{Dep, DepKind, Task};
use crate::CostError;

/// Rows one source replica's unit sends one destination replica's unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundaryLink {
    pub src_unit: u32,
    pub du: u32,
    pub dst_unit: u32,
    pub dv: u32,
    pub rows: f64,
}

/// Which destination replica's unit a source unit's items feed.
#[derive(Clone, Copy, Debug)]
struct LinkTarget {
    src_unit: u32,
    dst_unit: u32,
    dv: u32,
}

fn overlap(a: &Range<usize>, b: &Range<usize>) -> Range<usize> {
    a.start.max(b.start)..a.end.min(b.end)
}

/// Links of the items `wanted` (indices into the pass's items) to the runs holding them.
fn item_links(
    pi: &PassItems,
    wanted: &Range<usize>,
    merge: u32,
    to: LinkTarget,
    out: &mut Vec<BoundaryLink>,
) {
    for (du, run) in pi.runs.iter().enumerate() {
        let o = overlap(run, wanted);
        if o.is_empty() {
            continue;
        }
        let rows: u64 = pi.items[o]
            .iter()
            .map(|i| u64::from(i.tokens / merge.max(1)))
            .sum();
        out.push(BoundaryLink {
            src_unit: to.src_unit,
            du: du as u32,
            dst_unit: to.dst_unit,
            dv: to.dv,
            rows: rows as f64,
        });
    }
}

/// Every (source unit and replica, destination unit and replica) pair boundary `b` links.
pub fn links(
    model: &ModelGraph,
    plan: &Plan,
    units: &[ModuleUnits],
    b: &Boundary,
) -> Result<Vec<BoundaryLink>, CostError> {
    let (u, v) = (&units[b.from.index()], &units[b.to.index()]);
    let batch = model.data().global_batch;
    let mut out = Vec::new();
    match (u.kind, v.kind) {
        (UnitKind::Pass, UnitKind::Pass) => {
            for (p, (pu, pv)) in u.passes.iter().zip(&v.passes).enumerate() {
                for (dv, run) in pv.runs.iter().enumerate() {
                    let to = LinkTarget {
                        src_unit: p as u32,
                        dst_unit: p as u32,
                        dv: dv as u32,
                    };
                    item_links(pu, run, b.merge, to, &mut out);
                }
            }
        }
        (UnitKind::Pass, UnitKind::MicroBatch) => {
            let passes = plan.passes();
            let mbs = plan.module(b.to).layout.micro_batch_size;
            for j in 0..v.count {
                let p = passes.pass_of(j);
                let Some(pu) = u.passes.get(p as usize) else {
                    continue;
                };
                for dv in 0..v.dp {
                    let s = shard::replica_samples(batch, v.count, mbs, j, dv);
                    let a = pu.items.partition_point(|i| i.sample < s.start);
                    let e = pu.items.partition_point(|i| i.sample < s.end);
                    let to = LinkTarget {
                        src_unit: p,
                        dst_unit: j,
                        dv,
                    };
                    item_links(pu, &(a..e), b.merge, to, &mut out);
                }
            }
        }
        (UnitKind::MicroBatch, UnitKind::MicroBatch) => {
            micro_batch_links(model, plan, units, b, &mut out)
        }
        (UnitKind::MicroBatch, UnitKind::Pass) => {
            return Err(CostError::Unsupported(format!(
            "boundary {}: rows from a module after the language model into an encoder or projector",
            b.name
        )))
        }
    }
    Ok(out)
}

fn micro_batch_links(
    model: &ModelGraph,
    plan: &Plan,
    units: &[ModuleUnits],
    b: &Boundary,
    out: &mut Vec<BoundaryLink>,
) {
    let (u, v) = (&units[b.from.index()], &units[b.to.index()]);
    let batch = model.data().global_batch;
    let m = v.count;
    let (mbs_u, mbs_v) = (
        plan.module(b.from).layout.micro_batch_size,
        plan.module(b.to).layout.micro_batch_size,
    );
    for j in 0..m {
        for dv in 0..v.dp {
            let sv = shard::replica_samples(batch, m, mbs_v, j, dv);
            if sv.is_empty() {
                continue;
            }
            // Source replicas whose samples overlap: a contiguous range, by arithmetic.
            let (_, first, _) = shard::sample_slot(batch, m, mbs_u, sv.start);
            let (_, last, _) = shard::sample_slot(batch, m, mbs_u, sv.end - 1);
            for du in first..=last.min(u.dp.saturating_sub(1)) {
                let su = shard::replica_samples(batch, m, mbs_u, j, du);
                let (lo, hi) = (su.start.max(sv.start), su.end.min(sv.end));
                if lo >= hi {
                    continue;
                }
                let rows: u64 = (lo..hi)
                    .map(|s| model.boundary_rows_of_sample(b.id, s as usize))
                    .sum();
                out.push(BoundaryLink {
                    src_unit: j,
                    du,
                    dst_unit: j,
                    dv,
                    rows: rows as f64,
                });
            }
        }
    }
}

/// Adds every boundary's dependencies: the destination's first chunk forward waits for the
/// source's last chunk forward, the source's last backward for the destination's first.
pub fn add_deps(
    inp: &Inputs<'_>,
    lanes: &Lanes,
    index: &TaskIndex,
    tasks: &mut [Task],
) -> Result<(), CostError> {
    let (model, plan) = (inp.model, inp.plan);
    let act_bytes = model.data().precision.activation_bytes() as f64;
    let mut sets: HashMap<ReplicaStage, BTreeSet<Rank>> = HashMap::new();
    let mut set_of = |at: ReplicaStage| -> BTreeSet<Rank> {
        sets.entry(at).or_insert_with(|| lanes.rank_set(at)).clone()
    };
    for b in model.boundaries() {
        let (u, v) = (b.from.index(), b.to.index());
        let (pu, pv) = (&plan.modules()[u], &plan.modules()[v]);
        let (su, cu) = (pu.layout.pp - 1, pu.layout.vpp - 1);
        let times = inp.boundary_times.and_then(|t| t.units.get(&b.id));
        for k in links(model, plan, inp.units, b)? {
            let bytes = k.rows * f64::from(b.width) * act_bytes;
            let (from, to) = (
                ReplicaStage::new(u, k.du, su),
                ReplicaStage::new(v, k.dv, 0),
            );
            let lat = if set_of(from) == set_of(to) {
                0.0
            } else {
                let link = Link::between(
                    inp.cluster,
                    &inp.constants,
                    first_rank(pu, k.du, su),
                    first_rank(pv, k.dv, 0),
                );
                p2p_time(bytes, link)
            };
            let (lat_f, lat_b) = times
                .and_then(|t| t.get(k.dst_unit as usize).copied())
                .unwrap_or((lat, lat));
            let fu = index.at(from.task(cu, k.src_unit, true));
            let bu = index.at(from.task(cu, k.src_unit, false));
            let fv = index.at(to.task(0, k.dst_unit, true));
            let bv = index.at(to.task(0, k.dst_unit, false));
            tasks[fv as usize].deps.push(Dep {
                task: fu,
                latency: lat_f,
                kind: DepKind::Boundary,
            });
            tasks[bu as usize].deps.push(Dep {
                task: bv,
                latency: lat_b,
                kind: DepKind::Boundary,
            });
        }
    }
    Ok(())
}
