//! What a module's task computes: its unit (a language-model micro-batch or an encoder pass)
//! and each data-parallel replica's share of it, from `hetpar_ir::shard`.
//!
//! - Modules processing encoder items (`ModelGraph::item_origin`: encoders, projectors) run
//!   P encoder passes; replica d's work in pass p is its dealt items (`shard::pass_deal`):
//!   rows = tokens / merge (1 at the encoder; the token merges of the projectors on the way
//!   and its own for a projector), and for an encoder each item's own attention pairs.
//! - The language model and every module after it run M micro-batches; replica d's work in
//!   micro-batch j is its samples (`shard::replica_samples`).

use std::ops::Range;

use hetpar_ir::model::{AttentionKind, Body, ModelGraph};
use hetpar_ir::shard::{self, ItemRef, Passes};
use hetpar_ir::{ModuleId, Plan};

use crate::compute::Work;

/// What the unit index of a module's tasks counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// Language-model micro-batches (the language model and what follows it).
    MicroBatch,
    /// Encoder passes (encoders and projectors).
    Pass,
}

/// A unit's work as a map key: its rows and attention pairs, bit for bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WorkKey {
    rows: u64,
    pairs: u64,
}

impl WorkKey {
    pub fn of(w: Work) -> Self {
        WorkKey {
            rows: w.rows.to_bits(),
            pairs: w.pairs.to_bits(),
        }
    }
}

/// The items of one encoder pass, in (sample, item) order, and each replica's run of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassItems {
    pub items: Vec<ItemRef>,
    /// Replica d holds `items[runs[d]]`.
    pub runs: Vec<Range<usize>>,
}

/// The units of one module and the work of every replica in each.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleUnits {
    pub kind: UnitKind,
    /// Units per step: M micro-batches or P passes.
    pub count: u32,
    pub dp: u32,
    /// Origin tokens per row of this module (item modules; 1 otherwise).
    pub merge: u32,
    /// Work of replica d in unit u, at `u * dp + d`.
    work: Vec<Work>,
    /// Per replica, the largest rows and the largest pairs of any of its units (each taken
    /// apart: a bound on every unit's activations and buffers).
    peak: Vec<Work>,
    /// Item modules: the items of every pass.
    pub passes: Vec<PassItems>,
}

impl ModuleUnits {
    /// Work of replica `d` in unit `u` (none outside the step).
    pub fn work(&self, u: u32, d: u32) -> Work {
        self.work
            .get((u * self.dp + d) as usize)
            .copied()
            .unwrap_or_default()
    }

    /// The largest rows and, apart, the largest pairs replica `d` has in one unit.
    pub fn peak(&self, d: u32) -> Work {
        self.peak.get(d as usize).copied().unwrap_or_default()
    }

    fn new(kind: UnitKind, count: u32, dp: u32, merge: u32, work: Vec<Work>) -> Self {
        let mut peak = vec![Work::default(); dp as usize];
        for (i, w) in work.iter().enumerate() {
            let p = &mut peak[i % dp.max(1) as usize];
            p.rows = p.rows.max(w.rows);
            p.pairs = p.pairs.max(w.pairs);
        }
        ModuleUnits {
            kind,
            count,
            dp,
            merge,
            work,
            peak,
            passes: Vec::new(),
        }
    }
}

/// Attention (query, key) pairs of a sequence of `n` (causal: unmasked only).
pub fn pairs_of(n: f64, kind: AttentionKind) -> f64 {
    match kind {
        AttentionKind::Bidirectional => n * n,
        AttentionKind::Causal => n * (n + 1.0) / 2.0,
    }
}

/// Origin tokens per row of item module `m`: the incoming boundary's merge times its own.
fn item_merge(model: &ModelGraph, m: ModuleId) -> u32 {
    let own = model.module(m).token_merge();
    let before = model
        .incoming(m)
        .first()
        .map_or(1, |&b| model.boundary(b).merge);
    before.max(1) * own.max(1)
}

/// The units of every module of `plan`, in module order.
pub fn units(model: &ModelGraph, plan: &Plan) -> Vec<ModuleUnits> {
    plan.modules()
        .iter()
        .map(|mp| module_units(model, plan, mp.module))
        .collect()
}

/// One module's units and every replica's work in each.
pub fn module_units(model: &ModelGraph, plan: &Plan, m: ModuleId) -> ModuleUnits {
    if model.item_origin(m).is_some() {
        pass_units(model, m, plan.passes(), plan.module(m).layout.dp)
    } else {
        micro_batch_units(model, plan, m)
    }
}

/// Work of the items `items` at module `m`, `merge` origin tokens per row.
pub fn items_work(model: &ModelGraph, m: ModuleId, merge: u32, items: &[ItemRef]) -> Work {
    let attention = match &model.module(m).body {
        Body::Encoder { transformer, .. } => Some(transformer.attention),
        _ => None,
    };
    items.iter().fold(Work::default(), |a, it| Work {
        rows: a.rows + f64::from(it.tokens / merge.max(1)),
        pairs: a.pairs + attention.map_or(0.0, |k| pairs_of(f64::from(it.tokens), k)),
    })
}

/// The items of pass `p` of item module `m` with `dp` replicas, and each replica's run.
pub fn pass_items(model: &ModelGraph, m: ModuleId, passes: Passes, dp: u32, p: u32) -> PassItems {
    let dealt = shard::pass_deal(model, m, passes, dp, p);
    let mut out = PassItems::default();
    for d in dealt {
        let start = out.items.len();
        out.items.extend(d);
        out.runs.push(start..out.items.len());
    }
    out
}

fn pass_units(model: &ModelGraph, m: ModuleId, passes: Passes, dp: u32) -> ModuleUnits {
    let merge = item_merge(model, m);
    let all: Vec<PassItems> = (0..passes.count())
        .map(|p| pass_items(model, m, passes, dp, p))
        .collect();
    let work = all
        .iter()
        .flat_map(|pi| {
            pi.runs
                .iter()
                .map(|r| items_work(model, m, merge, &pi.items[r.clone()]))
        })
        .collect();
    ModuleUnits {
        passes: all,
        ..ModuleUnits::new(UnitKind::Pass, passes.count(), dp, merge, work)
    }
}

/// Rows and attention pairs of sample `s` at a micro-batch module.
pub fn sample_work(model: &ModelGraph, m: ModuleId, s: u32) -> Work {
    let module = model.module(m);
    let rows = model.rows_of_sample(m, s as usize) as f64;
    let pairs = match &module.body {
        Body::Projector(_) => 0.0,
        _ => module
            .transformer()
            .map_or(0.0, |t| pairs_of(rows, t.attention)),
    };
    Work { rows, pairs }
}

fn micro_batch_units(model: &ModelGraph, plan: &Plan, m: ModuleId) -> ModuleUnits {
    let l = &plan.module(m).layout;
    let batch = model.data().global_batch;
    let count = plan.micro_batches();
    let samples: Vec<Work> = (0..batch).map(|s| sample_work(model, m, s)).collect();
    let mut work = Vec::with_capacity((count * l.dp) as usize);
    for j in 0..count {
        for d in 0..l.dp {
            let w = shard::replica_samples(batch, count, l.micro_batch_size, j, d).fold(
                Work::default(),
                |a, s| {
                    let x = samples.get(s as usize).copied().unwrap_or_default();
                    Work {
                        rows: a.rows + x.rows,
                        pairs: a.pairs + x.pairs,
                    }
                },
            );
            work.push(w);
        }
    }
    ModuleUnits::new(UnitKind::MicroBatch, count, l.dp, 1, work)
}
