//! `hetpar run`: train the reference model under a plan or a program, ranks as threads, on the
//! CPU backend or one GPU's arithmetic, printing each step's loss, time and throughput on
//! stderr as it ends and the report on stdout; a step whose loss is not finite stops it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};

use hetpar::ir::json::{detect_kind, parse_value, FileKind};
use hetpar::ir::program::Program;
use hetpar::ir::ModelGraph;
use hetpar::progress::Progress;
use hetpar::runtime::checkpoint::{TrainingState, WeightSource};
use hetpar::runtime::exec::generated::{report, synthetic_batches, synthetic_batches_from};
use hetpar::runtime::exec::{run_observed, RunOptions, RunOutput};
use hetpar::runtime::hf_names::{params_from_either, to_safetensors_named, Naming};
use hetpar::runtime::reference::{Batch, Config, Params};
use hetpar::runtime::RuntimeError;

use super::checkpoint::{ModelText, SaveArgs, StartArgs};
use super::{load_inputs_with, print_diagnostics, print_stdout};

/// Where to run.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    /// Every rank a thread on this machine, over the in-process transport.
    Cpu,
    /// The same, every rank computing on one GPU (its own stream and cuBLAS handle; cuBLAS
    /// and the NVRTC-compiled kernels), tensors copied to the device and back per operation.
    Cuda,
}

/// The matrix products' input precision on a GPU.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Precision {
    F32,
    /// bf16 inputs, f32 accumulation and results (master weights and Adam stay f32).
    Bf16,
}

/// `--backend --gpu --precision`: where `run` and `launch` compute.
#[derive(clap::Args, Clone)]
pub struct DeviceArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
    /// The GPU of `--backend cuda` (CUDA ordinal; launched ranks default to their local rank
    /// on the node, modulo the GPUs it has).
    #[arg(long)]
    pub gpu: Option<usize>,
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: Precision,
    /// Collectives and gradient sums by NCCL (with --backend cuda; ranks as processes, each
    /// on its own GPU: NCCL refuses two ranks of a group on one device).
    #[arg(long)]
    pub nccl: bool,
}

impl DeviceArgs {
    /// Command-line arguments giving the same choice (for launched workers).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            "--backend".to_string(),
            match self.backend {
                Backend::Cpu => "cpu",
                Backend::Cuda => "cuda",
            }
            .to_string(),
            "--precision".to_string(),
            match self.precision {
                Precision::F32 => "f32",
                Precision::Bf16 => "bf16",
            }
            .to_string(),
        ];
        if let Some(g) = self.gpu {
            v.push("--gpu".into());
            v.push(g.to_string());
        }
        if self.nccl {
            v.push("--nccl".into());
        }
        v
    }

    /// The combinations refused before anything starts.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nccl && matches!(self.backend, Backend::Cpu) {
            bail!("--nccl needs --backend cuda");
        }
        Ok(())
    }

    /// The runtime's backend (`exec::Backend::cuda` for CUDA: GPU `--gpu`, else `local`
    /// modulo the GPUs there are).
    pub fn backend(&self, local: usize) -> anyhow::Result<hetpar::runtime::exec::Backend> {
        self.check()?;
        Ok(match self.backend {
            Backend::Cpu => hetpar::runtime::exec::Backend::Cpu,
            Backend::Cuda => hetpar::runtime::exec::Backend::cuda(
                self.gpu,
                local,
                matches!(self.precision, Precision::Bf16),
                self.nccl,
            )?,
        })
    }
}

/// `<plan|program> --model M [--cluster C]`: what the commands that run or generate a
/// program take.
#[derive(clap::Args, Clone)]
pub struct ProgramInput {
    /// A plan (lowered first) or a program (`hetpar lower`'s output).
    pub input: PathBuf,
    /// The model file: the model's sizes and the shape of its data [default: --checkpoint's
    /// config.json, or the model --resume's run saved].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The cluster file (needed with a plan).
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    #[command(flatten)]
    pub start: StartArgs,
}

