//! The CPU backend: executes a [`Program`] with every rank a thread holding its own memory,
//! talking over the in-process [`crate::transport`] (which really copies every message and
//! times out every wait), on the reference model (`docs/reference-model.md`).
//!
//! One concept per file: [`shard`] (which rows of a micro-batch a rank holds),
//! [`shard_params`] (which parameter slices), [`comm`] (tensor collectives over the tp and cp
//! groups, message tags), [`block`] (the block and projector under TP, SP and CP), [`moe`] (a
//! mixture of experts under TP and expert parallelism), [`rank`]
//! (one rank's interpreter: pipeline transfers, boundary transfers, gradient sums, Adam),
//! [`generated`] (what generated programs and `hetpar run` share), [`progress`] (each step's
//! report as it ends), [`check`] (whether a program computes the reference model),
//! [`executes`] (which layout field values it executes).

pub mod attn;
pub mod block;
pub mod check;
pub mod collective;
pub mod comm;
pub mod executes;
pub mod ffn;
pub mod fused;
pub mod generated;
pub mod math;
pub mod moe;
pub mod order;
pub mod progress;
pub mod rank;
pub mod rows;
pub mod shard;
pub mod shard_params;
pub mod vocab;

use std::collections::BTreeMap;
use std::time::Duration;

use hetpar_ir::program::Program;

pub use self::check::check;
pub use self::executes::check_executed;
pub use self::progress::{OnStep, StepReport};
pub use self::rank::{RankState, StaticBytes};
use self::shard_params::{holders, unslice};
use crate::checkpoint::WeightSource;
use crate::reference::{Batch, Config, Params};
use crate::transport::fabric;
use crate::RuntimeError;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub steps: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// The longest any rank waits for a message.
    pub timeout: Duration,
    /// Whose arithmetic the ranks use.
    pub backend: Backend,
    /// Where and how often to save checkpoints (`crate::checkpoint::save`).
    pub save: Option<crate::checkpoint::SaveSpec>,
}

/// Where the ranks compute. Either way the interpreter, sharding and transfers are the same
/// (`math.rs`): the CPU reference's functions, or a GPU's cuBLAS and kernels with every rank
/// a stream of one shared device, its matrix products' inputs in f32 or bf16.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    #[default]
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda {
        device: std::sync::Arc<crate::cuda::Device>,
        precision: crate::cuda::Precision,
        /// Collectives and gradient sums by NCCL: ranks as processes, one GPU each.
        nccl: bool,
    },
}

