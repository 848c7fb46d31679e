//! The device check: every operation of `ops.rs` against its CPU reference on seeded random
//! inputs (largest difference relative to the reference's largest magnitude, against a stated
//! tolerance), then a matrix-product throughput and a device-copy bandwidth figure, timed with
//! CUDA events. `hetpar device-check` prints it; `scripts/device-check.sh` runs it.

use std::fmt::Write as _;

use std::sync::Arc;

use super::device::{device_err, Device, Gpu};
use super::engine::Engine;
use super::ops::{Ops, Precision, DT};
use super::ops_arch::ArchOps;
use crate::reference::act;
use crate::reference::adam::Adam;
use crate::reference::arch::{Act, Llama3Scaling, Rope};
use crate::reference::attention::{attention_core_at, attention_core_backward};
use crate::reference::layers::{gelu, gelu_backward, layer_norm, layer_norm_backward};
use crate::reference::llm::cross_entropy;
use crate::reference::params::Params;
use crate::reference::rmsnorm::{rms_norm, rms_norm_backward};
use crate::reference::rng::SplitMix64;
use crate::reference::rope;
use crate::tensor::Tensor;
use crate::RuntimeError;

/// The tolerance of an f32 operation: cuBLAS and the kernels round in another order than the
/// CPU reference, which accumulates in f64.
pub const F32_TOLERANCE: f64 = 1e-5;
/// The tolerance of a product with bf16 inputs (8 significant bits) against f32.
pub const BF16_TOLERANCE: f64 = 1.5e-2;

/// One operation's comparison.
#[derive(Clone, Debug)]
pub struct OpCheck {
    pub op: String,
    /// `max |gpu - cpu| / max |cpu|`.
    pub error: f64,
    pub tolerance: f64,
}

impl OpCheck {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

/// The whole check.
#[derive(Clone, Debug)]
pub struct Report {
    pub device: String,
    pub arch: (i32, i32),
    pub memory_bytes: usize,
    pub ops: Vec<OpCheck>,
    /// Dense products `[size, size] · [size, size]`, in 10¹² multiply-adds·2 per second.
    pub gemm_size: usize,
    pub f32_tflops: f64,
    pub bf16_tflops: f64,
    /// Bytes copied device to device per second (each byte read once and written once).
    pub copy_bytes: usize,
    pub copy_gbps: f64,
    /// Why a figure is missing (NaN), if one is.
    pub notes: Vec<String>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.ops.iter().all(OpCheck::passed) && self.notes.is_empty()
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "device: {} (sm_{}{}, {:.1} GiB)",
            self.device,
            self.arch.0,
            self.arch.1,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        );
        let _ = writeln!(
            s,
            "{:<34} {:>10} {:>10}  result",
            "operation", "error", "tolerance"
        );
        for c in &self.ops {
            let _ = writeln!(
                s,
                "{:<34} {:>10.2e} {:>10.1e}  {}",
                c.op,
                c.error,
                c.tolerance,
                if c.passed() { "ok" } else { "FAILED" }
            );
        }
        let n = self.gemm_size;
        let _ = writeln!(
            s,
            "matrix product {n}x{n}x{n}: f32 {:.1} TFLOP/s, bf16 inputs {:.1} TFLOP/s",
            self.f32_tflops, self.bf16_tflops
        );
        let _ = writeln!(
            s,
            "device-to-device copy of {} MiB: {:.0} GB/s",
            self.copy_bytes >> 20,
            self.copy_gbps
        );
        for n in &self.notes {
            let _ = writeln!(s, "not measured: {n}");
        }
        s
    }
}

/// `max |a - b| / max |b|` (the reference `b`'s scale; 1e-30 if it is all zeros).
pub fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape(), "compared tensors differ in shape");
    let scale = b
        .data()
        .iter()
        .fold(0.0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-30);
    let diff = a
        .data()
        .iter()
        .zip(b.data())
        .fold(0.0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    diff / scale
}

fn random(rng: &mut SplitMix64, shape: &[usize], std: f64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.symmetric(std)).collect())
        .expect("n values for the shape")
}

struct Checker<'a, E: Engine = Gpu> {
    gpu: &'a E,
    ops: Vec<OpCheck>,
}

