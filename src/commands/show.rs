//! `hetpar show`: a plan's simulated schedule as text on stdout, an SVG timeline and a Chrome
//! trace (Perfetto, chrome://tracing).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use hetpar::cost::estimate::simulate_plan;
use hetpar::show::Schedule;

use super::Attention;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::PlanFirst,
    /// Write the schedule as an SVG timeline here (atomically).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Write the schedule as a Chrome trace here (atomically), for Perfetto or chrome://tracing.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Columns of the text timeline.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(10..=1000))]
    width: u16,
    /// Most lanes in the text and the SVG (one lane of every module stage first).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    lanes: u32,
    /// Attention kernel of the training software: flash keeps no score matrix.
    #[arg(long, value_enum, default_value = "flash")]
    attention: Attention,
    #[command(flatten)]
    calibration: super::CalibrationArg,
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    hetpar::io::write_atomic(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!("wrote {}", path.display());
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let inputs = a.calibration.with(&a.inputs.paths());
    super::check_output("--svg", a.svg.as_deref(), &inputs)?;
    super::check_output("--trace", a.trace.as_deref(), &inputs)?;
    let Some((model, mut cluster, plan)) = a.inputs.load() else {
        return Ok(ExitCode::from(1));
    };
    let mut opts = a.attention.options();
    a.calibration.apply(&mut cluster, &mut opts)?;
    let times =
        hetpar::planner::boundary::boundary_times_with(&model, &cluster, &plan, opts.constants);
    let (est, (graph, timeline)) = simulate_plan(&model, &cluster, &plan, &opts, Some(&times))?;
    let schedule = Schedule::new(&model, &plan, &est, &graph, &timeline);
    let lanes = a.lanes as usize;
    if let Some(p) = &a.svg {
        write(p, &hetpar::show::svg::render(&schedule, lanes))?;
    }
    if let Some(p) = &a.trace {
        write(p, &hetpar::show::trace::render(&schedule))?;
    }
    super::print_stdout(&hetpar::show::text::render(
        &schedule,
        usize::from(a.width),
        lanes,
    ));
    Ok(ExitCode::SUCCESS)
}
