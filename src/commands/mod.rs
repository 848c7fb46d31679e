//! One file per command.

pub mod describe;
pub mod import;
pub mod validate;

use std::path::Path;

use anyhow::Context;

use hetpar::ir::Diagnostics;

/// Prints diagnostics to stderr, one per line.
pub fn print_diagnostics(ds: &Diagnostics) {
    for d in ds.iter() {
        eprintln!("{d}");
    }
}

/// Writes `text` to `-o` (atomically) or stdout.
pub fn emit(text: &str, out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(p) => hetpar::io::write_atomic(p, text.as_bytes())
            .with_context(|| format!("cannot write {}", p.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}
