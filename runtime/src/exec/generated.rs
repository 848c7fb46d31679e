//! What generated code (`hetpar codegen`) and `hetpar run` share: the command line of a
//! training run, its synthetic batches, its report, and the static form of boundary transfers
//! that generated code carries.

use std::time::Duration;

use hetpar_ir::model::ModelGraph;
use hetpar_ir::program::{Program, Transfer};

use super::{run_observed, run_process, RankBody, RunOptions, RunOutput, StepReport};
use crate::checkpoint::{HfDir, WeightSource};
use crate::reference::{Batch, Config, Params};
use crate::rendezvous::{placement_from_env, tcp_endpoint};
use crate::RuntimeError;

/// The most values one message of a run can hold, which bounds what a peer may send: the
/// model's parameters together (a bucket of gradient sums or of gathered shards holds a part
/// of each of them), rows of a step's batch (every token and encoder row) at the widest width
/// any parameter has, the gathered report (three words a step and two), an NCCL id.
pub fn largest_message(cfg: &Config, batches: &[Batch], steps: usize) -> usize {
    let specs = crate::reference::params::param_specs(cfg);
    let (mut param, mut width) = (0usize, 0usize);
    for s in &specs {
        param = param.saturating_add(s.shape.iter().product());
        width = width.max(s.shape.iter().copied().max().unwrap_or(0));
    }
    let rows = batches
        .iter()
        .map(|b| {
            let audio = b.audio.as_ref().map_or(0, |a| a.patches.rows());
            b.batch_size
                .saturating_mul(b.seq_len)
                .saturating_add(b.patches.rows())
                .saturating_add(audio)
        })
        .max()
        .unwrap_or(0);
    // A mixture of experts sends a row to one peer at most once per expert (its router's rows).
    let repeats = specs
        .iter()
        .filter(|s| s.name.ends_with(".moe.router.weight"))
        .map(|s| s.shape[0])
        .max()
        .unwrap_or(1);
    let report = steps.saturating_mul(3).saturating_add(2);
    let rows = rows.saturating_mul(width).saturating_mul(repeats);
    param.max(rows).max(report).max(32)
}

/// Rows `(sample, start, end)`.
pub type StaticRows = &'static [(u32, u64, u64)];

