//! `hetpar estimate`: predicted time, throughput and memory of a plan.

use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::report::EstimateReport;

use super::{emit, Attention};
use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::PlanFlags,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Attention kernel of the training software: flash keeps no score matrix.
    #[arg(long, value_enum, default_value = "flash")]
    attention: Attention,
    #[command(flatten)]
    calibration: super::CalibrationArg,
    /// Write the result here (atomically) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let inputs = a.calibration.with(&a.inputs.paths());
    super::check_output("-o", a.output.as_deref(), &inputs)?;
    let Some((model, mut cluster, plan)) = a.inputs.load() else {
        return Ok(ExitCode::from(1));
    };
    let mut opts = a.attention.options();
    a.calibration.apply(&mut cluster, &mut opts)?;
    // Boundaries priced by their synthesis, as `hetpar plan` does.
    let times =
        hetpar::planner::boundary::boundary_times_with(&model, &cluster, &plan, opts.constants);
    let est = hetpar::cost::estimate_with_boundaries(&model, &cluster, &plan, &opts, &times)?;
    let report = EstimateReport::new(&model, &est);
    let text = match a.format {
        Format::Human => report.to_human(),
        Format::Json => hetpar::ir::json::to_canonical_json(&est),
    };
    emit(&text, a.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