impl ProgramInput {
    /// The files read: the plan or program, the model and the cluster if given.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.input.as_path()];
        v.extend(self.model.as_deref());
        v.extend(self.cluster.as_deref());
        v
    }

    /// The model and the program (a plan lowered), and the model's text; `None` when a file
    /// was invalid (its diagnostics printed). A program asking for what the runtime does not
    /// execute is refused here, before any device or rank starts.
    pub fn load(&self) -> anyhow::Result<Option<(ModelGraph, Program, String)>> {
        self.load_with(&self.start.model(self.model.as_deref())?)
    }

    /// [`ProgramInput::load`] for the model `model` (from [`StartArgs::model`]).
    pub fn load_with(
        &self,
        model: &ModelText,
    ) -> anyhow::Result<Option<(ModelGraph, Program, String)>> {
        let out = load_program(&self.input, model, self.cluster.as_deref())?;
        if let Some((_, program, _)) = &out {
            hetpar::runtime::exec::check_executed(program)
                .with_context(|| self.input.display().to_string())?;
        }
        Ok(out)
    }
}

/// `--steps --lr --seed --timeout-ms`: how to train (`run`, `launch`).
#[derive(clap::Args, Clone)]
pub struct Training {
    /// Training steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Seed of the initial weights (unless --weights gives them) and of the synthetic batches.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The longest a rank waits for a peer (a rendezvous, then every message) before the run
    /// fails, in ms.
    #[arg(long, default_value_t = 60_000)]
    pub timeout_ms: u64,
    /// Initial weights (f32 safetensors) instead of seeded ones: under hetpar's documented names,
    /// or a language model's Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Train on the same synthetic batch every step: a smoke test whose loss must fall (the
    /// default, a fresh random batch per step, cannot make it fall).
    #[arg(long)]
    pub fixed_batch: bool,
    #[command(flatten)]
    pub save: SaveArgs,
}

/// The most steps a run takes (its synthetic batches are made before it starts).
pub const MAX_STEPS: usize = 1_000_000;

