//! Plan search: per-module layouts, placement (colocated or not, how many GPUs each side) and
//! schedule, ranked by the cost model; and the best homogeneous plan for comparison.
//!
//! How (each step's exactness is stated in `docs/planner.md`):
//! 1. For every micro-batch count M and every placement (all modules on all GPUs; or the
//!    encoders and projectors on the first n GPUs, node-aligned, and the language model on the
//!    rest), each upstream module's layouts are priced alone with the others fixed, keeping
//!    its fastest few that fit (heuristic: modules are chosen one at a time).
//! 2. The language model's layouts are priced in full plans with those upstream choices
//!    (closed-form time and memory, `hetpar_cost::estimate_quick`). Exact pruning: a layout
//!    over memory is dropped; a heavier recompute policy is skipped when a lighter one of the
//!    same layout fits (recompute only adds time).
//! 3. The best candidates get every schedule kind their placement allows, and the best
//!    `simulate` of them are simulated (`hetpar_cost::estimate`), which decides the winner.
//! 4. The homogeneous baseline: encoders and projectors take the language model's tp and its
//!    dp x cp replicas on its first pipeline stage, the first stage shortened to offset them;
//!    searched over the same language-model layouts.

pub mod space;

use std::collections::BTreeMap;
use std::time::Instant;

use hetpar_cost::{estimate_quick, estimate_with_boundaries, AttentionKernel, Estimate, Options};
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::layout::{LayoutSpec, RecomputePolicy};
use hetpar_ir::model::{ModelGraph, ModuleKind};
use hetpar_ir::placement::{PlacementSpec, RanksSpec};
use hetpar_ir::plan::{ModulePlanSpec, PlanFile, ScheduleKind, ScheduleSpec};
use hetpar_ir::{Cluster, ModuleId, Plan};

use space::{layouts, micro_batch_counts, tp_ok, Bounds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Shortest iteration time (most tokens per second).
    Throughput,
    /// Most model TFLOP/s per GPU used.
    TflopsPerGpu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementChoice {
    Colocated,
    NonColocated,
    Any,
}

/// Search settings; limits are counts, never wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct SearchOptions {
    pub objective: Objective,
    pub placement: PlacementChoice,
    /// Alternatives to report.
    pub top_k: usize,
    /// Per-module layouts; false searches the homogeneous plan only.
    pub heterogeneous: bool,
    /// Closed-form evaluations before the search stops (the stop reason says so).
    pub max_evaluations: usize,
    /// Candidates simulated at the end.
    pub simulate: usize,
    /// Upstream layouts kept per module.
    pub keep_upstream: usize,
    pub attention: AttentionKernel,
    /// Efficiency constants (a calibration's); the cluster's GPU model's when `None`.
    pub constants: Option<hetpar_cost::Constants>,
    /// Alternatives must differ from each other in the language model's layout, placement or
    /// schedule (false: any simulated candidate, as autotune wants to measure many).
    pub distinct_alternatives: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            objective: Objective::Throughput,
            placement: PlacementChoice::Any,
            top_k: 5,
            heterogeneous: true,
            max_evaluations: 200_000,
            simulate: 12,
            keep_upstream: 3,
            attention: AttentionKernel::Flash,
            constants: None,
            distinct_alternatives: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    Heterogeneous,
    Homogeneous,
}

/// One evaluated plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Candidate {
    pub kind: CandidateKind,
    pub plan: PlanFile,
    /// Closed-form iteration time, s.
    pub quick_time_s: f64,
    pub quick_peak_memory_bytes: f64,
    /// The simulation, for candidates that were simulated.
    pub estimate: Option<Estimate>,
}