impl<E: Engine> Checker<'_, E> {
    fn up(&self, t: &Tensor) -> Result<DT<E>, RuntimeError> {
        self.gpu.upload(t)
    }

    fn cmp(&mut self, op: &str, got: &DT<E>, want: &Tensor, tol: f64) -> Result<(), RuntimeError> {
        let got = self.gpu.download(got)?;
        self.ops.push(OpCheck {
            op: op.to_string(),
            error: relative_error(&got, want),
            tolerance: tol,
        });
        Ok(())
    }
}

/// The operations built on matrix products, on `c`'s rank (f32 or bf16 inputs).
fn products<E: Engine>(
    c: &mut Checker<'_, E>,
    rng: &mut SplitMix64,
    tol: f64,
    tag: &str,
) -> Result<(), RuntimeError> {
    // Linear layers, an odd row count so no size is a multiple of a tile.
    let (n, k, m) = (37, 64, 48);
    let (x, w, b) = (
        random(rng, &[n, k], 1.0),
        random(rng, &[m, k], 0.1),
        random(rng, &[m], 0.1),
    );
    let dy = random(rng, &[n, m], 1.0);
    let (dx_, dw_, db_) = (c.up(&x)?, c.up(&w)?, c.up(&b)?);
    let y = c.gpu.linear(&dx_, &dw_, Some(&db_))?;
    c.cmp(
        &format!("linear{tag}"),
        &y,
        &Tensor::linear(&x, &w, Some(&b)),
        tol,
    )?;
    let (gx, gw, gb) = c.gpu.linear_backward(&dx_, &dw_, &c.up(&dy)?)?;
    let (wx, ww, wb) = Tensor::linear_backward(&x, &w, &dy);
    c.cmp(&format!("linear backward: input{tag}"), &gx, &wx, tol)?;
    c.cmp(&format!("linear backward: weight{tag}"), &gw, &ww, tol)?;
    c.cmp(&format!("linear backward: bias{tag}"), &gb, &wb, tol)?;

    // Attention: a context-parallel shard of causal queries, and a whole bidirectional one.
    let (heads, d, nk) = (4, 8, 11);
    let hidden = heads * d;
    for (name, causal, positions) in [
        (
            "attention, causal shard",
            true,
            vec![0usize, 1, 2, 8, 9, 10],
        ),
        ("attention, bidirectional", false, (0..nk).collect()),
    ] {
        let nq = positions.len();
        let q = random(rng, &[nq, hidden], 1.0);
        let kk = random(rng, &[nk, hidden], 1.0);
        let v = random(rng, &[nk, hidden], 1.0);
        let dctx = random(rng, &[nq, hidden], 1.0);
        let (gq, gk, gv) = (c.up(&q)?, c.up(&kk)?, c.up(&v)?);
        let (ctx, probs) = c
            .gpu
            .attention_core(&gq, &gk, &gv, heads, causal, &positions)?;
        let (wctx, wprobs) = attention_core_at(&q, &kk, &v, heads, causal, &positions);
        c.cmp(&format!("{name}{tag}"), &ctx, &wctx, tol)?;
        let (dq, dk, dv) = c
            .gpu
            .attention_core_backward(&gq, &gk, &gv, &probs, &c.up(&dctx)?)?;
        let (wq, wk, wv) = attention_core_backward(&q, &kk, &v, &wprobs, &dctx);
        c.cmp(&format!("{name} backward: q{tag}"), &dq, &wq, tol)?;
        c.cmp(&format!("{name} backward: k{tag}"), &dk, &wk, tol)?;
        c.cmp(&format!("{name} backward: v{tag}"), &dv, &wv, tol)?;
    }

    Ok(())
}

