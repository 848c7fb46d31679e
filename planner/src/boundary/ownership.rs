//! Ownership maps: which ranks hold each row of a boundary after the source module's forward,
//! and which ranks need it before the destination module's forward.
//!
//! Rows are numbered per sample (the boundary's rows of sample s, items in order). Both maps
//! are computed as row ranges, never row by row, so that a 1024-rank boundary is synthesized
//! in milliseconds.
//!
//! Source (module u, last pipeline stage, the data-parallel replica owning the sample): with
//! cp > 1 each item's rows split into 2 cp equal chunks, cp rank c owning chunks c and
//! 2 cp - 1 - c; under sequence parallel a cp rank's rows of the micro-batch (samples in order)
//! split into tp contiguous parts, part t holding local rows i with floor(i tp / n) = t;
//! without it every tp rank holds them all.
//!
//! Destination (module v, first stage): placeholder rows go to their sequence positions
//! (`ir::model::placeholders`); with cp > 1 the sequence splits into 2 cp chunks as above;
//! under sequence parallel a cp rank's local sequence of each sample splits into tp parts;
//! rows landing as rows (a projector's input) split like the source side.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use hetpar_ir::model::placeholders::placeholder_spans;
use hetpar_ir::model::{Landing, ModelGraph};
use hetpar_ir::placement::Coord;
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{BoundaryId, Plan, Rank};

/// A range of one sample's rows and the ranks that own it on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub rows: Range<u64>,
    pub ranks: Ranks,
}

/// A shared, immutable rank list (segments share them; cloning is a reference count).
pub type Ranks = Arc<[Rank]>;

/// Where a sample sits in a module's micro-batching.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    pub micro_batch: u32,
    pub replica: u32,
    /// Index of the sample within the replica's micro-batch.
    pub index: u32,
}

pub fn slot(mp: &ModulePlan, batch: u32, s: u32) -> Slot {
    let per_mb = batch / mp.layout.micro_batches.max(1);
    let within = s % per_mb.max(1);
    let mbs = mp.layout.micro_batch_size.max(1);
    Slot {
        micro_batch: s / per_mb.max(1),
        replica: within / mbs,
        index: within % mbs,
    }
}

/// Samples of micro-batch `j`.
pub fn micro_batch_samples(mp: &ModulePlan, batch: u32, j: u32) -> Range<u32> {
    let per_mb = batch / mp.layout.micro_batches.max(1);
    j * per_mb..(j + 1) * per_mb
}

/// Samples of replica `d` in micro-batch `j` (the inverse of `slot`).
pub fn replica_samples(mp: &ModulePlan, batch: u32, j: u32, d: u32) -> Range<u32> {
    let per_mb = batch / mp.layout.micro_batches.max(1);
    let mbs = mp.layout.micro_batch_size;
    let start = j * per_mb + d * mbs;
    start..start + mbs
}

/// The ranks of (replica, stage, cp rank), and one tp rank or all of them, built once each.
#[derive(Default)]
struct RankCache(HashMap<(u32, u32, u32, Option<u32>), Ranks>);

impl RankCache {
    fn get(&mut self, mp: &ModulePlan, d: u32, s: u32, c: u32, tp: Option<u32>) -> Ranks {
        self.0
            .entry((d, s, c, tp))
            .or_insert_with(|| match tp {
                Some(t) => Arc::from([mp.grid.rank_at(Coord {
                    tp: t,
                    cp: c,
                    dp: d,
                    pp: s,
                })]),
                None => (0..mp.layout.tp)
                    .map(|t| {
                        mp.grid.rank_at(Coord {
                            tp: t,
                            cp: c,
                            dp: d,
                            pp: s,
                        })
                    })
                    .collect(),
            })
            .clone()
    }
}

