//! Helpers the end-to-end tests share: running the binary in the repository root, reading its
//! output, scratch directories.

#![allow(dead_code)]

pub mod parity;

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

fn max_abs(v: &[f32]) -> f64 {
    v.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max)
}

/// max |a - b| / max |b| over one tensor, the denominator at least `floor`. The floor serves
/// gradients that are zero in exact arithmetic (an attention key bias: softmax ignores a shift
/// shared by every key), whose f32 values are rounding noise, 1e-13 on one device and up to
/// 1e-11 when context parallelism sums partial key gradients.
fn rel_err(a: &[f32], b: &[f32], floor: f64) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max);
    diff / max_abs(b).max(floor)
}

/// The worst of `got`'s gradients against `want`'s and its name: each tensor's [`rel_err`],
/// floored at 1e-4 of the model's largest gradient. `PARITY_VERBOSE` prints every tensor's.
pub fn worst_gradient(
    name: &str,
    got: &hetpar::runtime::reference::Params,
    want: &hetpar::runtime::reference::Params,
) -> (f64, String) {
    let verbose = std::env::var("PARITY_VERBOSE").is_ok();
    let mut worst = (0.0f64, String::new());
    let floor = 1e-4
        * want
            .iter()
            .map(|(_, w)| max_abs(w.data()))
            .fold(0.0, f64::max);
    for (t, w) in want.iter() {
        let g = got
            .get(t)
            .unwrap_or_else(|| panic!("{name}: no gradient {t}"));
        assert_eq!(g.shape(), w.shape(), "{name}: {t}");
        let e = rel_err(g.data(), w.data(), floor);
        if verbose {
            eprintln!("  {t}: {e:.3e} (scale {:.3e})", max_abs(w.data()));
        }
        if e > worst.0 {
            worst = (e, t.clone());
        }
    }
    if verbose {
        eprintln!("{name}: worst gradient {} at {:.2e}", worst.1, worst.0);
    }
    worst
}

/// The emulated GPU (`kernels.cu` compiled for the CPU), or `None` after saying why the test
/// is skipped (no C++ compiler).
pub fn emulated_gpu() -> Option<std::sync::Arc<hetpar::runtime::cuda::emulated::EmuDevice>> {
    match hetpar::runtime::cuda::emulated::EmuDevice::open() {
        Ok(d) => Some(d),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// `program` run with every rank's arithmetic the CUDA backend's (`GpuMath`) on the emulated
/// GPU `dev`, ranks as threads sharing it.
pub fn run_emulated(
    dev: &std::sync::Arc<hetpar::runtime::cuda::emulated::EmuDevice>,
    precision: hetpar::runtime::cuda::Precision,
    program: &hetpar::ir::program::Program,
    cfg: &hetpar::runtime::reference::Config,
    init: &hetpar::runtime::reference::Params,
    batches: &[hetpar::runtime::reference::Batch],
    opts: &hetpar::runtime::exec::RunOptions,
) -> Result<hetpar::runtime::exec::RunOutput, hetpar::runtime::RuntimeError> {
    let dev = dev.clone();
    hetpar::runtime::exec::run_with(program, cfg, init, batches, opts, &move |st| {
        st.set_math(Box::new(hetpar::runtime::cuda::GpuMath::new(
            dev.rank(precision),
        )));
        st.interpret()
    })
}

/// The lines a run prints on stderr as each step ends (`step 3/10  loss 3.46574  12.34 ms
/// 20746 tokens/s`): (step, steps, loss, tokens/s) of each.
pub fn progress(err: &str) -> Vec<(usize, usize, f32, f64)> {
    err.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let [_step @ "step", of, "loss", loss, _, "ms", rate, "tokens/s"] = w[..] else {
                return None;
            };
            let (k, n) = of.split_once('/')?;
            Some((
                k.parse().ok()?,
                n.parse().ok()?,
                loss.parse().ok()?,
                rate.parse().ok()?,
            ))
        })
        .collect()
}

/// `bytes` (a safetensors file) with every value of tensor `name` made `value`.
pub fn with_values(bytes: &[u8], name: &str, value: f32) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let t = &header[name];
    let (a, b) = (
        t["data_offsets"][0].as_u64().unwrap() as usize,
        t["data_offsets"][1].as_u64().unwrap() as usize,
    );
    let mut out = bytes.to_vec();
    for w in out[8 + n + a..8 + n + b].chunks_exact_mut(4) {
        w.copy_from_slice(&value.to_le_bytes());
    }
    out
}

/// The reference model's seeded weights (seed 0) written to `dir`, the language model's head
/// set to `head` everywhere: finite, but 3e38 overflows the logits, and the run diverges.
pub fn weights_with_head(dir: &std::path::Path, head: f32) -> PathBuf {
    let (g, _) =
        hetpar::ir::load_model(&std::fs::read_to_string(root().join(REF_MODEL)).unwrap()).unwrap();
    let cfg = hetpar::runtime::reference::Config::from_model(&g).unwrap();
    let params = hetpar::runtime::reference::Params::init(&cfg, 0).unwrap();
    let p = dir.join(format!("head-{head}.safetensors"));
    let bytes = params.to_safetensors("").unwrap();
    std::fs::write(&p, with_values(&bytes, "llm.head.weight", head)).unwrap();
    p
}

/// The oracle's tiny Llama (`tests/oracle/golden/hf/llama`), imported into `dir` by `hetpar
/// import hf` with a batch of 4 sequences of 16: the model file.
pub fn import_oracle_llama(dir: &std::path::Path) -> PathBuf {
    let model = dir.join("llama.json");
    let config = root().join("tests/oracle/golden/hf/llama/config.json");
    let o = hetpar(&[
        "import",
        "hf",
        config.to_str().unwrap(),
        "--name",
        "llama",
        "--global-batch",
        "4",
        "--sequence-length",
        "16",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    model
}