fn norms<E: Engine>(c: &mut Checker<'_, E>, rng: &mut SplitMix64) -> Result<(), RuntimeError> {
    let (gpu, tol) = (c.gpu, F32_TOLERANCE);
    // LayerNorm, a width over one block of threads.
    let (rows, cols) = (9, 300);
    let x = random(rng, &[rows, cols], 2.0);
    let (w, b) = (random(rng, &[cols], 1.0), random(rng, &[cols], 1.0));
    let dy = random(rng, &[rows, cols], 1.0);
    let (y, cache) = gpu.layer_norm(&c.up(&x)?, &c.up(&w)?, &c.up(&b)?)?;
    let (wy, wcache) = layer_norm(&x, &w, &b);
    c.cmp("layer norm", &y, &wy, tol)?;
    let (gx, gw, gb) =
        gpu.layer_norm_backward(&cache.xhat, &cache.rstd, &c.up(&w)?, &c.up(&dy)?)?;
    let (wx, ww, wb) = layer_norm_backward(&wcache, &w, &dy);
    c.cmp("layer norm backward: input", &gx, &wx, tol)?;
    c.cmp("layer norm backward: weight", &gw, &ww, tol)?;
    c.cmp("layer norm backward: bias", &gb, &wb, tol)?;
    // RMSNorm (Llama's eps), the same width.
    let eps = 1e-6;
    let (y, cache) = gpu.rms_norm(&c.up(&x)?, &c.up(&w)?, eps)?;
    let (wy, wcache) = rms_norm(&x, &w, eps);
    c.cmp("rms norm", &y, &wy, tol)?;
    let (gx, gw) = gpu.rms_norm_backward(&cache.xhat, &cache.rstd, &c.up(&w)?, &c.up(&dy)?)?;
    let (wx, ww) = rms_norm_backward(&wcache, &w, &dy);
    c.cmp("rms norm backward: input", &gx, &wx, tol)?;
    c.cmp("rms norm backward: weight", &gw, &ww, tol)?;
    Ok(())
}

fn elementwise<E: Engine>(
    c: &mut Checker<'_, E>,
    rng: &mut SplitMix64,
) -> Result<(), RuntimeError> {
    let (gpu, tol) = (c.gpu, F32_TOLERANCE);
    // GELU.
    let x = random(rng, &[7, 33], 3.0);
    let dy = random(rng, &[7, 33], 1.0);
    c.cmp("gelu", &gpu.gelu(&c.up(&x)?)?, &gelu(&x), tol)?;
    c.cmp(
        "gelu backward",
        &gpu.gelu_backward(&c.up(&x)?, &c.up(&dy)?)?,
        &gelu_backward(&x, &dy),
        tol,
    )?;
    // The other activations (and the tanh GELU through the same kernel), plain and gated;
    // inputs out to ±9, past the exact GELU's switch from series to continued fraction at 2.5.
    let up = random(rng, &[7, 33], 1.0);
    let x = random(rng, &[7, 33], 9.0);
    let (gx, gup, gdy) = (c.up(&x)?, c.up(&up)?, c.up(&dy)?);
    for (name, f) in [
        ("exact gelu", Act::Gelu),
        ("tanh gelu", Act::GeluTanh),
        ("quick gelu", Act::QuickGelu),
        ("silu", Act::Silu),
    ] {
        c.cmp(name, &gpu.activation(&gx, f)?, &act::activation(&x, f), tol)?;
        c.cmp(
            &format!("{name} backward"),
            &gpu.activation_backward(&gx, &gdy, f)?,
            &act::activation_backward(&x, &dy, f),
            tol,
        )?;
        c.cmp(
            &format!("gated {name}"),
            &gpu.gated(&gx, &gup, f)?,
            &act::gated(&x, &up, f),
            tol,
        )?;
        let (dg, du) = gpu.gated_backward(&gx, &gup, &gdy, f)?;
        let (wg, wu) = act::gated_backward(&x, &up, &dy, f);
        c.cmp(&format!("gated {name} backward: gate"), &dg, &wg, tol)?;
        c.cmp(&format!("gated {name} backward: up"), &du, &wu, tol)?;
    }
    Ok(())
}

