//! `hetpar import hf`: a Hugging Face `config.json` into a hetpar model file.

use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::io;
use hetpar::ir::hf::{import_noted, ImportOptions, Note};
use hetpar::ir::json::{parse_value, to_canonical_json};
use hetpar::ir::model::{module_params, verify, ModelFile, Precision};

use super::{check_output, emit, print_diagnostics};

#[derive(clap::Subcommand)]
pub enum Source {
    /// A Hugging Face config.json (LLaVA, Qwen2-VL, Qwen2.5-VL, Llama, Mistral, Qwen2, Mixtral).
    #[command(
        after_help = "A config.json has no training data: --global-batch, --sequence-length, \
--items-per-sample, --tokens-per-item and --precision (above) supply it.\n\n\
The sizes (hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size, \
and a VLM's vision_config with its own) are required. Every other field the config leaves out \
takes its transformers config class's default, and every default taken, from the config or \
the flags, is a note on stderr. A summary line (modules, parameters) ends a successful import.\n\n\
Example:\n  \
hetpar import hf examples/hf/llava-1.5-7b.config.json --global-batch 256 -o llava.json"
    )]
    Hf(HfArgs),
    /// Megatron-LM arguments (pretrain_gpt.py, core_v0.19.0): the model and the plan they
    /// describe, to estimate, show or re-plan against.
    #[command(
        after_help = "Reads flags and values as written on a command line or one per line (`hetpar export megatron`'s args.txt; # comments and \\ continuations allowed). The cluster gives the world size (dp = GPUs / (tp x pp x cp)). Megatron's defaults apply to what the arguments leave out, each a note on stderr; flags hetpar does not read are listed too.\n\nExample:\n  hetpar import megatron args.txt --cluster examples/clusters/h100-8.json -o model.json --plan-output plan.json"
    )]
    Megatron(MegatronArgs),
}

#[derive(clap::Args)]
pub struct MegatronArgs {
    /// The arguments file.
    args: PathBuf,
    /// The cluster the arguments ran on.
    #[arg(long)]
    cluster: PathBuf,
    /// Write the model here (atomically) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Write the plan here (atomically); without it the plan is only checked.
    #[arg(long)]
    plan_output: Option<PathBuf>,
    /// Model name [default: the arguments file's stem].
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
pub struct HfArgs {
    config: PathBuf,
    /// Write the model here (atomically) instead of stdout.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Model name (default: from the config's _name_or_path or model_type).
    #[arg(long)]
    name: Option<String>,
    /// Samples per training step [default: 128, whatever the cluster: say yours].
    #[arg(long)]
    global_batch: Option<u32>,
    /// Language-model sequence length in tokens [default: 4096].
    #[arg(long)]
    sequence_length: Option<u32>,
    /// Images per sample (vision-language models) [default: 1].
    #[arg(long)]
    items_per_sample: Option<u32>,
    /// Encoder tokens (patches) per image (default: from the config, or 1024 for Qwen-VL).
    #[arg(long)]
    tokens_per_item: Option<u32>,
    #[arg(long, value_enum, default_value = "bf16")]
    precision: PrecisionArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PrecisionArg {
    Bf16,
    Fp16,
    Fp32,
    Fp8,
}

impl HfArgs {
    fn options(&self) -> ImportOptions {
        let d = ImportOptions::default();
        ImportOptions {
            name: self.name.clone(),
            global_batch: self.global_batch.unwrap_or(d.global_batch),
            sequence_length: self.sequence_length.unwrap_or(d.sequence_length),
            items_per_sample: self.items_per_sample.unwrap_or(d.items_per_sample),
            tokens_per_item: self.tokens_per_item,
            precision: match self.precision {
                PrecisionArg::Bf16 => Precision::Bf16,
                PrecisionArg::Fp16 => Precision::Fp16,
                PrecisionArg::Fp32 => Precision::Fp32,
                PrecisionArg::Fp8 => Precision::Fp8,
            },
        }
    }

