//! `hetpar lower`: a plan to a program (an ordered instruction list per rank).

use std::path::PathBuf;
use std::process::ExitCode;

use super::emit;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::PlanFirst,
    /// Write the program here (atomically) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    calibration: super::CalibrationArg,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let inputs = a.calibration.with(&a.inputs.paths());
    super::check_output("-o", a.output.as_deref(), &inputs)?;
    let Some((model, mut cluster, plan)) = a.inputs.load() else {
        return Ok(ExitCode::from(1));
    };
    let mut opts = hetpar::cost::Options::default();
    a.calibration.apply(&mut cluster, &mut opts)?;
    let program = hetpar::planner::lower::lower_with(&model, &cluster, &plan, &opts)?;
    emit(
        &hetpar::ir::json::to_canonical_json(&program),
        a.output.as_deref(),
    )?;
    Ok(ExitCode::SUCCESS)
}