impl Training {
    /// The values refused before any work: no steps, more than [`MAX_STEPS`], a learning rate
    /// that is not a finite number from 0 to 1 (Adam's steps are about that size per weight, so
    /// more only diverges).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            bail!(
                "--steps {}: give 1 to {MAX_STEPS} training steps",
                self.steps
            );
        }
        if !(self.lr.is_finite() && (0.0..=1.0).contains(&self.lr)) {
            bail!(
                "--lr {}: Adam's learning rate must be a finite number from 0 to 1 (1e-4 to 1e-2 \
                 is usual)",
                self.lr
            );
        }
        Ok(())
    }

    /// The synthetic batches: one per step, or one for every step with `--fixed-batch`; a
    /// resumed run's from where its data stood, drawn from its seed.
    pub fn batches(
        &self,
        model: &ModelGraph,
        cfg: &Config,
        resumed: Option<&TrainingState>,
    ) -> anyhow::Result<Vec<Batch>> {
        if self.fixed_batch {
            return Ok(synthetic_batches(model, cfg, self.seed(resumed), 1)?);
        }
        let first = resumed.map_or(0, |s| s.data_position);
        Ok(synthetic_batches_from(
            model,
            cfg,
            self.seed(resumed),
            first,
            self.steps,
        )?)
    }

    /// The seed of the data: a resumed run's own.
    pub fn seed(&self, resumed: Option<&TrainingState>) -> u64 {
        resumed.map_or(self.seed, |s| s.seed)
    }

    /// The initial weights, and the names `--dump` writes: a checkpoint's or a save's (Adam's
    /// state too), opened and checked now; else `--weights` or seeded ones.
    pub fn start(
        &self,
        start: &StartArgs,
        cfg: &Config,
    ) -> anyhow::Result<(Box<dyn WeightSource>, Naming)> {
        if self.weights.is_some() && (start.checkpoint.is_some() || start.resume.is_some()) {
            bail!("--weights gives the initial weights; leave out --checkpoint and --resume");
        }
        if let Some(s) = start.source(cfg)? {
            return Ok((s, Naming::HuggingFace));
        }
        let (p, naming) = initial_weights(self.weights.as_deref(), cfg, self.seed)?;
        Ok((Box::new(p), naming))
    }

    /// Why the loss of synthetic batches does not fall, unless one batch is repeated.
    pub fn note_batches(&self) {
        if !self.fixed_batch {
            eprintln!(
                "note: every step trains on a fresh random synthetic batch, so the loss cannot \
                 fall; --fixed-batch repeats one (a smoke test whose loss falls)"
            );
        }
    }

    pub fn options(&self) -> RunOptions {
        RunOptions {
            steps: self.steps,
            lr: self.lr,
            timeout: Duration::from_millis(self.timeout_ms),
            backend: Default::default(),
            save: None,
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub program: ProgramInput,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub training: Training,
    /// One batch (safetensors) for every step instead of a synthetic batch per step.
    #[arg(long)]
    pub batch: Option<PathBuf>,
    /// Write losses.safetensors, weights.safetensors and grads.safetensors (the last step's
    /// gradients, `grad.` names) here, under the names --weights used.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A plan (lowered here) or a program, with the model it is for: `None` when a file was
/// invalid (its diagnostics printed).
pub fn load_program(
    input: &Path,
    model: &ModelText,
    cluster: Option<&Path>,
) -> anyhow::Result<Option<(ModelGraph, Program, String)>> {
    let text = match hetpar::io::read_text(input) {
        Ok(t) => t,
        Err(ds) => {
            print_diagnostics(&ds);
            return Ok(None);
        }
    };
    let name = input.display().to_string();
    let model_text = model.text.clone();
    let kind = match parse_value(&text) {
        Ok(v) => detect_kind(&v),
        Err(ds) => {
            print_diagnostics(&ds.with_file(&name));
            return Ok(None);
        }
    };
    match kind {
        Some(FileKind::Plan) => {
            let Some(cluster) = cluster else {
                bail!("{name} is a plan: give --cluster too (or a program)");
            };
            let Some((model, cluster, plan)) =
                load_inputs_with(&model_text, &model.name, cluster, input)
            else {
                return Ok(None);
            };
            let program = hetpar::planner::lower::lower(&model, &cluster, &plan)?;
            Ok(Some((model, program, model_text)))
        }
        Some(FileKind::Program) => {
            let program = match hetpar::ir::load_program(&text) {
                Ok(p) => p,
                Err(ds) => {
                    print_diagnostics(&ds.with_file(&name));
                    return Ok(None);
                }
            };
            let model_name = &model.name;
            let model = match hetpar::ir::load_model(&model_text) {
                Ok((g, _)) => g,
                Err(ds) => {
                    print_diagnostics(&ds.with_file(model_name));
                    return Ok(None);
                }
            };
            if program.model != model.name() {
                bail!(
                    "{name}: the program was lowered for model `{}`, but {model_name} is `{}`",
                    program.model,
                    model.name()
                );
            }
            Ok(Some((model, program, model_text)))
        }
        _ => bail!("{name}: expected a plan or a program (\"kind\": \"plan\" or \"program\")"),
    }
}

/// The files `--dump` writes.
const DUMP_FILES: [&str; 3] = [
    "losses.safetensors",
    "weights.safetensors",
    "grads.safetensors",
];

/// A run's error, with what to try when it diverged (a step's loss not finite).
pub fn run_error(e: RuntimeError) -> anyhow::Error {
    match e {
        RuntimeError::NonFinite { .. } => {
            anyhow::anyhow!("{e} (a lower --lr, or check --weights and --batch)")
        }
        e => e.into(),
    }
}

/// The initial weights: `--weights` (every value finite: a NaN there is no start, under
/// hetpar's or Hugging Face's names), else seeded ones; and the names the file used (`--dump` writes the same).
fn initial_weights(
    path: Option<&Path>,
    cfg: &Config,
    seed: u64,
) -> anyhow::Result<(Params, Naming)> {
    let Some(p) = path else {
        return Ok((Params::init(cfg, seed)?, Naming::Hetpar));
    };
    let name = p.display();
    let tensors = hetpar::runtime::dump::from_bytes(&read(p)?).with_context(|| name.to_string())?;
    let (params, naming) =
        params_from_either(tensors, cfg, &name.to_string()).with_context(|| name.to_string())?;
    for (t, v) in params.iter() {
        if let Some(x) = v.data().iter().find(|x| !x.is_finite()) {
            bail!("--weights {name}: `{t}` holds {x}, not a finite number");
        }
    }
    Ok((params, naming))
}

/// `--batch`: its patches (every encoder's) must be finite numbers.
fn read_batch(p: &Path, cfg: &Config) -> anyhow::Result<Batch> {
    let name = p.display();
    let b = hetpar::runtime::dump::batch_from_bytes(&read(p)?, cfg)
        .with_context(|| name.to_string())?;
    let patches = [Some(&b.patches), b.audio.as_ref().map(|a| &a.patches)];
    for (what, t) in ["patches", "audio patches"].into_iter().zip(patches) {
        if let Some(x) = t.and_then(|t| t.data().iter().find(|x| !x.is_finite())) {
            bail!("--batch {name}: its {what} hold {x}, not a finite number");
        }
    }
    Ok(b)
}

/// `--dump`'s directory made and tried now, so that a path it cannot write fails before any
/// training, not after.
fn prepare_dump(dir: &Path) -> anyhow::Result<()> {
    let name = dir.display();
    if dir.exists() && !dir.is_dir() {
        bail!("--dump {name}: it exists and is not a directory");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--dump {name}: cannot create it"))?;
    for f in DUMP_FILES {
        if dir.join(f).is_dir() {
            bail!("--dump {name}: {f} there is a directory");
        }
    }
    // The files are written atomically, through new files beside them: try one.
    let probe = dir.join(format!(".hetpar-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("--dump {name}: cannot write there"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    a.training.check()?;
    if a.batch.is_some() && a.training.fixed_batch {
        bail!("--batch gives the batch of every step already; leave out --fixed-batch");
    }
    if let Some(dir) = &a.dump {
        prepare_dump(dir)?;
    }
    a.training.save.prepare()?;
    let model_text = a.program.start.model(a.program.model.as_deref())?;
    let Some((model, mut program, _)) = a.program.load_with(&model_text)? else {
        return Ok(ExitCode::from(1));
    };
    let cfg = Config::from_model(&model).with_context(|| model_text.name.clone())?;
    check_memory(&cfg, 1.0)?;
    let (init, naming) = a.training.start(&a.program.start, &cfg)?;
    let resumed = a.program.start.state()?;
    let batches: Vec<Batch> = match &a.batch {
        Some(p) => {
            let b = read_batch(p, &cfg)?;
            let differ = super::batch_items::differing(&model, &b);
            if !differ.is_empty() {
                program = super::batch_items::relower(&a.program, &model_text.text, &differ)?;
            }
            vec![b]
        }
        None => {
            a.training.note_batches();
            a.training.batches(&model, &cfg, resumed.as_ref())?
        }
    };
    if a.device.nccl {
        bail!(
            "--nccl is for `hetpar launch`: NCCL needs the ranks as processes, each on its own \
             GPU, and `run` makes them threads of one process on one GPU"
        );
    }
    let mut opts = a.training.options();
    opts.backend = a.device.backend(0)?;
    let seed = a.training.seed(resumed.as_ref());
    let first = resumed.as_ref().map_or(0, |s| s.step);
    opts.save = a.training.save.spec(&model_text, seed, opts.lr, first);
    let progress = Progress::new(opts.steps);
    let out = run_observed(
        &program,
        &cfg,
        &*init,
        &batches,
        &opts,
        &|st| st.interpret(),
        &|r| progress.step(r),
    );
    progress.finish();
    let out = out.map_err(run_error)?;
    print_stdout(&report(&program, &batches[0], &out));
    if let Some(dir) = &a.dump {
        dump(dir, &out, &cfg, naming)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The dump, weights and gradients under the names `--weights` used.
fn dump(dir: &Path, out: &RunOutput, cfg: &Config, naming: Naming) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = [
        hetpar::runtime::dump::losses_to_bytes(&out.losses)?,
        to_safetensors_named(&out.params, cfg, "", naming)?,
        to_safetensors_named(&out.grads, cfg, "grad.", naming)?,
    ];
    for (name, bytes) in DUMP_FILES.into_iter().zip(files) {
        let p = dir.join(name);
        hetpar::io::write_atomic(&p, &bytes)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}

/// Refuses a run whose weights, gradients and Adam moments (f32, 16 bytes a parameter, a
/// floor: replicas and activations add to it) cannot fit in this machine's available memory,
/// `share` of the ranks running here; a machine that does not say is not checked.
pub fn check_memory(cfg: &Config, share: f64) -> anyhow::Result<()> {
    let params: usize = hetpar::runtime::reference::param_specs(cfg)
        .iter()
        .map(|s| s.shape.iter().product::<usize>())
        .sum();
    let need = 16.0 * params as f64 * share;
    let Some(available) = available_memory() else {
        return Ok(());
    };
    if need > available {
        bail!(
            "the model has {:.3} G parameters: its weights, gradients and Adam moments alone \
             need at least {:.1} GB on this machine, which has {:.1} GB available (the CPU \
             runtime trains in f32; run a smaller model, or more nodes)",
            params as f64 / 1e9,
            need / 1e9,
            available / 1e9
        );
    }
    Ok(())
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn available_memory() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}
