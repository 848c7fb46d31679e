//! The correctness oracle: applies a lowered plan to tagged rows on simulated ranks and checks
//! that every needing rank ends with exactly the rows it needs (it receives nothing it does not
//! need) and that every operation only forwards rows its sender holds at that point.

use std::collections::{BTreeMap, BTreeSet};

use hetpar_ir::Rank;

use super::ownership::Segment;
use super::synth::{MicroBatchPlan, Op, Rows};

/// A row tag: row `row` of sample `sample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tag {
    sample: u32,
    row: u64,
}

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} of sample {}", self.row, self.sample)
    }
}

fn tags(rows: &[Rows]) -> impl Iterator<Item = Tag> + '_ {
    rows.iter()
        .flat_map(|(s, r)| r.clone().map(move |row| Tag { sample: *s, row }))
}

/// Checks one micro-batch's plan against its segments; returns every violation found.
pub fn check(segments: &[Segment], plan: &MicroBatchPlan) -> Vec<String> {
    let mut held: BTreeMap<Rank, BTreeSet<Tag>> = BTreeMap::new();
    let mut need: BTreeMap<Rank, BTreeSet<Tag>> = BTreeMap::new();
    for s in segments {
        for r in s.rows.clone() {
            for &h in s.holders.iter() {
                held.entry(h).or_default().insert(Tag {
                    sample: s.sample,
                    row: r,
                });
            }
            for &q in s.needers.iter() {
                need.entry(q).or_default().insert(Tag {
                    sample: s.sample,
                    row: r,
                });
            }
        }
    }
    let initially = held.clone();
    let mut errors = Vec::new();
    let receive =
        |held: &mut BTreeMap<Rank, BTreeSet<Tag>>, errors: &mut Vec<String>, dst: Rank, t: Tag| {
            let wants = need.get(&dst).is_some_and(|n| n.contains(&t));
            let had = initially.get(&dst).is_some_and(|h| h.contains(&t));
            if !wants || had {
                errors.push(format!(
                    "rank {dst} receives row {t} it does not need or already held"
                ));
            }
            held.entry(dst).or_default().insert(t);
        };
    let phase = |op: &Op| matches!(op, Op::Send { .. } | Op::Reduce { .. });
    for op in plan
        .ops
        .iter()
        .filter(|o| phase(o))
        .chain(plan.ops.iter().filter(|o| !phase(o)))
    {
        match op {
            Op::Send { src, dst, rows } => {
                for t in tags(rows) {
                    if !held.get(src).is_some_and(|h| h.contains(&t)) {
                        errors.push(format!("rank {src} sends row {t} it does not hold"));
                    }
                    receive(&mut held, &mut errors, *dst, t);
                }
            }
            Op::Broadcast { root, group, rows } => {
                for t in tags(rows) {
                    if !held.get(root).is_some_and(|h| h.contains(&t)) {
                        errors.push(format!("broadcast root {root} lacks row {t}"));
                    }
                    for &q in group.iter().filter(|&&q| q != *root) {
                        receive(&mut held, &mut errors, q, t);
                    }
                }
            }
            Op::AllGather { group, parts } => {
                for (owner, part) in parts {
                    for t in tags(part) {
                        if !held.get(owner).is_some_and(|h| h.contains(&t)) {
                            errors
                                .push(format!("all-gather member {owner} lacks its part row {t}"));
                        }
                        for &q in group.iter().filter(|&&q| q != *owner) {
                            receive(&mut held, &mut errors, q, t);
                        }
                    }
                }
            }
            Op::Reduce { .. } => errors.push("a reduction among whole rows".into()),
        }
    }
    for (q, n) in &need {
        let h = held.get(q).cloned().unwrap_or_default();
        let missing = n.difference(&h).count();
        if missing > 0 {
            errors.push(format!("rank {q} misses {missing} rows it needs"));
        }
    }
    errors
}

/// Checks a folded forward plan: the segments' holders hold partial sums, and each rank that
/// needs a row must receive its sum exactly once, from a `Reduce` over every holder of the
/// row's partials (one missing, and the sum is wrong).
pub fn check_reduce(segments: &[Segment], plan: &MicroBatchPlan) -> Vec<String> {
    let mut partials: BTreeMap<Tag, BTreeSet<Rank>> = BTreeMap::new();
    let mut need: BTreeMap<Rank, BTreeSet<Tag>> = BTreeMap::new();
    for s in segments {
        for row in s.rows.clone() {
            let t = Tag {
                sample: s.sample,
                row,
            };
            partials.entry(t).or_default().extend(s.holders.iter());
            for &q in s.needers.iter() {
                need.entry(q).or_default().insert(t);
            }
        }
    }
    let mut got: BTreeMap<Rank, BTreeSet<Tag>> = BTreeMap::new();
    let mut errors = Vec::new();
    for op in &plan.ops {
        let Op::Reduce { srcs, dst, rows } = op else {
            errors.push("a folded forward moves whole rows".into());
            continue;
        };
        let srcs: BTreeSet<Rank> = srcs.iter().copied().collect();
        for t in tags(rows) {
            if partials.get(&t) != Some(&srcs) {
                errors.push(format!(
                    "row {t} summed over {srcs:?}, not over its partials' holders"
                ));
            }
            if !need.get(dst).is_some_and(|n| n.contains(&t)) {
                errors.push(format!("rank {dst} receives row {t} it does not need"));
            }
            if !got.entry(*dst).or_default().insert(t) {
                errors.push(format!("rank {dst} receives row {t} twice"));
            }
        }
    }
    for (q, n) in &need {
        let missing = n
            .difference(&got.get(q).cloned().unwrap_or_default())
            .count();
        if missing > 0 {
            errors.push(format!("rank {q} misses {missing} rows it needs"));
        }
    }
    errors
}
