//! Microbenchmarks of the CUDA backend on one device (`hetpar profile --backend cuda`): cuBLAS's
//! bf16 product over a grid of shapes, the backend's attention core, its memory-bound kernels
//! (bytes moved) and the cost of one kernel launch (a one-value kernel launched many times).
//! Everything goes through [`Engine`], so the emulated device runs the same code in the tests
//! (its timings mean nothing). Each figure is the fastest of several timed windows; a window
//! repeats the operation enough times that the synchronisation around it is a small part.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::device::Device;
use super::engine::{Engine, Gemm, Operand};
use super::ops::{Ops, Precision, DT};
use crate::reference::SplitMix64;
use crate::tensor::Tensor;
use crate::RuntimeError;

/// What to measure and how long to spend on each figure.
#[derive(Clone, Debug)]
pub struct Grid {
    /// Every `(m, k, n)` with each dimension from this list is timed.
    pub matmul_dims: Vec<usize>,
    /// Sequence lengths of the attention cores (bidirectional, `heads` of `head_dim`).
    pub attention_seqs: Vec<usize>,
    pub heads: usize,
    pub head_dim: usize,
    /// Values (f32) of the memory-bound kernels' inputs.
    pub memory_values: Vec<usize>,
    /// One-value kernels launched back to back for the per-kernel cost.
    pub launches: usize,
    /// Timed windows per figure (the fastest is kept) and the wall time one window aims at.
    pub windows: usize,
    pub window: Duration,
}

impl Grid {
    /// The grid for a data-centre GPU: products with every dimension 256 to 8192 (powers of
    /// two), attention over 512 to 4096 tokens of 16 heads of 128, kernels over 1 Mi to 256 Mi
    /// values. About a minute on an H100 (assumed from the shapes, not yet measured).
    pub fn gpu() -> Grid {
        Grid {
            matmul_dims: (8..=13).map(|p| 1usize << p).collect(),
            attention_seqs: vec![512, 1024, 2048, 4096],
            heads: 16,
            head_dim: 128,
            memory_values: vec![1 << 20, 1 << 24, 1 << 28],
            launches: 2000,
            windows: 3,
            window: Duration::from_millis(20),
        }
    }

    /// A grid small enough for the emulated device (the tests).
    pub fn tiny() -> Grid {
        Grid {
            matmul_dims: vec![8, 16],
            attention_seqs: vec![8, 16],
            heads: 2,
            head_dim: 4,
            memory_values: vec![256, 1024],
            launches: 20,
            windows: 2,
            window: Duration::from_millis(1),
        }
    }
}

/// What the microbenchmarks measured (seconds per operation).
#[derive(Clone, Debug, Default)]
pub struct GpuProfile {
    /// `(m, k, n, seconds)`: `[m, k] x [k, n]`, bf16 inputs, f32 output and accumulation.
    pub matmuls: Vec<(usize, usize, usize, f64)>,
    /// `(flops, seconds)` of attention cores, `4 n² hidden` FLOPs each (bf16 products).
    pub attention: Vec<(f64, f64)>,
    /// `(kernel, bytes read and written, seconds)` of memory-bound kernels (f32).
    pub memory: Vec<(String, f64, f64)>,
    /// Seconds per launch of a one-value kernel, launched back to back.
    pub kernel_launch_s: f64,
}

/// Profiles device `dev` (a rank with f32 products and one with bf16 products).
pub fn profile_cuda(dev: &Arc<Device>, grid: &Grid) -> Result<GpuProfile, RuntimeError> {
    let f32 = dev.rank()?;
    let bf16 = dev.rank()?.with_precision(Precision::Bf16);
    profile_engine(&f32, &bf16, grid)
}

/// The microbenchmarks on any engine: `f32` runs the memory-bound kernels and the launches,
/// `bf16` the attention cores; the products are bf16 on either.
pub fn profile_engine<E: Engine>(
    f32: &E,
    bf16: &E,
    grid: &Grid,
) -> Result<GpuProfile, RuntimeError> {
    let mut rng = SplitMix64::new(1);
    Ok(GpuProfile {
        matmuls: matmuls(f32, grid, &mut rng)?,
        attention: attention(bf16, grid, &mut rng)?,
        memory: memory(f32, grid, &mut rng)?,
        kernel_launch_s: launch_cost(f32, grid)?,
    })
}

/// Waits for everything queued on `e`'s stream (a one-value copy back waits for it).
fn sync<E: Engine>(e: &E, probe: &E::Buf<f32>) -> Result<(), RuntimeError> {
    e.dtoh(probe, 1).map(drop)
}

/// Seconds per run of `f`: a warm-up run (first calls pay cuBLAS's and the allocator's set-up),
/// a timed run that sizes the windows, then the fastest of `grid.windows` windows of enough
/// runs to fill `grid.window`.
fn timed<E: Engine>(
    e: &E,
    grid: &Grid,
    mut f: impl FnMut() -> Result<(), RuntimeError>,
) -> Result<f64, RuntimeError> {
    let probe = e.alloc_zeros::<f32>(1)?;
    f()?;
    sync(e, &probe)?;
    let t = Instant::now();
    f()?;
    sync(e, &probe)?;
    let once = t.elapsed().as_secs_f64().max(1e-9);
    let reps = (grid.window.as_secs_f64() / once).clamp(1.0, 1000.0) as usize;
    let mut best = f64::INFINITY;
    for _ in 0..grid.windows.max(1) {
        sync(e, &probe)?;
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        sync(e, &probe)?;
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(best)
}

/// `n` random bf16 words in ±[0.5, 2) (random data: zeros draw less power and run faster).
fn random_bf16(n: usize, rng: &mut SplitMix64) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let r = rng.next_u64();
            let sign = (r & 1) as u16;
            let exponent = 126 + ((r >> 1) & 1) as u16;
            let mantissa = ((r >> 2) & 0x7f) as u16;
            sign << 15 | exponent << 7 | mantissa
        })
        .collect()
}

