//! Where the CUDA libraries are, before anything loads them.
//!
//! The CUDA backend opens the driver, cuBLAS, NVRTC and NCCL by name at run time (cudarc's
//! dynamic loading), so the dynamic linker must find them: it reads `LD_LIBRARY_PATH` once,
//! when a process starts. Pip's wheels put the libraries under `site-packages/nvidia/*/lib`,
//! off the default search path, and ship NCCL only as `libnccl.so.2`, a name cudarc does not
//! try (it asks for `libnccl.so`; CUDA 13's `.so.13` names are not tried either). This module
//! finds those directories and, for a library found only under a versioned name, makes a
//! directory holding a bare-named link to it (`libnccl.so` → `libnccl.so.2`); the launcher
//! puts them on its workers' `LD_LIBRARY_PATH`, and a single process re-executes itself once
//! with them (`reexec_with_cuda_libraries`).
//!
//! Nothing here needs CUDA, so it is built and tested everywhere.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Set in the environment of a process that re-executed itself with the libraries' paths, so
/// it does not do so twice.
pub const READY_VAR: &str = "HETPAR_CUDA_LIBS_READY";

/// The libraries the backend opens: what to look for, by file-name prefix.
pub const LIBRARIES: [&str; 4] = ["libcuda.so", "libcublas.so", "libnvrtc.so", "libnccl.so"];

/// The directories that may hold the libraries: `LD_LIBRARY_PATH`'s, the CUDA toolkit's and
/// the distribution's, and every `nvidia/*/lib` of the Python environments found from
/// `VIRTUAL_ENV`, `CONDA_PREFIX`, `PYTHONPATH`, the user's and the system's site-packages.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = library_path();
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    let mut site: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("PYTHONPATH") {
        site.extend(std::env::split_paths(&p));
    }
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
    }
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    for prefix in prefixes {
        for python in list_dir(&prefix.join("lib")) {
            let name = python.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("python3") {
                site.push(python.join("site-packages"));
                site.push(python.join("dist-packages"));
            }
        }
    }
    site.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    for s in site {
        for pkg in list_dir(&s.join("nvidia")) {
            dirs.push(pkg.join("lib"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    dirs.retain(|d| d.is_dir() && seen.insert(d.clone()));
    dirs
}

/// A directory's entries, sorted (so the search is deterministic); none if it cannot be read.
fn list_dir(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// `LD_LIBRARY_PATH`'s directories, in order.
fn library_path() -> Vec<PathBuf> {
    std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default()
}

/// Where one library was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub library: &'static str,
    pub path: PathBuf,
}

/// The first file in `dirs` whose name is `library` or `library.N...`.
pub fn find(library: &'static str, dirs: &[PathBuf]) -> Option<Found> {
    for d in dirs {
        let exact = d.join(library);
        if exact.exists() {
            return Some(Found {
                library,
                path: exact,
            });
        }
        let versioned = list_dir(d).into_iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(library))
                .is_some_and(|rest| rest.starts_with('.'))
        });
        if let Some(path) = versioned {
            return Some(Found { library, path });
        }
    }
    None
}

/// What to add to `LD_LIBRARY_PATH` so every library in [`LIBRARIES`] that exists in `dirs`
/// can be opened: the directories holding them, and, for a library found only under a
/// versioned name, `shim_dir` with a bare-named link to it (created here). Also says what is
/// missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub dirs: Vec<PathBuf>,
    pub missing: Vec<&'static str>,
}