impl Candidate {
    /// Objective value, lower is better (simulated when available).
    fn score(&self, objective: Objective) -> f64 {
        match &self.estimate {
            Some(e) if !e.feasible => f64::INFINITY,
            Some(e) => match objective {
                Objective::Throughput => e.iteration_time_s,
                Objective::TflopsPerGpu => -e.tflops_per_gpu,
            },
            None => self.quick_time_s,
        }
    }
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SearchStats {
    /// Plans priced in closed form.
    pub candidates: usize,
    /// Dropped for exceeding memory.
    pub pruned_memory: usize,
    /// Skipped as dominated (a heavier recompute where a lighter one fits).
    pub pruned_dominated: usize,
    /// Rejected by the verifier.
    pub invalid: usize,
    pub simulated: usize,
    pub elapsed_s: f64,
    pub stop_reason: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SearchResult {
    pub best: Option<Candidate>,
    pub homogeneous: Option<Candidate>,
    /// The best alternatives after the winner, by objective.
    pub top: Vec<Candidate>,
    pub stats: SearchStats,
}

struct Ctx<'a> {
    model: &'a ModelGraph,
    cluster: &'a Cluster,
    opts: SearchOptions,
    cost_opts: Options,
    stats: SearchStats,
    capacity: f64,
}

impl Ctx<'_> {
    fn budget_left(&self) -> bool {
        self.stats.candidates < self.opts.max_evaluations
    }

    /// Builds and verifies a plan; `None` when the verifier rejects it.
    fn build(
        &mut self,
        modules: &BTreeMap<String, ModulePlanSpec>,
        schedule: ScheduleSpec,
    ) -> Option<(PlanFile, Plan)> {
        let file = PlanFile {
            kind: "plan".into(),
            format_version: FORMAT_VERSION,
            model: Some(self.model.name().to_string()),
            cluster: Some(self.cluster.name.clone()),
            schedule,
            modules: modules.clone(),
        };
        match Plan::build(file.clone(), self.model, self.cluster) {
            Ok((p, _)) => Some((file, p)),
            Err(_) => {
                self.stats.invalid += 1;
                None
            }
        }
    }

    /// Prices a plan in closed form; `None` when over memory.
    fn quick(
        &mut self,
        kind: CandidateKind,
        file: PlanFile,
        plan: &Plan,
    ) -> Option<(Candidate, hetpar_cost::Quick)> {
        self.stats.candidates += 1;
        let q = estimate_quick(self.model, self.cluster, plan, &self.cost_opts);
        let t = q.time.as_secs()?;
        if q.peak_memory_bytes > self.capacity {
            self.stats.pruned_memory += 1;
            return None;
        }
        Some((
            Candidate {
                kind,
                plan: file,
                quick_time_s: t,
                quick_peak_memory_bytes: q.peak_memory_bytes,
                estimate: None,
            },
            q,
        ))
    }
}

/// A module plan on the contiguous ranks `[offset, offset + count)`.
pub fn entry(layout: LayoutSpec, offset: u32, count: u32) -> ModulePlanSpec {
    ModulePlanSpec {
        layout,
        placement: PlacementSpec {
            ranks: RanksSpec {
                offset: Some(offset),
                count: Some(count),
                list: None,
            },
            axis_order: None,
        },
    }
}

fn schedule(kind: ScheduleKind, chunk: Option<u32>) -> ScheduleSpec {
    ScheduleSpec {
        kind,
        encoder_chunk: chunk,
    }
}

