//! `hetpar calibrate`: fits the cost model's efficiency constants to a file of published
//! measurements (`cost-models/data/`) and reports the error on the held-out rows and the
//! leave-one-out error over every row.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::cost::fit::{calibrate, rows::Measurements, FitReport};
use hetpar::cost::Constants;

use super::{emit, print_stdout};
use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// A measurements file (`"kind": "reference_measurements"`), e.g.
    /// cost-models/data/megatron-core-h100.json.
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Threads for the fits (one per leave-one-out fit at most); all cores by default.
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the fitted constants here (atomically), as JSON.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    super::check_output("-o", a.output.as_deref(), &[&a.data])?;
    let text = match hetpar::io::read_text(&a.data) {
        Ok(t) => t,
        Err(ds) => {
            super::print_diagnostics(&ds);
            return Ok(ExitCode::from(1));
        }
    };
    let m = match Measurements::parse(&text) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {}: {e}", a.data.display());
            return Ok(ExitCode::from(1));
        }
    };
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} fits, {elapsed} {msg}")
                .expect("a valid template"),
        );
        b
    });
    let progress = |done: usize, total: usize, what: &str| match &bar {
        Some(b) => {
            b.set_length(total as u64);
            b.set_position(done as u64);
            b.set_message(what.to_string());
        }
        None => eprintln!("fit {done}/{total}: {what}"),
    };
    let report = calibrate(&m, Constants::for_gpu(m.gpu_model), threads, &progress)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.data.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !report
        .rows
        .iter()
        .all(|r| r.predicted_s.is_finite() && r.left_out_predicted_s.is_finite())
    {
        anyhow::bail!("a prediction is not a finite number");
    }
    match a.format {
        Format::Human => print_stdout(&human(&report)),
        Format::Json => print_stdout(&hetpar::ir::json::to_canonical_json(&report)),
    }
    if let Some(out) = &a.output {
        emit(
            &hetpar::ir::json::to_canonical_json(&report.constants),
            Some(out),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn human(r: &FitReport) -> String {
    let mut s = format!("{}\n  source: {}\n  fitted:", r.name, r.source);
    for (name, v) in &r.fitted {
        s += &format!(" {name} = {v}");
    }
    s += "\n\n  row            role       measured   predicted   error   left out\n";
    for row in &r.rows {
        s += &format!(
            "  {:14} {:9} {:9.3} s {:9.3} s {:+6.1}%  {:+6.1}%\n",
            row.name,
            if row.trained { "fit" } else { "held out" },
            row.measured_s,
            row.predicted_s,
            100.0 * row.error,
            100.0 * row.left_out_error
        );
    }
    s += &format!(
        "\n  mean absolute error: held-out rows {:.1}%, training rows {:.1}%, leave-one-out {:.1}%\n",
        100.0 * r.held_out_mae,
        100.0 * r.train_mae,
        100.0 * r.leave_one_out_mae
    );
    s
}
