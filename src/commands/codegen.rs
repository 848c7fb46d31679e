//! `hetpar codegen`: a plan or a program as a Rust crate (straight-line code per rank over
//! `hetpar-runtime`) and its launch script.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub program: super::run::ProgramInput,
    /// The directory to write the crate into (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The hetpar-runtime crate's directory as the generated Cargo.toml names it; by default
    /// this hetpar's own, relative to the output directory.
    #[arg(long)]
    pub runtime: Option<String>,
}

/// `to` relative to `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let st = &a.program.start;
    if st.resume.is_some() {
        anyhow::bail!(
            "codegen does not take --resume: a generated crate starts from seeded weights or, \
             run with --checkpoint DIR, from a Hugging Face directory"
        );
    }
    let Some((_, program, model_text)) = a.program.load()? else {
        return Ok(ExitCode::from(1));
    };
    std::fs::create_dir_all(a.output.join("src"))
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let runtime = match a.runtime {
        Some(r) => r,
        None => {
            let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
            let out = a.output.canonicalize()?;
            relative(&out, &here.canonicalize().unwrap_or(here))
                .display()
                .to_string()
        }
    };
    let files = hetpar::codegen::emit(&program, &model_text, &runtime)?;
    // Every file is checked before the first is written: no input is replaced, no crate is
    // left half written.
    for f in &files {
        super::check_output("-o", Some(&a.output.join(f.path)), &a.program.paths())?;
    }
    for f in &files {
        let p = a.output.join(f.path);
        hetpar::io::write_atomic(&p, f.contents.as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for script in ["launch.sh", "sbatch.sh"] {
            let p = a.output.join(script);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot make {} executable", p.display()))?;
        }
    }
    // Joined, not formatted: `-o gen/` must not print `gen//launch.sh`.
    eprintln!(
        "wrote {} ({} ranks); run it with {} --steps 10",
        a.output.display(),
        program.ranks.len(),
        a.output.join("launch.sh").display()
    );
    Ok(ExitCode::SUCCESS)
}