/// Rotary positions (Llama 3's rescaled frequencies, a context-parallel shard's positions) and
/// grouped-query attention's head repetition.
fn heads<E: Engine>(c: &mut Checker<'_, E>, rng: &mut SplitMix64) -> Result<(), RuntimeError> {
    let (gpu, tol) = (c.gpu, F32_TOLERANCE);
    let (head_dim, heads, groups) = (16, 3, 2);
    let rope_ = Rope {
        base: 500_000.0,
        llama3: Some(Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 64.0,
        }),
    };
    let inv_freq = rope_.inv_freq(head_dim);
    let positions = [0usize, 1, 2, 3, 60, 61, 62, 63, 4000];
    let x = random(rng, &[positions.len(), heads * head_dim], 1.0);
    let gx = c.up(&x)?;
    for (name, inverse) in [("rope", false), ("rope backward", true)] {
        c.cmp(
            name,
            &gpu.rope(&gx, &positions, head_dim, &inv_freq, inverse)?,
            &rope::rope(&x, &positions, head_dim, &inv_freq, inverse),
            tol,
        )?;
    }
    c.cmp(
        "repeat key/value heads",
        &gpu.repeat_heads(&gx, head_dim, groups)?,
        &rope::repeat_heads(&x, head_dim, groups),
        0.0,
    )?;
    let dx = random(rng, &[positions.len(), heads * head_dim * groups], 1.0);
    c.cmp(
        "sum key/value heads",
        &gpu.sum_heads(&c.up(&dx)?, head_dim, groups)?,
        &rope::sum_heads(&dx, head_dim, groups),
        tol,
    )?;
    Ok(())
}

fn loss<E: Engine>(c: &mut Checker<'_, E>, rng: &mut SplitMix64) -> Result<(), RuntimeError> {
    let (gpu, tol) = (c.gpu, F32_TOLERANCE);
    // Cross-entropy with ignored rows.
    let logits = random(rng, &[6, 50], 3.0);
    let targets = [3i64, -100, 49, 0, -100, 17];
    let (loss, d) = gpu.cross_entropy(&c.up(&logits)?, &targets, 4)?;
    let (wloss, wd) = cross_entropy(&logits, &targets, 4);
    c.cmp("cross-entropy gradient", &d, &wd, tol)?;
    c.ops.push(OpCheck {
        op: "cross-entropy loss".into(),
        error: (loss - wloss).abs() / wloss.abs().max(1e-30),
        tolerance: tol,
    });
    Ok(())
}

fn optimizer<E: Engine>(c: &mut Checker<'_, E>, rng: &mut SplitMix64) -> Result<(), RuntimeError> {
    let (gpu, tol) = (c.gpu, F32_TOLERANCE);
    // Adam, three updates.
    let p0 = random(rng, &[5, 40], 1.0);
    let mut cpu_p = Params::default();
    cpu_p.insert("w", p0.clone());
    let mut adam = Adam::new(1e-2);
    let (mut gp, mut gm, mut gv) = (c.up(&p0)?, gpu.zeros(&[5, 40])?, gpu.zeros(&[5, 40])?);
    for t in 1..=3u64 {
        let g = random(rng, &[5, 40], 1.0);
        let mut grads = Params::default();
        grads.insert("w", g.clone());
        adam.update(&mut cpu_p, &grads)?;
        gpu.adam_step(&mut gp, &c.up(&g)?, &mut gm, &mut gv, &adam.step_at(t))?;
    }
    let want = cpu_p.get("w").expect("inserted above").clone();
    c.cmp("adam, three updates", &gp, &want, tol)?;
    Ok(())
}

fn rows<E: Engine>(c: &mut Checker<'_, E>, rng: &mut SplitMix64) -> Result<(), RuntimeError> {
    let gpu = c.gpu;
    // Row gathers and ordered scatter-adds (embedding lookups and their backward).
    let table = random(rng, &[10, 24], 1.0);
    let index = [3usize, 3, 0, 9, 5];
    let gathered = gpu.gather_rows(&c.up(&table)?, &index)?;
    let mut want = Vec::new();
    for &i in &index {
        want.extend_from_slice(table.row(i));
    }
    let want = Tensor::from_vec(&[index.len(), 24], want)?;
    c.cmp("gather rows", &gathered, &want, 0.0)?;
    let src = random(rng, &[5, 24], 1.0);
    let idx = [3i64, 3, -1, 9, 0];
    let mut gt = c.up(&table)?;
    gpu.scatter_add_rows(&mut gt, &c.up(&src)?, &idx)?;
    let mut want = table.clone();
    for (k, &i) in idx.iter().enumerate() {
        if i >= 0 {
            let row = want.row_mut(i as usize);
            for (a, b) in row.iter_mut().zip(src.row(k)) {
                *a += *b;
            }
        }
    }
    c.cmp("scatter-add rows", &gt, &want, 0.0)?;
    let mut dst = gpu.zeros(&[10, 24])?;
    gpu.scatter_rows(&mut dst, &c.up(&src)?, &[7, 1, 4, 0, 9])?;
    let mut want = Tensor::zeros(&[10, 24]);
    for (k, &i) in [7usize, 1, 4, 0, 9].iter().enumerate() {
        want.row_mut(i).copy_from_slice(src.row(k));
    }
    c.cmp("scatter rows", &dst, &want, 0.0)?;
    let mut sum = c.up(&table)?;
    gpu.add_into(&mut sum, &c.up(&want)?)?;
    c.cmp("add", &sum, &table.add(&want), 0.0)?;
    Ok(())
}

