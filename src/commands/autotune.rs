//! `hetpar autotune`: plan, run the best candidates, fit the cost model to them, re-plan.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::autotune::{autotune, json_report, render, AutotuneOptions};

use super::{emit, print_diagnostics, print_stdout, Attention};
use crate::Format;

/// The log's file name: beside `-o`'s output, or in the current directory without `-o`.
const LOG_NAME: &str = "autotune-log.jsonl";

#[derive(clap::Args)]
pub struct Args {
    /// The model: one the reference model computes (`docs/reference-model.md`).
    #[arg(long)]
    pub model: PathBuf,
    /// The cluster: `cpu_thread` ranks for the CPU backend.
    #[arg(long)]
    pub cluster: PathBuf,
    /// Candidates of the search to run, the winner first, besides the best homogeneous plan.
    #[arg(long, default_value_t = 4)]
    pub top: usize,
    /// Training steps per candidate and round (the first, which warms up, is left out).
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Rounds: every candidate runs once per round; each round is scaled by its speed (how its
    /// plans ran against their usual), so the machine's changes of speed cancel; a plan's
    /// time is the median of its rounds.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    #[command(flatten)]
    pub calibration: super::CalibrationArg,
    /// Measurements are appended here as they are taken; plans already in it are not run
    /// again (an interrupted autotune resumes). Default: `autotune-log.jsonl` beside the `-o`
    /// output, or in the current directory without `-o`.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Write the fitted calibration here (atomically).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Attention kernel the cost model assumes.
    #[arg(long, value_enum, default_value = "flash")]
    pub attention: Attention,
    /// The report on stdout: a table, or one JSON document (every measured plan with its
    /// predictions before and after calibration, measured time and relative errors; the
    /// fitted constants; the fit's stop reason).
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `--log`, or its default beside `-o`'s output.
fn log_path(a: &Args) -> PathBuf {
    if let Some(l) = &a.log {
        return l.clone();
    }
    match a.output.as_deref().and_then(std::path::Path::parent) {
        Some(dir) => dir.join(LOG_NAME),
        None => PathBuf::from(LOG_NAME),
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let log = log_path(&a);
    let inputs = a.calibration.with(&[&a.model, &a.cluster]);
    super::check_output("--log", Some(&log), &inputs)?;
    super::check_output("-o", a.output.as_deref(), &[&inputs[..], &[&log]].concat())?;
    let Some((model, cluster)) = load(&a) else {
        return Ok(ExitCode::from(1));
    };
    let base = a.calibration.load()?;
    let opts = AutotuneOptions {
        top: a.top.max(1),
        steps: a.steps.max(2),
        rounds: a.rounds.max(1),
        attention: a.attention.options().attention,
        ..AutotuneOptions::default()
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} measuring {msg}")
                .expect("a valid template"),
        );
        b
    });
    let report = autotune(
        &model,
        &cluster,
        base.as_ref(),
        &opts,
        &[],
        &log,
        &mut |i, n, what| match &bar {
            Some(b) => {
                b.set_length(n as u64);
                b.set_position(i as u64);
                b.set_message(what.to_string());
            }
            None => eprintln!("measuring {}/{n}: {what}", i + 1),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    print_stdout(&match a.format {
        Format::Human => render(&report),
        Format::Json => hetpar::ir::json::to_canonical_json(&json_report(&report)),
    });
    if let Some(out) = &a.output {
        emit(
            &hetpar::ir::json::to_canonical_json(&report.calibration),
            Some(out),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn load(a: &Args) -> Option<(hetpar::ir::ModelGraph, hetpar::ir::Cluster)> {
    let read = |p: &PathBuf| match hetpar::io::read_text(p) {
        Ok(t) => Some(t),
        Err(ds) => {
            print_diagnostics(&ds);
            None
        }
    };
    let (mt, ct) = (read(&a.model)?, read(&a.cluster)?);
    let model = match hetpar::ir::load_model(&mt) {
        Ok((g, _)) => Some(g),
        Err(ds) => {
            print_diagnostics(&ds.with_file(&a.model.display().to_string()));
            None
        }
    };
    let cluster = match hetpar::ir::load_cluster(&ct) {
        Ok(c) => Some(c),
        Err(ds) => {
            print_diagnostics(&ds.with_file(&a.cluster.display().to_string()));
            None
        }
    };
    Some((model?, cluster?))
}