/// Searches plans for `model` on `cluster`.
pub fn search(model: &ModelGraph, cluster: &Cluster, opts: SearchOptions) -> SearchResult {
    let start = Instant::now();
    let mut cx = Ctx {
        model,
        cluster,
        opts,
        cost_opts: Options {
            attention: opts.attention,
            constants: opts.constants,
        },
        stats: SearchStats::default(),
        capacity: cluster.gpu.hbm_bytes,
    };
    let world = u32::try_from(cluster.world_size()).unwrap_or(u32::MAX);
    let lm = model.language_model();
    let others: Vec<ModuleId> = model
        .modules()
        .iter()
        .map(|m| m.id)
        .filter(|&m| m != lm)
        .collect();
    let has_downstream = model
        .modules()
        .iter()
        .any(|m| m.kind == ModuleKind::Generator);
    let batch = model.data().global_batch;
    let mut found: Vec<Candidate> = Vec::new();
    let mut homogeneous: Vec<Candidate> = Vec::new();

    for m_count in micro_batch_counts(batch) {
        if !cx.budget_left() {
            break;
        }
        // Placements: (upstream GPUs, LLM offset), 0 upstream GPUs meaning colocated.
        let mut placements: Vec<u32> = Vec::new();
        // A model of one module has nothing to place apart: the homogeneous search covers it.
        if opts.heterogeneous
            && opts.placement != PlacementChoice::NonColocated
            && !others.is_empty()
        {
            placements.push(0);
        }
        if opts.heterogeneous
            && opts.placement != PlacementChoice::Colocated
            && !others.is_empty()
            && !has_downstream
        {
            placements.extend(upstream_splits(model, cluster, world));
        }
        for n_up in placements {
            search_placement(&mut cx, n_up, world, m_count, &others, &mut found);
        }
        search_homogeneous(&mut cx, world, m_count, &others, &mut homogeneous);
    }
    // LLM-only models: the homogeneous search is the search.
    if others.is_empty() {
        found.extend(homogeneous.iter().cloned().map(|mut c| {
            c.kind = CandidateKind::Heterogeneous;
            c
        }));
    }
    let stop = if cx.budget_left() {
        "exhausted the space"
    } else {
        "evaluation limit"
    };
    let best = finish(&mut cx, &mut found);
    let best_homogeneous = finish(&mut cx, &mut homogeneous);
    // Alternatives: feasible, simulated, each with its own language-model layout, placement or
    // schedule (variants differing only in an upstream module's recompute say little).
    let lm_name = model.module(lm).name.clone();
    let shape = |c: &Candidate| {
        let l = c.plan.modules.get(&lm_name).map(|m| {
            (
                m.layout.tp,
                m.layout.cp,
                m.layout.pp,
                m.layout.vpp,
                m.layout.dp,
                m.placement.ranks.offset,
            )
        });
        (l, c.plan.schedule.kind as u8, c.plan.schedule.encoder_chunk)
    };
    let mut seen = std::collections::BTreeSet::new();
    if let Some(b) = found.first() {
        seen.insert(shape(b));
    }
    let top: Vec<Candidate> = found
        .iter()
        .skip(1)
        .filter(|c| c.estimate.as_ref().is_some_and(|e| e.feasible))
        .filter(|c| seen.insert(shape(c)) || !opts.distinct_alternatives)
        .take(opts.top_k)
        .cloned()
        .collect();
    // The homogeneous plan is a plan too: the best plan is never worse than it.
    let best = match (best, &best_homogeneous) {
        (Some(b), Some(h)) if h.score(opts.objective) < b.score(opts.objective) => Some(h.clone()),
        (None, Some(h)) => Some(h.clone()),
        (b, _) => b,
    };
    cx.stats.elapsed_s = start.elapsed().as_secs_f64();
    cx.stats.stop_reason = stop.into();
    SearchResult {
        best,
        homogeneous: best_homogeneous,
        top,
        stats: cx.stats,
    }
}

/// Simulates the best candidates by closed form and returns the winner; `found` keeps the
/// simulated ones first, best first.
fn finish(cx: &mut Ctx<'_>, found: &mut Vec<Candidate>) -> Option<Candidate> {
    found.sort_by(|a, b| a.quick_time_s.total_cmp(&b.quick_time_s));
    let n = cx.opts.simulate.min(found.len());
    for c in found.iter_mut().take(n) {
        if let Ok((plan, _)) = Plan::build(c.plan.clone(), cx.model, cx.cluster) {
            cx.stats.simulated += 1;
            // Boundaries priced by their synthesis; partially overlapping placements (the
            // homogeneous arrangement) are synthesized the same way.
            let times = crate::boundary::boundary_times_with(
                cx.model,
                cx.cluster,
                &plan,
                cx.cost_opts.constants,
            );
            c.estimate =
                estimate_with_boundaries(cx.model, cx.cluster, &plan, &cx.cost_opts, &times).ok();
        }
    }
    found.truncate(n.max(cx.opts.top_k + 1));
    let objective = cx.opts.objective;
    found.sort_by(|a, b| a.score(objective).total_cmp(&b.score(objective)));
    found
        .first()
        .filter(|c| c.estimate.as_ref().is_some_and(|e| e.feasible))
        .cloned()
}

