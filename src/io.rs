//! File IO for the CLI: reading inputs (diagnostics name the file), atomic writes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use hetpar_ir::{Diagnostic, Diagnostics, Rule};

/// Reads a file as UTF-8, turning failures into a diagnostic that names it.
pub fn read_text(path: &Path) -> Result<String, Diagnostics> {
    fs::read_to_string(path).map_err(|e| {
        let mut d = Diagnostic::error("", Rule::FileRead, format!("cannot read: {e}"));
        d.file = Some(path.display().to_string());
        let mut ds = Diagnostics::new();
        ds.push(d);
        ds
    })
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory, flushed and
/// synced, then renamed over the target. An interrupted run leaves the old file intact.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Whether `a` and `b` name the same existing file: after resolving symbolic links, and on Unix
/// also a hard link (the same device and inode). An output that would overwrite an input.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The first of `inputs` that `output` would overwrite (the same file, see [`same_file`]).
pub fn overwritten_input<'a>(output: &Path, inputs: &[&'a Path]) -> Option<&'a Path> {
    inputs.iter().copied().find(|i| same_file(output, i))
}