fn random<E: Engine>(e: &E, shape: &[usize], rng: &mut SplitMix64) -> Result<DT<E>, RuntimeError> {
    let n: usize = shape.iter().product();
    let t = Tensor::from_vec(shape, (0..n).map(|_| rng.symmetric(1.0)).collect())?;
    e.upload(&t)
}

/// Every `[m, k] x [k, n]` of the grid, column-major, in buffers of the largest size.
fn matmuls<E: Engine>(
    e: &E,
    grid: &Grid,
    rng: &mut SplitMix64,
) -> Result<Vec<(usize, usize, usize, f64)>, RuntimeError> {
    let Some(&max) = grid.matmul_dims.iter().max() else {
        return Ok(Vec::new());
    };
    let a = e.htod(&random_bf16(max * max, rng))?;
    let b = e.htod(&random_bf16(max * max, rng))?;
    let mut c = e.alloc_zeros::<f32>(max * max)?;
    let mut out = Vec::new();
    for &m in &grid.matmul_dims {
        for &k in &grid.matmul_dims {
            for &n in &grid.matmul_dims {
                let g = Gemm {
                    trans_a: false,
                    trans_b: false,
                    m,
                    n,
                    k,
                    lda: m,
                    ldb: k,
                    ldc: m,
                    stride_a: 0,
                    stride_b: 0,
                    stride_c: 0,
                    batch: 1,
                    alpha_bits: 1.0f32.to_bits(),
                };
                let t = timed(e, grid, || {
                    e.gemm(&g, Operand::Bf16(&a), Operand::Bf16(&b), &mut c)
                })?;
                out.push((m, k, n, t));
            }
        }
    }
    Ok(out)
}

/// Bidirectional attention cores as the backend runs them (scores, softmax, values).
fn attention<E: Engine>(
    e: &E,
    grid: &Grid,
    rng: &mut SplitMix64,
) -> Result<Vec<(f64, f64)>, RuntimeError> {
    let hidden = grid.heads * grid.head_dim;
    let mut out = Vec::new();
    for &n in &grid.attention_seqs {
        let (q, k, v) = (
            random(e, &[n, hidden], rng)?,
            random(e, &[n, hidden], rng)?,
            random(e, &[n, hidden], rng)?,
        );
        let positions: Vec<usize> = (0..n).collect();
        let t = timed(e, grid, || {
            e.attention_core(&q, &k, &v, grid.heads, false, &positions)
                .map(drop)
        })?;
        out.push(((4 * n * n * hidden) as f64, t));
    }
    Ok(out)
}

/// `y += x` (three f32 accesses a value), GELU and LayerNorm over 1024 columns (two each; they
/// also zero the outputs they allocate, not counted, so `y += x` is usually the fastest).
fn memory<E: Engine>(
    e: &E,
    grid: &Grid,
    rng: &mut SplitMix64,
) -> Result<Vec<(String, f64, f64)>, RuntimeError> {
    let mut out = Vec::new();
    for &len in &grid.memory_values {
        let cols = len.min(1024);
        let shape = [len / cols, cols];
        let n = shape[0] * shape[1];
        let x = random(e, &shape, rng)?;
        let mut y = e.zeros(&shape)?;
        let (w, b) = (random(e, &[cols], rng)?, e.zeros(&[cols])?);
        let bytes = |accesses: usize| (accesses * n * 4) as f64;
        let t = timed(e, grid, || e.add_into(&mut y, &x))?;
        out.push(("add".into(), bytes(3), t));
        let t = timed(e, grid, || e.gelu(&x).map(drop))?;
        out.push(("gelu".into(), bytes(2), t));
        let t = timed(e, grid, || e.layer_norm(&x, &w, &b).map(drop))?;
        out.push(("layer norm".into(), bytes(2), t));
    }
    Ok(out)
}

/// Seconds per launch of `y += x` on one value, `grid.launches` back to back.
fn launch_cost<E: Engine>(e: &E, grid: &Grid) -> Result<f64, RuntimeError> {
    let x = e.zeros(&[1])?;
    let mut y = e.zeros(&[1])?;
    let launches = grid.launches.max(1);
    let t = timed(e, grid, || {
        for _ in 0..launches {
            e.add_into(&mut y, &x)?;
        }
        Ok(())
    })?;
    Ok(t / launches as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bf16_words_are_finite_and_of_both_signs() {
        let w = random_bf16(1000, &mut SplitMix64::new(3));
        let values: Vec<f32> = w
            .iter()
            .map(|&b| f32::from_bits(u32::from(b) << 16))
            .collect();
        assert!(values.iter().all(|v| (0.5..2.0).contains(&v.abs())));
        assert!(values.iter().any(|v| *v < 0.0) && values.iter().any(|v| *v > 0.0));
    }
}
