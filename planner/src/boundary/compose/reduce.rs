//! The folded forward: every holder of partial sums sends them to each rank that needs the
//! rows, which adds them (`Transfer::Reduce`), per unit.

use std::collections::BTreeMap;

use hetpar_ir::{BoundaryId, Rank};

use super::super::ownership::Segment;
use super::super::synth::{
    micro_batch_time, Context, Direction, MicroBatchPlan, Op, Reshard, Rows,
};

/// The `Reduce` operations of every unit from segments whose holders hold partial sums (the
/// source's whole ownership, `ownership::source_maps_whole`), lowered and priced.
pub fn synthesize_reduce(cx: &Context<'_>, b: BoundaryId, segs: &[Vec<Segment>]) -> Reshard {
    let width = u64::from(cx.model.boundary(b).width);
    let row_bytes = width * cx.model.data().precision.activation_bytes();
    let node = |r: Rank| cx.cluster.node_of(r);
    let links = cx.links();
    let mut r = Reshard::empty(Direction::Forward);
    for (j, unit) in segs.iter().enumerate() {
        // One operation per (holders, needer): its rows in segment order.
        let mut ops: BTreeMap<(Vec<Rank>, Rank), Vec<Rows>> = BTreeMap::new();
        let mut order: Vec<(Vec<Rank>, Rank)> = Vec::new();
        for s in unit {
            for &q in s.needers.iter() {
                let key = (s.holders.to_vec(), q);
                let rows = ops.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    Vec::new()
                });
                rows.push((s.sample, s.rows.clone()));
            }
        }
        let ops: Vec<Op> = order
            .into_iter()
            .map(|key| {
                let rows = ops.remove(&key).unwrap_or_default();
                Op::Reduce {
                    srcs: key.0,
                    dst: key.1,
                    rows,
                }
            })
            .collect();
        let t = micro_batch_time(&ops, row_bytes, &node, &links, &mut r);
        r.time_s += t;
        r.unit_times.push(t);
        r.plans.push(MicroBatchPlan {
            micro_batch: j as u32,
            ops,
        });
    }
    // Every partial must move: the bytes are the least this program can send.
    r.lower_bound_bytes = r.bytes;
    r.segments = segs.to_vec();
    r
}
