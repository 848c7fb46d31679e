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

/// The reference model's example files the run, launch and codegen tests share.
pub const REF_PLAN: &str = "examples/plans/reference-tiny-noncolocated-8.json";
pub const REF_MODEL: &str = "examples/models/reference-tiny.json";
pub const REF_CLUSTER: &str = "examples/clusters/h100-8.json";

/// The losses a training report prints (`hetpar run`, `launch`, a generated program), in step
/// order: lines that start with a step number and a loss.
pub fn losses(out: &str) -> Vec<f32> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.next()?.parse::<usize>().ok()?;
            w.next()?.parse::<f32>().ok()
        })
        .collect()
}

/// A local address no one listens on now.
pub fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The reference plan lowered to a program file in `dir` (`hetpar lower`), its path.
pub fn lowered_reference(dir: &std::path::Path) -> PathBuf {
    let program = dir.join("program.json");
    let o = hetpar(&[
        "lower",
        REF_PLAN,
        "--model",
        REF_MODEL,
        "--cluster",
        REF_CLUSTER,
        "-o",
        program.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    program
}
