//! The autotune loop (`hetpar autotune`, `docs/autotune.md`): plan, run the best candidates on
//! the backend, fit the cost model's efficiency constants to what they measured, re-plan with
//! the fitted constants, and report predicted against measured before and after.
//!
//! Measurements are appended to a log (one JSON line per plan) as they are taken, so an
//! interrupted autotune resumes where it stopped: a plan already in the log is not run again.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use hetpar_cost::calibration::{fit, Calibration, Fit, Measurement};
use hetpar_cost::{AttentionKernel, Constants, Options};
use hetpar_ir::json::to_canonical_json;
use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::PlanFile;
use hetpar_ir::{Cluster, Plan};
use hetpar_planner::search::{search, PlacementChoice, SearchOptions};
use hetpar_runtime::exec::generated::synthetic_batches;
use hetpar_runtime::exec::{run, RunOptions};
use hetpar_runtime::reference::{Config, Params};

mod report;
pub use report::{json_report, render, JsonReport};

/// How to autotune.
#[derive(Clone, Debug)]
pub struct AutotuneOptions {
    /// Candidates of the search to run (the winner first), besides the best homogeneous plan
    /// and the best plan of the other placement (colocated or not).
    pub top: usize,
    /// Training steps per candidate and round; the first of each run is left out (it warms
    /// up).
    pub steps: usize,
    /// Rounds of measurement: every candidate runs once per round, round after round; each
    /// round's times are divided by the round's speed (the median over its plans of their time
    /// against their usual), so that the machine's changes of speed between rounds cancel,
    /// and a plan's time is the median of its rounds.
    pub rounds: usize,
    pub attention: AttentionKernel,
    /// The fit's evaluation limit.
    pub max_fit_evaluations: usize,
}

impl Default for AutotuneOptions {
    fn default() -> Self {
        AutotuneOptions {
            top: 4,
            steps: 6,
            rounds: 5,
            attention: AttentionKernel::Flash,
            max_fit_evaluations: 600,
        }
    }
}

/// What one plan measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Identifies the plan, model, cluster and step count.
    pub key: String,
    pub plan: PlanFile,
    pub steps: usize,
    /// The round of measurement it belongs to.
    #[serde(default)]
    pub round: usize,
    /// Median step time, the first step left out, s.
    pub step_s: f64,
    /// The largest per-rank peak of resident bytes.
    pub peak_bytes: u64,
    /// Slowest round over fastest (1 for a single round).
    #[serde(default = "one")]
    pub spread: f64,
}

fn one() -> f64 {
    1.0
}

/// A plan's role in the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Measured and fitted to.
    Fitted,
    /// Measured, not fitted to: a check of the fit.
    HeldOut,
    /// The calibrated choice, measured after the fit.
    Final,
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub label: String,
    pub role: Role,
    pub predicted_before_s: f64,
    pub predicted_after_s: f64,
    pub measured: Measured,
    pub predicted_peak_bytes: f64,
}

/// The outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub fit: Fit,
    /// Rows of the choice before calibration (the search's winner) and after.
    pub uncalibrated_choice: usize,
    pub final_choice: usize,
    /// The fitted calibration (source `autotune`).
    pub calibration: Calibration,
}

/// A stable key: FNV-1a of the canonical plan, with the model, cluster and step count.
fn key(model: &ModelGraph, cluster: &Cluster, plan: &PlanFile, steps: usize) -> String {
    let text = format!(
        "{}\n{}\n{steps}\n{}",
        model.name(),
        cluster.name,
        to_canonical_json(plan)
    );
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn build(model: &ModelGraph, cluster: &Cluster, plan: &PlanFile) -> anyhow::Result<Plan> {
    let value = serde_json::to_value(plan)?;
    hetpar_ir::plan_from_value(&value, model, cluster)
        .map(|(p, _)| p)
        .map_err(|d| anyhow::anyhow!("a candidate plan does not verify: {d:?}"))
}

/// Runs `plan` for `steps` steps on the CPU backend.
pub fn measure(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &PlanFile,
    steps: usize,
) -> anyhow::Result<Measured> {
    let built = build(model, cluster, plan)?;
    let program = hetpar_planner::lower::lower(model, cluster, &built)?;
    let cfg = Config::from_model(model)?;
    let init = Params::init(&cfg, 0)?;
    let batches = synthetic_batches(model, &cfg, 0, steps)?;
    let steps = steps.max(2);
    let out = run(
        &program,
        &cfg,
        &init,
        &batches,
        &RunOptions {
            steps,
            lr: 1e-3,
            timeout: Duration::from_secs(120),
            backend: Default::default(),
            save: None,
        },
    )?;
    let mut t: Vec<f64> = out.step_seconds[1..].to_vec();
    t.sort_by(f64::total_cmp);
    Ok(Measured {
        key: key(model, cluster, plan, steps),
        plan: plan.clone(),
        steps,
        round: 0,
        step_s: t[t.len() / 2],
        peak_bytes: out.peak_bytes.iter().map(|p| p.1 as u64).max().unwrap_or(0),
        spread: 1.0,
    })
}

/// A measurement's place in the log: the plan's key and the round.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogKey {
    pub plan: String,
    pub round: usize,
}

