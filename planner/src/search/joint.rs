//! The joint search of one arrangement: every language-model option with every pass size,
//! and for each the best joint choice of the other modules, exact with respect to the closed
//! form (`hetpar_cost::combine`).
//!
//! A best-first branch and bound over (language-model option, k), with three values per pair:
//! 1. the language model alone (the others only add work and memory): a lower bound;
//! 2. with the others but without boundaries (a boundary never takes negative time), from the
//!    frontier of each module's own options (without boundaries a chain's terms are the sums
//!    of its modules'): a tighter lower bound;
//! 3. exact, every boundary synthesized: joint choices made exact in the order of their value
//!    without boundaries until that reaches the best exact value (`lazy_exact`), or past
//!    `JOINT_LIMIT` choices the frontier of each chain's joint options with boundaries.
//!
//! The search stops when the `keep`-th best exact plan is no worse than every bound left.

use std::collections::{BTreeMap, BinaryHeap};

use hetpar_cost::combine::{combine, Arrangement, Others};
use hetpar_ir::layout::LayoutSpec;
use hetpar_ir::plan::PlanFile;
use hetpar_ir::ModuleId;

use super::frontier::{Frontier, Point};
use super::lm::{schedule, LmOption, LmPool};
use super::price::Pricer;
use super::space::{item_layouts, pass_sizes, Bounds};
use super::upstream::{chains, joint_frontier, points, Chain, Choice, Context};

/// A complete plan priced in closed form.
#[derive(Clone, Debug)]
pub struct Scored {
    pub time: f64,
    pub memory: f64,
    pub plan: PlanFile,
}

/// What the joint search needs besides the pricer.
pub struct Setup {
    pub arrangement: Arrangement,
    pub max_pass_size: u32,
    /// GPU memory less the CUDA context, bytes.
    pub capacity: f64,
    /// Plans to keep.
    pub keep: usize,
    /// Closed-form evaluations before stopping.
    pub max_evaluations: usize,
    /// A time no plan kept may reach: the `keep`-th best of plans found before (infinite
    /// when none).
    pub ceiling: f64,
}

/// Counters of one search.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub evaluations: usize,
    pub over_memory: usize,
    pub bounded: usize,
    pub exhausted: bool,
}

/// The options of the modules before the language model beside one of its options.
pub type ItemOptions = BTreeMap<ModuleId, Vec<LayoutSpec>>;

/// Every layout of `space::item_layouts` on the others' GPUs (the heterogeneous space).
pub fn free_options(pricer: &Pricer<'_>, o: &LmOption, b: Bounds) -> ItemOptions {
    let model = pricer.model;
    let gpus = o.ranks.others.count;
    model
        .modules()
        .iter()
        .filter(|m| model.item_origin(m.id).is_some())
        .map(|m| (m.id, item_layouts(model, m, gpus, b)))
        .collect()
}

/// A bound's level: a language-model candidate's floor (not priced yet), the language model
/// alone, or with the others but no boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Floor,
    Alone,
    NoBoundaries,
}

/// One entry of the queue, by bound: a candidate (`Level::Floor`, `at` its index in the
/// pool's candidates) or a (language-model option, k) pair (`at` its index in the pool's
/// options).
#[derive(Clone, Copy)]
struct Entry {
    bound: f64,
    level: Level,
    at: usize,
    k: u32,
}

/// Candidates priced together when the search reaches them (both cores share a batch).
const BATCH: usize = 32;

