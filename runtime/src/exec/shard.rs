//! Which rows a rank holds in a module's pass: the convention of `docs/boundary.md`, the same
//! the boundary synthesis assumes (`planner/src/boundary/ownership.rs`), so the synthesized
//! row lists address exactly the rows the runtime holds. The arithmetic is
//! `hetpar_ir::shard`'s, the planner's own.
//!
//! What a replica processes: the language model, micro-batch j's samples of its replica
//! (`shard::replica_samples`); an encoder or projector, in encoder pass p, the items
//! `shard::deal` gives it of the pass's items (the batch's own item lists, in (sample, item)
//! order). Its attention units ("sequences") are an encoder's items, a projector's items (its
//! rows, no attention) and the language model's samples. With cp > 1 each sequence splits into
//! the 2 cp CP blocks of `shard::cp_positions`, cp rank c holding blocks c and 2 cp - 1 - c, in
//! that order; a cp rank's local rows are its blocks of every sequence, sequence after
//! sequence. Under sequence parallelism the local rows split into the tp parts of
//! `shard::sp_part`: over all local rows for encoders and projectors, per sample for the
//! language model. Without it every tp rank holds every local row.

use std::ops::Range;

use hetpar_ir::shard::{self, ItemRef, Passes};

use crate::reference::batch::EncoderLayout;
use crate::reference::params::Source;

/// What a module computes, which decides its sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Encoder(Source),
    /// The projector of an encoder's rows.
    Projector(Source),
    Llm,
}

/// One local row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowRef {
    pub sample: u32,
    /// Its sequence, by index into [`Sharding::seq_len`].
    pub seq: u32,
    /// Its position in the sequence.
    pub pos: u32,
    /// Its number among its sample's boundary rows (items in order); for the language model,
    /// its position.
    pub row: u64,
    /// An encoder row's patch row in the batch.
    pub patch: u32,
    /// A row leading its item that leaves no output row (CLIP's class row, position 0): it has
    /// no boundary row and no patch.
    pub lead: bool,
}

/// The rows of one replica's pass on one (cp, tp) coordinate.
#[derive(Clone, Debug)]
pub struct Sharding {
    pub seq_len: Vec<usize>,
    /// Every cp rank's local rows, in local order.
    pub per_cp: Vec<Vec<RowRef>>,
    /// This cp rank.
    pub c: usize,
    /// Per tp rank, the ranges of this cp rank's local rows it holds.
    pub parts: Vec<Vec<Range<usize>>>,
    /// This tp rank.
    pub t: usize,
}

/// What one replica processes in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work {
    /// The language model's samples of a micro-batch.
    Samples(Range<u32>),
    /// An encoder's or projector's items of an encoder pass.
    Items(Vec<ItemRef>),
}

/// The items replica `d` of `dp` processes in pass `p` of a batch of `batch` samples: the
/// pass's items, tokens from `items` (the batch's own), dealt as `shard::deal` deals them.
pub fn pass_items(
    items: &EncoderLayout,
    passes: Passes,
    batch: u32,
    dp: u32,
    d: u32,
    p: u32,
) -> Vec<ItemRef> {
    let mut all = Vec::new();
    for s in passes.samples_of(batch, p) {
        let images = items
            .sample_images
            .get(s as usize)
            .cloned()
            .unwrap_or_default();
        for (k, i) in images.enumerate() {
            all.push(ItemRef {
                sample: s,
                item: k as u32,
                tokens: items.images[i].len() as u32,
            });
        }
    }
    let runs = shard::deal(&all, dp);
    runs.get(d as usize)
        .map_or_else(Vec::new, |r| all[r.clone()].to_vec())
}

/// A sequence: (sample, length, first boundary row in its sample, first patch row).
type Seq = (u32, usize, u64, u32);

fn sequences(unit: Unit, items: Option<&EncoderLayout>, seq_len: usize, work: &Work) -> Vec<Seq> {
    match (work, items) {
        (Work::Samples(samples), _) => samples.clone().map(|s| (s, seq_len, 0, 0)).collect(),
        (Work::Items(dealt), Some(items)) => dealt
            .iter()
            .map(|it| {
                let images = items.sample_images[it.sample as usize].clone();
                let first = images.start + it.item as usize;
                let row0: usize = (images.start..first).map(|i| items.images[i].len()).sum();
                let r = &items.images[first];
                let patch0 = if matches!(unit, Unit::Encoder(_)) {
                    r.start as u32
                } else {
                    0
                };
                (it.sample, r.len(), row0 as u64, patch0)
            })
            .collect(),
        (Work::Items(_), None) => Vec::new(),
    }
}