/// Runs one part of the check, recording its comparisons, or its error as a failed one (a
/// launch error, say) so the other parts still run.
fn part<E: Engine>(
    ops: &mut Vec<OpCheck>,
    gpu: &E,
    rng: &mut SplitMix64,
    name: &str,
    tol: f64,
    f: impl FnOnce(&mut Checker<'_, E>, &mut SplitMix64) -> Result<(), RuntimeError>,
) {
    let mut c = Checker {
        gpu,
        ops: Vec::new(),
    };
    let r = f(&mut c, rng);
    ops.extend(c.ops);
    if let Err(e) = r {
        ops.push(OpCheck {
            op: format!("{name}: {e}"),
            error: f64::INFINITY,
            tolerance: tol,
        });
    }
}

/// Every operation of `ops.rs` against the CPU reference on one device: the matrix products
/// (linear layers, attention) on `f32` and on `bf16` (a rank whose products take bf16 inputs),
/// the rest on `f32`.
pub(crate) fn compare_ops<E: Engine>(f32: &E, bf16: &E, rng: &mut SplitMix64) -> Vec<OpCheck> {
    let mut ops = Vec::new();
    part(&mut ops, f32, rng, "products", F32_TOLERANCE, |c, r| {
        products(c, r, F32_TOLERANCE, "")
    });
    part(
        &mut ops,
        bf16,
        rng,
        "products, bf16 inputs",
        BF16_TOLERANCE,
        |c, r| products(c, r, BF16_TOLERANCE, ", bf16 inputs"),
    );
    part(&mut ops, f32, rng, "norms", F32_TOLERANCE, norms);
    part(
        &mut ops,
        f32,
        rng,
        "activations",
        F32_TOLERANCE,
        elementwise,
    );
    part(&mut ops, f32, rng, "rope and heads", F32_TOLERANCE, heads);
    part(&mut ops, f32, rng, "cross-entropy", F32_TOLERANCE, loss);
    part(&mut ops, f32, rng, "adam", F32_TOLERANCE, optimizer);
    part(&mut ops, f32, rng, "rows", F32_TOLERANCE, rows);
    ops
}

/// Compares every operation against the CPU reference (inputs from `seed`), then NCCL's
/// calls on a one-rank communicator. A part that fails is reported as such and the others
/// still run.
pub fn check_ops(dev: &Arc<Device>, seed: u64) -> Result<Vec<OpCheck>, RuntimeError> {
    let mut rng = SplitMix64::new(seed);
    let gpu16 = dev.rank()?.with_precision(Precision::Bf16);
    let gpu32 = dev.rank()?;
    let mut ops = compare_ops(&gpu32, &gpu16, &mut rng);
    part(&mut ops, &gpu32, &mut rng, "nccl", 0.0, nccl);
    Ok(ops)
}

/// NCCL on this one GPU: a communicator of one rank (the library loads, the id is made, the
/// communicator joins) and each call the backend makes, whose results must be exactly their
/// input. Several ranks need several GPUs (NCCL refuses two ranks on one device).
fn nccl(c: &mut Checker<'_, Gpu>, rng: &mut SplitMix64) -> Result<(), RuntimeError> {
    use super::nccl::Communicator;
    let gpu = c.gpu;
    let mut net = crate::transport::fabric(1, std::time::Duration::from_secs(10))
        .pop()
        .expect("one endpoint");
    let comm = Communicator::new(gpu, &mut net, &[0], 1)?;
    let x = random(rng, &[64, 32], 1.0);
    let mut d = c.up(&x)?;
    comm.all_reduce_sum(&mut d)?;
    c.cmp("nccl all-reduce, one rank", &d, &x, 0.0)?;
    c.cmp(
        "nccl all-gather, one rank",
        &comm.all_gather(gpu, &d)?,
        &x,
        0.0,
    )?;
    c.cmp(
        "nccl reduce-scatter, one rank",
        &comm.reduce_scatter(gpu, &d)?,
        &x,
        0.0,
    )?;
    let mut back = gpu.zeros(&[64, 32])?;
    comm.exchange(&[(0, &d)], &mut [(0, &mut back)])?;
    c.cmp("nccl grouped send/receive to itself", &back, &x, 0.0)?;
    Ok(())
}

/// Milliseconds of `reps` runs of `f` on the rank's stream, after one warm-up run.
fn time_ms(
    gpu: &Gpu,
    reps: usize,
    mut f: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<f64, RuntimeError> {
    f()?;
    let ctx = gpu.stream().context();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let start = ctx.new_event(flags).map_err(|e| device_err("event", e))?;
    let end = ctx.new_event(flags).map_err(|e| device_err("event", e))?;
    start
        .record(gpu.stream())
        .map_err(|e| device_err("event", e))?;
    for _ in 0..reps {
        f()?;
    }
    end.record(gpu.stream())
        .map_err(|e| device_err("event", e))?;
    end.synchronize().map_err(|e| device_err("event", e))?;
    let ms = start.elapsed_ms(&end).map_err(|e| device_err("event", e))?;
    Ok(f64::from(ms) / reps as f64)
}

/// The whole check: the operations, then products of `gemm_size`² matrices and copies of
/// `copy_bytes`.
pub fn run(
    dev: &Arc<Device>,
    seed: u64,
    gemm_size: usize,
    copy_bytes: usize,
) -> Result<Report, RuntimeError> {
    let ops = check_ops(dev, seed)?;
    let gpu32 = dev.rank()?;
    let gpu16 = dev.rank()?.with_precision(Precision::Bf16);
    let mut notes = Vec::new();
    // A figure that cannot be measured is NaN, with the reason in the notes.
    let mut figure = |what: &str, r: Result<f64, RuntimeError>| {
        r.unwrap_or_else(|e| {
            notes.push(format!("{what}: {e}"));
            f64::NAN
        })
    };
    let n = gemm_size;
    let flops = 2.0 * (n as f64).powi(3);
    let products = |gpu: &Gpu| -> Result<f64, RuntimeError> {
        let a = gpu.zeros(&[n, n])?;
        let b = gpu.zeros(&[n, n])?;
        let ms = time_ms(gpu, 10, || gpu.linear(&a, &b, None).map(drop))?;
        Ok(flops / (ms * 1e-3) / 1e12)
    };
    let f32_tflops = figure("f32 products", products(&gpu32));
    // The bf16 figure includes the two conversions to bf16, as the backend pays them.
    let bf16_tflops = figure("bf16 products", products(&gpu16));
    let words = copy_bytes / 4;
    let copy = || -> Result<f64, RuntimeError> {
        let gpu = &gpu32;
        let src = gpu.zeros(&[words])?;
        let mut dst = gpu.zeros(&[words])?;
        let ms = time_ms(gpu, 10, || {
            gpu.stream()
                .memcpy_dtod(&src.buf, &mut dst.buf)
                .map_err(|e| device_err("device to device copy", e))
        })?;
        Ok((words * 4) as f64 / (ms * 1e-3) / 1e9)
    };
    let copy_gbps = figure("device copy", copy());
    Ok(Report {
        device: dev.name.clone(),
        arch: dev.arch,
        memory_bytes: dev.memory,
        ops,
        gemm_size,
        f32_tflops,
        bf16_tflops,
        copy_bytes: words * 4,
        copy_gbps,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_error_is_scaled_by_the_reference() {
        let a = Tensor::from_vec(&[3], vec![1.0, 2.5, -4.0]).unwrap();
        let b = Tensor::from_vec(&[3], vec![1.0, 2.0, -4.0]).unwrap();
        assert_eq!(relative_error(&a, &b), 0.125);
        assert_eq!(relative_error(&b, &b), 0.0);
    }

    #[test]
    fn the_operations_match_the_cpu_reference_on_a_gpu() {
        let dev = match super::super::Device::open(0) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let ops = check_ops(&dev, 7).unwrap();
        let failed: Vec<_> = ops.iter().filter(|c| !c.passed()).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }
}