impl Backend {
    /// The CUDA backend on GPU `gpu`, else on this node's `local` rank modulo the GPUs there
    /// are, its products' inputs bf16 or f32, its collectives by NCCL or not. The process first
    /// re-executes itself once with the CUDA libraries on `LD_LIBRARY_PATH` (`crate::libs`).
    pub fn cuda(
        gpu: Option<usize>,
        local: usize,
        bf16: bool,
        nccl: bool,
    ) -> Result<Backend, RuntimeError> {
        #[cfg(feature = "cuda")]
        {
            use crate::cuda::{Device, Precision};
            crate::libs::reexec_with_cuda_libraries().map_err(|e| {
                RuntimeError::Device(format!("re-executing with the CUDA libraries: {e}"))
            })?;
            let ordinal = match gpu {
                Some(g) => g,
                None => local % Device::count()?.max(1),
            };
            Ok(Backend::Cuda {
                device: Device::open(ordinal)?,
                precision: if bf16 {
                    Precision::Bf16
                } else {
                    Precision::F32
                },
                nccl,
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (gpu, local, bf16, nccl);
            Err(RuntimeError::Device(
                "hetpar-runtime was built without its `cuda` feature".into(),
            ))
        }
    }

    /// A rank's arithmetic on this backend.
    pub fn math<'a>(&self) -> Result<Box<dyn math::Math + 'a>, RuntimeError> {
        match self {
            Backend::Cpu => Ok(Box::new(math::CpuMath)),
            #[cfg(feature = "cuda")]
            Backend::Cuda {
                device, precision, ..
            } => Ok(Box::new(crate::cuda::GpuMath::new(
                device.rank()?.with_precision(*precision),
            ))),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Cpu => write!(f, "CPU backend"),
            #[cfg(feature = "cuda")]
            Backend::Cuda {
                device,
                precision,
                nccl,
            } => {
                let how = if *nccl { ", NCCL collectives" } else { "" };
                write!(f, "CUDA backend on {} ({precision}{how})", device.name)
            }
        }
    }
}

/// What a run produced, assembled whole (as one device would hold it).
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The loss of every step (before its update).
    pub losses: Vec<f32>,
    /// The weights after the last step.
    pub params: Params,
    /// The gradients of the last step.
    pub grads: Params,
    /// Every step's wall time: the slowest rank's, s.
    pub step_seconds: Vec<f64>,
    /// Per rank (by rank), the most bytes its tensors held at once.
    pub peak_bytes: Vec<(u32, usize)>,
    /// Per rank (by rank), its weights', gradients' and optimizer state's bytes at the end.
    pub static_bytes: Vec<(u32, StaticBytes)>,
    /// Per rank (by rank), the point-to-point messages it sent over the whole run.
    pub messages: Vec<(u32, u64)>,
    /// The backend it ran on, in words.
    pub backend: String,
    /// The language model's logits of the last step `[B, S, V]`, when its ranks kept them
    /// (`RankState::keep_logits`).
    pub logits: Option<crate::tensor::Tensor>,
}

/// One rank's results, and its endpoint back.
struct RankOut {
    net: crate::transport::Endpoint,
    rank: u32,
    losses: Vec<f64>,
    params: Params,
    grads: Params,
    seconds: Vec<f64>,
    peak_bytes: usize,
    logits: Vec<rank::LogitRows>,
    static_bytes: StaticBytes,
}

/// Checks a run's inputs; the layout of every batch.
fn prepare(
    program: &Program,
    cfg: &Config,
    init: &dyn WeightSource,
    batches: &[Batch],
) -> Result<Vec<crate::reference::batch::BatchLayout>, RuntimeError> {
    check_executed(program)?;
    cfg.validate()?;
    init.check_fits(cfg)?;
    if batches.is_empty() {
        return Err(RuntimeError::InvalidBatch("no batch to run on".into()));
    }
    batches
        .iter()
        .map(|b| {
            check(program, cfg, b.batch_size)?;
            b.layout(cfg)
        })
        .collect()
}

/// Each step's loss: its cross-entropy summed over the ranks, in rank order, over the target
/// count of its batch (step `k` runs on batch `k mod len`).
fn step_losses(sums: &[f64], layouts: &[crate::reference::batch::BatchLayout]) -> Vec<f32> {
    sums.iter()
        .enumerate()
        .map(|(k, s)| (s / layouts[k % layouts.len()].targets as f64) as f32)
        .collect()
}

/// One rank's steps on its endpoint.
#[allow(clippy::too_many_arguments)]
fn run_rank<'a>(
    rank: u32,
    net: crate::transport::Endpoint,
    program: &'a Program,
    cfg: &Config,
    init: &dyn WeightSource,
    batches: &'a [Batch],
    layouts: &[crate::reference::batch::BatchLayout],
    opts: &RunOptions,
    body: &RankBody,
    on_step: &OnStep<'_>,
) -> Result<RankOut, RuntimeError> {
    let mut st =
        RankState::new(rank, net, *cfg, program, init, opts.lr)?.with_math(opts.backend.math()?);
    #[cfg(feature = "cuda")]
    if let Backend::Cuda {
        device, nccl: true, ..
    } = &opts.backend
    {
        order::check_pair_order(program).map_err(RuntimeError::InvalidProgram)?;
        let groups = rank::program_groups(program);
        let nccl = crate::cuda::nccl::NcclGroups::new(device, &mut st.net, &groups)?;
        st.set_groups(Box::new(nccl));
    }
    let mut losses = Vec::with_capacity(opts.steps);
    let mut seconds = Vec::with_capacity(opts.steps);
    let mut grads = Params::default();
    let mut ranks: Vec<u32> = program.ranks.iter().map(|r| r.rank).collect();
    ranks.sort_unstable();
    let reports = ranks.first() == Some(&rank);
    for k in 0..opts.steps {
        let i = k % batches.len();
        let start = std::time::Instant::now();
        st.begin_step(&batches[i], layouts[i].clone());
        body(&mut st)?;
        st.end_step()?;
        seconds.push(start.elapsed().as_secs_f64());
        losses.push(st.loss);
        // Every rank learns the step's loss: the lowest reports it, all stop if it diverged.
        let (b, targets) = (&batches[i], layouts[i].targets);
        let tokens = b.batch_size * b.seq_len;
        let r = progress::settle(
            &mut st.net,
            &ranks,
            k + 1,
            opts.steps,
            st.loss,
            seconds[k],
            targets,
            tokens,
        )?;
        if reports {
            on_step(&r);
        }
        r.check()?;
        if let Some(spec) = opts.save.as_ref().filter(|s| s.due(k, opts.steps)) {
            crate::checkpoint::save::save_step(&mut st, spec, k, &ranks)?;
        }
        if k + 1 == opts.steps {
            // Whole, though a distributed optimizer's ranks each summed their shard only.
            grads = st.whole_grads()?;
        }
    }
    Ok(RankOut {
        logits: std::mem::take(&mut st.logits),
        peak_bytes: st.peak_bytes,
        static_bytes: st.static_bytes(),
        rank: st.rank,
        losses,
        params: st.params,
        grads,
        seconds,
        net: st.net,
    })
}