pub fn plan(dirs: &[PathBuf], shim_dir: &Path) -> std::io::Result<Plan> {
    let mut out = Plan::default();
    for lib in LIBRARIES {
        match find(lib, dirs) {
            None => out.missing.push(lib),
            Some(f) => {
                let dir = f.path.parent().map(Path::to_path_buf).unwrap_or_default();
                if !out.dirs.contains(&dir) {
                    out.dirs.push(dir);
                }
                // cudarc opens the bare name first; a library found only under a versioned
                // name it may not try (NCCL's .so.2, a CUDA 13 .so.13) is linked under it. Not
                // the driver: that is the system's, under names cudarc tries.
                if lib != "libcuda.so" && f.path.file_name() != Some(lib.as_ref()) {
                    std::fs::create_dir_all(shim_dir)?;
                    let link = shim_dir.join(lib);
                    // Replace a stale link atomically: make the new one aside, then rename.
                    let tmp = shim_dir.join(format!("{lib}.{}.tmp", std::process::id()));
                    let _ = std::fs::remove_file(&tmp);
                    std::os::unix::fs::symlink(&f.path, &tmp)?;
                    std::fs::rename(&tmp, &link)?;
                    if !out.dirs.contains(&shim_dir.to_path_buf()) {
                        out.dirs.insert(0, shim_dir.to_path_buf());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The default place for the NCCL link: a per-user directory under the temporary directory.
pub fn default_shim_dir() -> PathBuf {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    std::env::temp_dir().join(format!("hetpar-cuda-libs-{user}"))
}

/// `LD_LIBRARY_PATH` with `dirs` in front of its current entries (each once).
pub fn library_path_with(dirs: &[PathBuf]) -> OsString {
    let current: Vec<PathBuf> = library_path();
    let mut all: Vec<PathBuf> = dirs.to_vec();
    for c in current {
        if !all.contains(&c) {
            all.push(c);
        }
    }
    std::env::join_paths(all).unwrap_or_default()
}

/// The `LD_LIBRARY_PATH` a CUDA process needs and the plan behind it, from [`candidate_dirs`]
/// and [`default_shim_dir`].
pub fn cuda_environment() -> std::io::Result<(OsString, Plan)> {
    let p = plan(&candidate_dirs(), &default_shim_dir())?;
    Ok((library_path_with(&p.dirs), p))
}

/// Re-executes this process once with the CUDA libraries' directories on `LD_LIBRARY_PATH`
/// (the dynamic linker reads it only at start). Returns when nothing needs changing or the
/// process already did this; otherwise it does not return, or fails with the reason.
pub fn reexec_with_cuda_libraries() -> std::io::Result<()> {
    if std::env::var_os(READY_VAR).is_some() {
        return Ok(());
    }
    let (path, plan) = cuda_environment()?;
    let current: Vec<PathBuf> = library_path();
    if plan.dirs.iter().all(|d| current.contains(d)) {
        return Ok(());
    }
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("LD_LIBRARY_PATH", path)
        .env(READY_VAR, "1")
        .exec();
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hetpar-libs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_versioned_nccl_gets_a_bare_named_link() {
        let root = temp("shim");
        let wheel = root.join("site/nvidia/nccl/lib");
        std::fs::create_dir_all(&wheel).unwrap();
        std::fs::write(wheel.join("libnccl.so.2"), b"elf").unwrap();
        let shim = root.join("shim");
        let p = plan(std::slice::from_ref(&wheel), &shim).unwrap();
        assert_eq!(p.dirs, vec![shim.clone(), wheel.clone()]);
        let link = std::fs::read_link(shim.join("libnccl.so")).unwrap();
        assert_eq!(link, wheel.join("libnccl.so.2"));
        assert_eq!(
            p.missing,
            vec!["libcuda.so", "libcublas.so", "libnvrtc.so"],
            "the others are reported missing"
        );
        // A second plan replaces the link instead of failing on it.
        plan(std::slice::from_ref(&wheel), &shim).unwrap();
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_bare_named_library_needs_no_link() {
        let root = temp("bare");
        std::fs::write(root.join("libnccl.so"), b"elf").unwrap();
        std::fs::write(root.join("libnvrtc.so"), b"elf").unwrap();
        std::fs::write(root.join("libcuda.so.1"), b"elf").unwrap();
        let shim = root.join("shim");
        let p = plan(std::slice::from_ref(&root), &shim).unwrap();
        assert_eq!(p.dirs, vec![root.clone()]);
        assert!(!shim.exists(), "nor does the driver, whatever its name");
        assert_eq!(p.missing, vec!["libcublas.so"]);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_library_of_another_major_version_is_linked_under_the_bare_name() {
        let root = temp("major");
        std::fs::write(root.join("libcublas.so.13"), b"elf").unwrap();
        let shim = root.join("shim");
        let p = plan(std::slice::from_ref(&root), &shim).unwrap();
        assert_eq!(p.dirs, vec![shim.clone(), root.clone()]);
        assert_eq!(
            std::fs::read_link(shim.join("libcublas.so")).unwrap(),
            root.join("libcublas.so.13")
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_name_that_only_shares_the_prefix_is_not_the_library() {
        let root = temp("prefix");
        std::fs::write(root.join("libnvrtc-builtins.so.12.9"), b"elf").unwrap();
        assert_eq!(find("libnvrtc.so", std::slice::from_ref(&root)), None);
        std::fs::write(root.join("libnvrtc.so.12"), b"elf").unwrap();
        assert_eq!(
            find("libnvrtc.so", std::slice::from_ref(&root)).map(|f| f.path),
            Some(root.join("libnvrtc.so.12"))
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
