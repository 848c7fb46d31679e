//! One file per command.

pub mod autotune;
pub mod batch_items;
pub mod calibrate;
pub mod checkpoint;
pub mod codegen;
pub mod describe;
pub mod device_check;
pub mod device_llama;
pub mod estimate;
pub mod export;
pub mod import;
pub mod launch;
pub mod lower;
pub mod plan;
pub mod profile;
pub mod reshard;
pub mod run;
pub mod show;
pub mod validate;

use std::path::Path;

use anyhow::Context;

use hetpar::ir::Diagnostics;

/// Prints diagnostics to stderr, one per line.
pub fn print_diagnostics(ds: &Diagnostics) {
    for d in ds.iter() {
        eprintln!("{d}");
    }
}

/// Writes `text` to `-o` (atomically) or stdout.
pub fn emit(text: &str, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(p) => hetpar::io::write_atomic(p, text.as_bytes())
            .with_context(|| format!("cannot write {}", p.display())),
        None => {
            print_stdout(text);
            Ok(())
        }
    }
}

/// Refuses, before any work, an output (`-o`, `--svg`, `--trace`, a generated file) that is one
/// of the command's inputs: the same file after resolving links. Every command that writes
/// calls it, so that no input is ever replaced by a result.
pub fn check_output(flag: &str, output: Option<&Path>, inputs: &[&Path]) -> anyhow::Result<()> {
    let Some(out) = output else {
        return Ok(());
    };
    match hetpar::io::overwritten_input(out, inputs) {
        Some(input) => anyhow::bail!(
            "{flag} {} is the input file {}; it would be overwritten: write elsewhere",
            out.display(),
            input.display()
        ),
        None => Ok(()),
    }
}

/// Loads a model, a cluster and a plan checked against both; prints every diagnostic (with its
/// file) and returns `None` when any of them is invalid.
pub fn load_inputs(
    model: &Path,
    cluster: &Path,
    plan: &Path,
) -> Option<(
    hetpar::ir::ModelGraph,
    hetpar::ir::Cluster,
    hetpar::ir::Plan,
)> {
    let text = match hetpar::io::read_text(model) {
        Ok(t) => t,
        Err(ds) => {
            print_diagnostics(&ds);
            return None;
        }
    };
    load_inputs_with(&text, &model.display().to_string(), cluster, plan)
}

/// [`load_inputs`] with the model given as text (`model` names it in diagnostics).
pub fn load_inputs_with(
    model_text: &str,
    model: &str,
    cluster: &Path,
    plan: &Path,
) -> Option<(
    hetpar::ir::ModelGraph,
    hetpar::ir::Cluster,
    hetpar::ir::Plan,
)> {
    let read = |p: &Path| match hetpar::io::read_text(p) {
        Ok(t) => Some(t),
        Err(ds) => {
            print_diagnostics(&ds);
            None
        }
    };
    let name = |p: &Path| p.display().to_string();
    let m = match hetpar::ir::load_model(model_text) {
        Ok((g, w)) => {
            print_diagnostics(&w.with_file(model));
            Some(g)
        }
        Err(ds) => {
            print_diagnostics(&ds.with_file(model));
            None
        }
    };
    let c = match hetpar::ir::load_cluster(&read(cluster)?) {
        Ok(c) => Some(c),
        Err(ds) => {
            print_diagnostics(&ds.with_file(&name(cluster)));
            None
        }
    };
    let (m, c) = (m?, c?);
    match hetpar::ir::load_plan(&read(plan)?, &m, &c) {
        Ok((p, w)) => {
            print_diagnostics(&w.with_file(&name(plan)));
            Some((m, c, p))
        }
        Err(ds) => {
            print_diagnostics(&ds.with_file(&name(plan)));
            None
        }
    }
}

/// The attention kernel of the training software (`--attention`), shared by the commands that
/// estimate.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Attention {
    /// Fused attention: no score matrix kept.
    Flash,
    /// Scores materialized (Megatron-LM of 2022).
    Materialized,
}

impl Attention {
    pub fn options(self) -> hetpar::cost::Options {
        hetpar::cost::Options {
            attention: match self {
                Attention::Flash => hetpar::cost::AttentionKernel::Flash,
                Attention::Materialized => hetpar::cost::AttentionKernel::Materialized,
            },
            constants: None,
        }
    }
}

/// Writes to stdout; a closed pipe (`hetpar ... | head`) ends the output quietly instead of
/// panicking the way `print!` does.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `--model M --cluster C --plan P`: the inputs of the commands that take a plan by flag.
#[derive(clap::Args)]
pub struct PlanFlags {
    /// The model file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// The cluster file.
    #[arg(long)]
    pub cluster: std::path::PathBuf,
    /// The plan file.
    #[arg(long)]
    pub plan: std::path::PathBuf,
}

/// `<plan> --model M --cluster C`: the inputs of the commands that take the plan first.
#[derive(clap::Args)]
pub struct PlanFirst {
    /// The plan file.
    pub plan: std::path::PathBuf,
    /// The model file.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// The cluster file.
    #[arg(long)]
    pub cluster: std::path::PathBuf,
}

/// The loaded model, cluster and plan.
pub type Inputs = (
    hetpar::ir::ModelGraph,
    hetpar::ir::Cluster,
    hetpar::ir::Plan,
);

impl PlanFlags {
    /// The three input files.
    pub fn paths(&self) -> [&Path; 3] {
        [&self.model, &self.cluster, &self.plan]
    }

    pub fn load(&self) -> Option<Inputs> {
        load_inputs(&self.model, &self.cluster, &self.plan)
    }
}

impl PlanFirst {
    /// The three input files.
    pub fn paths(&self) -> [&Path; 3] {
        [&self.plan, &self.model, &self.cluster]
    }

    pub fn load(&self) -> Option<Inputs> {
        load_inputs(&self.model, &self.cluster, &self.plan)
    }
}

/// `--calibration F`: a calibration file (`hetpar profile`, `hetpar autotune`) read in place of
/// the built-in hardware figures and efficiency constants.
#[derive(clap::Args, Default)]
pub struct CalibrationArg {
    /// A calibration file (from `hetpar profile` or `hetpar autotune`) to use in place of the
    /// built-in figures and constants.
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<std::path::PathBuf>,
}

impl CalibrationArg {
    /// `inputs` and the calibration file, if one was given: the files a command reads.
    pub fn with<'a>(&'a self, inputs: &[&'a Path]) -> Vec<&'a Path> {
        let mut v = inputs.to_vec();
        v.extend(self.calibration.as_deref());
        v
    }

    /// Reads the calibration, if one was given.
    pub fn load(&self) -> anyhow::Result<Option<hetpar::cost::calibration::Calibration>> {
        let Some(p) = &self.calibration else {
            return Ok(None);
        };
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let cal: hetpar::cost::calibration::Calibration = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a calibration file", p.display()))?;
        cal.check()
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        Ok(Some(cal))
    }

    /// Puts the calibration (if any) in force on the cluster and the options.
    pub fn apply(
        &self,
        cluster: &mut hetpar::ir::Cluster,
        opts: &mut hetpar::cost::Options,
    ) -> anyhow::Result<()> {
        if let Some(cal) = self.load()? {
            let name = self
                .calibration
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            cal.apply(cluster, opts)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        }
        Ok(())
    }
}