/// What every process of a multi-process run learns at the end.
#[derive(Clone, Debug)]
pub struct Summary {
    pub losses: Vec<f32>,
    /// Every step's wall time: the slowest rank's, s.
    pub step_seconds: Vec<f64>,
    /// Per rank, the most bytes its tensors held at once.
    pub peak_bytes: Vec<(u32, usize)>,
}

/// This process's rank of `program` on `net` (ranks as processes, `crate::rendezvous`), each
/// step running `body`: its steps, then the losses, step times and peaks of every rank, which
/// every rank receives. Each step's report goes to `on_step` on the lowest rank as the step
/// ends; a step whose loss is not finite stops every rank there ([`RuntimeError::NonFinite`]).
#[allow(clippy::too_many_arguments)]
pub fn run_process(
    net: crate::transport::Endpoint,
    program: &Program,
    cfg: &Config,
    init: &dyn WeightSource,
    batches: &[Batch],
    opts: &RunOptions,
    body: &RankBody,
    on_step: &OnStep<'_>,
) -> Result<Summary, RuntimeError> {
    let layouts = prepare(program, cfg, init, batches)?;
    let rank = net.rank();
    let mut out = run_rank(
        rank, net, program, cfg, init, batches, &layouts, opts, body, on_step,
    )?;
    // Every rank's figures to every rank: the losses as the bits of each step's f64 (two f32
    // words, so nothing is rounded), the step times, the peak.
    let group: Vec<u32> = program.ranks.iter().map(|r| r.rank).collect();
    let mut words: Vec<f32> = Vec::new();
    for &l in &out.losses {
        let b = l.to_bits();
        words.push(f32::from_bits((b >> 32) as u32));
        words.push(f32::from_bits(b as u32));
    }
    words.extend(out.seconds.iter().map(|&t| t as f32));
    let peak = out.peak_bytes as u64;
    words.push(f32::from_bits((peak >> 32) as u32));
    words.push(f32::from_bits(peak as u32));
    let all = out.net.all_gather(
        &group,
        comm::tag(comm::Kind::GradSync, 63, 0, 0, 255),
        &words,
    )?;
    let steps = opts.steps;
    let word = |v: &[f32], i: usize| -> Result<u32, RuntimeError> {
        v.get(i).map(|w| w.to_bits()).ok_or_else(|| {
            RuntimeError::InvalidProgram("a rank reported fewer steps than asked".into())
        })
    };
    let mut sums = vec![0.0f64; steps];
    let mut seconds = vec![0.0f64; steps];
    let mut peaks = Vec::with_capacity(group.len());
    for (r, v) in group.iter().zip(&all) {
        for (k, s) in sums.iter_mut().enumerate() {
            let bits = (u64::from(word(v, 2 * k)?) << 32) | u64::from(word(v, 2 * k + 1)?);
            *s += f64::from_bits(bits);
        }
        for (k, t) in seconds.iter_mut().enumerate() {
            *t = t.max(f64::from(f32::from_bits(word(v, 2 * steps + k)?)));
        }
        let hi = u64::from(word(v, 3 * steps)?);
        let lo = u64::from(word(v, 3 * steps + 1)?);
        peaks.push((*r, ((hi << 32) | lo) as usize));
    }
    Ok(Summary {
        losses: step_losses(&sums, &layouts),
        step_seconds: seconds,
        peak_bytes: peaks,
    })
}

/// What a rank does in one step (between [`RankState::begin_step`] and
/// [`RankState::end_step`]): interpret its instruction list, or generated straight-line code.
pub type RankBody = dyn for<'s> Fn(&mut RankState<'s>) -> Result<(), RuntimeError> + Sync;

/// Runs `program` for `opts.steps` steps from the weights `init`, step `k` on
/// `batches[k % len]`, every rank interpreting its instructions.
pub fn run(
    program: &Program,
    cfg: &Config,
    init: &dyn WeightSource,
    batches: &[Batch],
    opts: &RunOptions,
) -> Result<RunOutput, RuntimeError> {
    run_with(program, cfg, init, batches, opts, &|st| st.interpret())
}

/// Like [`run`], every rank executing `body` each step: the program gives the ranks, module
/// grids and boundaries; its instruction lists are used only by a body that interprets them.
pub fn run_with(
    program: &Program,
    cfg: &Config,
    init: &dyn WeightSource,
    batches: &[Batch],
    opts: &RunOptions,
    body: &RankBody,
) -> Result<RunOutput, RuntimeError> {
    run_observed(program, cfg, init, batches, opts, body, &|_| {})
}

