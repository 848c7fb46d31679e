//! `hetpar launch`: ranks as processes, one per device slot, on one node or many; and the
//! hidden `hetpar worker` that each of them runs.

use std::process::{Child, Command, ExitCode, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use hetpar::progress::Progress;
use hetpar::runtime::exec::generated::{largest_message, report_steps};
use hetpar::runtime::exec::run_process;
use hetpar::runtime::reference::Config;
use hetpar::runtime::rendezvous::{check_token, new_token, slurm_token, Placement};
use hetpar::runtime::RuntimeError;

use super::print_stdout;
use super::run::{run_error, Backend, DeviceArgs, ProgramInput, Training};

/// What a worker runs (shared by `launch` and `worker`).
#[derive(clap::Args, Clone)]
pub struct Job {
    #[command(flatten)]
    pub program: ProgramInput,
    #[command(flatten)]
    pub training: Training,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub job: Job,
    /// Processes (ranks) to start on this node.
    #[arg(long)]
    pub nproc_per_node: u32,
    /// Nodes in all.
    #[arg(long, default_value_t = 1)]
    pub nnodes: u32,
    /// This node's index: its ranks are node_rank x nproc_per_node onwards.
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    /// Where rank 0 listens for the rendezvous, host:port (by default a free local port, on
    /// one node).
    #[arg(long)]
    pub master: Option<String>,
    /// The job's token, which every rank says first so that no other job or stray client joins
    /// (the same on every node). By default, under SLURM one derived from the job step, else on
    /// one node a fresh one; several nodes outside SLURM need it.
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub job: Job,
}

fn job_args(j: &Job) -> Vec<String> {
    let (p, t) = (&j.program, &j.training);
    let mut v = vec![p.input.display().to_string()];
    if let Some(m) = &p.model {
        v.push("--model".into());
        v.push(m.display().to_string());
    }
    v.extend(p.start.to_args());
    v.extend(t.save.to_args());
    v.extend([
        "--steps".into(),
        t.steps.to_string(),
        "--lr".into(),
        t.lr.to_string(),
        "--seed".into(),
        t.seed.to_string(),
        "--timeout-ms".into(),
        t.timeout_ms.to_string(),
    ]);
    if t.fixed_batch {
        v.push("--fixed-batch".into());
    }
    if let Some(w) = &t.weights {
        v.push("--weights".into());
        v.push(w.display().to_string());
    }
    if let Some(c) = &p.cluster {
        v.push("--cluster".into());
        v.push(c.display().to_string());
    }
    v.extend(j.device.to_args());
    v
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.nproc_per_node == 0 || a.nnodes == 0 || a.node_rank >= a.nnodes {
        bail!(
            "--nproc-per-node and --nnodes must be at least 1 and --node-rank below --nnodes \
             (got {}, {}, {})",
            a.nproc_per_node,
            a.nnodes,
            a.node_rank
        );
    }
    a.job.device.check()?;
    a.job.training.check()?;
    let Some(world) = a.nnodes.checked_mul(a.nproc_per_node) else {
        bail!(
            "--nnodes {} x --nproc-per-node {} is too many processes",
            a.nnodes,
            a.nproc_per_node
        );
    };
    // The program is checked here once: a size mismatch is one error, not one per worker.
    let Some((model, program, _)) = a.job.program.load()? else {
        return Ok(ExitCode::from(1));
    };
    a.job.training.save.prepare()?;
    // This node's share of the ranks.
    let share = f64::from(a.nproc_per_node) / f64::from(world.max(1));
    let cfg = Config::from_model(&model)?;
    super::run::check_memory(&cfg, share)?;
    // Weights read (a checkpoint's headers checked) once here, so that a bad file is one error,
    // not one per worker.
    a.job.training.start(&a.job.program.start, &cfg)?;
    let started = format!(
        "--nnodes {} x --nproc-per-node {} would start {world} processes",
        a.nnodes, a.nproc_per_node
    );
    check_world(&program, world, &started)?;
    let master = match &a.master {
        Some(m) => m.clone(),
        None if a.nnodes == 1 => {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.to_string()
        }
        None => bail!("with --nnodes above 1, give --master ADDR:PORT (rank 0's node)"),
    };
    let token = job_token(&a)?;
    a.job.training.note_batches();
    let exe = std::env::current_exe().context("cannot find hetpar's own executable")?;
    // CUDA workers find pip's libraries (and NCCL under the name cudarc loads) from the start.
    let library_path = match a.job.device.backend {
        Backend::Cuda => Some(hetpar::runtime::libs::cuda_environment()?.0),
        Backend::Cpu => None,
    };
    let mut children = Vec::new();
    for local in 0..a.nproc_per_node {
        let rank = a.node_rank * a.nproc_per_node + local;
        let mut cmd = Command::new(&exe);
        cmd.arg("worker")
            .args(job_args(&a.job))
            .env("HETPAR_RANK", rank.to_string())
            .env("HETPAR_WORLD", world.to_string())
            .env("HETPAR_MASTER", &master)
            .env("HETPAR_TOKEN", &token)
            .env("HETPAR_LOCAL_RANK", local.to_string());
        if let Some(p) = &library_path {
            cmd.env("LD_LIBRARY_PATH", p)
                .env(hetpar::runtime::libs::READY_VAR, "1");
        }
        match cmd.spawn() {
            Ok(child) => children.push((rank, child)),
            Err(e) => {
                // The ranks already started would wait out their timeout for this one.
                let stopped = stop(children);
                bail!("cannot start rank {rank}: {e}; stopped the ranks started{stopped}");
            }
        }
    }
    watch(children)
}

/// The job's token: `--token`, else SLURM's job step, else (one node) a fresh one.
fn job_token(a: &Args) -> anyhow::Result<String> {
    let t = match (&a.token, slurm_token(&|k: &str| std::env::var(k).ok())) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t,
        (None, None) if a.nnodes == 1 => new_token(),
        (None, None) => bail!(
            "with --nnodes above 1 outside SLURM, give every node the same --token (1 to 128 \
             printable characters, e.g. from `openssl rand -hex 16`): it keeps other jobs out of \
             the rendezvous"
        ),
    };
    check_token(&t).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    Ok(t)
}

