//! The sharding arithmetic, in one place: which samples a data-parallel replica holds in a
//! micro-batch, which micro-batches an encoder pass covers, which items an encoder replica
//! holds in a pass, the context-parallel blocks of a sequence and the sequence-parallel parts
//! of a rank's rows. The planner, the cost model and the runtime all call these.
//!
//! - **Micro-batches** (the language model and every module after it): micro-batch j is
//!   samples `[j B/M, (j+1) B/M)`; replica d takes the d-th slice of `micro_batch_size`.
//! - **Encoder passes** (encoders and projectors): pass p covers the language model's
//!   micro-batches `[p k, min((p+1) k, M))`, k being the pass size (the plan's
//!   `schedule.encoder_chunk`). The items of those samples, in (sample, item) order, are
//!   dealt to the module's replicas in contiguous runs balanced by tokens: replica d's run ends at the item boundary nearest to
//!   (d+1) T / dp of the pass's T tokens. A replica may get none; Megatron MIMO's rule
//!   (`mbs · llm_dp / enc_dp` whole samples each) is the case of equal items that divide.
//! - **Context parallel**: a sequence of n splits into 2 cp blocks, rank c holding blocks c and
//!   2 cp - 1 - c; with a remainder, block i takes `[i n / 2cp, (i+1) n / 2cp)` (floors).
//! - **Sequence parallel**: n rows split into tp contiguous parts, part t holding
//!   `[ceil(t n / tp), ceil((t+1) n / tp))`.

use std::ops::Range;

use crate::model::{ItemTokens, ModelGraph};
use crate::ModuleId;

/// Samples of micro-batch `j` when the global batch `batch` splits into `micro_batches`.
pub fn micro_batch_samples(batch: u32, micro_batches: u32, j: u32) -> Range<u32> {
    let per = batch / micro_batches.max(1);
    j * per..(j + 1) * per
}

/// Samples of replica `d` in micro-batch `j` (`mbs` samples per replica).
pub fn replica_samples(batch: u32, micro_batches: u32, mbs: u32, j: u32, d: u32) -> Range<u32> {
    let start = micro_batch_samples(batch, micro_batches, j).start + d * mbs;
    start..start + mbs
}

/// Where sample `s` sits: (micro-batch, replica, index within the replica's slice).
pub fn sample_slot(batch: u32, micro_batches: u32, mbs: u32, s: u32) -> (u32, u32, u32) {
    let per = (batch / micro_batches.max(1)).max(1);
    let within = s % per;
    let mbs = mbs.max(1);
    (s / per, within / mbs, within % mbs)
}

/// The encoder passes of a step: `micro_batches` language-model micro-batches, `per_pass` of
/// them per pass (the pass size k; the last pass may cover fewer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Passes {
    pub micro_batches: u32,
    pub per_pass: u32,
}

impl Passes {
    pub fn new(micro_batches: u32, per_pass: u32) -> Self {
        Passes {
            micro_batches: micro_batches.max(1),
            per_pass: per_pass.clamp(1, micro_batches.max(1)),
        }
    }

    /// Passes per step.
    pub fn count(&self) -> u32 {
        self.micro_batches.div_ceil(self.per_pass)
    }

    /// The language-model micro-batches pass `p` covers.
    pub fn micro_batches_of(&self, p: u32) -> Range<u32> {
        let k = self.per_pass;
        (p * k).min(self.micro_batches)..((p + 1) * k).min(self.micro_batches)
    }

    /// The pass that covers micro-batch `j`.
    pub fn pass_of(&self, j: u32) -> u32 {
        j / self.per_pass
    }

    /// The samples pass `p` covers.
    pub fn samples_of(&self, batch: u32, p: u32) -> Range<u32> {
        let js = self.micro_batches_of(p);
        let per = batch / self.micro_batches;
        js.start * per..js.end * per
    }
}

/// One item (image, clip) of one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ItemRef {
    pub sample: u32,
    /// Its index among its sample's items.
    pub item: u32,
    /// Its tokens at the encoder.
    pub tokens: u32,
}