/// Like [`run_with`], each step's report given to `on_step` (on the lowest rank's thread) as
/// the step ends. Every run stops at a step whose loss is not finite
/// ([`RuntimeError::NonFinite`], from every rank at that step).
pub fn run_observed(
    program: &Program,
    cfg: &Config,
    init: &dyn WeightSource,
    batches: &[Batch],
    opts: &RunOptions,
    body: &RankBody,
    on_step: &OnStep<'_>,
) -> Result<RunOutput, RuntimeError> {
    let layouts = prepare(program, cfg, init, batches)?;
    let n = program.ranks.iter().map(|r| r.rank + 1).max().unwrap_or(0) as usize;
    let mut endpoints: Vec<Option<_>> = fabric(n, opts.timeout).into_iter().map(Some).collect();
    let results: Vec<Result<RankOut, RuntimeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = program
            .ranks
            .iter()
            .map(|rp| {
                let net = endpoints[rp.rank as usize]
                    .take()
                    .expect("one program per rank");
                let layouts = &layouts;
                scope.spawn(move || {
                    run_rank(
                        rp.rank, net, program, cfg, init, batches, layouts, opts, body, on_step,
                    )
                })
            })
            .collect();
        drop(endpoints);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut outs = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(o) => outs.push(o),
            Err(e) => errors.push(e),
        }
    }
    // The cause, not its echoes: an error of the program or data first, then a wait that
    // timed out, then a peer found gone (which follows from either).
    let rank_of = |e: &RuntimeError| match e {
        RuntimeError::Timeout { .. } => 1,
        RuntimeError::PeerGone { .. } => 2,
        _ => 0,
    };
    if let Some(e) = errors.iter().min_by_key(|e| rank_of(e)) {
        return Err(e.clone());
    }
    outs.sort_by_key(|o| o.rank);
    let sums: Vec<f64> = (0..opts.steps)
        .map(|k| outs.iter().map(|o| o.losses[k]).sum())
        .collect();
    let losses = step_losses(&sums, &layouts);
    let step_seconds = (0..opts.steps)
        .map(|k| outs.iter().map(|o| o.seconds[k]).fold(0.0, f64::max))
        .collect();
    let by_rank: BTreeMap<u32, &RankOut> = outs.iter().map(|o| (o.rank, o)).collect();
    let names = init.names();
    let holders = holders(program, cfg, &names);
    let assemble = |pick: &dyn Fn(&RankOut) -> &Params| -> Result<Params, RuntimeError> {
        let mut out = Params::default();
        for name in &names {
            let missing =
                || RuntimeError::InvalidProgram(format!("no rank holds parameter `{name}`"));
            let (ranks, split) = holders.get(name).ok_or_else(missing)?;
            let parts: Vec<&crate::tensor::Tensor> = ranks
                .iter()
                .filter_map(|r| by_rank.get(r))
                .filter_map(|o| pick(o).get(name))
                .collect();
            if parts.len() != ranks.len() {
                return Err(missing());
            }
            out.insert(name.clone(), unslice(&parts, *split));
        }
        Ok(out)
    };
    Ok(RunOutput {
        losses,
        params: assemble(&|o| &o.params)?,
        grads: assemble(&|o| &o.grads)?,
        step_seconds,
        peak_bytes: outs.iter().map(|o| (o.rank, o.peak_bytes)).collect(),
        static_bytes: outs.iter().map(|o| (o.rank, o.static_bytes)).collect(),
        messages: outs
            .iter()
            .map(|o| (o.rank, o.net.messages_sent()))
            .collect(),
        backend: opts.backend.to_string(),
        logits: logits_of(
            &outs,
            &batches[(opts.steps - 1) % batches.len()],
            cfg.llm.vocab,
        )?,
    })
}

/// The last step's logits `[B, S, V]` from the rows every rank kept, if any did.
fn logits_of(
    outs: &[RankOut],
    batch: &Batch,
    vocab: usize,
) -> Result<Option<crate::tensor::Tensor>, RuntimeError> {
    if outs.iter().all(|o| o.logits.is_empty()) {
        return Ok(None);
    }
    let (b, s) = (batch.batch_size, batch.seq_len);
    let mut all = crate::tensor::Tensor::zeros(&[b * s, vocab]);
    for part in outs.iter().flat_map(|o| &o.logits) {
        let w = part.values.cols();
        for (k, &(sample, pos)) in part.rows.iter().enumerate() {
            let at = sample as usize * s + pos as usize;
            let dst = all.row_mut(at);
            dst[part.vocab_start..part.vocab_start + w].copy_from_slice(part.values.row(k));
        }
    }
    Ok(Some(crate::tensor::Tensor::from_vec(
        &[b, s, vocab],
        all.into_data(),
    )?))
}