/// Splits a cp rank's local range `[lo, hi)` (of `n` local rows) at sequence-parallel part
/// boundaries, calling `emit(local_range, tp_part)`.
fn sp_split(
    lo: u64,
    hi: u64,
    n: u64,
    tp: u32,
    sp: bool,
    mut emit: impl FnMut(Range<u64>, Option<u32>),
) {
    if !sp || tp <= 1 || n == 0 {
        emit(lo..hi, None);
        return;
    }
    let tp64 = u64::from(tp);
    let mut a = lo;
    while a < hi {
        let t = a * tp64 / n;
        // First local index of part t + 1: ceil((t + 1) n / tp).
        let next = ((t + 1) * n).div_ceil(tp64).min(hi);
        emit(a..next, Some(t as u32));
        a = next;
    }
}

/// Row counts of the items of sample `s` on boundary `b` (rows after token merges).
fn item_rows(g: &ModelGraph, b: BoundaryId, s: usize) -> Vec<u64> {
    let bd = g.boundary(b);
    let merge = u64::from(bd.merge.max(1));
    match g.items(bd.origin) {
        Some(items) => items
            .items_of(s)
            .iter()
            .map(|&t| u64::from(t) / merge)
            .collect(),
        // Rows of a language model's sequence (a generator's input): one unit.
        None => vec![g.boundary_rows_of_sample(b, s)],
    }
}

/// Source ownership of every sample of micro-batch `j`: per sample, row ranges and holders.
pub fn source_map(g: &ModelGraph, plan: &Plan, b: BoundaryId, j: u32) -> Vec<(u32, Vec<Owned>)> {
    let bd = g.boundary(b);
    let mp = plan.module(bd.from);
    let batch = g.data().global_batch;
    let l = &mp.layout;
    let (cp, tp) = (u64::from(l.cp), l.tp);
    let stage = l.pp - 1;
    let samples = micro_batch_samples(mp, batch, j);
    let mut cache = RankCache::default();
    let mut out: Vec<(u32, Vec<Owned>)> = samples.clone().map(|s| (s, Vec::new())).collect();
    for d in 0..l.dp {
        // Samples of this replica, in micro-batch order.
        let mine: Vec<u32> = replica_samples(mp, batch, j, d).collect();
        let items: Vec<Vec<u64>> = mine.iter().map(|&s| item_rows(g, b, s as usize)).collect();
        let total: u64 = items.iter().flatten().sum();
        let n_local = total / cp;
        let mut local = vec![0u64; cp as usize];
        for (k, &s) in mine.iter().enumerate() {
            let entry = &mut out[(s - samples.start) as usize].1;
            let mut row = 0u64;
            for &len in &items[k] {
                let chunk = len / (2 * cp);
                for q in 0..2 * cp {
                    let c = if q < cp { q } else { 2 * cp - 1 - q };
                    let (a, z) = if cp == 1 {
                        (0, len)
                    } else {
                        (
                            q * chunk,
                            if q + 1 == 2 * cp {
                                len
                            } else {
                                (q + 1) * chunk
                            },
                        )
                    };
                    if cp == 1 && q > 0 {
                        break;
                    }
                    let lo = local[c as usize];
                    sp_split(
                        lo,
                        lo + (z - a),
                        n_local.max(1),
                        tp,
                        l.sequence_parallel,
                        |r, t| {
                            let start = row + a + (r.start - lo);
                            entry.push(Owned {
                                rows: start..start + (r.end - r.start),
                                ranks: cache.get(mp, d, stage, c as u32, t),
                            });
                        },
                    );
                    local[c as usize] += z - a;
                }
                row += len;
            }
        }
    }
    for (_, v) in &mut out {
        v.sort_by_key(|o| o.rows.start);
    }
    out
}