/// The best `keep` plans of the arrangement over the pool's language-model candidates, best
/// first, and the counters; the other modules' options beside a language-model option come
/// from `options_of`.
///
/// Best-first branch and bound: every candidate starts at its floor; reached, it is priced
/// and each of its options with every pass size k enters at the bound of the language model
/// alone (the others only add work and memory), is refined to the bound with the others but
/// without boundaries, and from there to its exact best, which joins the best plans kept. The
/// search stops when the `keep`-th best exact plan (or the ceiling) is no worse than every
/// bound left: nothing left can enter.
pub fn search(
    pricer: &mut Pricer<'_>,
    pool: &mut LmPool,
    s: &Setup,
    options_of: &dyn Fn(&Pricer<'_>, &LmOption) -> ItemOptions,
) -> (Vec<Scored>, Counts) {
    let chains = chains(pricer.model);
    let mut counts = Counts {
        exhausted: true,
        ..Counts::default()
    };
    let mut queue: BinaryHeap<Entry> = (0..pool.candidates.len())
        .map(|c| Entry {
            bound: pool.candidates[c].floor,
            level: Level::Floor,
            at: c,
            k: 0,
        })
        .collect();
    let mut top: Vec<Scored> = Vec::new();
    let mut options: BTreeMap<usize, ItemOptions> = BTreeMap::new();
    while let Some(e) = queue.pop() {
        let full = top.len() >= s.keep && top.last().is_some_and(|w| e.bound >= w.time);
        if full || e.bound >= s.ceiling {
            counts.bounded += queue.len() + 1;
            break;
        }
        if counts.evaluations >= s.max_evaluations {
            counts.exhausted = false;
            break;
        }
        if e.level == Level::Floor {
            let mut batch = vec![e.at];
            while batch.len() < BATCH && queue.peek().is_some_and(|x| x.level == Level::Floor) {
                batch.extend(queue.pop().map(|x| x.at));
            }
            seed(pricer, pool, &batch, &chains, s, &mut queue, &mut counts);
            continue;
        }
        let o = &pool.options[e.at];
        let opts = options
            .entry(e.at)
            .or_insert_with(|| options_of(pricer, o))
            .clone();
        let exact = e.level == Level::NoBoundaries;
        match refine(pricer, &chains, o, e.k, s, &opts, exact, &mut counts) {
            Some((time, memory, choice)) if exact => {
                settle(pricer, &chains, o, e.k, s, (time, memory, choice), &mut top);
            }
            Some((bound, ..)) => queue.push(Entry {
                bound,
                level: Level::NoBoundaries,
                ..e
            }),
            None if !exact => counts.over_memory += 1,
            None => {}
        }
    }
    (top, counts)
}

/// Queue order, reversed so that the heap pops the least (bound, level, index, k) first; no
/// two entries are equal, so the order of pops is determined.
fn order(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    b.bound
        .total_cmp(&a.bound)
        .then(b.level.cmp(&a.level))
        .then(b.at.cmp(&a.at))
        .then(b.k.cmp(&a.k))
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        order(self, o).is_eq()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        order(self, o)
    }
}

/// Prices the candidates `batch` and queues each of their options with every pass size k at
/// the bound of the language model alone; those over memory alone are counted and left out.
fn seed(
    pricer: &mut Pricer<'_>,
    pool: &mut LmPool,
    batch: &[usize],
    chains: &[Chain],
    s: &Setup,
    queue: &mut BinaryHeap<Entry>,
    counts: &mut Counts,
) {
    pool.price(pricer, batch);
    let alone: Frontier<()> = Frontier::new(vec![Point {
        time: 0.0,
        tail: 0.0,
        memory: 0.0,
        value: (),
    }]);
    for &c in batch {
        for &i in pool.options_of(c).unwrap_or(&[]) {
            let o = &pool.options[i];
            let ks = if chains.is_empty() {
                vec![1]
            } else {
                pass_sizes(o.terms.units, s.max_pass_size)
            };
            for k in ks {
                match best(&alone, o, k, s, Others::default(), counts) {
                    Some((bound, _, _)) => queue.push(Entry {
                        bound,
                        level: Level::Alone,
                        at: i,
                        k,
                    }),
                    None => counts.over_memory += 1,
                }
            }
        }
    }
}

