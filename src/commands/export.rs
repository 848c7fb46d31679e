//! `hetpar export megatron`: a plan as Megatron-LM's arguments (`args.txt`) and a launch script
//! (`train.sh`), or every reason Megatron cannot run it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// What to export to.
#[derive(clap::Subcommand)]
pub enum Target {
    /// Megatron-LM (release core_v0.19.0): `pretrain_gpt.py` for a language model,
    /// `pretrain_vlm.py` for a VLM whose every module takes the language model's tp, cp and
    /// dp, the MIMO example's heterogeneous grid for a non-colocated one.
    #[command(
        after_help = "Writes DIR/args.txt (one argument per line), DIR/train.sh (torchrun over \
the cluster's nodes with those arguments and mock data, exporting CUDA_DEVICE_MAX_CONNECTIONS=1 \
under tensor or context parallelism; set MEGATRON to a checkout) and, for \
Llama, Qwen2 and Qwen2.5-VL plans without heterogeneity, DIR/bridge.yaml (Megatron-Bridge v0.6.0 \
recipe overrides). Without -o, \
prints the arguments. What Megatron cannot express is refused, naming the plan field to \
change (docs/export.md).\n\nExample:\n  hetpar export megatron \
examples/plans/llama-3-8b-homogeneous-8.json --model examples/models/llama-3-8b.json \
--cluster examples/clusters/h100-8.json -o megatron/"
    )]
    Megatron(Args),
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    inputs: super::PlanFirst,
    /// Write args.txt, train.sh and, where Megatron-Bridge has the model's family, bridge.yaml
    /// into this directory (created if missing).
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(t: Target) -> anyhow::Result<ExitCode> {
    let Target::Megatron(a) = t;
    if let Some(dir) = &a.output {
        for name in ["args.txt", "train.sh", "bridge.yaml"] {
            super::check_output("-o", Some(&dir.join(name)), &a.inputs.paths())?;
        }
    }
    let Some((model, cluster, plan)) = a.inputs.load() else {
        return Ok(ExitCode::from(1));
    };
    let export = match hetpar::planner::export::megatron::export(&model, &cluster, &plan) {
        Ok(e) => e,
        Err(refusals) => {
            for r in &refusals {
                eprintln!(
                    "error: {}: Megatron cannot run this plan: {r}",
                    a.inputs.plan.display()
                );
            }
            return Ok(ExitCode::from(1));
        }
    };
    let Some(dir) = &a.output else {
        super::emit(&export.args_text(), None)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let args = dir.join("args.txt");
    hetpar::io::write_atomic(&args, export.args_text().as_bytes())
        .with_context(|| format!("cannot write {}", args.display()))?;
    let script = dir.join("train.sh");
    hetpar::io::write_atomic(&script, export.script().as_bytes())
        .with_context(|| format!("cannot write {}", script.display()))?;
    make_executable(&script)?;
    // Megatron-Bridge runs one layout for every module, from a recipe of the model's family.
    let bridge =
        hetpar::planner::export::bridge::family(&model).and_then(|f| match export.module {
            true => Err("Bridge has no heterogeneous grid".to_string()),
            false => Ok(f),
        });
    match bridge {
        Ok(family) => {
            let path = dir.join("bridge.yaml");
            let text = hetpar::planner::export::bridge::overrides(&model, &plan, family);
            hetpar::io::write_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "wrote {} (Megatron-Bridge v0.6.0, {family} recipe)",
                path.display()
            );
        }
        Err(why) => eprintln!("note: no bridge.yaml: {why}"),
    }
    eprintln!(
        "wrote {} and {} ({} with {} arguments)",
        args.display(),
        script.display(),
        export.entry,
        export.args.len()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
fn make_executable(p: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot make {} executable", p.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &std::path::Path) -> anyhow::Result<()> {
    Ok(())
}