/// A boundary transfer operation as a constant.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// `(src, dst, rows)`.
    Send(u32, u32, StaticRows),
    /// `(root, group, rows)`.
    Broadcast(u32, &'static [u32], StaticRows),
    /// `(group, parts)`.
    AllGather(&'static [u32], &'static [(u32, StaticRows)]),
    /// `(srcs, dst, rows)`.
    Reduce(&'static [u32], u32, StaticRows),
}

fn rows(r: StaticRows) -> Vec<hetpar_ir::program::Rows> {
    r.iter().map(|&(s, a, b)| (s, a..b)).collect()
}

/// The transfers of constant operations.
pub fn transfers(ops: &[Op]) -> Vec<Transfer> {
    ops.iter()
        .map(|op| match *op {
            Op::Send(src, dst, r) => Transfer::Send {
                src,
                dst,
                rows: rows(r),
            },
            Op::Broadcast(root, group, r) => Transfer::Broadcast {
                root,
                group: group.to_vec(),
                rows: rows(r),
            },
            Op::AllGather(group, parts) => Transfer::AllGather {
                group: group.to_vec(),
                parts: parts.iter().map(|&(o, r)| (o, rows(r))).collect(),
            },
            Op::Reduce(srcs, dst, r) => Transfer::Reduce {
                srcs: srcs.to_vec(),
                dst,
                rows: rows(r),
            },
        })
        .collect()
}

/// `steps` synthetic batches shaped like the model's data, batch `k` from seed
/// `seed + 1000 + k`.
pub fn synthetic_batches(
    g: &ModelGraph,
    cfg: &Config,
    seed: u64,
    steps: usize,
) -> Result<Vec<Batch>, RuntimeError> {
    synthetic_batches_from(g, cfg, seed, 0, steps)
}

/// [`synthetic_batches`] from batch `first` on (a resumed run's data position).
pub fn synthetic_batches_from(
    g: &ModelGraph,
    cfg: &Config,
    seed: u64,
    first: u64,
    steps: usize,
) -> Result<Vec<Batch>, RuntimeError> {
    (first..first + steps.max(1) as u64)
        .map(|k| Batch::for_model(g, cfg, seed.wrapping_add(1000 + k)))
        .collect()
}

/// The report of a run: a line per step (loss, time), then the mean step time (the first
/// step, which warms up allocations, left out when there are others) and throughput.
pub fn report(program: &Program, batch: &Batch, out: &RunOutput) -> String {
    report_steps(program, batch, &out.losses, &out.step_seconds, &out.backend)
}

/// [`report`] from the losses and step times alone.
pub fn report_steps(
    program: &Program,
    batch: &Batch,
    losses: &[f32],
    step_seconds: &[f64],
    backend: &str,
) -> String {
    let mut s = format!(
        "{} ranks, a batch of {} samples in {} micro-batches per step, {backend}\n\
         step  loss      time (ms)\n",
        program.ranks.len(),
        batch.batch_size,
        program.micro_batches
    );
    for (k, (l, t)) in losses.iter().zip(step_seconds).enumerate() {
        s += &format!("{:>4}  {l:<8.5}  {:>9.2}\n", k + 1, t * 1e3);
    }
    let timed = if step_seconds.len() > 1 {
        &step_seconds[1..]
    } else {
        step_seconds
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

/// A generated program's command line: `--steps N` (10), `--lr X` (1e-3), `--seed S` (0),
/// `--timeout-ms T` (60000), `--backend cpu|cuda` (cpu), `--gpu G` (CUDA; by default the
/// node-local rank modulo the GPUs), `--precision f32|bf16` (f32), `--collectives host|nccl`
/// (host; nccl: ranks as processes, one GPU each).
#[derive(Clone, Debug)]
pub struct Args {
    pub opts: RunOptions,
    pub seed: u64,
    pub cuda: bool,
    pub gpu: Option<usize>,
    pub bf16: bool,
    /// Collectives and gradient sums by NCCL (`--collectives nccl`).
    pub nccl: bool,
    /// A Hugging Face model directory to start from (`--checkpoint DIR`) instead of seeded
    /// weights.
    pub checkpoint: Option<std::path::PathBuf>,
}

pub fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        opts: RunOptions {
            steps: 10,
            lr: 1e-3,
            timeout: Duration::from_secs(60),
            backend: Default::default(),
            save: None,
        },
        seed: 0,
        cuda: false,
        gpu: None,
        bf16: false,
        nccl: false,
        checkpoint: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        let one_of = |choices: [&str; 2]| {
            choices
                .iter()
                .position(|c| c == value)
                .ok_or_else(|| format!("{flag} {value}: not one of {choices:?}"))
        };
        match flag.as_str() {
            "--steps" => out.opts.steps = value.parse().map_err(|e| bad(&e))?,
            "--lr" => out.opts.lr = value.parse().map_err(|e| bad(&e))?,
            "--seed" => out.seed = value.parse().map_err(|e| bad(&e))?,
            "--timeout-ms" => {
                out.opts.timeout = Duration::from_millis(value.parse().map_err(|e| bad(&e))?)
            }
            "--backend" => out.cuda = one_of(["cpu", "cuda"])? == 1,
            "--gpu" => out.gpu = Some(value.parse().map_err(|e| bad(&e))?),
            "--precision" => out.bf16 = one_of(["f32", "bf16"])? == 1,
            "--collectives" => out.nccl = one_of(["host", "nccl"])? == 1,
            "--checkpoint" => out.checkpoint = Some(value.into()),
            _ => {
                return Err(format!(
                    "unknown option {flag}; options: --steps N --lr X --seed S --timeout-ms T \
                     --backend cpu|cuda --gpu G --precision f32|bf16 --collectives host|nccl \
                     --checkpoint DIR"
                ))
            }
        }
    }
    Ok(out)
}

impl Args {
    /// The backend asked for: for CUDA, the process first re-executes itself once with the
    /// CUDA libraries on `LD_LIBRARY_PATH`, then opens `--gpu` (else `local` modulo the GPUs).
    pub fn backend(&self, local: usize) -> Result<super::Backend, String> {
        if !self.cuda {
            return Ok(super::Backend::Cpu);
        }
        super::Backend::cuda(self.gpu, local, self.bf16, self.nccl).map_err(|e| e.to_string())
    }
}

/// The node-local rank of a launched process (`HETPAR_LOCAL_RANK`, or `SLURM_LOCALID` under
/// srun); 0 otherwise.
pub fn local_rank() -> usize {
    ["HETPAR_LOCAL_RANK", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(0)
}

/// The `main` of a generated program: the program header (modules, boundaries, ranks) and
/// the model as JSON, every rank's step as `body`. Prints each step's line on stderr as it ends
/// (`hetpar run`'s plain lines) and then the same report as `hetpar run`; a step whose loss is
/// not finite stops it with an error naming the step (exit code 2).
/// Started by `hetpar launch` or `srun` (their variables set), it runs its own rank and meets
/// the others over TCP; otherwise every rank is a thread.
pub fn main_with(program_json: &str, model_json: &str, body: &RankBody) -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match main_inner(program_json, model_json, body, &args) {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A generated program's progress: each step's line on stderr as it ends.
fn print_step(r: &StepReport) {
    eprintln!("{}", r.line());
}

fn main_inner(
    program_json: &str,
    model_json: &str,
    body: &RankBody,
    args: &[String],
) -> Result<String, String> {
    let parsed = parse_args(args)?;
    let seed = parsed.seed;
    let mut opts = parsed.opts.clone();
    opts.backend = parsed.backend(local_rank())?;
    let program = hetpar_ir::load_program(program_json).map_err(|d| format!("program: {d:?}"))?;
    let (g, _) = hetpar_ir::load_model(model_json).map_err(|d| format!("model: {d:?}"))?;
    let cfg = Config::from_model(&g).map_err(|e| e.to_string())?;
    // The weights: a Hugging Face directory's (checked now, each rank reading its slices),
    // else seeded ones.
    let init: Box<dyn WeightSource> = match &parsed.checkpoint {
        Some(dir) => Box::new(HfDir::open(dir, &cfg).map_err(|e| e.to_string())?),
        None => Box::new(Params::init(&cfg, seed).map_err(|e| e.to_string())?),
    };
    let batches = synthetic_batches(&g, &cfg, seed, opts.steps).map_err(|e| e.to_string())?;
    // Launched as one rank of many processes (`hetpar launch`, `srun`): this rank alone.
    if let Some(place) = placement_from_env().map_err(|e| e.to_string())? {
        let rank = place.rank;
        if place.world as usize != program.ranks.len() {
            return Err(format!(
                "the program has {} ranks, but {} processes were started",
                program.ranks.len(),
                place.world
            ));
        }
        let max = largest_message(&cfg, &batches, opts.steps);
        let net = tcp_endpoint(&place, opts.timeout, max).map_err(|e| e.to_string())?;
        let s = run_process(
            net,
            &program,
            &cfg,
            &*init,
            &batches,
            &opts,
            body,
            &print_step,
        )
        .map_err(|e| e.to_string())?;
        return Ok(if rank == 0 {
            report_steps(
                &program,
                &batches[0],
                &s.losses,
                &s.step_seconds,
                &opts.backend.to_string(),
            )
        } else {
            String::new()
        });
    }
    let out = run_observed(&program, &cfg, &*init, &batches, &opts, body, &print_step)
        .map_err(|e| e.to_string())?;
    Ok(report(&program, &batches[0], &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Args, String> {
        parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_command_line_chooses_the_backend_gpu_and_precision() {
        let a = args(&[
            "--steps",
            "3",
            "--backend",
            "cuda",
            "--gpu",
            "1",
            "--precision",
            "bf16",
        ])
        .unwrap();
        assert_eq!(a.opts.steps, 3);
        assert!(a.cuda && a.bf16 && !a.nccl);
        assert!(args(&["--collectives", "nccl"]).unwrap().nccl);
        assert_eq!(a.gpu, Some(1));
        let d = args(&[]).unwrap();
        assert!(!d.cuda && !d.bf16 && d.gpu.is_none());
        assert!(matches!(d.backend(0), Ok(crate::exec::Backend::Cpu)));
    }

    #[test]
    fn a_backend_or_precision_that_is_not_offered_is_refused_with_the_choices() {
        let e = args(&["--backend", "rocm"]).unwrap_err();
        assert!(e.contains("rocm") && e.contains("\"cuda\""), "{e}");
        let e = args(&["--precision", "fp8"]).unwrap_err();
        assert!(e.contains("fp8") && e.contains("\"bf16\""), "{e}");
    }

    #[test]
    fn a_checkpoint_directory_is_taken_from_the_command_line() {
        let a = args(&["--checkpoint", "ckpt/llama"]).unwrap();
        assert_eq!(
            a.checkpoint.as_deref(),
            Some(std::path::Path::new("ckpt/llama"))
        );
        assert!(args(&[]).unwrap().checkpoint.is_none());
    }
}