/// The measurements of a log, by key and round (lines that do not parse are skipped: a line
/// cut by an interruption).
pub fn read_log(path: &Path) -> BTreeMap<LogKey, Measured> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<Measured>(l).ok())
        .map(|m| {
            let k = LogKey {
                plan: m.key.clone(),
                round: m.round,
            };
            (k, m)
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One plan's rounds as one measurement: each round's time divided by that round's speed
/// factor (1 for a round at the usual speed), so that the machine's changes of speed between
/// rounds cancel; the plan's time is the median of the scaled rounds, its spread the slowest
/// over the fastest; the largest peak.
fn combine(rounds: &[Measured], speed: &[f64]) -> Measured {
    let scaled: Vec<f64> = rounds
        .iter()
        .zip(speed)
        .map(|(m, f)| m.step_s / f)
        .collect();
    let fastest = scaled.iter().copied().fold(f64::INFINITY, f64::min);
    let slowest = scaled.iter().copied().fold(0.0, f64::max);
    Measured {
        step_s: median(&scaled),
        spread: slowest / fastest,
        peak_bytes: rounds.iter().map(|m| m.peak_bytes).max().unwrap_or(0),
        ..rounds[0].clone()
    }
}

fn append_log(path: &Path, m: &Measured) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let line = format!("{}\n", serde_json::to_string(m)?);
    f.write_all(line.as_bytes())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// A plan's one-line label: each module's degrees, then the schedule.
pub fn label(plan: &PlanFile) -> String {
    let mut parts: Vec<String> = plan
        .modules
        .iter()
        .map(|(name, m)| {
            let l = &m.layout;
            let mut s = format!("{name} ");
            for (k, v) in [("tp", l.tp), ("cp", l.cp), ("pp", l.pp)] {
                if v > 1 {
                    s += &format!("{k}{v} ");
                }
            }
            if let Some(d) = l.dp {
                s += &format!("dp{d} ");
            }
            if l.sequence_parallel {
                s += "sp ";
            }
            s += &format!("mbs{}", l.micro_batch_size);
            if let Some(o) = m.placement.ranks.offset {
                s += &format!(" @{o}");
            }
            s
        })
        .collect();
    parts.push(
        serde_json::to_value(plan.schedule.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
    );
    parts.join(", ")
}

/// Runs the loop: `base` is the calibration in force (or the built-in figures), `held_out`
/// plans are measured and reported but not fitted to, `log` keeps every measurement, and
/// `progress` hears of each plan as it starts.
#[allow(clippy::too_many_arguments)]
pub fn autotune(
    model: &ModelGraph,
    cluster: &Cluster,
    base: Option<&Calibration>,
    opts: &AutotuneOptions,
    held_out: &[PlanFile],
    log: &Path,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> anyhow::Result<Report> {
    let mut cluster = cluster.clone();
    let mut cost = Options {
        attention: opts.attention,
        constants: None,
    };
    let mut calibration = Calibration::built_in(cluster.gpu_model, "cpu", "autotune");
    if let Some(b) = base {
        b.apply(&mut cluster, &mut cost)
            .map_err(|e| anyhow::anyhow!("the calibration: {e}"))?;
        calibration.hardware = b.hardware.clone();
    }
    let before: Constants = cost
        .constants
        .unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model));
    let search_opts = |constants: Constants| SearchOptions {
        top_k: opts.top.saturating_sub(1),
        simulate: 12.max(opts.top + 2),
        attention: opts.attention,
        constants: Some(constants),
        distinct_alternatives: false,
        // Its candidates run on hetpar's runtime.
        runnable: true,
        ..SearchOptions::default()
    };
    let first = search(model, &cluster, search_opts(before));
    let mut candidates: Vec<(PlanFile, Role)> = Vec::new();
    let push = |p: &PlanFile, role: Role, v: &mut Vec<(PlanFile, Role)>| {
        if !v
            .iter()
            .any(|(q, _)| to_canonical_json(q) == to_canonical_json(p))
        {
            v.push((p.clone(), role));
        }
    };
    let best = first
        .best
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the search found no feasible plan"))?;
    push(&best.plan, Role::Fitted, &mut candidates);
    for c in first.top.iter().chain(first.homogeneous.as_ref()) {
        push(&c.plan, Role::Fitted, &mut candidates);
    }
    // The best plan of the other placement too (colocated or not), so that the fit sees both
    // kinds of schedule.
    let other = if best.plan.schedule.kind.is_colocated() {
        PlacementChoice::NonColocated
    } else {
        PlacementChoice::Colocated
    };
    let alt = search(
        model,
        &cluster,
        SearchOptions {
            placement: other,
            ..search_opts(before)
        },
    );
    // Its winner may be the homogeneous plan, which the search keeps whatever the placement.
    let wanted = |c: &&hetpar_planner::search::Candidate| {
        c.plan.schedule.kind.is_colocated() == (other == PlacementChoice::Colocated)
    };
    if let Some(c) = alt.best.iter().chain(&alt.top).find(wanted) {
        push(&c.plan, Role::Fitted, &mut candidates);
    }
    for p in held_out {
        push(p, Role::HeldOut, &mut candidates);
    }

    let mut logged = read_log(log);
    let rounds = opts.rounds.max(1);
    let mut measure_logged = |p: &PlanFile,
                              round: usize,
                              i: usize,
                              n: usize,
                              progress: &mut dyn FnMut(usize, usize, &str)|
     -> anyhow::Result<Measured> {
        let k = LogKey {
            plan: key(model, &cluster, p, opts.steps.max(2)),
            round,
        };
        if let Some(m) = logged.get(&k) {
            return Ok(m.clone());
        }
        progress(round * n + i, rounds * n, &label(p));
        let mut m = measure(model, &cluster, p, opts.steps)?;
        m.round = round;
        append_log(log, &m)?;
        logged.insert(k, m.clone());
        Ok(m)
    };
    let n = candidates.len();
    let mut per_round: Vec<Vec<Measured>> = vec![Vec::new(); n];
    for round in 0..rounds {
        for (i, (p, _)) in candidates.iter().enumerate() {
            per_round[i].push(measure_logged(p, round, i, n, progress)?);
        }
    }
    // Each round's speed: the median over the plans of their time in it relative to their
    // median (most plans of a round see the same machine).
    let level = |v: &[Measured]| median(&v.iter().map(|m| m.step_s).collect::<Vec<_>>());
    let levels: Vec<f64> = per_round.iter().map(|v| level(v)).collect();
    let speed: Vec<f64> = (0..rounds)
        .map(|r| {
            median(
                &per_round
                    .iter()
                    .zip(&levels)
                    .map(|(v, l)| v[r].step_s / l)
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let measured: Vec<Measured> = per_round.iter().map(|r| combine(r, &speed)).collect();

    // Predictions: boundary times once per plan, priced with the constants in force before the
    // fit (the fit moves the passes' constants; the transfers are a small share).
    let built: Vec<Plan> = candidates
        .iter()
        .map(|(p, _)| build(model, &cluster, p))
        .collect::<anyhow::Result<_>>()?;
    let times: Vec<_> = built
        .iter()
        .map(|p| hetpar_planner::boundary::boundary_times_with(model, &cluster, p, Some(before)))
        .collect();
    let predict = |c: &Constants, i: usize| -> Option<hetpar_cost::Estimate> {
        let o = Options {
            attention: opts.attention,
            constants: Some(*c),
        };
        hetpar_cost::estimate_with_boundaries(model, &cluster, &built[i], &o, &times[i]).ok()
    };
    let fitted_idx: Vec<usize> = (0..n)
        .filter(|&i| candidates[i].1 == Role::Fitted)
        .collect();
    let fitted_times: Vec<f64> = fitted_idx.iter().map(|&i| measured[i].step_s).collect();
    let result = fit(
        before,
        &fitted_times,
        &|c, k| predict(c, fitted_idx[k]).map(|e| e.iteration_time_s),
        opts.max_fit_evaluations,
    );
    let after = result.constants;

    // Re-plan with the fitted constants; measure the new choice if it is new.
    let second = search(model, &cluster, search_opts(after));
    let final_plan = second
        .best
        .map(|c| c.plan)
        .ok_or_else(|| anyhow::anyhow!("the calibrated search found no feasible plan"))?;
    let mut rows = Vec::new();
    let mut final_choice = None;
    for (i, ((p, role), m)) in candidates.iter().zip(&measured).enumerate() {
        if to_canonical_json(p) == to_canonical_json(&final_plan) {
            final_choice = Some(i);
        }
        let b = predict(&before, i);
        let a = predict(&after, i);
        rows.push(Row {
            label: label(p),
            role: *role,
            predicted_before_s: b.as_ref().map_or(f64::NAN, |e| e.iteration_time_s),
            predicted_after_s: a.as_ref().map_or(f64::NAN, |e| e.iteration_time_s),
            predicted_peak_bytes: a.as_ref().map_or(f64::NAN, |e| e.peak_memory_bytes),
            measured: m.clone(),
        });
    }
    let final_choice = match final_choice {
        Some(i) => i,
        None => {
            // More rounds of the pivot beside it, numbered after the first ones.
            let pivot_plan = candidates[0].0.clone();
            let (mut pivot, mut fin) = (Vec::new(), Vec::new());
            for r in rounds..2 * rounds {
                pivot.push(measure_logged(&pivot_plan, r, 0, 2, progress)?);
                fin.push(measure_logged(&final_plan, r, 1, 2, progress)?);
            }
            // Those rounds' speed: the pivot's time against its usual (the first rounds').
            let speed: Vec<f64> = pivot.iter().map(|p| p.step_s / levels[0]).collect();
            let m = combine(&fin, &speed);
            let plan = build(model, &cluster, &final_plan)?;
            let t =
                hetpar_planner::boundary::boundary_times_with(model, &cluster, &plan, Some(before));
            let est = |c: &Constants| {
                let o = Options {
                    attention: opts.attention,
                    constants: Some(*c),
                };
                hetpar_cost::estimate_with_boundaries(model, &cluster, &plan, &o, &t).ok()
            };
            let (b, a) = (est(&before), est(&after));
            rows.push(Row {
                label: label(&final_plan),
                role: Role::Final,
                predicted_before_s: b.as_ref().map_or(f64::NAN, |e| e.iteration_time_s),
                predicted_after_s: a.as_ref().map_or(f64::NAN, |e| e.iteration_time_s),
                predicted_peak_bytes: a.as_ref().map_or(f64::NAN, |e| e.peak_memory_bytes),
                measured: m,
            });
            rows.len() - 1
        }
    };
    calibration.constants = after;
    calibration.measurements = rows
        .iter()
        .map(|r| Measurement {
            kind: "step".into(),
            what: r.label.clone(),
            amount: f64::from(model.data().global_batch),
            seconds: r.measured.step_s,
        })
        .collect();
    Ok(Report {
        rows,
        fit: result,
        uncalibrated_choice: 0,
        final_choice,
        calibration,
    })
}

/// `hetpar profile --backend cpu`: the CPU backend's microbenchmarks, collectives over up to
/// the cluster's ranks (at most the machine's cores), as a calibration for `cluster`.
pub fn profile_cpu(cluster: &Cluster) -> anyhow::Result<Calibration> {
    if cluster.gpu_model != hetpar_ir::gpu::GpuModel::CpuThread {
        anyhow::bail!(
            "the CPU backend profiles ranks that are CPU threads (\"model\": \"cpu_thread\"), \
             but cluster `{}` has {}",
            cluster.name,
            cluster.gpu_model.as_str()
        );
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let ranks = (cluster.world_size() as usize).clamp(2, cores.max(2));
    let p = hetpar_runtime::profile::profile_cpu(ranks)?;
    let profile = hetpar_cost::calibration::Profile {
        matmuls: p
            .matmuls
            .iter()
            .map(|&(m, k, n, t)| (m as f64, k as f64, n as f64, t))
            .collect(),
        attention: p.attention,
        memory: p.memory,
        p2p: p.p2p,
        collectives: p.collectives,
    };
    Ok(hetpar_cost::calibration::from_profile(
        cluster.gpu_model,
        "cpu",
        &profile,
    ))
}