/// Upstream GPU counts for non-colocated placements: powers of two below one node, node
/// multiples (powers of two nodes) and the node multiple nearest the upstream FLOP share.
pub fn upstream_splits(model: &ModelGraph, cluster: &Cluster, world: u32) -> Vec<u32> {
    let g = cluster.gpus_per_node;
    let mut v: Vec<u32> = (0..16)
        .map(|i| 1u32 << i)
        .filter(|&x| x < g && x < world)
        .collect();
    v.extend((0..20).map(|i| g << i).filter(|&x| x < world));
    let flops =
        |m: &hetpar_ir::model::Module| hetpar_ir::model::module_flops(model, m.id).training();
    let total: f64 = model.modules().iter().map(flops).sum();
    let up: f64 = model
        .modules()
        .iter()
        .filter(|m| m.id != model.language_model())
        .map(flops)
        .sum();
    if total > 0.0 && world >= g {
        let share = ((up / total) * f64::from(world) / f64::from(g)).round() as u32;
        for s in [share.saturating_sub(1), share, share + 1] {
            let n = s * g;
            if n > 0 && n < world {
                v.push(n);
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// One placement: upstream modules on `[0, n_up)` (all GPUs when `n_up` is 0), the language
/// model on the rest (all GPUs when colocated).
fn search_placement(
    cx: &mut Ctx<'_>,
    n_up: u32,
    world: u32,
    m_count: u32,
    others: &[ModuleId],
    found: &mut Vec<Candidate>,
) {
    let model = cx.model;
    let colocated = n_up == 0;
    let (up_off, up_n) = (0, if colocated { world } else { n_up });
    let (lm_off, lm_n) = if colocated {
        (0, world)
    } else {
        (n_up, world - n_up)
    };
    let g = cx.cluster.gpus_per_node;
    let lm = model.language_model();
    let lm_name = model.module(lm).name.clone();
    // Upstream modules: unpipelined (in a pipeline they share ranks; colocated they run whole).
    let up_bounds = Bounds {
        gpus_per_node: g,
        allow_pp: false,
        allow_vpp: false,
        allow_cp: false,
    };
    let mut up_options: BTreeMap<ModuleId, Vec<LayoutSpec>> = BTreeMap::new();
    for &m in others {
        let ls = layouts(model, model.module(m), up_n, m_count, up_bounds);
        if ls.is_empty() {
            return;
        }
        up_options.insert(m, ls);
    }
    let lm_bounds = Bounds {
        gpus_per_node: g,
        allow_pp: true,
        allow_vpp: !colocated,
        allow_cp: true,
    };
    let lm_layouts = layouts(model, model.module(lm), lm_n, m_count, lm_bounds);
    let Some(lm_probe) = lm_layouts
        .iter()
        .find(|l| l.recompute.policy == RecomputePolicy::Full)
        .or(lm_layouts.first())
        .cloned()
    else {
        return;
    };
    let base_schedule = |l: &LayoutSpec| {
        if colocated {
            if l.pp == 1 {
                schedule(ScheduleKind::ColocatedSequential, None)
            } else {
                schedule(ScheduleKind::ColocatedThreePhase, None)
            }
        } else if l.vpp > 1 {
            schedule(ScheduleKind::PipelineInterleaved, None)
        } else {
            schedule(ScheduleKind::Pipeline1f1b, None)
        }
    };
    // 1. Upstream modules one at a time, others at their first (lightest-recompute) option.
    let mut chosen: BTreeMap<ModuleId, LayoutSpec> = up_options
        .iter()
        .map(|(&m, v)| (m, v[v.len() - 1].clone()))
        .collect();
    let mut kept: BTreeMap<ModuleId, Vec<LayoutSpec>> = BTreeMap::new();
    for &m in others {
        let mut scored: Vec<(f64, LayoutSpec)> = Vec::new();
        for l in up_options[&m].clone() {
            if !cx.budget_left() {
                return;
            }
            let mut modules: BTreeMap<String, ModulePlanSpec> = BTreeMap::new();
            for &o in others {
                let lo = if o == m {
                    l.clone()
                } else {
                    chosen[&o].clone()
                };
                modules.insert(model.module(o).name.clone(), entry(lo, up_off, up_n));
            }
            modules.insert(lm_name.clone(), entry(lm_probe.clone(), lm_off, lm_n));
            let Some((_, plan)) = cx.build(&modules, base_schedule(&lm_probe)) else {
                continue;
            };
            cx.stats.candidates += 1;
            let q = estimate_quick(model, cx.cluster, &plan, &cx.cost_opts);
            if q.peak_memory_bytes > cx.capacity {
                cx.stats.pruned_memory += 1;
                continue;
            }
            scored.push((q.module_time[m.index()], l));
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((_, best)) = scored.first() {
            chosen.insert(m, best.clone());
        }
        kept.insert(
            m,
            scored
                .into_iter()
                .take(cx.opts.keep_upstream)
                .map(|x| x.1)
                .collect(),
        );
    }
    if kept.values().any(Vec::is_empty) {
        return;
    }
    // 2. Language-model layouts with the chosen upstream layouts; lighter recompute first.
    let mut fits: BTreeMap<(u32, u32, u32, u32, u32), bool> = BTreeMap::new();
    let mut ranked: Vec<(Candidate, LayoutSpec)> = Vec::new();
    for l in lm_layouts {
        if !cx.budget_left() {
            break;
        }
        let key = (l.tp, l.cp, l.pp, l.vpp, l.micro_batch_size);
        if fits.get(&key).copied().unwrap_or(false) {
            cx.stats.pruned_dominated += 1;
            continue;
        }
        let mut modules: BTreeMap<String, ModulePlanSpec> = BTreeMap::new();
        for &o in others {
            modules.insert(
                model.module(o).name.clone(),
                entry(chosen[&o].clone(), up_off, up_n),
            );
        }
        modules.insert(lm_name.clone(), entry(l.clone(), lm_off, lm_n));
        let Some((file, plan)) = cx.build(&modules, base_schedule(&l)) else {
            continue;
        };
        if let Some((c, _)) = cx.quick(CandidateKind::Heterogeneous, file, &plan) {
            fits.insert(key, true);
            ranked.push((c, l));
        }
    }
    ranked.sort_by(|a, b| a.0.quick_time_s.total_cmp(&b.0.quick_time_s));
    // 3. The best language-model layouts with upstream alternatives and every schedule kind.
    for (cand, l) in ranked.into_iter().take(4) {
        found.push(cand);
        let mut schedules = vec![base_schedule(&l)];
        if colocated && l.pp > 1 {
            for k in [1u32, 2, 4].into_iter().filter(|&k| k < m_count) {
                schedules.push(schedule(ScheduleKind::ColocatedChunked, Some(k)));
            }
        }
        for &m in others {
            for alt in kept[&m]
                .iter()
                .skip(1)
                .cloned()
                .chain(std::iter::once(chosen[&m].clone()))
            {
                for sch in &schedules {
                    if !cx.budget_left() {
                        return;
                    }
                    let mut modules: BTreeMap<String, ModulePlanSpec> = BTreeMap::new();
                    for &o in others {
                        let lo = if o == m {
                            alt.clone()
                        } else {
                            chosen[&o].clone()
                        };
                        modules.insert(model.module(o).name.clone(), entry(lo, up_off, up_n));
                    }
                    modules.insert(lm_name.clone(), entry(l.clone(), lm_off, lm_n));
                    if let Some((file, plan)) = cx.build(&modules, sch.clone()) {
                        if let Some((c, _)) = cx.quick(CandidateKind::Heterogeneous, file, &plan) {
                            found.push(c);
                        }
                    }
                }
            }
        }
    }
}

/// The homogeneous plans: every module takes the language model's layout, the upstream
/// modules on its first pipeline stage (dp x cp replicas there, no pipeline), the first stage
/// shortened by a few layers to offset them.
fn search_homogeneous(
    cx: &mut Ctx<'_>,
    world: u32,
    m_count: u32,
    others: &[ModuleId],
    out: &mut Vec<Candidate>,
) {
    let model = cx.model;
    let lm = model.language_model();
    let lm_name = model.module(lm).name.clone();
    let g = cx.cluster.gpus_per_node;
    let bounds = Bounds {
        gpus_per_node: g,
        allow_pp: true,
        allow_vpp: others.is_empty(),
        allow_cp: true,
    };
    let layers = model.module(lm).layer_count();
    let mut fits: BTreeMap<(u32, u32, u32, u32, u32), bool> = BTreeMap::new();
    for l in layouts(model, model.module(lm), world, m_count, bounds) {
        if !cx.budget_left() {
            return;
        }
        let key = (l.tp, l.cp, l.pp, l.vpp, l.micro_batch_size);
        if fits.get(&key).copied().unwrap_or(false) {
            cx.stats.pruned_dominated += 1;
            continue;
        }
        let dp = l.dp.unwrap_or(1);
        let stage0 = l.tp * l.cp * dp;
        // Upstream: the LLM's tp (when it divides them), its dp x cp replicas, stage 0's ranks.
        let mut ups: Vec<(String, LayoutSpec)> = Vec::new();
        let mut ok = true;
        for &o in others {
            let module = model.module(o);
            let tp = if tp_ok(module, l.tp) { l.tp } else { 1 };
            let up_dp = stage0 / tp;
            if up_dp * m_count == 0 || !model.data().global_batch.is_multiple_of(up_dp * m_count) {
                ok = false;
                break;
            }
            let mut ul = l.clone();
            ul.tp = tp;
            ul.cp = 1;
            ul.pp = 1;
            ul.vpp = 1;
            ul.dp = Some(up_dp);
            ul.sequence_parallel = tp > 1;
            ul.distributed_optimizer = up_dp > 1;
            ul.micro_batch_size = model.data().global_batch / (up_dp * m_count);
            if matches!(module.body, hetpar_ir::model::Body::Projector(_)) {
                ul.recompute = Default::default();
            }
            ups.push((module.name.clone(), ul));
        }
        if !ok {
            continue;
        }
        let offsets: Vec<u32> = if l.pp > 1 && !others.is_empty() {
            vec![0, 1, 2, 4]
        } else {
            vec![0]
        };
        let mut any = false;
        for delta in offsets {
            let per = layers / l.pp;
            if delta >= per {
                continue;
            }
            let mut lm_l = l.clone();
            if delta > 0 {
                // Stage 0 gives up delta layers, spread over the other stages.
                let mut split = vec![per; l.pp as usize];
                split[0] -= delta;
                for i in 0..delta as usize {
                    split[1 + i % (l.pp as usize - 1)] += 1;
                }
                lm_l.stage_layers = Some(split);
            }
            let mut modules: BTreeMap<String, ModulePlanSpec> = BTreeMap::new();
            for (name, ul) in &ups {
                modules.insert(name.clone(), entry(ul.clone(), 0, stage0));
            }
            modules.insert(lm_name.clone(), entry(lm_l.clone(), 0, world));
            let sch = if others.is_empty() {
                if l.vpp > 1 {
                    schedule(ScheduleKind::PipelineInterleaved, None)
                } else {
                    schedule(ScheduleKind::Pipeline1f1b, None)
                }
            } else if l.pp == 1 {
                schedule(ScheduleKind::ColocatedSequential, None)
            } else {
                schedule(ScheduleKind::ColocatedChunked, Some(1))
            };
            let Some((file, plan)) = cx.build(&modules, sch) else {
                continue;
            };
            if let Some((c, _)) = cx.quick(CandidateKind::Homogeneous, file, &plan) {
                any = true;
                out.push(c);
            }
        }
        if any {
            fits.insert(key, true);
        }
    }
}
