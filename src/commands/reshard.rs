//! `hetpar reshard`: synthesize every boundary's communication, forward and backward.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::planner::boundary::{synthesize_all_with, BoundaryReshard, Limits, Reshard};
use hetpar::report::{bytes, Table};

use super::emit;
use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::PlanFlags,
    /// Only this boundary (its name, e.g. "projector->llm").
    #[arg(long)]
    boundary: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Add the e-graph statistics and the rules that fired.
    #[arg(long)]
    explain: bool,
    /// With --format json: add the transfer plan itself (per micro-batch, every send with its
    /// row ranges, every broadcast and all-gather). Large for big clusters.
    #[arg(long)]
    transfers: bool,
    /// E-graph iteration limit, of the deliveries' e-graph and of the composition's (0: no
    /// rewrite, every boundary takes its direct program).
    #[arg(long, default_value_t = Limits::default().iterations)]
    iterations: usize,
    /// E-graph node limit.
    #[arg(long, default_value_t = Limits::default().nodes)]
    nodes: usize,
    /// Every boundary's direct program: the producer's collective, then the transfer, never
    /// composed into one (what the e-graph's choice is compared with).
    #[arg(long)]
    direct: bool,
    /// Also simulate the plan's step with the chosen programs and with the direct ones,
    /// side by side (`step` in the JSON).
    #[arg(long)]
    step: bool,
    /// Write the result here (atomically) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    calibration: super::CalibrationArg,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    boundaries: &'a [BoundaryReshard],
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<Step>,
}

/// The plan's simulated step with every boundary's chosen program and with its direct one,
/// and the cost model's stated error of a step time on the cluster's GPU model (a fraction).
#[derive(serde::Serialize)]
struct Step {
    chosen_s: f64,
    direct_s: f64,
    stated_error: f64,
}

fn step(
    model: &hetpar::ir::model::ModelGraph,
    cluster: &hetpar::ir::Cluster,
    plan: &hetpar::ir::Plan,
    opts: &hetpar::cost::Options,
    limits: Limits,
) -> anyhow::Result<Step> {
    let time = |compose| -> anyhow::Result<hetpar::cost::Estimate> {
        let l = Limits { compose, ..limits };
        let times = hetpar::planner::boundary::boundary_times_limited(
            model,
            cluster,
            plan,
            opts.constants,
            l,
        );
        Ok(hetpar::cost::estimate_with_boundaries(
            model, cluster, plan, opts, &times,
        )?)
    };
    let chosen = time(limits.compose)?;
    Ok(Step {
        chosen_s: chosen.iteration_time_s,
        direct_s: time(false)?.iteration_time_s,
        stated_error: chosen.stated_error.time,
    })
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let inputs = a.calibration.with(&a.inputs.paths());
    super::check_output("-o", a.output.as_deref(), &inputs)?;
    let Some((model, mut cluster, plan)) = a.inputs.load() else {
        return Ok(ExitCode::from(1));
    };
    let mut opts = hetpar::cost::Options::default();
    a.calibration.apply(&mut cluster, &mut opts)?;
    if let Some(name) = &a.boundary {
        if !model.boundaries().iter().any(|b| &b.name == name) {
            let names: Vec<&str> = model.boundaries().iter().map(|b| b.name.as_str()).collect();
            eprintln!(
                "error: {}: no boundary named \"{name}\"; the model has: {}",
                a.inputs.model.display(),
                names.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
    }
    let limits = Limits {
        iterations: a.iterations,
        nodes: a.nodes,
        compose: !a.direct,
    };
    let step = if a.step {
        Some(step(&model, &cluster, &plan, &opts, limits)?)
    } else {
        None
    };
    let all = synthesize_all_with(
        &model,
        &cluster,
        &plan,
        limits,
        a.boundary.as_deref(),
        opts.constants,
    );
    let text = match a.format {
        Format::Json => {
            let mut v = serde_json::to_value(Report {
                boundaries: &all,
                step,
            })?;
            for (b, synth) in v["boundaries"]
                .as_array_mut()
                .into_iter()
                .flatten()
                .zip(&all)
            {
                for (dir, r) in [("forward", &synth.forward), ("backward", &synth.backward)] {
                    if let Some(o) = b[dir].as_object_mut() {
                        if !a.explain {
                            o.remove("stats");
                        }
                        if a.transfers {
                            o.insert("micro_batches".into(), serde_json::to_value(&r.plans)?);
                        }
                    }
                }
            }
            hetpar::ir::json::to_canonical_json(&v)
        }
        Format::Human => {
            let mut s = human(&all, a.explain);
            if let Some(st) = &step {
                let _ = writeln!(
                    s,
                    "step (simulated): {:.4} s with the chosen programs, {:.4} s with the direct ones ({:+.2}%); predictions within the cost model's stated error of {:.1}%",
                    st.chosen_s,
                    st.direct_s,
                    (st.chosen_s / st.direct_s - 1.0) * 100.0,
                    st.stated_error * 100.0
                );
            }
            s
        }
    };
    emit(&text, a.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

fn human(all: &[BoundaryReshard], explain: bool) -> String {
    let mut s = String::new();
    let mut t = Table::new(&[
        "boundary",
        "direction",
        "bytes",
        "lower bound",
        "network",
        "time",
        "direct",
        "sends",
        "bcasts",
        "all-gathers",
        "calls",
        "baseline bytes",
        "baseline time",
    ]);
    let row = |t: &mut Table, b: &BoundaryReshard, r: &Reshard, base: bool| {
        t.row(vec![
            b.name.clone(),
            r.direction.to_string(),
            bytes(r.bytes as f64),
            bytes(r.lower_bound_bytes as f64),
            bytes(r.network_bytes as f64),
            format!("{:.3} ms", r.time_s * 1e3),
            format!("{:.3} ms", r.egraph.direct_time_s * 1e3),
            r.sends.to_string(),
            r.broadcasts.to_string(),
            r.all_gathers.to_string(),
            r.fused_calls.to_string(),
            if base {
                bytes(b.baseline.bytes as f64)
            } else {
                String::new()
            },
            if base {
                format!("{:.3} ms", b.baseline.time_s * 1e3)
            } else {
                String::new()
            },
        ]);
    };
    for b in all {
        row(&mut t, b, &b.forward, true);
        row(&mut t, b, &b.backward, false);
    }
    s.push_str(&t.render());
    if explain {
        for b in all {
            for r in [&b.forward, &b.backward] {
                let st = &r.stats;
                let fired: Vec<String> = st
                    .rules_fired
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                let chosen: Vec<String> = r
                    .strategies
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                let _ = writeln!(
                    s,
                    "{} {}: {} flow shapes, e-graph {} iterations, {} nodes, {} classes, stop: {}; rules fired: {}; flows delivered: {}",
                    b.name,
                    r.direction,
                    st.flows,
                    st.iterations,
                    st.enodes,
                    st.eclasses,
                    st.stop_reason,
                    if fired.is_empty() { "none".into() } else { fired.join(", ") },
                    chosen.join(", ")
                );
                let e = &r.egraph;
                if !e.program.is_empty() {
                    let _ = writeln!(
                        s,
                        "  program {} (rules: {}), {:.3} ms against {:.3} ms direct; extraction: {} selections, {}",
                        e.program,
                        if e.rules_fired.is_empty() { "none".into() } else { e.rules_fired.join(", ") },
                        r.time_s * 1e3,
                        e.direct_time_s * 1e3,
                        e.selections,
                        e.stop_reason
                    );
                }
            }
        }
    }
    s
}
