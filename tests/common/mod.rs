//! Helpers the end-to-end tests share: running the binary in the repository root, reading its
//! output, scratch directories.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn hetpar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hetpar"))
        .args(args)
        .current_dir(root())
        .env_remove("HETPAR_LOG")
        .output()
        .expect("hetpar runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory under the target dir, emptied first.
pub fn scratch(name: &str) -> PathBuf {
    let d = root().join("target").join("test-scratch").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