/// The items of `samples`, in (sample, item) order.
pub fn items_of_samples(items: &ItemTokens, samples: Range<u32>) -> Vec<ItemRef> {
    let mut out = Vec::new();
    for s in samples {
        for (i, t) in items.items_of(s as usize).into_iter().enumerate() {
            out.push(ItemRef {
                sample: s,
                item: i as u32,
                tokens: t,
            });
        }
    }
    out
}

/// Deals `items` (in order) to `dp` replicas as contiguous runs balanced by tokens: replica
/// d's run ends at the item boundary whose running token count is nearest to (d+1) T / dp
/// (ties to the earlier boundary). Returns each replica's index range into `items`.
pub fn deal(items: &[ItemRef], dp: u32) -> Vec<Range<usize>> {
    let dp = dp.max(1) as usize;
    let total: u64 = items.iter().map(|i| u64::from(i.tokens)).sum();
    // prefix[i]: tokens of items[..i].
    let mut prefix = Vec::with_capacity(items.len() + 1);
    prefix.push(0u64);
    for it in items {
        prefix.push(prefix.last().copied().unwrap_or(0) + u64::from(it.tokens));
    }
    let mut out = Vec::with_capacity(dp);
    let mut start = 0usize;
    for d in 0..dp {
        let end = if d + 1 == dp {
            items.len()
        } else {
            // Target (d+1) T / dp, compared exactly as (d+1) T against prefix x dp.
            let target = (d as u128 + 1) * u128::from(total);
            let dpx = dp as u128;
            let mut best = start;
            let mut best_err = u128::MAX;
            for (i, &p) in prefix.iter().enumerate().skip(start) {
                let v = u128::from(p) * dpx;
                let err = v.abs_diff(target);
                if err < best_err {
                    best = i;
                    best_err = err;
                }
                if v >= target {
                    break;
                }
            }
            best
        };
        out.push(start..end);
        start = end;
    }
    out
}

/// The items each replica of a module with `dp` replicas processes in pass `p`, by replica;
/// empty for a module that processes no encoder items (`ModelGraph::item_origin`).
pub fn pass_deal(
    model: &ModelGraph,
    m: ModuleId,
    passes: Passes,
    dp: u32,
    p: u32,
) -> Vec<Vec<ItemRef>> {
    let Some(items) = model.item_origin(m).and_then(|o| model.items(o)) else {
        return vec![Vec::new(); dp.max(1) as usize];
    };
    let all = items_of_samples(items, passes.samples_of(model.data().global_batch, p));
    deal(&all, dp)
        .into_iter()
        .map(|r| all[r].to_vec())
        .collect()
}

/// The replica that holds item `(sample, item)` in its pass, per `pass_items`.
pub fn item_replica(
    model: &ModelGraph,
    m: ModuleId,
    passes: Passes,
    dp: u32,
    sample: u32,
    item: u32,
) -> Option<u32> {
    let origin = model.item_origin(m)?;
    let items = model.items(origin)?;
    let batch = model.data().global_batch;
    let (j, _, _) = sample_slot(batch, passes.micro_batches, 1, sample);
    let p = passes.pass_of(j);
    let all = items_of_samples(items, passes.samples_of(batch, p));
    let at = all
        .iter()
        .position(|i| i.sample == sample && i.item == item)?;
    deal(&all, dp)
        .iter()
        .position(|r| r.contains(&at))
        .map(|d| d as u32)
}

/// Context-parallel block `i` of a sequence of `n` split into `blocks` blocks (floors, so
/// remainders spread).
pub fn cp_block(n: usize, blocks: usize, i: usize) -> Range<usize> {
    let blocks = blocks.max(1);
    i * n / blocks..(i + 1) * n / blocks
}

/// The positions context-parallel rank `c` of `cp` holds of a sequence of `n`, in local order:
/// blocks c and 2 cp - 1 - c of 2 cp.
pub fn cp_positions(n: usize, cp: usize, c: usize) -> Vec<usize> {
    if cp <= 1 {
        return (0..n).collect();
    }
    cp_block(n, 2 * cp, c)
        .chain(cp_block(n, 2 * cp, 2 * cp - 1 - c))
        .collect()
}