/// How long the other ranks may take to end by themselves after one fails: a step whose
/// loss is not finite stops every rank at once, and rank 0 names it.
const GRACE: Duration = Duration::from_millis(500);

/// Waits for every rank. After the first that fails (an error, a signal), the others have
/// [`GRACE`] to end by themselves, then are stopped: a dead rank would leave its peers waiting
/// out their timeout. Named is the first failure, unless it ended with an exit code and rank
/// 0 failed too (a diverged step, whose error rank 0 alone prints).
fn watch(mut children: Vec<(u32, Child)>) -> anyhow::Result<ExitCode> {
    let mut failed: Vec<(u32, u32, ExitStatus)> = Vec::new();
    let mut since: Option<Instant> = None;
    while !children.is_empty() && since.is_none_or(|t| t.elapsed() < GRACE) {
        let mut i = 0;
        while i < children.len() {
            let status = children[i]
                .1
                .try_wait()
                .with_context(|| format!("cannot watch rank {}", children[i].0))?;
            match status {
                None => i += 1,
                Some(s) if s.success() => drop(children.remove(i)),
                Some(s) => {
                    let (rank, c) = children.remove(i);
                    failed.push((rank, c.id(), s));
                    since.get_or_insert_with(Instant::now);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(&first) = failed.first() else {
        return Ok(ExitCode::SUCCESS);
    };
    let stopped = stop(children);
    let named = match failed.iter().find(|f| f.0 == 0) {
        Some(&zero) if first.2.code().is_some() => zero,
        _ => first,
    };
    let (rank, pid, s) = named;
    bail!(
        "rank {rank} (pid {pid}) {}; stopped the other ranks of this node{stopped}",
        ended(s)
    )
}

/// Kills and reaps `children`; what could not be stopped, if anything.
fn stop(children: Vec<(u32, Child)>) -> String {
    let mut left = Vec::new();
    for (rank, mut c) in children {
        // An error here means it has already ended; `wait` reaps it either way.
        let _ = c.kill();
        if c.wait().is_err() {
            left.push(format!("rank {rank} (pid {})", c.id()));
        }
    }
    if left.is_empty() {
        String::new()
    } else {
        format!(" (could not stop {})", left.join(", "))
    }
}

/// How a rank ended: its exit code, or the signal that killed it.
fn ended(s: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt as _;
        if let Some(sig) = s.signal() {
            let name = match sig {
                1 => " (SIGHUP)",
                2 => " (SIGINT)",
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                13 => " (SIGPIPE)",
                15 => " (SIGTERM)",
                _ => "",
            };
            return format!("was killed by signal {sig}{name}");
        }
    }
    match s.code() {
        Some(c) => format!("exited with code {c} (its error is above)"),
        None => format!("ended: {s}"),
    }
}

/// The program must have exactly `world` ranks, numbered from 0.
fn check_world(
    program: &hetpar::ir::program::Program,
    world: u32,
    started: &str,
) -> anyhow::Result<()> {
    let needed = program.ranks.iter().map(|r| r.rank + 1).max().unwrap_or(0);
    if needed != world || program.ranks.len() as u32 != world {
        bail!("the program has {needed} ranks, but {started}");
    }
    Ok(())
}

/// Rank, world, master and job token from hetpar's variables, or from SLURM's under `srun`.
fn placement() -> anyhow::Result<Placement> {
    hetpar::runtime::rendezvous::placement_from_env()?.ok_or_else(|| {
        anyhow::anyhow!(
            "a worker needs HETPAR_RANK, HETPAR_WORLD, HETPAR_MASTER and HETPAR_TOKEN (set by \
             hetpar launch), or SLURM_PROCID, SLURM_NTASKS, MASTER_ADDR, MASTER_PORT and \
             SLURM_JOB_ID under srun"
        )
    })
}

pub fn worker(a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let place = placement()?;
    let (rank, world) = (place.rank, place.world);
    let j = &a.job;
    let model_text = j.program.start.model(j.program.model.as_deref())?;
    let Some((model, program, _)) = j.program.load_with(&model_text)? else {
        return Ok(ExitCode::from(1));
    };
    check_world(&program, world, &format!("{world} processes were started"))?;
    let cfg = Config::from_model(&model)?;
    j.training.check()?;
    let (init, _) = j.training.start(&j.program.start, &cfg)?;
    let resumed = j.program.start.state()?;
    let batches = j.training.batches(&model, &cfg, resumed.as_ref())?;
    let mut opts = j.training.options();
    let seed = j.training.seed(resumed.as_ref());
    let first = resumed.as_ref().map_or(0, |s| s.step);
    opts.save = j.training.save.spec(&model_text, seed, opts.lr, first);
    // The GPU of this node's local rank.
    opts.backend = j
        .device
        .backend(hetpar::runtime::exec::generated::local_rank())?;
    let max = largest_message(&cfg, &batches, opts.steps);
    let net = hetpar::runtime::rendezvous::tcp_endpoint(&place, opts.timeout, max)?;
    // Rank 0 reports each step as it ends (the runtime calls it there alone), on the stderr
    // it shares with the launcher.
    let progress = Progress::new(opts.steps);
    let interpret = |st: &mut hetpar::runtime::exec::RankState| st.interpret();
    let s = run_process(
        net,
        &program,
        &cfg,
        &*init,
        &batches,
        &opts,
        &interpret,
        &|r| progress.step(r),
    );
    progress.finish();
    let s = match s {
        Ok(s) => s,
        // Every rank stops at that step; rank 0 names it, the others add nothing.
        Err(RuntimeError::NonFinite { .. }) if rank != 0 => return Ok(ExitCode::from(2)),
        Err(e) => return Err(run_error(e)),
    };
    if rank == 0 {
        print_stdout(&report_steps(
            &program,
            &batches[0],
            &s.losses,
            &s.step_seconds,
            &opts.backend.to_string(),
        ));
    }
    Ok(ExitCode::SUCCESS)
}
