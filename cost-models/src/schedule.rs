//! Builds the task graph of a plan: lanes, tasks with durations and dependencies, and each
//! lane's order under the plan's schedule kind.
//!
//! Samples and micro-batches: every module splits the global batch into the same M micro-
//! batches (the verifier's `schedule.micro_batches`); micro-batch j is samples
//! `[j B/M, (j+1) B/M)`, and data-parallel replica d of a module takes the d-th slice of
//! `micro_batch_size` samples of it. So micro-batch j means the same samples in every module.
//!
//! Orders:
//! - `pipeline_1f1b`: modules on identical ranks form a group; groups are pipeline stages in
//!   sequence (encoders upstream). Stage g of a pipeline of depth D runs `min(D - g - 1, M)`
//!   warm-up forwards, then alternates forward and backward, then drains.
//! - `pipeline_interleaved`: Megatron's interleaved order within each group with vpp chunks.
//! - colocated kinds: every module on every rank; the language model (and anything after it)
//!   runs its 1F1B pipeline; upstream modules run their forwards for k micro-batches just
//!   before the pipeline's first forward of those micro-batches, and their backwards just after
//!   the pipeline's last backward of them (`colocated_sequential`: k = 1 and pp = 1;
//!   `colocated_three_phase`: k = M; `colocated_chunked`: k = `encoder_chunk`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hetpar_ir::model::{AttentionKind, Body, ModelGraph};
use hetpar_ir::placement::{Axis, Coord};
use hetpar_ir::plan::{ModulePlan, PlacementKind, ScheduleKind};
use hetpar_ir::{Cluster, ModuleId, Plan, Rank};

use crate::collective::{p2p_time, Link};
use crate::compute::{ChunkTime, ModuleCompute, Work};
use crate::constants::Constants;
use crate::memory::{chunk_activations, AttentionKernel};
use crate::tasks::{Dep, DepKind, Lane, LaneId, Task, TaskGraph, TaskId, TaskKind};
use crate::CostError;

/// Key of a module task: (module, replica, stage, chunk, micro-batch, forward?).
type Key = (u32, u32, u32, u32, u32, bool);

/// Module tasks are created in (module, replica, micro-batch, stage, chunk, direction) order,
/// so a task's id is arithmetic on its key: no map to build or search.
struct TaskIndex {
    /// First task of each module, and its (dp, pp, vpp).
    base: Vec<(u32, u32, u32, u32)>,
    micro_batches: u32,
}

impl TaskIndex {
    fn new(plan: &Plan, micro_batches: u32) -> Self {
        let mut next = 0u32;
        let base = plan
            .modules()
            .iter()
            .map(|mp| {
                let l = &mp.layout;
                let b = (next, l.dp, l.pp, l.vpp);
                next += l.dp * micro_batches * l.pp * l.vpp * 2;
                b
            })
            .collect();
        TaskIndex {
            base,
            micro_batches,
        }
    }

    fn get(&self, (m, d, s, c, j, fwd): Key) -> Option<TaskId> {
        let &(base, dp, pp, vpp) = self.base.get(m as usize)?;
        if d >= dp || s >= pp || c >= vpp || j >= self.micro_batches {
            return None;
        }
        Some(base + ((((d * self.micro_batches + j) * pp + s) * vpp + c) * 2 + u32::from(!fwd)))
    }

    /// The id of a task that exists by construction.
    fn at(&self, key: Key) -> TaskId {
        self.get(key).unwrap_or(TaskId::MAX)
    }
}

pub struct Inputs<'a> {
    pub model: &'a ModelGraph,
    pub cluster: &'a Cluster,
    pub plan: &'a Plan,
    pub constants: Constants,
    pub kernel: AttentionKernel,
    pub computes: Vec<ModuleCompute<'a>>,
    /// Seconds of exposed data-parallel gradient communication per module stage.
    pub grad_sync: Vec<Vec<f64>>,
    /// Seconds of optimizer step per module stage.
    pub optimizer: Vec<Vec<f64>>,
    /// Synthesized boundary times, when known: per boundary, (forward, backward) seconds of
    /// each micro-batch. Otherwise a placeholder prices each replica pair's rows as one send.
    pub boundary_times: Option<&'a BoundaryTimes>,
}

