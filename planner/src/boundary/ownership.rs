//! Ownership maps: which ranks hold each row of a boundary after the source module's forward,
//! and which ranks need it before the destination module's forward.
//!
//! Rows are numbered per sample (the boundary's rows of sample s, items in order). Both maps
//! are computed as row ranges, never row by row, so that a 1024-rank boundary is synthesized
//! in milliseconds. The sharding arithmetic is `hetpar_ir::shard`'s.
//!
//! **Units.** A boundary is synthesized per unit of its destination: per encoder pass for a
//! boundary into an encoder or a projector (`ModelGraph::item_origin`), per language-model
//! micro-batch otherwise. The rows of micro-batch j coming from an item module are held by the
//! replicas that got their items in pass `passes.pass_of(j)`.
//!
//! **A replica's rows** are a list of runs (an item's rows, or a whole sample's for a module
//! after the language model), in order: an item module's replica holds the items
//! `shard::pass_deal` gives it in the pass; any other module's replica the samples
//! `shard::replica_samples` gives it. With cp > 1 each run splits into the 2 cp blocks of
//! `shard::cp_block`, cp rank c holding blocks c and 2 cp - 1 - c (its local rows: run after run);
//! under sequence parallel a cp rank's local rows split into the tp parts of `shard::sp_part`;
//! without it every tp rank holds them all. This gives the source side (last pipeline stage)
//! and the destination side of rows landing as rows (first stage).
//!
//! **Placeholders** (the language model's input): rows go to their sequence positions
//! (`ir::model::placeholders`), the sequence splitting into cp blocks as above and, under
//! sequence parallel, a cp rank's local sequence of each sample into tp parts.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use hetpar_ir::model::placeholders::placeholder_spans;
use hetpar_ir::model::{Landing, ModelGraph};
use hetpar_ir::placement::Coord;
use hetpar_ir::plan::ModulePlan;
use hetpar_ir::shard;
use hetpar_ir::{BoundaryId, ModuleId, Plan, Rank};

/// A range of one sample's rows and the ranks that own it on one side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    pub rows: Range<u64>,
    pub ranks: Ranks,
}

/// A shared, immutable rank list (segments share them; cloning is a reference count).
pub type Ranks = Arc<[Rank]>;

/// Per sample of a unit (in order), its row ranges and their owners.
pub type SideMap = Vec<(u32, Vec<Owned>)>;

/// Rows `row0..row0 + len` of one sample, held together by one replica.
#[derive(Clone, Copy, Debug)]
struct Run {
    sample: u32,
    row0: u64,
    len: u64,
}

/// Whether module `m` runs in encoder passes.
fn in_passes(g: &ModelGraph, m: ModuleId) -> bool {
    g.item_origin(m).is_some()
}

/// The units of boundary `b`: its destination's encoder passes or micro-batches.
pub fn units(g: &ModelGraph, plan: &Plan, b: BoundaryId) -> u32 {
    if in_passes(g, g.boundary(b).to) {
        plan.passes().count()
    } else {
        plan.micro_batches()
    }
}

/// The samples unit `u` of boundary `b` covers.
pub fn unit_samples(g: &ModelGraph, plan: &Plan, b: BoundaryId, u: u32) -> Range<u32> {
    let batch = g.data().global_batch;
    if in_passes(g, g.boundary(b).to) {
        plan.passes().samples_of(batch, u)
    } else {
        shard::micro_batch_samples(batch, plan.micro_batches(), u)
    }
}

/// Replica `replica`, stage `stage`, cp rank `cp` of a module, and tp rank `tp` of it or
/// (`None`) all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RanksAt {
    replica: u32,
    stage: u32,
    cp: u32,
    tp: Option<u32>,
}

/// The ranks of every `RanksAt` asked for, built once each.
#[derive(Default)]
struct RankCache(HashMap<RanksAt, Ranks>);

impl RankCache {
    fn get(&mut self, mp: &ModulePlan, at: RanksAt) -> Ranks {
        self.0
            .entry(at)
            .or_insert_with(|| {
                let rank = |t: u32| {
                    mp.grid.rank_at(Coord {
                        tp: t,
                        cp: at.cp,
                        dp: at.replica,
                        pp: at.stage,
                    })
                };
                match at.tp {
                    Some(t) => Arc::from([rank(t)]),
                    None => (0..mp.layout.tp).map(rank).collect(),
                }
            })
            .clone()
    }
}

/// Splits a cp rank's local range `[lo, hi)` (of `n` local rows) at sequence-parallel part
/// boundaries (`shard::sp_part`), calling `emit(local_range, tp_part)`.
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
        // Part t holds local rows [ceil(t n / tp), ceil((t + 1) n / tp)).
        let t = a * tp64 / n;
        let next = ((t + 1) * n).div_ceil(tp64).min(hi);
        emit(a..next, Some(t as u32));
        a = next;
    }
}

/// CP block `q` of `2 cp` of a run of `len` rows (the whole run without cp).
fn block_rows(len: u64, cp: u64, q: u64) -> Range<u64> {
    if cp <= 1 {
        return 0..len;
    }
    let r = shard::cp_block(len as usize, 2 * cp as usize, q as usize);
    r.start as u64..r.end as u64
}