/// Part `t` of `n` rows split into `tp` contiguous sequence-parallel parts.
pub fn sp_part(n: usize, tp: usize, t: usize) -> Range<usize> {
    let tp = tp.max(1);
    (t * n).div_ceil(tp)..((t + 1) * n).div_ceil(tp)
}

/// The positions cp rank `c` holds of an item of `n` rows led by `lead` rows that leave no
/// output row (CLIP's class row): the lead rows take positions `0..lead`, held by the rank
/// holding the item's first row (its first local position), right before it; the item's own
/// rows keep the holders `cp_positions(n, ..)` gives them, shifted by `lead`, so an encoder's
/// output rows are held where its boundary expects them.
pub fn cp_positions_led(n: usize, lead: usize, cp: usize, c: usize) -> Vec<usize> {
    let own = cp_positions(n, cp, c);
    let mut out = Vec::with_capacity(own.len() + lead);
    if own.first() == Some(&0) || (n == 0 && c == 0) {
        out.extend(0..lead);
    }
    out.extend(own.iter().map(|p| p + lead));
    out
}

/// Part `t` of `tp` of a cp rank's local rows when lead rows sit among them: `n` other rows
/// split as `sp_part(n, tp, t)`, and one lead row before each index of `leads` (sorted, into
/// the other rows), held by the part holding the row it leads (the last part when it leads
/// none). The range is in the local numbering with the lead rows counted.
pub fn sp_part_led(n: usize, tp: usize, t: usize, leads: &[usize]) -> Range<usize> {
    let plain = sp_part(n, tp, t);
    let before = |i: usize| leads.partition_point(|&x| x < i);
    let end = if t + 1 >= tp.max(1) {
        n + leads.len()
    } else {
        plain.end + before(plain.end)
    };
    plain.start + before(plain.start)..end
}