/// Per boundary id, the synthesized (forward, backward) time of each micro-batch, s.
pub type BoundaryTimes = std::collections::BTreeMap<hetpar_ir::BoundaryId, Vec<(f64, f64)>>;

/// Per module: rows and attention pairs of every sample.
fn sample_work(model: &ModelGraph) -> Vec<Vec<Work>> {
    let b = model.data().global_batch as usize;
    model
        .modules()
        .iter()
        .map(|m| {
            (0..b)
                .map(|s| {
                    let rows = model.rows_of_sample(m.id, s) as f64;
                    let pairs = match (&m.body, model.items(m.id)) {
                        (Body::Encoder { transformer, .. }, Some(items)) => items
                            .items_of(s)
                            .iter()
                            .map(|&n| pairs_of(f64::from(n), transformer.attention))
                            .sum(),
                        (Body::Projector(_), _) => 0.0,
                        _ => m.transformer().map_or(0.0, |t| pairs_of(rows, t.attention)),
                    };
                    Work { rows, pairs }
                })
                .collect()
        })
        .collect()
}

fn pairs_of(n: f64, kind: AttentionKind) -> f64 {
    match kind {
        AttentionKind::Bidirectional => n * n,
        AttentionKind::Causal => n * (n + 1.0) / 2.0,
    }
}

/// Samples of replica `d` in micro-batch `j` of a module.
fn slice(mp: &ModulePlan, batch: u32, j: u32, d: u32) -> std::ops::Range<u32> {
    let per_mb = batch / mp.layout.micro_batches.max(1);
    let start = j * per_mb + d * mp.layout.micro_batch_size;
    start..start + mp.layout.micro_batch_size
}

fn coord_map(mp: &ModulePlan) -> HashMap<Rank, Coord> {
    let g = &mp.grid;
    let mut out = HashMap::with_capacity(g.ranks().len());
    for pp in 0..g.size(Axis::Pp) {
        for dp in 0..g.size(Axis::Dp) {
            for cp in 0..g.size(Axis::Cp) {
                for tp in 0..g.size(Axis::Tp) {
                    let c = Coord { tp, cp, dp, pp };
                    out.insert(g.rank_at(c), c);
                }
            }
        }
    }
    out
}

