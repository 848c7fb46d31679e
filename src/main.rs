//! The hetpar command line.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "hetpar",
    version,
    about = "A compiler for heterogeneous parallel training plans of multimodal models",
    long_about = "hetpar plans parallel training of multimodal models on GPU clusters: it reads models \
(its own JSON or a Hugging Face config.json) and clusters, checks, estimates and searches \
per-module parallel plans, lowers them to per-rank programs, runs those on the CPU backend or a \
GPU's arithmetic (CUDA, loaded at run time) or generates them as code, and calibrates its cost \
model to measurements.\n\n\
Results go to stdout, errors and logs to stderr. Every command that writes a file (-o) writes it \
atomically, and refuses an output that is one of its inputs (the same file after resolving links).",
    after_help = "Examples:\n  hetpar describe                      # the embedded LLaVA-1.5-7B example\n  \
hetpar validate examples/models/llava-1.5-7b.json examples/clusters/h100-8.json examples/plans/llava-1.5-7b-colocated-8.json\n  \
hetpar import hf examples/hf/qwen2.5-vl-7b.config.json -o qwen.json\n  \
hetpar run examples/plans/reference-tiny-noncolocated-8.json --model examples/models/reference-tiny.json --cluster examples/clusters/h100-8.json"
)]
struct Cli {
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Tables and sentences for a terminal.
    #[default]
    Human,
    /// One JSON document.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Check model, cluster and plan files (and Hugging Face configs); report every problem.
    #[command(
        after_help = "Each file's kind comes from its \"kind\" field (model, cluster, plan); a file \
with \"model_type\" is read as a Hugging Face config. A plan is checked against the one model and \
the one cluster given with it.\n\nExample:\n  hetpar validate examples/models/llava-1.5-7b.json \
examples/clusters/h100-8.json examples/plans/llava-1.5-7b-colocated-8.json"
    )]
    Validate(commands::validate::Args),
    /// Import a model from another format.
    #[command(subcommand)]
    Import(commands::import::Source),
    /// Per-module parameters and FLOPs, boundary rows and bytes.
    #[command(
        after_help = "Without a model, describes the embedded LLaVA-1.5-7B example.\n\nExample:\n  \
hetpar describe examples/models/qwen2.5-vl-7b.json --format json"
    )]
    Describe(commands::describe::Args),
    /// Predict iteration time, throughput, MFU and memory per rank of a plan.
    #[command(
        after_help = "The memory table lists every term of a rank's memory (weights, gradients, \
optimizer state, activations, the transient terms of its largest moment, NCCL buffers, \
allocator margin, CUDA context; docs/cost-model.md, \"Memory per rank\"); they add up to its \
total. Each predicted figure comes with the cost model's stated error for the GPU \
model (docs/cost-model.md, \"Stated error\").\n\nExample:\n  hetpar estimate --model examples/models/llava-1.5-7b.json \
--cluster examples/clusters/h100-8.json --plan examples/plans/llava-1.5-7b-colocated-8.json"
    )]
    Estimate(commands::estimate::Args),
    /// Synthesize each boundary's communication (forward and backward) and compare it with the
    /// leader-and-broadcast baseline.
    #[command(
        after_help = "Example:\n  hetpar reshard --model examples/models/vit6b-70b-32k.json \
--cluster examples/clusters/h100-1024.json --plan examples/plans/vit6b-70b-32k-noncolocated-1024.json --explain"
    )]
    Reshard(commands::reshard::Args),
    /// Lower a plan to a program: the ordered instructions of every rank (passes, pipeline
    /// transfers, fused boundary calls, gradient sync, optimizer step), as versioned JSON.
    #[command(
        after_help = "Example:\n  hetpar lower examples/plans/tiny-uneven-colocated-8.json \
--model examples/models/tiny-uneven.json --cluster examples/clusters/h100-8.json -o program.json"
    )]
    Lower(commands::lower::Args),
    /// Search the best plan (per-module layouts, placement, schedule) and compare it with the
    /// best homogeneous plan.
    #[command(
        after_help = "Without --model and --cluster, plans the embedded LLaVA-1.5-7B on one 8 x H100 node. \
Figures come with the cost model's stated error; --runnable keeps to plans hetpar's runtime executes \
(`run`, `launch`).\n\nExample:\n  \
hetpar plan --model examples/models/vision-audio-7b.json --cluster examples/clusters/h100-64.json --explain -o plan.json"
    )]
    Plan(commands::plan::Args),
    /// Show a plan's simulated schedule: a text timeline per lane of identical ranks, and on
    /// request an SVG timeline and a Chrome trace (Perfetto, chrome://tracing).
    #[command(
        after_help = "The text form goes to stdout: one line per lane, each column a slice of the \
iteration (upper-case module letter forward, lower case backward, g grad sync, o optimizer, . idle), \
then busy share, peak memory per rank, and peak activations with the time they peak.\n\n\
Example:\n  hetpar show examples/plans/llama-3-8b-homogeneous-8.json --model examples/models/llama-3-8b.json \
--cluster examples/clusters/h100-8.json --svg schedule.svg --trace schedule.json"
    )]
    Show(commands::show::Args),
    /// Train the reference model under a plan or a program, every rank a thread with real
    /// bytes between them, on the CPU or a GPU (--backend cuda): each step's loss, time and
    /// tokens/s on stderr as it ends, then the report on stdout.
    #[command(
        after_help = "The model must be one the reference model computes (docs/reference-model.md); \
batches are synthetic, shaped like the model's data, fresh every step (so the loss cannot fall), \
unless --fixed-batch repeats one (a smoke test whose loss must fall) or --batch gives one. Each step \
prints `step K/N  loss L  T ms  R tokens/s` on stderr as it ends (under a progress bar on a terminal); \
stdout gets the report at the end. A step whose loss is not finite (NaN, inf) stops the run there, \
naming the step (exit code 2); so does a value that is not finite in --weights or --batch, before any step.\n\n\
Example:\n  hetpar run examples/plans/reference-tiny-noncolocated-8.json --model examples/models/reference-tiny.json \
--cluster examples/clusters/h100-8.json --steps 20 --dump out/"
    )]
    Run(commands::run::Args),
    /// Export a plan to another trainer: Megatron-LM's arguments and a launch script.
    #[command(subcommand)]
    Export(commands::export::Target),
    /// Generate a Rust crate from a plan or a program: every rank's instructions as
    /// straight-line code over hetpar-runtime, its boundary transfers as constant tables, and
    /// a launch script.
    #[command(
        after_help = "The crate depends on hetpar-runtime by path (--runtime, by default this \
hetpar's own) and prints what `hetpar run` prints.\n\n\
Example:\n  hetpar codegen examples/plans/reference-tiny-noncolocated-8.json --model examples/models/reference-tiny.json \
--cluster examples/clusters/h100-8.json -o generated/ && generated/launch.sh --steps 5"
    )]
    Codegen(commands::codegen::Args),
    /// Measure the backend with microbenchmarks (matrix products, attention, memory-bound
    /// kernels; on the CPU point to point and collectives, on one GPU the per-kernel cost) and
    /// write a calibration file.
    #[command(
        after_help = "Every command that estimates reads the file with --calibration.\n\n\
Examples:\n  hetpar profile --cluster examples/clusters/cpu-2.json --backend cpu -o calibration.json\n  \
hetpar profile --cluster examples/clusters/h100-8.json --backend cuda --gpu 0 -o h100.calibration.json"
    )]
    Profile(commands::profile::Args),
    /// Plan, run the best candidates on the backend, fit the cost model's efficiency constants
    /// to what they measure, re-plan, and report predicted against measured before and after.
    #[command(
        after_help = "Measurements are appended to --log as they are taken: run it again to resume.\n\n\
Example:\n  hetpar autotune --model examples/models/reference-tiny.json --cluster examples/clusters/cpu-2.json \
--calibration calibration.json -o calibrated.json"
    )]
    Autotune(commands::autotune::Args),
    /// Fit the cost model's efficiency constants to published measurements, and report the
    /// error on the rows held out of the fit and the leave-one-out error over every row.
    #[command(
        after_help = "The files under cost-models/data/ hold the public rows hetpar's built-in constants \
are fitted to (docs/cost-model.md, \"Calibration\"); the fit runs one simulation per row and trial, \
minutes for the large H100 rows.\n\n\
Example:\n  hetpar calibrate cost-models/data/megatron-core-h100.json"
    )]
    Calibrate(commands::calibrate::Args),
    /// Run a plan or a program with its ranks as processes, on one node or many: a TCP
    /// rendezvous at --master, then every rank's instructions on the CPU backend or its
    /// node-local GPU (--backend cuda).
    #[command(
        after_help = "Each process runs `hetpar worker`, which also reads SLURM's variables \
(SLURM_PROCID, SLURM_NTASKS, MASTER_ADDR, MASTER_PORT, and SLURM_JOB_ID for the job token) when started by srun. \
Only ranks with the job's token (--token; by default derived from the SLURM job step, or fresh on one node) join the rendezvous. \
Rank 0 prints each step's line on stderr as it ends, as `hetpar run` does, and the report on stdout at the end. \
A step whose loss is not finite stops every rank there, rank 0 naming the step. \
When a worker fails, the others have half a second to end, then are stopped; named is the first to fail \
(rank, pid, exit code or signal), or rank 0 when it failed too and the first ended with an exit code.\n\n\
Example:\n  hetpar launch examples/plans/reference-tiny-noncolocated-8.json --model examples/models/reference-tiny.json \
--cluster examples/clusters/h100-8.json --nproc-per-node 8 --steps 5"
    )]
    Launch(commands::launch::Args),
    /// Check the CUDA backend on one GPU: every operation against the CPU reference, a
    /// matrix-product throughput and a device-copy bandwidth figure.
    #[command(
        after_help = "Needs an NVIDIA driver; cuBLAS and NVRTC are found on LD_LIBRARY_PATH or in pip's \
nvidia-* wheels. Exits 1 if an operation is outside its tolerance.\n\n\
Example:\n  hetpar device-check --gemm-size 4096"
    )]
    DeviceCheck(commands::device_check::Args),
    /// One rank of a launched run (started by `hetpar launch` or `srun`).
    #[command(hide = true)]
    Worker(commands::launch::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Validate(a) => commands::validate::run(a),
        Command::Import(s) => commands::import::run(s),
        Command::Describe(a) => commands::describe::run(a),
        Command::Estimate(a) => commands::estimate::run(a),
        Command::Reshard(a) => commands::reshard::run(a),
        Command::Show(a) => commands::show::run(a),
        Command::Plan(a) => commands::plan::run(a),
        Command::Lower(a) => commands::lower::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Export(t) => commands::export::run(t),
        Command::Codegen(a) => commands::codegen::run(a),
        Command::Profile(a) => commands::profile::run(a),
        Command::Autotune(a) => commands::autotune::run(a),
        Command::Calibrate(a) => commands::calibrate::run(a),
        Command::Launch(a) => commands::launch::run(a),
        Command::Worker(a) => commands::launch::worker(a),
        Command::DeviceCheck(a) => commands::device_check::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HETPAR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
