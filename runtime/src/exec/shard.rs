//! Which rows of a micro-batch a rank holds in a module: the convention of `docs/boundary.md`,
//! the same the boundary synthesis assumes (`planner/src/boundary/ownership.rs`), so the
//! synthesized row lists address exactly the rows the runtime holds.
//!
//! A module's attention units ("sequences") are an encoder's images, a projector's samples
//! (its rows, no attention) and the language model's samples. With cp > 1 each sequence splits
//! into 2 cp equal chunks and cp rank c holds chunks c and 2 cp - 1 - c, in that order; a cp
//! rank's local rows are its chunks of every sequence, sequence after sequence. Under sequence
//! parallelism the local rows split into tp contiguous parts (part t: local rows i with
//! floor(i tp / n) = t): over all local rows for encoders and projectors, per sample for the
//! language model. Without it every tp rank holds every local row.

use std::ops::Range;

use crate::reference::batch::Layout;
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
}

/// The rows of one micro-batch replica on one (cp, tp) coordinate.
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

/// The positions cp rank `c` holds of a sequence of `n`, in local order.
fn cp_positions(n: usize, cp: usize, c: usize) -> Vec<usize> {
    if cp == 1 {
        return (0..n).collect();
    }
    let chunk = n / (2 * cp);
    let q2 = 2 * cp - 1 - c;
    (c * chunk..(c + 1) * chunk)
        .chain(q2 * chunk..(q2 + 1) * chunk)
        .collect()
}

/// Part `t` of `n` rows split into `tp` contiguous parts.
fn sp_part(n: usize, tp: usize, t: usize) -> Range<usize> {
    (t * n).div_ceil(tp)..((t + 1) * n).div_ceil(tp)
}

/// The sharding of samples `samples` of a module.
#[allow(clippy::too_many_arguments)]
pub fn sharding(
    unit: Unit,
    layout: &Layout,
    seq_len: usize,
    samples: Range<u32>,
    cp: usize,
    c: usize,
    tp: usize,
    t: usize,
    sp: bool,
) -> Sharding {
    // (sample, length, first boundary row of the sequence in its sample, first patch row).
    let mut seqs: Vec<(u32, usize, u64, u32)> = Vec::new();
    let items = match unit {
        Unit::Encoder(src) | Unit::Projector(src) => layout.encoder(src),
        Unit::Llm => Default::default(),
    };
    for s in samples {
        let images = items
            .sample_images
            .get(s as usize)
            .cloned()
            .unwrap_or_default();
        match unit {
            Unit::Encoder(_) => {
                let mut row = 0u64;
                for i in images {
                    let r = &items.images[i];
                    seqs.push((s, r.len(), row, r.start as u32));
                    row += r.len() as u64;
                }
            }
            Unit::Projector(_) => {
                let n: usize = images.map(|i| items.images[i].len()).sum();
                seqs.push((s, n, 0, 0));
            }
            Unit::Llm => seqs.push((s, seq_len, 0, 0)),
        }
    }
    let per_cp: Vec<Vec<RowRef>> = (0..cp)
        .map(|cc| {
            let mut rows = Vec::new();
            for (k, &(sample, n, row0, patch0)) in seqs.iter().enumerate() {
                for pos in cp_positions(n, cp, cc) {
                    rows.push(RowRef {
                        sample,
                        seq: k as u32,
                        pos: pos as u32,
                        row: row0 + pos as u64,
                        patch: patch0 + pos as u32,
                    });
                }
            }
            rows
        })
        .collect();
    let n = per_cp[c].len();
    let parts: Vec<Vec<Range<usize>>> = (0..tp)
        .map(|tt| {
            if !sp || tp == 1 {
                std::iter::once(0..n).collect()
            } else if unit == Unit::Llm {
                let per = seq_len / cp;
                (0..seqs.len())
                    .map(|k| {
                        let r = sp_part(per, tp, tt);
                        k * per + r.start..k * per + r.end
                    })
                    .collect()
            } else {
                vec![sp_part(n, tp, tt)]
            }
        })
        .collect();
    Sharding {
        seq_len: seqs.iter().map(|s| s.1).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_chunks_pair_the_ends_of_the_sequence() {
        assert_eq!(cp_positions(8, 2, 0), vec![0, 1, 6, 7]);
        assert_eq!(cp_positions(8, 2, 1), vec![2, 3, 4, 5]);
        assert_eq!(cp_positions(5, 1, 0), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn sequence_parallel_parts_cover_the_rows_once() {
        for n in 0..20 {
            for tp in 1..5 {
                let all: Vec<usize> = (0..tp).flat_map(|t| sp_part(n, tp, t)).collect();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n {n} tp {tp}");
                for t in 0..tp {
                    for i in sp_part(n, tp, t) {
                        assert_eq!(i * tp / n, t, "row {i} of {n} in part {t} of {tp}");
                    }
                }
            }
        }
    }
}
