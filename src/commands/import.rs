//! `hetpar import hf`: a Hugging Face `config.json` into a hetpar model file.

use std::path::PathBuf;
use std::process::ExitCode;

use hetpar::io;
use hetpar::ir::hf::{import, ImportOptions};
use hetpar::ir::json::{parse_value, to_canonical_json};
use hetpar::ir::model::{verify, Precision};

use super::{check_output, emit, print_diagnostics};

#[derive(clap::Subcommand)]
pub enum Source {
    /// A Hugging Face config.json (LLaVA, Qwen2-VL, Qwen2.5-VL, Llama, Mistral, Qwen2, Mixtral).
    #[command(
        after_help = "A config.json has no training data: --global-batch, --sequence-length, \
--items-per-sample, --tokens-per-item and --precision (above) supply it.\n\nExample:\n  \
hetpar import hf examples/hf/llava-1.5-7b.config.json --global-batch 256 -o llava.json"
    )]
    Hf(HfArgs),
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
    #[arg(long, default_value_t = 128)]
    global_batch: u32,
    /// Language-model sequence length in tokens.
    #[arg(long, default_value_t = 4096)]
    sequence_length: u32,
    /// Images per sample (vision-language models).
    #[arg(long, default_value_t = 1)]
    items_per_sample: u32,
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

pub fn run(s: Source) -> anyhow::Result<ExitCode> {
    let Source::Hf(a) = s;
    check_output("-o", a.output.as_deref(), &[&a.config])?;
    let file = a.config.display().to_string();
    let text = match io::read_text(&a.config) {
        Ok(t) => t,
        Err(ds) => {
            print_diagnostics(&ds);
            return Ok(ExitCode::from(1));
        }
    };
    let opts = ImportOptions {
        name: a.name,
        global_batch: a.global_batch,
        sequence_length: a.sequence_length,
        items_per_sample: a.items_per_sample,
        tokens_per_item: a.tokens_per_item,
        precision: match a.precision {
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Fp16 => Precision::Fp16,
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Fp8 => Precision::Fp8,
        },
    };
    let imported = parse_value(&text).and_then(|v| import(&v, &opts));
    let model = match imported {
        Ok(m) => m,
        Err(ds) => {
            print_diagnostics(&ds.with_file(&file));
            return Ok(ExitCode::from(1));
        }
    };
    // The import must produce a model hetpar accepts; the flags can make it invalid (say, a
    // sequence too short for the images), and that is reported against the flags' fields.
    let out = to_canonical_json(&model);
    if let Err(ds) = verify::build(model) {
        eprintln!("the imported model is invalid with these options:");
        print_diagnostics(&ds.with_file(&format!("{file} (imported)")));
        return Ok(ExitCode::from(1));
    }
    emit(&out, a.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