/// An exact best joint choice beside `o`, as a plan among the best kept.
fn settle(
    pricer: &mut Pricer<'_>,
    chains: &[Chain],
    o: &LmOption,
    k: u32,
    s: &Setup,
    (time, memory, choice): (f64, f64, Vec<Choice>),
    top: &mut Vec<Scored>,
) {
    let sched = schedule(pricer.model, s.arrangement, &o.layout, k);
    let layouts: BTreeMap<ModuleId, LayoutSpec> = chains
        .iter()
        .zip(choice)
        .flat_map(|(c, ch)| c.modules.iter().copied().zip(ch))
        .collect();
    if let Some((plan, _)) = pricer.plan(o.ranks, &o.layout, &layouts, &sched) {
        insert(top, Scored { time, memory, plan }, s.keep);
    }
}

/// Joint choices enumerated one by one for the exact best; past this, frontiers with every
/// boundary synthesized.
const JOINT_LIMIT: usize = 100_000;

/// The best choice of the others beside option `o` with pass size `k`: without boundaries from
/// each module's own options (a lower bound), or exact with every boundary.
#[allow(clippy::too_many_arguments)]
fn refine(
    pricer: &mut Pricer<'_>,
    chains: &[Chain],
    o: &LmOption,
    k: u32,
    s: &Setup,
    opts: &ItemOptions,
    boundaries: bool,
    counts: &mut Counts,
) -> Option<(f64, f64, Vec<Choice>)> {
    let sched = schedule(pricer.model, s.arrangement, &o.layout, k);
    let cx = Context {
        ranks: o.ranks,
        lm: &o.layout,
        schedule: &sched,
    };
    if !boundaries {
        let per: Vec<Vec<Point<Choice>>> = chains
            .iter()
            .flat_map(|c| &c.modules)
            .map(|&m| {
                let single = Chain {
                    modules: vec![m],
                    inner: Vec::new(),
                    into_lm: None,
                };
                points(pricer, &single, opts, cx, false)
            })
            .collect();
        let fixed = followers(pricer, o, &sched, false)?;
        let (t, mem, _) = best(&joint_frontier(per), o, k, s, fixed, counts)?;
        // Per module, not per chain: only the bound counts.
        return Some((t, mem, Vec::new()));
    }
    let per: Vec<Vec<Point<Choice>>> = chains
        .iter()
        .map(|c| points(pricer, c, opts, cx, false))
        .collect();
    let size = per
        .iter()
        .map(Vec::len)
        .try_fold(1usize, |a, n| a.checked_mul(n));
    if size.is_none_or(|n| n > JOINT_LIMIT) {
        let per: Vec<Vec<Point<Choice>>> = chains
            .iter()
            .map(|c| points(pricer, c, opts, cx, true))
            .collect();
        let fixed = followers(pricer, o, &sched, true)?;
        return best(&joint_frontier(per), o, k, s, fixed, counts);
    }
    lazy_exact(pricer, chains, o, k, s, per, cx, counts)
}

/// The exact best joint choice, synthesizing boundaries only where needed: every joint
/// choice is ordered by its value without boundaries (a lower bound of its exact value), and
/// choices are made exact in that order until the bound reaches the best exact value found.
#[allow(clippy::too_many_arguments)]
fn lazy_exact(
    pricer: &mut Pricer<'_>,
    chains: &[Chain],
    o: &LmOption,
    k: u32,
    s: &Setup,
    per: Vec<Vec<Point<Choice>>>,
    cx: Context<'_>,
    counts: &mut Counts,
) -> Option<(f64, f64, Vec<Choice>)> {
    let nb = followers(pricer, o, cx.schedule, false)?;
    let with_b = followers(pricer, o, cx.schedule, true)?;
    // Every joint choice (one point per chain) with its value without boundaries.
    let mut joint: Vec<(f64, f64, Vec<usize>)> = Vec::new();
    let total: usize = per.iter().map(Vec::len).product();
    for i in 0..total {
        // Mixed-radix digits of i: one point per chain.
        let mut rest = i;
        let idx: Vec<usize> = per
            .iter()
            .map(|pts| {
                let x = rest % pts.len();
                rest /= pts.len();
                x
            })
            .collect();
        let sum = per
            .iter()
            .zip(&idx)
            .fold(nb, |acc, (pts, &x)| plus(acc, &pts[x]));
        counts.evaluations += 1;
        let (t, mem) = evaluate(o, k, s, sum);
        if mem <= s.capacity && t.is_finite() {
            joint.push((t, mem, idx));
        }
    }
    joint.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)));
    let mut out: Option<(f64, f64, Vec<Choice>)> = None;
    for (bound, mem, idx) in joint {
        if out.as_ref().is_some_and(|b| bound >= b.0) {
            break;
        }
        let mut sum = with_b;
        let mut choice = Vec::with_capacity(idx.len());
        for ((pts, &i), c) in per.iter().zip(&idx).zip(chains) {
            let p = &pts[i];
            sum = plus(sum, p);
            sum.work += super::upstream::boundary_time(pricer, c, &p.value, cx)?;
            choice.push(p.value.clone());
        }
        let (t, _) = evaluate(o, k, s, sum);
        if out.as_ref().is_none_or(|b| t < b.0) {
            out = Some((t, mem, choice));
        }
    }
    out
}