/// The cp rank holding CP block `q` of `2 cp`.
fn cp_rank(cp: u64, q: u64) -> u64 {
    if q < cp {
        q
    } else {
        2 * cp - 1 - q
    }
}

/// Row counts of the items of sample `s` on boundary `b` (rows after token merges); for a
/// boundary whose rows are a language model's sequence, one run of them.
fn item_rows(g: &ModelGraph, b: BoundaryId, s: usize) -> Vec<u64> {
    let bd = g.boundary(b);
    let merge = u64::from(bd.merge.max(1));
    match g.items(bd.origin) {
        Some(items) => items
            .items_of(s)
            .iter()
            .map(|&t| u64::from(t) / merge)
            .collect(),
        None => vec![g.boundary_rows_of_sample(b, s)],
    }
}

/// Every replica's runs of module `m` (one side of boundary `b`) in its unit `index`: an item
/// module's pass `index` (its dealt items), any other module's micro-batch `index` (its
/// samples).
fn replica_runs(
    g: &ModelGraph,
    plan: &Plan,
    b: BoundaryId,
    m: ModuleId,
    index: u32,
) -> Vec<Vec<Run>> {
    let l = &plan.module(m).layout;
    let batch = g.data().global_batch;
    let mut rows: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut rows_of = |s: u32| -> Vec<u64> {
        rows.entry(s)
            .or_insert_with(|| item_rows(g, b, s as usize))
            .clone()
    };
    if in_passes(g, m) {
        return shard::pass_deal(g, m, plan.passes(), l.dp, index)
            .into_iter()
            .map(|items| {
                items
                    .iter()
                    .map(|it| {
                        let r = rows_of(it.sample);
                        let k = it.item as usize;
                        Run {
                            sample: it.sample,
                            row0: r[..k].iter().sum(),
                            len: r.get(k).copied().unwrap_or(0),
                        }
                    })
                    .collect()
            })
            .collect();
    }
    (0..l.dp)
        .map(|d| {
            let mut runs = Vec::new();
            let samples =
                shard::replica_samples(batch, plan.micro_batches(), l.micro_batch_size, index, d);
            for s in samples {
                let mut row0 = 0;
                for len in rows_of(s) {
                    runs.push(Run {
                        sample: s,
                        row0,
                        len,
                    });
                    row0 += len;
                }
            }
            runs
        })
        .collect()
}

/// An empty map of `samples`.
fn empty(samples: Range<u32>) -> SideMap {
    samples.map(|s| (s, Vec::new())).collect()
}

fn sorted(mut map: SideMap) -> SideMap {
    for (_, v) in &mut map {
        v.sort_by_key(|o| o.rows.start);
    }
    map
}

/// Adds to `out` (the samples `keep`, in order) the owners of every run of `replicas` on
/// pipeline stage `stage` of `mp`, split by CP blocks and sequence-parallel parts.
fn own_runs(
    mp: &ModulePlan,
    stage: u32,
    replicas: &[Vec<Run>],
    keep: Range<u32>,
    sp: bool,
    out: &mut SideMap,
) {
    let l = &mp.layout;
    let cp = u64::from(l.cp);
    let pieces = if cp > 1 { 2 * cp } else { 1 };
    let mut cache = RankCache::default();
    for (d, runs) in replicas.iter().enumerate() {
        // Local rows of each cp rank over every run of the replica (the sp parts' extent).
        let mut n_local = vec![0u64; cp as usize];
        for r in runs {
            for q in 0..pieces {
                let block = block_rows(r.len, cp, q);
                n_local[cp_rank(cp, q) as usize] += block.end - block.start;
            }
        }
        let mut local = vec![0u64; cp as usize];
        for r in runs {
            for q in 0..pieces {
                let c = cp_rank(cp, q) as usize;
                let block = block_rows(r.len, cp, q);
                let (lo, n) = (local[c], block.end - block.start);
                local[c] += n;
                if n == 0 || !keep.contains(&r.sample) {
                    continue;
                }
                let entry = &mut out[(r.sample - keep.start) as usize].1;
                sp_split(lo, lo + n, n_local[c], l.tp, sp, |lr, t| {
                    let start = r.row0 + block.start + (lr.start - lo);
                    entry.push(Owned {
                        rows: start..start + (lr.end - lr.start),
                        ranks: cache.get(
                            mp,
                            RanksAt {
                                replica: d as u32,
                                stage,
                                cp: c as u32,
                                tp: t,
                            },
                        ),
                    });
                });
            }
        }
    }
}

/// Source ownership of every unit of boundary `b`: per unit, per sample, row ranges and
/// holders (the source's last pipeline stage). An item module's pass is computed once and
/// split into its micro-batches when the destination takes micro-batches.
pub fn source_maps(g: &ModelGraph, plan: &Plan, b: BoundaryId) -> Vec<SideMap> {
    let sp = plan.module(g.boundary(b).from).layout.sequence_parallel;
    source_maps_as(g, plan, b, sp)
}

