//! `hetpar validate`: check files and report every problem with file, JSON path and rule.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use serde_json::Value;

use hetpar::io;
use hetpar::ir::hf::{import, ImportOptions};
use hetpar::ir::json::{check_header, detect_kind, from_value, parse_value, FileKind};
use hetpar::ir::model::verify;
use hetpar::ir::{
    cluster_from_value, model_from_value, plan_from_value, Cluster, Diagnostic, Diagnostics,
    ModelGraph, Rule,
};

use super::emit;
use crate::Format;

#[derive(clap::Args)]
pub struct Args {
    /// Model, cluster and plan files, and Hugging Face config.json files.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct FileReport {
    file: String,
    kind: &'static str,
    valid: bool,
    diagnostics: Vec<Diagnostic>,
}

#[derive(Serialize)]
struct Report {
    valid: bool,
    errors: usize,
    warnings: usize,
    files: Vec<FileReport>,
}

enum Parsed {
    Model(Result<ModelGraph, ()>),
    Cluster(Result<Cluster, ()>),
    Plan(Value),
    Other,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut reports: Vec<FileReport> = Vec::new();
    let mut parsed: Vec<Parsed> = Vec::new();
    for path in &a.files {
        let name = path.display().to_string();
        let (kind, result, p) = check_one(path);
        reports.push(file_report(name, kind, result));
        parsed.push(p);
    }
    // Plans are checked against the one model and the one cluster given with them.
    let models: Vec<&Result<ModelGraph, ()>> = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Model(m) => Some(m),
            _ => None,
        })
        .collect();
    let clusters: Vec<&Result<Cluster, ()>> = parsed
        .iter()
        .filter_map(|p| match p {
            Parsed::Cluster(c) => Some(c),
            _ => None,
        })
        .collect();
    for (i, p) in parsed.iter().enumerate() {
        let Parsed::Plan(value) = p else { continue };
        let mut ds = Diagnostics::new();
        match (models.as_slice(), clusters.as_slice()) {
            ([Ok(m)], [Ok(c)]) => match plan_from_value(value, m, c) {
                Ok((_, warnings)) => ds.extend(warnings),
                Err(e) => ds.extend(e),
            },
            ([_], [_]) => ds.error("", Rule::PlanModel, "not checked against its model and cluster: one of them is invalid (see above)"),
            _ => ds.error(
                "",
                Rule::PlanModel,
                format!(
                    "a plan is checked against exactly one model and one cluster given with it; found {} model(s) and {} cluster(s)",
                    models.len(),
                    clusters.len()
                ),
            ),
        }
        let r = &mut reports[i];
        let ds = ds.with_file(&r.file);
        r.valid &= !ds.has_errors();
        r.diagnostics.extend(ds);
    }
    let errors = reports
        .iter()
        .flat_map(|r| &r.diagnostics)
        .filter(|d| d.is_error())
        .count();
    let warnings = reports.iter().flat_map(|r| &r.diagnostics).count() - errors;
    let report = Report {
        valid: errors == 0,
        errors,
        warnings,
        files: reports,
    };
    match a.format {
        Format::Json => emit(&hetpar::ir::json::to_canonical_json(&report), None)?,
        Format::Human => {
            let mut out = String::new();
            for r in &report.files {
                for d in &r.diagnostics {
                    eprintln!("{d}");
                }
                if r.valid {
                    out += &format!("ok: {} ({})\n", r.file, r.kind);
                }
            }
            out += &format!(
                "{} file(s): {} error(s), {} warning(s)\n",
                report.files.len(),
                report.errors,
                report.warnings
            );
            super::print_stdout(&out);
        }
    }
    Ok(if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn file_report(file: String, kind: &'static str, result: Diagnostics) -> FileReport {
    let ds = result.with_file(&file);
    FileReport {
        valid: !ds.has_errors(),
        file,
        kind,
        diagnostics: ds.into_vec(),
    }
}

/// Reads, detects and checks one file on its own.
fn check_one(path: &std::path::Path) -> (&'static str, Diagnostics, Parsed) {
    let text = match io::read_text(path) {
        Ok(t) => t,
        Err(ds) => return ("unknown", ds, Parsed::Other),
    };
    let value = match parse_value(&text) {
        Ok(v) => v,
        Err(ds) => return ("unknown", ds, Parsed::Other),
    };
    match detect_kind(&value) {
        Some(FileKind::Model) => match model_from_value(&value) {
            Ok((g, w)) => ("model", w, Parsed::Model(Ok(g))),
            Err(ds) => ("model", ds, Parsed::Model(Err(()))),
        },
        Some(FileKind::Cluster) => match cluster_from_value(&value) {
            Ok(c) => ("cluster", Diagnostics::new(), Parsed::Cluster(Ok(c))),
            Err(ds) => ("cluster", ds, Parsed::Cluster(Err(()))),
        },
        Some(FileKind::Plan) => match check_header(&value, FileKind::Plan) {
            Ok(()) => ("plan", Diagnostics::new(), Parsed::Plan(value)),
            Err(ds) => ("plan", ds, Parsed::Other),
        },
        Some(FileKind::Program) => match check_header(&value, FileKind::Program)
            .and_then(|()| from_value::<hetpar::ir::program::Program>(&value))
        {
            Ok(_) => ("program", Diagnostics::new(), Parsed::Other),
            Err(ds) => ("program", ds, Parsed::Other),
        },
        None if value.get("model_type").is_some() => {
            match import(&value, &ImportOptions::default()).and_then(verify::build) {
                Ok((_, w)) => ("hf-config", w, Parsed::Other),
                Err(ds) => ("hf-config", ds, Parsed::Other),
            }
        }
        None => {
            let mut ds = Diagnostics::new();
            ds.error(
                "kind",
                Rule::FormatKind,
                "cannot tell what this file is: a hetpar file has \"kind\": \"model\", \"cluster\", \"plan\" or \"program\", and a Hugging Face config has \"model_type\"",
            );
            ("unknown", ds, Parsed::Other)
        }
    }
}