    /// Notes for the training data the flags left to their defaults.
    fn option_notes(&self, model: &ModelFile) -> Vec<Note> {
        let mut notes = Vec::new();
        let d = &model.data;
        let mut note = |given: bool, path: &str, value: u32, why: &str| {
            if !given {
                notes.push(Note {
                    path: path.into(),
                    value: value.to_string(),
                    why: why.into(),
                });
            }
        };
        note(
            self.global_batch.is_some(),
            "data.global_batch",
            d.global_batch,
            "--global-batch not given; a config holds no training data and the cluster is not \
             known here: give the batch you train with, enough to occupy your GPUs",
        );
        note(
            self.sequence_length.is_some(),
            "data.sequence_length",
            d.sequence_length,
            "--sequence-length not given",
        );
        for (name, e) in &d.encoders {
            let items = e.items_per_sample.unwrap_or_default();
            let path = format!("data.encoders.{name}.items_per_sample");
            note(
                self.items_per_sample.is_some(),
                &path,
                items,
                "--items-per-sample not given",
            );
        }
        notes
    }
}

pub fn run(s: Source) -> anyhow::Result<ExitCode> {
    let a = match s {
        Source::Hf(a) => a,
        Source::Megatron(a) => return megatron(a),
    };
    check_output("-o", a.output.as_deref(), &[&a.config])?;
    let file = a.config.display().to_string();
    let text = match io::read_text(&a.config) {
        Ok(t) => t,
        Err(ds) => {
            print_diagnostics(&ds);
            return Ok(ExitCode::from(1));
        }
    };
    let imported = parse_value(&text).and_then(|v| import_noted(&v, &a.options()));
    let (model, mut notes) = match imported {
        Ok(m) => m,
        Err(ds) => {
            print_diagnostics(&ds.with_file(&file));
            return Ok(ExitCode::from(1));
        }
    };
    notes.extend(a.option_notes(&model));
    for n in &notes {
        eprintln!("note: {file}: {n}");
    }
    // The import must produce a model hetpar accepts; the flags can make it invalid (say, a
    // sequence too short for the images), and that is reported against the flags' fields.
    let out = to_canonical_json(&model);
    let graph = match verify::build(model) {
        Ok((g, _)) => g,
        Err(ds) => {
            eprintln!("the imported model is invalid with these options:");
            print_diagnostics(&ds.with_file(&format!("{file} (imported)")));
            return Ok(ExitCode::from(1));
        }
    };
    emit(&out, a.output.as_deref())?;
    let names: Vec<&str> = graph.modules().iter().map(|m| m.name.as_str()).collect();
    let params: u64 = graph.modules().iter().map(|m| module_params(m).total).sum();
    eprintln!(
        "imported {}: {} module{} ({}), {} parameters",
        graph.name(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", "),
        hetpar::report::si(params as f64)
    );
    Ok(ExitCode::SUCCESS)
}

fn megatron(a: MegatronArgs) -> anyhow::Result<ExitCode> {
    let inputs: [&std::path::Path; 2] = [&a.args, &a.cluster];
    check_output("-o", a.output.as_deref(), &inputs)?;
    check_output("--plan-output", a.plan_output.as_deref(), &inputs)?;
    let file = a.args.display().to_string();
    let (text, cluster) = match (io::read_text(&a.args), io::read_text(&a.cluster)) {
        (Ok(t), Ok(c)) => (t, c),
        (t, c) => {
            for ds in [t.err(), c.err()].into_iter().flatten() {
                print_diagnostics(&ds);
            }
            return Ok(ExitCode::from(1));
        }
    };
    let cluster = match hetpar::ir::load_cluster(&cluster) {
        Ok(c) => c,
        Err(ds) => {
            print_diagnostics(&ds.with_file(&a.cluster.display().to_string()));
            return Ok(ExitCode::from(1));
        }
    };
    let name = a.name.clone().unwrap_or_else(|| {
        a.args
            .file_stem()
            .map_or("megatron".into(), |s| s.to_string_lossy().into_owned())
    });
    let imported = hetpar::ir::megatron::import(&text, cluster.world_size(), &cluster.name, &name);
    let imported = match imported {
        Ok(i) => i,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {file}: {e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    for n in &imported.notes {
        eprintln!("note: {file}: {n}");
    }
    let model_text = to_canonical_json(&imported.model);
    let plan_text = to_canonical_json(&imported.plan);
    // Both must be files hetpar accepts; what the arguments make invalid is reported here.
    let graph = match hetpar::ir::load_model(&model_text) {
        Ok((g, _)) => g,
        Err(ds) => {
            print_diagnostics(&ds.with_file(&format!("{file} (imported model)")));
            return Ok(ExitCode::from(1));
        }
    };
    if let Err(ds) = hetpar::ir::plan_from_value(&imported.plan, &graph, &cluster) {
        print_diagnostics(&ds.with_file(&format!("{file} (imported plan)")));
        return Ok(ExitCode::from(1));
    }
    emit(&model_text, a.output.as_deref())?;
    if let Some(p) = &a.plan_output {
        emit(&plan_text, Some(p))?;
    }
    eprintln!(
        "imported {name}: one language model, the plan on {} GPUs",
        cluster.world_size()
    );
    Ok(ExitCode::SUCCESS)
}
