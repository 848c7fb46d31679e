//! `hetpar describe`: per-module parameters and FLOPs, boundary rows and bytes.

use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::report::Describe;
use hetpar::{examples, io};

use super::{check_output, emit, print_diagnostics};
use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// A hetpar model file; the embedded LLaVA-1.5-7B example when omitted.
    model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Write the result here (atomically) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let inputs: Vec<&std::path::Path> = a.model.as_deref().into_iter().collect();
    check_output("-o", a.output.as_deref(), &inputs)?;
    let (name, text) = match &a.model {
        Some(p) => match io::read_text(p) {
            Ok(t) => (p.display().to_string(), t),
            Err(ds) => {
                print_diagnostics(&ds);
                return Ok(ExitCode::from(1));
            }
        },
        None => (examples::MODEL.0.to_string(), examples::MODEL.1.to_string()),
    };
    let graph = match hetpar::ir::load_model(&text) {
        Ok((g, warnings)) => {
            print_diagnostics(&warnings.with_file(&name));
            g
        }
        Err(ds) => {
            print_diagnostics(&ds.with_file(&name));
            return Ok(ExitCode::from(1));
        }
    };
    tracing::info!(model = graph.name(), "described");
    let report = Describe::new(&graph);
    let text = match a.format {
        Format::Human => report.to_human(),
        Format::Json => hetpar::ir::json::to_canonical_json(&report),
    };
    emit(&text, a.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
