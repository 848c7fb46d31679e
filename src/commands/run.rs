//! `hetpar run`: train the reference model under a plan or a program on the CPU backend
//! (ranks as threads), printing the loss of every step and the throughput.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use hetpar::ir::json::{detect_kind, parse_value, FileKind};
use hetpar::runtime::exec::{run as execute, RunOptions, RunOutput};
use hetpar::runtime::reference::{Batch, Config, Params};

use super::{load_inputs, print_diagnostics, print_stdout};

/// Where to run.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    /// Every rank a thread on this machine, over the in-process transport.
    Cpu,
}

#[derive(clap::Args)]
pub struct Args {
    /// A plan (lowered first) or a program (`hetpar lower`'s output).
    pub input: PathBuf,
    /// The model file: the reference model's sizes and the shape of its data.
    #[arg(long)]
    pub model: PathBuf,
    /// The cluster file (needed with a plan).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
    /// Training steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the initial weights (ignored with --weights) and of the synthetic batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial weights (safetensors, the documented names) instead of seeded ones.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// One batch (safetensors) for every step instead of a synthetic batch per step.
    #[arg(long)]
    pub batch: Option<PathBuf>,
    /// Write losses.safetensors, weights.safetensors and grads.safetensors (the last step's
    /// gradients, `grad.` names) here.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// The longest a rank waits for a peer's message before the run fails, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let text = match hetpar::io::read_text(&a.input) {
        Ok(t) => t,
        Err(ds) => {
            print_diagnostics(&ds);
            return Ok(ExitCode::from(1));
        }
    };
    let name = a.input.display().to_string();
    let kind = match parse_value(&text) {
        Ok(v) => detect_kind(&v),
        Err(ds) => {
            print_diagnostics(&ds.with_file(&name));
            return Ok(ExitCode::from(1));
        }
    };
    let (model, program) = match kind {
        Some(FileKind::Plan) => {
            let Some(cluster) = &a.cluster else {
                bail!("{name} is a plan: give --cluster too (or run a program)");
            };
            let Some((model, cluster, plan)) = load_inputs(&a.model, cluster, &a.input) else {
                return Ok(ExitCode::from(1));
            };
            let program = hetpar::planner::lower::lower(&model, &cluster, &plan)?;
            (model, program)
        }
        Some(FileKind::Program) => {
            let program = match hetpar::ir::load_program(&text) {
                Ok(p) => p,
                Err(ds) => {
                    print_diagnostics(&ds.with_file(&name));
                    return Ok(ExitCode::from(1));
                }
            };
            let model_text = match hetpar::io::read_text(&a.model) {
                Ok(t) => t,
                Err(ds) => {
                    print_diagnostics(&ds);
                    return Ok(ExitCode::from(1));
                }
            };
            let model = match hetpar::ir::load_model(&model_text) {
                Ok((g, _)) => g,
                Err(ds) => {
                    print_diagnostics(&ds.with_file(&a.model.display().to_string()));
                    return Ok(ExitCode::from(1));
                }
            };
            if program.model != model.name() {
                bail!(
                    "{name}: the program was lowered for model `{}`, but {} is `{}`",
                    program.model,
                    a.model.display(),
                    model.name()
                );
            }
            (model, program)
        }
        _ => bail!("{name}: expected a plan or a program (\"kind\": \"plan\" or \"program\")"),
    };
    let cfg = Config::from_model(&model).with_context(|| {
        format!(
            "{}: the runtime computes the reference model",
            a.model.display()
        )
    })?;
    let init = match &a.weights {
        Some(p) => {
            let tensors = hetpar::runtime::dump::from_bytes(&read(p)?)
                .with_context(|| format!("{}", p.display()))?;
            Params::from_tensors(tensors, &cfg).with_context(|| format!("{}", p.display()))?
        }
        None => Params::init(&cfg, a.seed)?,
    };
    let batches: Vec<Batch> = match &a.batch {
        Some(p) => vec![hetpar::runtime::dump::batch_from_bytes(&read(p)?)
            .with_context(|| format!("{}", p.display()))?],
        None => (0..a.steps.max(1) as u64)
            .map(|k| Batch::for_model(&model, &cfg, a.seed.wrapping_add(1000 + k)))
            .collect::<Result<_, _>>()?,
    };
    let opts = RunOptions {
        steps: a.steps,
        lr: a.lr,
        timeout: Duration::from_millis(a.timeout_ms),
    };
    let Backend::Cpu = a.backend;
    let out = execute(&program, &cfg, &init, &batches, &opts)?;
    print_stdout(&report(&program, &batches[0], &out));
    if let Some(dir) = &a.dump {
        dump(dir, &out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn report(program: &hetpar::ir::program::Program, batch: &Batch, out: &RunOutput) -> String {
    let mut s = format!(
        "{} ranks, a batch of {} samples in {} micro-batches per step, CPU backend\n\
         step  loss      time (ms)\n",
        program.ranks.len(),
        batch.batch_size,
        program.micro_batches
    );
    for (k, (l, t)) in out.losses.iter().zip(&out.step_seconds).enumerate() {
        s += &format!("{:>4}  {l:<8.5}  {:>9.2}\n", k + 1, t * 1e3);
    }
    // The first step warms up allocations: leave it out of the mean when there are others.
    let timed = if out.step_seconds.len() > 1 {
        &out.step_seconds[1..]
    } else {
        &out.step_seconds[..]
    };
    if !timed.is_empty() {
        let mean = timed.iter().sum::<f64>() / timed.len() as f64;
        let samples = batch.batch_size as f64 / mean;
        s += &format!(
            "mean step {:.2} ms: {samples:.1} samples/s, {:.0} tokens/s\n",
            mean * 1e3,
            samples * batch.seq_len as f64
        );
    }
    s
}

fn dump(dir: &Path, out: &RunOutput) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        (
            "losses.safetensors",
            hetpar::runtime::dump::losses_to_bytes(&out.losses)?,
        ),
        ("weights.safetensors", out.params.to_safetensors("")?),
        ("grads.safetensors", out.grads.to_safetensors("grad.")?),
    ];
    for (name, bytes) in files {
        let p = dir.join(name);
        hetpar::io::write_atomic(&p, &bytes)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