pub fn build(inp: &Inputs<'_>) -> Result<TaskGraph, CostError> {
    let model = inp.model;
    let plan = inp.plan;
    if plan.placement_kind == PlacementKind::PartialOverlap
        && !nested_in_language_model(model, plan)
    {
        return Err(CostError::Unsupported(
            "partially overlapping placements have no schedule yet, except every module inside the language model's ranks under a colocated schedule; colocate modules fully or make them disjoint".into(),
        ));
    }
    let nmod = model.modules().len();
    let batch = model.data().global_batch;
    let m_count = plan.modules().first().map_or(1, |p| p.layout.micro_batches);
    let works = sample_work(model);

    // Lanes: ranks with the same (dp, pp) coordinate in every module they run.
    let coords: Vec<HashMap<Rank, Coord>> = plan.modules().iter().map(coord_map).collect();
    let mut lane_of_key: BTreeMap<Vec<(u32, u32, u32)>, LaneId> = BTreeMap::new();
    let mut lanes: Vec<Lane> = Vec::new();
    let mut lane_keys: Vec<Vec<(u32, u32, u32)>> = Vec::new();
    for r in plan.used_ranks() {
        let key: Vec<(u32, u32, u32)> = (0..nmod)
            .filter_map(|m| coords[m].get(&r).map(|c| (m as u32, c.dp, c.pp)))
            .collect();
        let id = *lane_of_key.entry(key.clone()).or_insert_with(|| {
            lanes.push(Lane { ranks: Vec::new() });
            lane_keys.push(key);
            (lanes.len() - 1) as LaneId
        });
        lanes[id as usize].ranks.push(r);
    }
    let mut stage_lanes: HashMap<(u32, u32, u32), Vec<LaneId>> = HashMap::new();
    for (l, key) in lane_keys.iter().enumerate() {
        for &k in key {
            stage_lanes.entry(k).or_default().push(l as LaneId);
        }
    }
    let first_rank = |m: usize, d: u32, s: u32| -> Rank {
        let c = Coord {
            tp: 0,
            cp: 0,
            dp: d,
            pp: s,
        };
        plan.modules()[m].grid.rank_at(c)
    };
    let rank_set = |m: usize, d: u32, s: u32| -> BTreeSet<Rank> {
        stage_lanes
            .get(&(m as u32, d, s))
            .into_iter()
            .flatten()
            .flat_map(|&l| lanes[l as usize].ranks.iter().copied())
            .filter(|r| coords[m].get(r).is_some_and(|c| c.dp == d && c.pp == s))
            .collect()
    };

    // Rank sets of module stages, built once each.
    let mut sets: HashMap<(usize, u32, u32), BTreeSet<Rank>> = HashMap::new();
    let mut set_of = |m: usize, d: u32, s: u32| -> BTreeSet<Rank> {
        sets.entry((m, d, s))
            .or_insert_with(|| rank_set(m, d, s))
            .clone()
    };

    // Module tasks.
    let mut tasks: Vec<Task> = Vec::new();
    let index = TaskIndex::new(plan, m_count);
    let mut cache: HashMap<(usize, usize, u64, u64), (ChunkTime, f64)> = HashMap::new();
    let act_bytes = model.data().precision.activation_bytes() as f64;
    for (m, mp) in plan.modules().iter().enumerate() {
        let l = &mp.layout;
        let comp = &inp.computes[m];
        for d in 0..l.dp {
            for j in 0..m_count {
                let w = slice(mp, batch, j, d).fold(Work::default(), |a, s| {
                    let x = works[m].get(s as usize).copied().unwrap_or_default();
                    Work {
                        rows: a.rows + x.rows,
                        pairs: a.pairs + x.pairs,
                    }
                });
                for s in 0..l.pp {
                    for c in 0..l.vpp {
                        let chunk = (c * l.pp + s) as usize;
                        let (time, act) = *cache
                            .entry((m, chunk, w.rows.to_bits(), w.pairs.to_bits()))
                            .or_insert_with(|| {
                                (
                                    comp.chunk(chunk, w),
                                    chunk_activations(
                                        comp.module,
                                        l,
                                        chunk,
                                        w,
                                        act_bytes,
                                        inp.kernel,
                                    ),
                                )
                            });
                        let lanes_here = stage_lanes
                            .get(&(m as u32, d, s))
                            .cloned()
                            .unwrap_or_default();
                        for fwd in [true, false] {
                            debug_assert_eq!(
                                index.get((m as u32, d, s, c, j, fwd)),
                                Some(tasks.len() as TaskId)
                            );
                            tasks.push(Task {
                                kind: if fwd {
                                    TaskKind::Forward
                                } else {
                                    TaskKind::Backward
                                },
                                module: Some(ModuleId::new(m)),
                                replica: d,
                                stage: s,
                                chunk: c,
                                micro_batch: j,
                                lanes: lanes_here.clone(),
                                deps: Vec::new(),
                                duration: if fwd {
                                    time.forward.total()
                                } else {
                                    time.backward.total()
                                },
                                activation_bytes: act,
                                parts: if fwd { time.forward } else { time.backward },
                            });
                        }
                    }
                }
            }
        }
    }

    // Dependencies inside a module: along the pipeline, and backward after forward.
    for (m, mp) in plan.modules().iter().enumerate() {
        let l = &mp.layout;
        let hidden = inp.computes[m].module.output_width() as f64;
        let positions: Vec<(u32, u32)> = (0..l.vpp)
            .flat_map(|c| (0..l.pp).map(move |s| (s, c)))
            .collect();
        for d in 0..l.dp {
            for j in 0..m_count {
                let rows: f64 = slice(mp, batch, j, d)
                    .map(|s| works[m].get(s as usize).map_or(0.0, |w| w.rows))
                    .sum();
                let bytes = rows / f64::from(l.cp) * hidden * act_bytes / f64::from(l.tp);
                for (i, &(s, c)) in positions.iter().enumerate() {
                    let f = index.at((m as u32, d, s, c, j, true));
                    let b = index.at((m as u32, d, s, c, j, false));
                    tasks[b as usize].deps.push(Dep {
                        task: f,
                        latency: 0.0,
                        kind: DepKind::Local,
                    });
                    if i > 0 {
                        let (ps, pc) = positions[i - 1];
                        let pf = index.at((m as u32, d, ps, pc, j, true));
                        let pb = index.at((m as u32, d, ps, pc, j, false));
                        let link = Link::between(
                            inp.cluster,
                            &inp.constants,
                            first_rank(m, d, ps),
                            first_rank(m, d, s),
                        );
                        let lat = if ps == s { 0.0 } else { p2p_time(bytes, link) };
                        tasks[f as usize].deps.push(Dep {
                            task: pf,
                            latency: lat,
                            kind: DepKind::Pipeline,
                        });
                        tasks[pb as usize].deps.push(Dep {
                            task: b,
                            latency: lat,
                            kind: DepKind::Pipeline,
                        });
                    }
                }
            }
        }
    }

    // Dependencies across boundaries, per micro-batch and overlapping replica slices.
    for b in model.boundaries() {
        let (u, v) = (b.from.index(), b.to.index());
        let (pu, pv) = (&plan.modules()[u], &plan.modules()[v]);
        let (lu, lv) = (&pu.layout, &pv.layout);
        let (su, cu) = (lu.pp - 1, lu.vpp - 1);
        for j in 0..m_count {
            for dv in 0..lv.dp {
                let sv = slice(pv, batch, j, dv);
                // Source replicas whose slice of micro-batch j overlaps this one: a contiguous
                // range, found by arithmetic rather than by trying every replica.
                let base = j * (batch / lu.micro_batches.max(1));
                let mbs_u = lu.micro_batch_size.max(1);
                let first = sv.start.saturating_sub(base) / mbs_u;
                let last = (sv.end.saturating_sub(base).saturating_sub(1) / mbs_u)
                    .min(lu.dp.saturating_sub(1));
                for du in first..=last {
                    let s_u = slice(pu, batch, j, du);
                    let lo = s_u.start.max(sv.start);
                    let hi = s_u.end.min(sv.end);
                    if lo >= hi {
                        continue;
                    }
                    let rows: f64 = (lo..hi)
                        .map(|s| model.boundary_rows_of_sample(b.id, s as usize) as f64)
                        .sum();
                    let bytes = rows * f64::from(b.width) * act_bytes;
                    let same = set_of(u, du, su) == set_of(v, dv, 0);
                    let lat = if same {
                        0.0
                    } else {
                        let link = Link::between(
                            inp.cluster,
                            &inp.constants,
                            first_rank(u, du, su),
                            first_rank(v, dv, 0),
                        );
                        p2p_time(bytes, link)
                    };
                    let fu = index.at((u as u32, du, su, cu, j, true));
                    let fv = index.at((v as u32, dv, 0, 0, j, true));
                    let bu = index.at((u as u32, du, su, cu, j, false));
                    let bv = index.at((v as u32, dv, 0, 0, j, false));
                    let (lat_f, lat_b) = match inp.boundary_times.and_then(|t| t.get(&b.id)) {
                        Some(times) => times.get(j as usize).copied().unwrap_or((lat, lat)),
                        None => (lat, lat),
                    };
                    tasks[fv as usize].deps.push(Dep {
                        task: fu,
                        latency: lat_f,
                        kind: DepKind::Boundary,
                    });
                    tasks[bu as usize].deps.push(Dep {
                        task: bv,
                        latency: lat_b,
                        kind: DepKind::Boundary,
                    });
                }
            }
        }
    }

    // Orders.
    let topo: Vec<usize> = model
        .topological_order()
        .iter()
        .map(|m| m.index())
        .collect();
    let mut orders: Vec<Vec<TaskId>> = vec![Vec::new(); lanes.len()];
    let kind = plan.schedule.kind;
    let lookup = |m: usize, key: &Vec<(u32, u32, u32)>| {
        key.iter().find(|k| k.0 as usize == m).map(|k| (k.1, k.2))
    };
    if kind.is_colocated() {
        let lm = model.language_model().index();
        let mut downstream: Vec<usize> = Vec::new();
        let mut seen = BTreeSet::from([lm]);
        for &m in &topo {
            if model
                .incoming(ModuleId::new(m))
                .iter()
                .any(|&b| seen.contains(&model.boundary(b).from.index()))
            {
                seen.insert(m);
                downstream.push(m);
            }
        }
        let upstream: Vec<usize> = topo.iter().copied().filter(|m| !seen.contains(m)).collect();
        let k = match kind {
            ScheduleKind::ColocatedThreePhase => m_count,
            ScheduleKind::ColocatedChunked => plan.schedule.encoder_chunk.unwrap_or(1).max(1),
            _ => 1,
        };
        let p = plan.modules()[lm].layout.pp;
        // Upstream work follows the pipeline's first stage (which consumes it): forwards of
        // chunk c just before stage 0's first forward of it, backwards just after stage 0's
        // last backward of it. Every lane keeps that order of upstream items, and merges it
        // with its own stage's 1F1B: a forward of chunk c before its own forward of c, a
        // backward of chunk c after its own backward of the chunk's last micro-batch.
        let mut upstream_seq: Vec<(bool, u32)> = Vec::new(); // (forward?, chunk)
        for (fwd, j) in one_f_one_b((p - 1).min(m_count), m_count) {
            if fwd && j % k == 0 {
                upstream_seq.push((true, j / k));
            }
            if !fwd && j + 1 == (j / k * k + k).min(m_count) {
                upstream_seq.push((false, j / k));
            }
        }
        for (lane, key) in lane_keys.iter().enumerate() {
            let Some((dl, sl)) = lookup(lm, key) else {
                continue;
            };
            let order = &mut orders[lane];
            let push = |order: &mut Vec<TaskId>, m: usize, j: u32, fwd: bool| {
                if let Some((d, s)) = lookup(m, key) {
                    for c in 0..plan.modules()[m].layout.vpp {
                        if let Some(t) = index.get((m as u32, d, s, c, j, fwd)) {
                            order.push(t);
                        }
                    }
                }
            };
            let push_upstream = |order: &mut Vec<TaskId>, fwd: bool, chunk: u32| {
                let mbs = chunk * k..((chunk + 1) * k).min(m_count);
                for mb in mbs {
                    if fwd {
                        for &m in &upstream {
                            push(order, m, mb, true);
                        }
                    } else {
                        for &m in upstream.iter().rev() {
                            push(order, m, mb, false);
                        }
                    }
                }
            };
            let own = one_f_one_b((p - sl - 1).min(m_count), m_count);
            let mut u = 0usize;
            // Chunks whose last micro-batch this lane has run backward for.
            let mut backward_done: Option<u32> = None;
            let mut forwards_done = 0u32;
            for (fwd, j) in own {
                // Upstream items in stage 0's order: a forward once this lane's next forward
                // needs it, a backward once this lane's backward of the chunk is done. Holding
                // stage 0's order keeps every forward that stage 0 runs before a backward ahead
                // of that backward here too, so no lane waits on itself.
                // Own forwards run in micro-batch order: the next one is the count so far.
                let next_forward = forwards_done;
                loop {
                    match upstream_seq.get(u) {
                        Some(&(true, c)) if c * k <= next_forward => {
                            push_upstream(order, true, c);
                            u += 1;
                        }
                        Some(&(false, c)) if backward_done.is_some_and(|d| d >= c) => {
                            push_upstream(order, false, c);
                            u += 1;
                        }
                        _ => break,
                    }
                }
                if fwd {
                    order.push(index.at((lm as u32, dl, sl, 0, j, true)));
                    forwards_done += 1;
                    for &m in &downstream {
                        push(order, m, j, true);
                    }
                } else {
                    for &m in downstream.iter().rev() {
                        push(order, m, j, false);
                    }
                    order.push(index.at((lm as u32, dl, sl, 0, j, false)));
                    if j + 1 == (j / k * k + k).min(m_count) {
                        backward_done = Some(j / k);
                    }
                }
            }
            for &(fwd, c) in &upstream_seq[u..] {
                push_upstream(order, fwd, c);
            }
        }
    } else {
        let Pipeline {
            group_of,
            groups,
            offset,
            depth,
        } = pipeline_groups(model, plan);
        // An interleaved group's first stage forwards several micro-batches into its first chunk
        // before its first backward of micro-batch 0 there; upstream groups must have produced
        // them by then, so their warm-up is at least that lead.
        let lead = groups
            .iter()
            .map(|ms| &plan.modules()[ms[0]].layout)
            .filter(|l| l.vpp > 1)
            .map(|l| {
                let seq = interleaved(l.pp, l.vpp, 0, m_count);
                let first_b = seq
                    .iter()
                    .position(|&x| x == (false, 0, 0))
                    .unwrap_or(seq.len());
                let fwd: BTreeSet<u32> = seq[..first_b]
                    .iter()
                    .filter(|x| x.0 && x.2 == 0)
                    .map(|x| x.1)
                    .collect();
                fwd.len() as u32
            })
            .max()
            .unwrap_or(0);
        for (lane, key) in lane_keys.iter().enumerate() {
            let Some(&(m0, _, s)) = key.first() else {
                continue;
            };
            let g = group_of[m0 as usize];
            let l0 = &plan.modules()[m0 as usize].layout;
            let order = &mut orders[lane];
            let slots: Vec<(bool, u32, u32)> = if l0.vpp > 1 {
                interleaved(l0.pp, l0.vpp, s, m_count)
            } else {
                let w = depth
                    .saturating_sub(offset[g] + s + 1)
                    .max(lead.saturating_sub(1))
                    .min(m_count);
                one_f_one_b(w, m_count)
                    .into_iter()
                    .map(|(f, j)| (f, j, 0))
                    .collect()
            };
            for (fwd, j, c) in slots {
                let members: Vec<usize> = if fwd {
                    groups[g].clone()
                } else {
                    groups[g].iter().rev().copied().collect()
                };
                for m in members {
                    if let Some((d, st)) = lookup(m, key) {
                        if let Some(t) = index.get((m as u32, d, st, c, j, fwd)) {
                            order.push(t);
                        }
                    }
                }
            }
        }
    }

    // Gradient synchronization (one task per module stage across its replicas) and the
    // optimizer step (one per lane), after everything else.
    for &m in &topo {
        let mp = &plan.modules()[m];
        for s in 0..mp.layout.pp {
            let mut ls: Vec<LaneId> = (0..mp.layout.dp)
                .flat_map(|d| {
                    stage_lanes
                        .get(&(m as u32, d, s))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect();
            ls.sort_unstable();
            ls.dedup();
            let id = tasks.len() as TaskId;
            tasks.push(Task {
                kind: TaskKind::GradSync,
                module: Some(ModuleId::new(m)),
                replica: 0,
                stage: s,
                chunk: 0,
                micro_batch: 0,
                lanes: ls.clone(),
                deps: Vec::new(),
                duration: inp.grad_sync[m].get(s as usize).copied().unwrap_or(0.0),
                activation_bytes: 0.0,
                parts: Default::default(),
            });
            for l in ls {
                orders[l as usize].push(id);
            }
        }
    }
    for (lane, key) in lane_keys.iter().enumerate() {
        let duration: f64 = key
            .iter()
            .map(|&(m, _, s)| {
                inp.optimizer[m as usize]
                    .get(s as usize)
                    .copied()
                    .unwrap_or(0.0)
            })
            .sum();
        let id = tasks.len() as TaskId;
        tasks.push(Task {
            kind: TaskKind::Optimizer,
            module: None,
            replica: 0,
            stage: 0,
            chunk: 0,
            micro_batch: 0,
            lanes: vec![lane as LaneId],
            deps: Vec::new(),
            duration,
            activation_bytes: 0.0,
            parts: Default::default(),
        });
        orders[lane].push(id);
    }
    Ok(TaskGraph {
        lanes,
        tasks,
        orders,
    })
}

/// Whether, under a colocated schedule, every module runs on a subset of the language model's
/// ranks (the homogeneous arrangement: encoders on the LLM's first pipeline stage).
pub fn nested_in_language_model(model: &ModelGraph, plan: &Plan) -> bool {
    let lm: BTreeSet<Rank> = plan
        .module(model.language_model())
        .grid
        .ranks()
        .iter()
        .copied()
        .collect();
    plan.schedule.kind.is_colocated()
        && plan
            .modules()
            .iter()
            .all(|mp| mp.grid.ranks().iter().all(|r| lm.contains(r)))
}

/// Modules on identical ranks grouped, in topological order, with each group's first global
/// pipeline stage (groups chain as stages, encoders upstream) and the pipeline's depth.
pub struct Pipeline {
    pub group_of: Vec<usize>,
    pub groups: Vec<Vec<usize>>,
    pub offset: Vec<u32>,
    pub depth: u32,
}

pub fn pipeline_groups(model: &ModelGraph, plan: &Plan) -> Pipeline {
    let topo: Vec<usize> = model
        .topological_order()
        .iter()
        .map(|m| m.index())
        .collect();
    let sets: Vec<BTreeSet<Rank>> = plan
        .modules()
        .iter()
        .map(|mp| mp.grid.ranks().iter().copied().collect())
        .collect();
    let mut group_of = vec![usize::MAX; sets.len()];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &m in &topo {
        match groups.iter().position(|g| sets[g[0]] == sets[m]) {
            Some(g) => {
                group_of[m] = g;
                groups[g].push(m);
            }
            None => {
                group_of[m] = groups.len();
                groups.push(vec![m]);
            }
        }
    }
    let mut offset = vec![0u32; groups.len()];
    for &m in &topo {
        for bid in model.outgoing(ModuleId::new(m)) {
            let t = model.boundary(bid).to.index();
            let (gf, gt) = (group_of[m], group_of[t]);
            if gf != gt {
                offset[gt] = offset[gt].max(offset[gf] + plan.modules()[m].layout.pp);
            }
        }
    }
    let depth = groups
        .iter()
        .enumerate()
        .map(|(g, ms)| offset[g] + plan.modules()[ms[0]].layout.pp)
        .max()
        .unwrap_or(1);
    Pipeline {
        group_of,
        groups,
        offset,
        depth,
    }
}

/// The 1F1B sequence with `w` warm-up forwards: (forward?, micro-batch).
pub fn one_f_one_b(w: u32, m: u32) -> Vec<(bool, u32)> {
    let mut v = Vec::with_capacity(2 * m as usize);
    for j in 0..w {
        v.push((true, j));
    }
    for i in 0..m - w {
        v.push((true, w + i));
        v.push((false, i));
    }
    for j in m - w..m {
        v.push((false, j));
    }
    v
}

/// Megatron's interleaved 1F1B for stage `s` of `p` with `v` chunks and `m` micro-batches:
/// (forward?, micro-batch, chunk).
pub fn interleaved(p: u32, v: u32, s: u32, m: u32) -> Vec<(bool, u32, u32)> {
    let total = v * m;
    let fwd = |k: u32| ((k / (p * v)) * p + k % p, (k / p) % v);
    let bwd = |k: u32| ((k / (p * v)) * p + k % p, v - 1 - (k / p) % v);
    let warm = ((p - s - 1) * 2 + (v - 1) * p).min(total);
    let mut out = Vec::with_capacity(2 * total as usize);
    for k in 0..warm {
        let (j, c) = fwd(k);
        out.push((true, j, c));
    }
    for i in 0..total - warm {
        let (j, c) = fwd(warm + i);
        out.push((true, j, c));
        let (j, c) = bwd(i);
        out.push((false, j, c));
    }
    for k in total - warm..total {
        let (j, c) = bwd(k);
        out.push((false, j, c));
    }
    out
}