/// Part `i` of `n` split into `parts` contiguous parts (floors, so remainders spread): a
/// weight's rows or columns on tensor-parallel rank `i` (a vocabulary's rows too), and a
/// tensor's flat values in the distributed optimizer's shard `i`. Checkpoints reshard by it.
pub fn even_part(n: usize, parts: usize, i: usize) -> Range<usize> {
    let parts = parts.max(1);
    i * n / parts..(i + 1) * n / parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_rows_move_no_other_rows_holder_and_sit_with_the_first_row() {
        for n in [0usize, 1, 3, 7, 16, 17] {
            for cp in [1usize, 2, 3] {
                let held: Vec<Vec<usize>> =
                    (0..cp).map(|c| cp_positions_led(n, 1, cp, c)).collect();
                // Every position 0..=n once; the item's rows where they are without a lead.
                let mut all: Vec<usize> = held.iter().flatten().copied().collect();
                all.sort_unstable();
                assert_eq!(all, (0..=n).collect::<Vec<_>>(), "n {n} cp {cp}");
                for (c, h) in held.iter().enumerate() {
                    let own: Vec<usize> = h.iter().filter(|&&p| p > 0).map(|p| p - 1).collect();
                    assert_eq!(own, cp_positions(n, cp, c), "n {n} cp {cp} rank {c}");
                }
                let holder = held.iter().position(|h| h.contains(&0)).unwrap();
                assert_eq!(held[holder][0], 0);
                if n > 0 {
                    assert_eq!(held[holder].get(1), Some(&1), "the lead precedes row 0");
                }
            }
        }
    }

    #[test]
    fn sequence_parallel_parts_with_leads_keep_the_other_rows_parts() {
        // 10 rows, leads before rows 0, 4 and 10 (an item with none here), tp 3.
        let leads = [0usize, 4, 10];
        let (n, tp) = (10usize, 3usize);
        let parts: Vec<Range<usize>> = (0..tp).map(|t| sp_part_led(n, tp, t, &leads)).collect();
        assert_eq!(parts[0].start, 0);
        assert_eq!(parts[tp - 1].end, n + leads.len());
        for w in parts.windows(2) {
            assert_eq!(w[0].end, w[1].start, "contiguous");
        }
        // Row i sits at i + (leads before or at it); its part is its part without leads.
        for i in 0..n {
            let at = i + leads.partition_point(|&x| x <= i);
            let t = parts.iter().position(|p| p.contains(&at)).unwrap();
            assert!(sp_part(n, tp, t).contains(&i), "row {i}");
        }
        // Each lead sits right before its row, in that row's part.
        for (k, &x) in leads.iter().enumerate() {
            let at = x + k;
            let t = parts.iter().position(|p| p.contains(&at)).unwrap();
            if x < n {
                assert!(parts[t].contains(&(at + 1)), "lead {k} with its row");
            } else {
                assert_eq!(t, tp - 1);
            }
        }
    }

    #[test]
    fn even_parts_tile_with_remainders_spread() {
        let parts: Vec<_> = (0..3).map(|i| even_part(10, 3, i)).collect();
        assert_eq!(parts, vec![0..3, 3..6, 6..10]);
        assert_eq!(even_part(7, 1, 0), 0..7);
    }

    fn uniform(samples: u32, per: u32, tokens: u32) -> Vec<ItemRef> {
        items_of_samples(&ItemTokens::Fixed { items: per, tokens }, 0..samples)
    }

    #[test]
    fn equal_items_that_divide_deal_whole_samples_as_mimo_does() {
        // 4 samples x 3 items over 2 replicas: samples 0-1 and 2-3.
        let items = uniform(4, 3, 100);
        let runs = deal(&items, 2);
        assert_eq!(runs, vec![0..6, 6..12]);
        assert_eq!(items[runs[1].start].sample, 2);
    }

    #[test]
    fn more_replicas_than_items_leave_some_replicas_empty() {
        let items = uniform(1, 3, 64);
        let runs = deal(&items, 5);
        let sizes: Vec<usize> = runs.iter().map(|r| r.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 3);
        assert!(sizes.iter().all(|&n| n <= 1), "{sizes:?}");
        assert_eq!(sizes.iter().filter(|&&n| n == 0).count(), 2);
    }

    #[test]
    fn uneven_items_are_balanced_by_tokens_not_by_count() {
        // One big item, then six small ones: the big one alone is half the tokens.
        let tokens = [600u32, 100, 100, 100, 100, 100, 100];
        let items: Vec<ItemRef> = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| ItemRef {
                sample: 0,
                item: i as u32,
                tokens: t,
            })
            .collect();
        assert_eq!(deal(&items, 2), vec![0..1, 1..7]);
    }

    #[test]
    fn runs_are_contiguous_and_cover_every_item_once() {
        for n in 0..20u32 {
            for dp in 1..9u32 {
                let items = uniform(n, 1, 7 + n % 3);
                let runs = deal(&items, dp);
                assert_eq!(runs.len(), dp as usize);
                let mut next = 0;
                for r in &runs {
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, items.len());
            }
        }
    }

    #[test]
    fn passes_cover_every_micro_batch_once_with_a_short_last_pass() {
        let p = Passes::new(10, 4);
        assert_eq!(p.count(), 3);
        assert_eq!(p.micro_batches_of(2), 8..10);
        assert_eq!(p.pass_of(9), 2);
        assert_eq!(p.samples_of(20, 1), 8..16);
    }

    #[test]
    fn cp_blocks_pair_the_ends_and_keep_remainders() {
        assert_eq!(cp_positions(8, 2, 0), vec![0, 1, 6, 7]);
        assert_eq!(cp_positions(8, 2, 1), vec![2, 3, 4, 5]);
        // 10 over 4 blocks: 0..2, 2..5, 5..7, 7..10; every position exactly once.
        let mut all: Vec<usize> = (0..2).flat_map(|c| cp_positions(10, 2, c)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn sequence_parallel_parts_cover_the_rows_once() {
        for n in 0..17 {
            for tp in 1..6 {
                let mut next = 0;
                for t in 0..tp {
                    let r = sp_part(n, tp, t);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
