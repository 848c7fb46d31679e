//! `hetpar plan`: search the best plan, compare it with the best homogeneous plan.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use hetpar::planner::search::{
    search, Candidate, CandidateKind, Objective, PlacementChoice, SearchOptions, SearchResult,
};
use hetpar::report::{bytes, bytes3, pad, significant, stated_error_line, with_band, Table};
use hetpar::{examples, io};

use super::{emit, print_diagnostics};
use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// A hetpar model file; the embedded LLaVA-1.5-7B example when omitted.
    #[arg(long)]
    model: Option<PathBuf>,
    /// A cluster file; the embedded 8 x H100 node when omitted.
    #[arg(long)]
    cluster: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "throughput")]
    objective: ObjectiveArg,
    #[arg(long, value_enum, default_value = "any")]
    placement: PlacementArg,
    /// Alternatives to list after the winner.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// Write the chosen plan here (atomically): a valid input for every other command.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Say why the winner beats the runner-up and the homogeneous plan.
    #[arg(long)]
    explain: bool,
    /// Search the homogeneous plan only (every module takes the language model's layout).
    #[arg(long)]
    homogeneous_only: bool,
    /// Keep to what hetpar's runtime executes (no TP communication overlap, CP by
    /// all-gather), so that `hetpar run` and `launch` take the plan; without it the search
    /// may choose either kind.
    #[arg(long)]
    runnable: bool,
    /// Closed-form evaluations before the search stops.
    #[arg(long, default_value_t = SearchOptions::default().max_evaluations)]
    max_evaluations: usize,
    #[command(flatten)]
    calibration: super::CalibrationArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ObjectiveArg {
    Throughput,
    TflopsPerGpu,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlacementArg {
    Colocated,
    NonColocated,
    Any,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let given: Vec<&std::path::Path> = a
        .model
        .iter()
        .chain(&a.cluster)
        .map(|p| p.as_path())
        .collect();
    super::check_output("-o", a.output.as_deref(), &a.calibration.with(&given))?;
    let read = |p: &Option<PathBuf>, default: (&str, &str)| -> Result<(String, String), ()> {
        match p {
            Some(p) => io::read_text(p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|ds| print_diagnostics(&ds)),
            None => Ok((default.0.to_string(), default.1.to_string())),
        }
    };
    let (Ok((mname, mtext)), Ok((cname, ctext))) = (
        read(&a.model, examples::MODEL),
        read(&a.cluster, examples::CLUSTER),
    ) else {
        return Ok(ExitCode::from(1));
    };
    let model = match hetpar::ir::load_model(&mtext) {
        Ok((g, w)) => {
            print_diagnostics(&w.with_file(&mname));
            g
        }
        Err(ds) => {
            print_diagnostics(&ds.with_file(&mname));
            return Ok(ExitCode::from(1));
        }
    };
    let mut cluster = match hetpar::ir::load_cluster(&ctext) {
        Ok(c) => c,
        Err(ds) => {
            print_diagnostics(&ds.with_file(&cname));
            return Ok(ExitCode::from(1));
        }
    };
    let mut cost = hetpar::cost::Options::default();
    a.calibration.apply(&mut cluster, &mut cost)?;
    let opts = SearchOptions {
        constants: cost.constants,
        objective: match a.objective {
            ObjectiveArg::Throughput => Objective::Throughput,
            ObjectiveArg::TflopsPerGpu => Objective::TflopsPerGpu,
        },
        placement: match a.placement {
            PlacementArg::Colocated => PlacementChoice::Colocated,
            PlacementArg::NonColocated => PlacementChoice::NonColocated,
            PlacementArg::Any => PlacementChoice::Any,
        },
        top_k: a.top,
        heterogeneous: !a.homogeneous_only,
        max_evaluations: a.max_evaluations,
        runnable: a.runnable,
        ..SearchOptions::default()
    };
    // A spinner on stderr for searches longer than a second, in human mode on a terminal.
    let show = a.format == Format::Human && std::io::stderr().is_terminal();
    let result = std::thread::scope(|scope| {
        let worker = scope.spawn(|| search(&model, &cluster, opts));
        let mut bar: Option<indicatif::ProgressBar> = None;
        let mut waited = Duration::ZERO;
        while !worker.is_finished() {
            std::thread::sleep(Duration::from_millis(50));
            waited += Duration::from_millis(50);
            if show && bar.is_none() && waited >= Duration::from_secs(1) {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_message(format!(
                    "searching plans for {} on {} GPUs",
                    model.name(),
                    cluster.world_size()
                ));
                b.enable_steady_tick(Duration::from_millis(100));
                bar = Some(b);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        worker.join()
    });
    let mut result = match result {
        Ok(r) => r,
        Err(p) => std::panic::resume_unwind(p),
    };
    // Every reported plan carries its cluster's size with its name: checked later against a
    // cluster that kept the name but not the size, it warns (plan.cluster_size).
    let gpus = u32::try_from(cluster.world_size()).ok();
    for c in result
        .best
        .iter_mut()
        .chain(result.homogeneous.iter_mut())
        .chain(result.top.iter_mut())
    {
        c.plan.cluster_gpus = gpus;
    }
    let Some(best) = &result.best else {
        eprintln!(
            "error: no feasible plan for {} on {} ({} candidates priced, {} over memory, {} rejected by the verifier)",
            model.name(),
            cluster.name,
            result.stats.candidates,
            result.stats.pruned_memory,
            result.stats.invalid
        );
        return Ok(ExitCode::from(1));
    };
    if let Some(out) = &a.output {
        emit(&hetpar::ir::json::to_canonical_json(&best.plan), Some(out))?;
    }
    let text = match a.format {
        Format::Json => hetpar::ir::json::to_canonical_json(&json_report(&result)),
        Format::Human => human(&result, a.explain),
    };
    emit(&text, None)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct Metrics {
    feasible: bool,
    iteration_time_s: f64,
    tokens_per_s: f64,
    tflops_per_gpu: f64,
    mfu: f64,
    peak_memory_bytes: f64,
    bubble_fraction: f64,
    stated_error: hetpar::cost::StatedError,
}

fn metrics(c: &Candidate) -> Option<Metrics> {
    c.estimate.as_ref().map(|e| Metrics {
        feasible: e.feasible,
        iteration_time_s: e.iteration_time_s,
        tokens_per_s: e.tokens_per_s,
        tflops_per_gpu: e.tflops_per_gpu,
        mfu: e.mfu,
        peak_memory_bytes: e.peak_memory_bytes,
        bubble_fraction: e.bubble_fraction,
        stated_error: e.stated_error,
    })
}

fn gain(r: &SearchResult) -> Option<f64> {
    let b = r.best.as_ref()?.estimate.as_ref()?;
    let h = r.homogeneous.as_ref()?.estimate.as_ref()?;
    Some(h.iteration_time_s / b.iteration_time_s - 1.0)
}

fn json_report(r: &SearchResult) -> serde_json::Value {
    serde_json::json!({
        "plan": r.best.as_ref().map(|b| &b.plan),
        "kind": r.best.as_ref().map(|b| b.kind),
        "metrics": r.best.as_ref().and_then(metrics),
        "homogeneous": {
            "plan": r.homogeneous.as_ref().map(|h| &h.plan),
            "metrics": r.homogeneous.as_ref().and_then(metrics),
        },
        "gain": gain(r),
        "top": r.top.iter().map(|c| serde_json::json!({"plan": &c.plan, "kind": c.kind, "metrics": metrics(c)})).collect::<Vec<_>>(),
        "warnings": &r.warnings,
        "stats": &r.stats,
    })
}

/// One line per module: name, layout and ranks.
pub fn describe_plan(c: &Candidate) -> String {
    let mut s = String::new();
    for (name, m) in &c.plan.modules {
        let l = &m.layout;
        let r = &m.placement.ranks;
        let mut knobs = vec![
            format!("tp{}", l.tp),
            format!("cp{}", l.cp),
            format!("pp{}", l.pp),
            format!("dp{}", l.dp.unwrap_or(0)),
        ];
        if l.vpp > 1 {
            knobs.push(format!("vpp{}", l.vpp));
        }
        if l.ep > 1 {
            knobs.push(format!("ep{}", l.ep));
        }
        if l.sequence_parallel {
            knobs.push("sp".into());
        }
        if l.tp_comm_overlap {
            knobs.push("tp-comm-overlap".into());
        }
        if l.cp > 1 && l.cp_comm != Default::default() {
            knobs.push(format!("cp-comm {}", l.cp_comm.as_str()));
        }
        knobs.push(format!("mbs{}", l.micro_batch_size));
        knobs.push(format!("recompute {:?}", l.recompute.policy).to_lowercase());
        if let Some(st) = &l.stage_layers {
            knobs.push(format!("stages {st:?}"));
        }
        let _ = writeln!(
            s,
            "  {} {:<55} ranks {}..{}",
            pad(name, 16),
            knobs.join(" "),
            r.offset.unwrap_or(0),
            r.offset.unwrap_or(0) + r.count.unwrap_or(0)
        );
    }
    let sch = &c.plan.schedule;
    let _ = writeln!(
        s,
        "  schedule {}{}",
        serde_json::to_value(sch.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        sch.encoder_chunk
            .map(|k| format!(" (encoder_chunk {k})"))
            .unwrap_or_default()
    );
    s
}

fn kind_label(k: CandidateKind) -> &'static str {
    match k {
        CandidateKind::Heterogeneous => "heterogeneous",
        CandidateKind::Homogeneous => "homogeneous",
        CandidateKind::SingleModule => "one module",
    }
}

fn placement_label(c: &Candidate) -> &'static str {
    if c.placements() == 1 {
        "colocated"
    } else if c.plan.schedule.kind.is_colocated() {
        "nested"
    } else {
        "split"
    }
}

fn schedule_label(sch: &hetpar::ir::plan::ScheduleSpec) -> String {
    let kind = serde_json::to_value(sch.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match sch.encoder_chunk {
        Some(k) => format!("{kind} k{k}"),
        None => kind,
    }
}

/// Every module's layout in a few characters: `name tp cp pp dp [vpp ep overlap ring] mbs
/// recompute`.
fn layouts_label(c: &Candidate) -> String {
    c.plan
        .modules
        .iter()
        .map(|(n, m)| {
            let l = &m.layout;
            let mut v = format!("{n} {}/{}/{}/{}", l.tp, l.cp, l.pp, l.dp.unwrap_or(0));
            if l.vpp > 1 {
                let _ = write!(v, " v{}", l.vpp);
            }
            if l.ep > 1 {
                let _ = write!(v, " e{}", l.ep);
            }
            if l.tp_comm_overlap {
                v.push_str(" overlap");
            }
            if l.cp > 1 && l.cp_comm != Default::default() {
                let _ = write!(v, " {}", l.cp_comm.as_str());
            }
            let _ = write!(v, " m{}", l.micro_batch_size);
            let r = format!("{:?}", l.recompute.policy).to_lowercase();
            if r != "none" {
                let _ = write!(v, " {r}");
            }
            v
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn line(label: &str, c: &Candidate) -> String {
    match &c.estimate {
        Some(e) => format!(
            "{label}: {} per step, {} TFLOP/s per GPU, MFU {}%, peak memory {} ± {}, bubble {:.1}%\n",
            with_band(e.iteration_time_s, "s", e.stated_error.time),
            significant(e.tflops_per_gpu, 3),
            significant(100.0 * e.mfu, 3),
            bytes3(e.peak_memory_bytes),
            hetpar::report::percent(e.stated_error.memory),
            100.0 * e.bubble_fraction
        ),
        None => format!("{label}: {:.3} s per step (closed form)\n", c.quick_time_s),
    }
}

fn human(r: &SearchResult, explain: bool) -> String {
    let mut s = String::new();
    if let Some(b) = &r.best {
        let label = match b.kind {
            CandidateKind::SingleModule => {
                "best plan (one module: heterogeneity does not apply)".to_string()
            }
            k => format!("best plan ({})", kind_label(k)),
        };
        s += &line(&label, b);
        s += &describe_plan(b);
    }
    if let Some(h) = &r.homogeneous {
        s += &line("best homogeneous plan", h);
        s += &describe_plan(h);
    }
    if let Some(g) = gain(r) {
        let _ = writeln!(
            s,
            "gain over the homogeneous plan: {:+.1}% throughput",
            100.0 * g
        );
    }
    if !r.top.is_empty() {
        let _ = writeln!(s, "\nalternatives:");
        let err = r
            .top
            .iter()
            .find_map(|c| c.estimate.as_ref().map(|e| e.stated_error));
        let band = |f: fn(&hetpar::cost::StatedError) -> f64| {
            err.as_ref().map_or(String::new(), |e| {
                format!(" ± {}", hetpar::report::percent(f(e)))
            })
        };
        let (time_head, memory_head) = (
            format!("time (s{})", band(|e| e.time)),
            format!("memory{}", band(|e| e.memory)),
        );
        let mut t = Table::new(&[
            "#",
            "kind",
            "placement",
            "schedule",
            "layouts",
            &time_head,
            &memory_head,
            "MFU",
        ]);
        for (i, c) in r.top.iter().enumerate() {
            let e = c.estimate.as_ref();
            t.row(vec![
                (i + 1).to_string(),
                kind_label(c.kind).into(),
                placement_label(c).into(),
                schedule_label(&c.plan.schedule),
                layouts_label(c),
                e.map_or(format!("~{}", significant(c.quick_time_s, 3)), |e| {
                    significant(e.iteration_time_s, 3)
                }),
                e.map_or(String::new(), |e| bytes3(e.peak_memory_bytes)),
                e.map_or(String::new(), |e| {
                    format!("{}%", significant(100.0 * e.mfu, 3))
                }),
            ]);
        }
        s += &t.render();
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    if let Some(e) = r.best.as_ref().and_then(|b| b.estimate.as_ref()) {
        let _ = writeln!(s, "stated error: {}", stated_error_line(&e.stated_error));
    }
    let st = &r.stats;
    let _ = writeln!(
        s,
        "\nsearch: {} module options priced, {} joint choices evaluated, {} boundaries synthesized, {} without a fitting choice, {} bounded out, {} rejected, {} simulated, {:.2} s ({})",
        st.candidates, st.evaluations, st.synthesized, st.pruned_memory, st.pruned_bound, st.invalid, st.simulated, st.elapsed_s, st.stop_reason
    );
    if explain {
        s += &explanation(r);
    }
    s
}

fn explanation(r: &SearchResult) -> String {
    let mut s = String::from("\nwhy:\n");
    let Some(b) = r.best.as_ref().and_then(|b| b.estimate.as_ref()) else {
        return s;
    };
    let mut versus = |label: &str, o: &hetpar::cost::Estimate| {
        let (x, y) = (&b.time_breakdown, &o.time_breakdown);
        let _ = writeln!(
            s,
            "  against {label}: {:+.3} s per step; on the last rank compute {:+.3} s, recompute {:+.3}, tp {:+.3}, cp {:+.3}, grad sync {:+.3}, idle {:+.3}; bubble {:+.1} points; peak memory {}",
            b.iteration_time_s - o.iteration_time_s,
            x.compute - y.compute,
            x.recompute - y.recompute,
            x.tp_comm - y.tp_comm,
            x.cp_comm - y.cp_comm,
            x.grad_sync - y.grad_sync,
            x.idle - y.idle,
            100.0 * (b.bubble_fraction - o.bubble_fraction),
            if b.peak_memory_bytes <= o.peak_memory_bytes { format!("{} lower", bytes(o.peak_memory_bytes - b.peak_memory_bytes)) } else { format!("{} higher", bytes(b.peak_memory_bytes - o.peak_memory_bytes)) }
        );
    };
    if let Some(o) = r.top.first().and_then(|c| c.estimate.as_ref()) {
        versus("the runner-up", o);
    }
    if let Some(o) = r.homogeneous.as_ref().and_then(|c| c.estimate.as_ref()) {
        versus("the homogeneous plan", o);
    }
    for (label, c) in [
        ("best plan", r.best.as_ref()),
        ("homogeneous plan", r.homogeneous.as_ref()),
    ] {
        let Some(c) = c else { continue };
        let _ = writeln!(
            s,
            "  {label}, per module (closed form: step work on the busiest replica, units, most memory on one rank for it alone, tail):"
        );
        for m in &c.modules {
            let _ = writeln!(
                s,
                "    {} {:>8.3} s  {:>4} units  {:>10}  tail {:.3} s",
                pad(&m.name, 16),
                m.work_s,
                m.units,
                bytes(m.memory_bytes),
                m.tail_s
            );
        }
    }
    s
}