/// [`source_maps`] with every tp rank holding every local row: the holders of partial sums
/// when the source's last reduction is folded into the transfer (`compose`), and the needers
/// of whole gradients when its first backward gather is.
pub fn source_maps_whole(g: &ModelGraph, plan: &Plan, b: BoundaryId) -> Vec<SideMap> {
    source_maps_as(g, plan, b, false)
}

fn source_maps_as(g: &ModelGraph, plan: &Plan, b: BoundaryId, sp: bool) -> Vec<SideMap> {
    let bd = g.boundary(b);
    let mp = plan.module(bd.from);
    let stage = mp.layout.pp - 1;
    let batch = g.data().global_batch;
    let mut out = Vec::new();
    if !in_passes(g, bd.from) {
        for j in 0..units(g, plan, b) {
            let samples = unit_samples(g, plan, b, j);
            let mut map = empty(samples.clone());
            own_runs(
                mp,
                stage,
                &replica_runs(g, plan, b, bd.from, j),
                samples,
                sp,
                &mut map,
            );
            out.push(sorted(map));
        }
        return out;
    }
    let passes = plan.passes();
    let per = batch / plan.micro_batches().max(1);
    for p in 0..passes.count() {
        let samples = passes.samples_of(batch, p);
        let mut map = empty(samples.clone());
        own_runs(
            mp,
            stage,
            &replica_runs(g, plan, b, bd.from, p),
            samples,
            sp,
            &mut map,
        );
        let map = sorted(map);
        if in_passes(g, bd.to) {
            out.push(map);
        } else {
            let mut rest = map.into_iter();
            for _ in passes.micro_batches_of(p) {
                out.push(rest.by_ref().take(per as usize).collect());
            }
        }
    }
    out
}

/// Destination needs of unit `u` of boundary `b`: per sample, row ranges and needers (the
/// destination's first pipeline stage).
pub fn destination_map(g: &ModelGraph, plan: &Plan, b: BoundaryId, u: u32) -> SideMap {
    let bd = g.boundary(b);
    let samples = unit_samples(g, plan, b, u);
    match bd.landing {
        Landing::Placeholders => placeholder_needs(g, plan, b, samples),
        Landing::Rows => {
            let mut map = empty(samples.clone());
            let runs = replica_runs(g, plan, b, bd.to, u);
            let to = plan.module(bd.to);
            own_runs(to, 0, &runs, samples, to.layout.sequence_parallel, &mut map);
            sorted(map)
        }
    }
}

/// Needs of placeholder rows: each row at its sequence position, on the replica holding its
/// sample, the cp rank holding that position and, under sequence parallel, the tp part of
/// the cp rank's local sequence.
fn placeholder_needs(g: &ModelGraph, plan: &Plan, b: BoundaryId, samples: Range<u32>) -> SideMap {
    let mp = plan.module(g.boundary(b).to);
    let l = &mp.layout;
    let batch = g.data().global_batch;
    let cp = u64::from(l.cp);
    let pieces = if cp > 1 { 2 * cp } else { 1 };
    let seq = u64::from(g.data().sequence_length);
    let blocks: Vec<Range<u64>> = (0..pieces).map(|q| block_rows(seq, cp, q)).collect();
    let len = |q: u64| blocks[q as usize].end - blocks[q as usize].start;
    // A block's first local row: the second block of a cp rank follows its first.
    let local_start = |q: u64| if q < cp { 0 } else { len(2 * cp - 1 - q) };
    let local_len = |c: u64| {
        if cp > 1 {
            len(c) + len(2 * cp - 1 - c)
        } else {
            seq
        }
    };
    let mut cache = RankCache::default();
    let mut out = empty(samples.clone());
    for s in samples.clone() {
        let (_, d, _) = shard::sample_slot(batch, plan.micro_batches(), l.micro_batch_size, s);
        let entry = &mut out[(s - samples.start) as usize].1;
        for span in placeholder_spans(g, s as usize)
            .into_iter()
            .filter(|sp| sp.boundary == b)
        {
            let (mut p, end) = (span.position, span.position + span.len);
            while p < end {
                let q = blocks.partition_point(|r| r.end <= p) as u64;
                let next = blocks[q as usize].end.min(end);
                let c = cp_rank(cp, q);
                let ls = local_start(q) + (p - blocks[q as usize].start);
                let row0 = span.first_row + (p - span.position);
                sp_split(
                    ls,
                    ls + (next - p),
                    local_len(c),
                    l.tp,
                    l.sequence_parallel,
                    |r, t| {
                        let start = row0 + (r.start - ls);
                        entry.push(Owned {
                            rows: start..start + (r.end - r.start),
                            ranks: cache.get(
                                mp,
                                RanksAt {
                                    replica: d,
                                    stage: 0,
                                    cp: c as u32,
                                    tp: t,
                                },
                            ),
                        });
                    },
                );
                p = next;
            }
        }
    }
    sorted(out)
}

/// A range of rows of one sample with its holders and its needers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub sample: u32,
    pub rows: Range<u64>,
    pub holders: Ranks,
    pub needers: Ranks,
}

/// Intersects the two maps of one unit into segments.
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