/// Destination needs of every sample of micro-batch `j`: per sample, row ranges and needers.
pub fn destination_map(
    g: &ModelGraph,
    plan: &Plan,
    b: BoundaryId,
    j: u32,
) -> Vec<(u32, Vec<Owned>)> {
    let bd = g.boundary(b);
    let mp = plan.module(bd.to);
    let batch = g.data().global_batch;
    let l = &mp.layout;
    let (cp, tp) = (u64::from(l.cp), l.tp);
    let samples = micro_batch_samples(mp, batch, j);
    let mut cache = RankCache::default();
    let mut out: Vec<(u32, Vec<Owned>)> = samples.clone().map(|s| (s, Vec::new())).collect();
    match bd.landing {
        Landing::Placeholders => {
            let seq = u64::from(g.data().sequence_length);
            let chunk = seq / (2 * cp);
            let local_len = seq / cp;
            for s in samples.clone() {
                let d = slot(mp, batch, s).replica;
                let entry = &mut out[(s - samples.start) as usize].1;
                for span in placeholder_spans(g, s as usize)
                    .into_iter()
                    .filter(|sp| sp.boundary == b)
                {
                    let mut p = span.position;
                    let end = span.position + span.len;
                    while p < end {
                        let (q, next) = if cp == 1 {
                            (0, end)
                        } else {
                            (p / chunk, ((p / chunk + 1) * chunk).min(end))
                        };
                        let c = if q < cp { q } else { 2 * cp - 1 - q };
                        let local_start = if q < cp {
                            p - q * chunk
                        } else {
                            chunk + (p - q * chunk)
                        };
                        let row0 = span.first_row + (p - span.position);
                        sp_split(
                            local_start,
                            local_start + (next - p),
                            local_len.max(1),
                            tp,
                            l.sequence_parallel,
                            |r, t| {
                                let start = row0 + (r.start - local_start);
                                entry.push(Owned {
                                    rows: start..start + (r.end - r.start),
                                    ranks: cache.get(mp, d, 0, c as u32, t),
                                });
                            },
                        );
                        p = next;
                    }
                }
            }
        }
        Landing::Rows => {
            for d in 0..l.dp {
                let mine: Vec<u32> = replica_samples(mp, batch, j, d).collect();
                let rows: Vec<u64> = mine
                    .iter()
                    .map(|&s| g.boundary_rows_of_sample(b, s as usize))
                    .collect();
                let total: u64 = rows.iter().sum();
                let mut local = 0u64;
                for (k, &s) in mine.iter().enumerate() {
                    let entry = &mut out[(s - samples.start) as usize].1;
                    sp_split(
                        local,
                        local + rows[k],
                        total.max(1),
                        tp,
                        l.sequence_parallel,
                        |r, t| {
                            let start = r.start - local;
                            entry.push(Owned {
                                rows: start..start + (r.end - r.start),
                                ranks: cache.get(mp, d, 0, 0, t),
                            });
                        },
                    );
                    local += rows[k];
                }
            }
        }
    }
    for (_, v) in &mut out {
        v.sort_by_key(|o| o.rows.start);
    }
    out
}

/// A range of rows of one sample with its holders and its needers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub sample: u32,
    pub rows: Range<u64>,
    pub holders: Ranks,
    pub needers: Ranks,
}

/// Intersects the two maps of one micro-batch into segments.
pub fn segments(src: &[(u32, Vec<Owned>)], dst: &[(u32, Vec<Owned>)]) -> Vec<Segment> {
    let mut out = Vec::new();
    for ((s, a), (_, b)) in src.iter().zip(dst) {
        let (mut i, mut k) = (0, 0);
        while i < a.len() && k < b.len() {
            let lo = a[i].rows.start.max(b[k].rows.start);
            let hi = a[i].rows.end.min(b[k].rows.end);
            if lo < hi {
                out.push(Segment {
                    sample: *s,
                    rows: lo..hi,
                    holders: a[i].ranks.clone(),
                    needers: b[k].ranks.clone(),
                });
            }
            if a[i].rows.end <= b[k].rows.end {
                i += 1;
            } else {
                k += 1;
            }
        }
    }
    out
}