/// Adds a point of the others' choices to what they add together.
fn plus<T>(mut o: Others, p: &Point<T>) -> Others {
    o.work += p.time;
    o.tail += p.tail;
    o.memory += p.memory;
    o
}

/// The closed-form step time and memory of option `o` with pass size `k` beside `others`.
fn evaluate(o: &LmOption, k: u32, s: &Setup, others: Others) -> (f64, f64) {
    let passes = o.terms.units.div_ceil(k.max(1));
    combine(s.arrangement, &o.terms, o.layout.vpp, passes, others)
}

/// The fastest point of a frontier of the others' choices that fits beside `o`.
fn best<T: Clone>(
    f: &Frontier<T>,
    o: &LmOption,
    k: u32,
    s: &Setup,
    fixed: Others,
    counts: &mut Counts,
) -> Option<(f64, f64, T)> {
    let mut out: Option<(f64, f64, T)> = None;
    for p in f.points() {
        counts.evaluations += 1;
        let (t, mem) = evaluate(o, k, s, plus(fixed, p));
        if mem > s.capacity || !t.is_finite() {
            continue;
        }
        if out.as_ref().is_none_or(|b| t < b.0) {
            out = Some((t, mem, p.value.clone()));
        }
    }
    out
}

/// What the modules after the language model (generators, on its ranks with a derived
/// layout) add beside option `o`, with their boundaries when `boundaries`; `None` when no
/// layout gives them the language model's micro-batches.
fn followers(
    pricer: &mut Pricer<'_>,
    o: &LmOption,
    sched: &hetpar_ir::plan::ScheduleSpec,
    boundaries: bool,
) -> Option<Others> {
    let model = pricer.model;
    let lm = model.language_model();
    let mut out = Others::default();
    for m in model.modules() {
        if m.id == lm || model.item_origin(m.id).is_some() {
            continue;
        }
        let l = super::price::follower(model, m, &o.layout, o.ranks.lm.count)?;
        let t = pricer.terms(m.id, &l, o.ranks, &o.layout, sched)?;
        out.work += t.work();
        out.memory += t.peak_memory();
        out.tail += t.tail;
        if boundaries {
            for b in model.incoming(m.id).into_iter().chain(model.outgoing(m.id)) {
                let bd = model.boundary(b);
                let side = |x: hetpar_ir::ModuleId| {
                    if x == m.id {
                        l.clone()
                    } else {
                        o.layout.clone()
                    }
                };
                out.work +=
                    pricer.boundary(b, &side(bd.from), &side(bd.to), o.ranks, &o.layout, sched);
            }
        }
    }
    Some(out)
}

/// Inserts `c` into the sorted `top`, without duplicates, keeping at most `keep`.
pub fn insert(top: &mut Vec<Scored>, c: Scored, keep: usize) {
    if top.iter().any(|x| x.plan == c.plan) {
        return;
    }
    let at = top.partition_point(|x| x.time <= c.time);
    top.insert(at, c);
    top.truncate(keep);
}