/// A rank's place in a module: cp rank `c` of `cp`, tp rank `t` of `tp`, with or without
/// sequence parallelism.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    pub cp: usize,
    pub c: usize,
    pub tp: usize,
    pub t: usize,
    pub sp: bool,
}

/// The sharding of `work` of a module computing `unit` (`items`: its encoder's items in the
/// batch, for an encoder or projector) at `place`.
pub fn sharding(
    unit: Unit,
    items: Option<&EncoderLayout>,
    seq_len: usize,
    work: &Work,
    place: Place,
) -> Sharding {
    sharding_led(unit, items, seq_len, work, place, 0)
}

/// [`sharding`] of an encoder whose items each lead with `lead` rows that leave no output row
/// (CLIP's class row): they take positions `0..lead` and sit with the item's first row
/// (`shard::cp_positions_led`, `shard::sp_part_led`); every other row is held where
/// [`sharding`] holds it.
pub fn sharding_led(
    unit: Unit,
    items: Option<&EncoderLayout>,
    seq_len: usize,
    work: &Work,
    place: Place,
    lead: usize,
) -> Sharding {
    let Place { cp, c, tp, t, sp } = place;
    let lead = if matches!(unit, Unit::Encoder(_)) {
        lead
    } else {
        0
    };
    let seqs = sequences(unit, items, seq_len, work);
    let per_cp: Vec<Vec<RowRef>> = (0..cp)
        .map(|cc| {
            let mut rows = Vec::new();
            for (k, &(sample, n, row0, patch0)) in seqs.iter().enumerate() {
                for pos in shard::cp_positions_led(n, lead, cp, cc) {
                    let own = pos.checked_sub(lead);
                    rows.push(RowRef {
                        sample,
                        seq: k as u32,
                        pos: pos as u32,
                        row: own.map_or(u64::MAX, |p| row0 + p as u64),
                        patch: own.map_or(u32::MAX, |p| patch0 + p as u32),
                        lead: own.is_none(),
                    });
                }
            }
            rows
        })
        .collect();
    // Where the lead rows sit among the other local rows.
    let mut leads = Vec::new();
    let mut plain = 0;
    for r in &per_cp[c] {
        if r.lead {
            leads.push(plain);
        } else {
            plain += 1;
        }
    }
    let n = per_cp[c].len();
    // The language model's local rows of each sample (contiguous, sample after sample).
    let mut per_seq = Vec::with_capacity(seqs.len());
    let mut at = 0;
    for &(_, len, _, _) in &seqs {
        let k = shard::cp_positions(len, cp, c).len();
        per_seq.push(at..at + k);
        at += k;
    }
    let parts: Vec<Vec<Range<usize>>> = (0..tp)
        .map(|tt| {
            if !sp || tp == 1 {
                std::iter::once(0..n).collect()
            } else if unit == Unit::Llm {
                per_seq
                    .iter()
                    .map(|r| {
                        let p = shard::sp_part(r.len(), tp, tt);
                        r.start + p.start..r.start + p.end
                    })
                    .collect()
            } else {
                vec![shard::sp_part_led(plain, tp, tt, &leads)]
            }
        })
        .collect();
    Sharding {
        seq_len: seqs.iter().map(|s| s.1 + lead).collect(),
        per_cp,
        c,
        parts,
        t,
    }
}

impl Sharding {
    /// This cp rank's local rows.
    pub fn local(&self) -> &[RowRef] {
        &self.per_cp[self.c]
    }

    /// The local row indices this tp rank holds, in order.
    pub fn mine_indices(&self) -> Vec<usize> {
        self.parts[self.t].iter().flat_map(Clone::clone).collect()
    }

    /// The rows this tp rank holds, in order.
    pub fn mine(&self) -> Vec<RowRef> {
        let local = self.local();
        self.mine_indices().into_iter().map(|i| local[i]).collect()
    }

    /// Per sequence, the local row indices that belong to it, in local order.
    pub fn seq_local_rows(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.seq_len.len()];
        for (i, r) in self.local().iter().enumerate() {
            out[r.seq as usize].push(i);
        }
        out
    }
}
