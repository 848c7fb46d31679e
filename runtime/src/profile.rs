//! Microbenchmarks of the CPU backend (`hetpar profile`): the runtime's own kernels (matrix
//! products, attention, memory-bound LayerNorm and GELU) over a grid of shapes, point-to-point
//! messages and every collective of the in-process transport over its group and message
//! sizes.
//! Each figure is the fastest of several repetitions (the least disturbed by other work).

use std::time::{Duration, Instant};

use crate::reference::attention::attention_core_at;
use crate::reference::layers::{gelu, layer_norm};
use crate::reference::SplitMix64;
use crate::tensor::Tensor;
use crate::transport::fabric;
use crate::RuntimeError;

/// What the microbenchmarks measured.
#[derive(Clone, Debug, Default)]
pub struct CpuProfile {
    /// `(m, k, n, seconds)`: `[m, k] x [k, n]`.
    pub matmuls: Vec<(usize, usize, usize, f64)>,
    /// `(flops, seconds)` of attention cores, `4 n² hidden` FLOPs each.
    pub attention: Vec<(f64, f64)>,
    /// `(bytes, seconds)` of memory-bound kernels (read and write of f32).
    pub memory: Vec<(f64, f64)>,
    /// `(bytes, seconds)` one way, point to point.
    pub p2p: Vec<(f64, f64)>,
    /// `(kind, group size, bytes per rank, seconds)`: all-reduce, all-gather, reduce-scatter
    /// (the buffer split into equal pieces) and broadcast (from the first member).
    pub collectives: Vec<(String, u32, f64, f64)>,
}

/// The fastest of at least `min_reps` repetitions of `f`, repeating until `budget` is spent.
fn fastest(min_reps: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < min_reps || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
        if reps >= 1000 {
            break;
        }
    }
    best
}

fn random(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.symmetric(1.0)).collect()).expect("n values")
}

/// Runs every microbenchmark; collectives over groups of 2 to `ranks` threads.
pub fn profile_cpu(ranks: usize) -> Result<CpuProfile, RuntimeError> {
    let mut p = CpuProfile::default();
    let mut rng = SplitMix64::new(1);
    let budget = Duration::from_millis(20);
    for m in [8, 32, 128, 512] {
        for k in [8, 32, 128] {
            for n in [8, 32, 128] {
                let x = random(&[m, k], &mut rng);
                let w = random(&[n, k], &mut rng);
                let t = fastest(3, budget, || {
                    std::hint::black_box(Tensor::linear(&x, &w, None));
                });
                p.matmuls.push((m, k, n, t));
            }
        }
    }
    for n in [16, 64, 128] {
        let hidden = 32;
        let (q, k, v) = (
            random(&[n, hidden], &mut rng),
            random(&[n, hidden], &mut rng),
            random(&[n, hidden], &mut rng),
        );
        let positions: Vec<usize> = (0..n).collect();
        let t = fastest(3, budget, || {
            std::hint::black_box(attention_core_at(&q, &k, &v, 2, false, &positions));
        });
        p.attention.push(((4 * n * n * hidden) as f64, t));
    }
    for (rows, cols) in [(32, 32), (128, 128), (512, 512)] {
        let x = random(&[rows, cols], &mut rng);
        let (w, b) = (Tensor::full(&[cols], 1.0), Tensor::zeros(&[cols]));
        let bytes = (rows * cols * 4 * 2) as f64;
        let t = fastest(3, budget, || {
            std::hint::black_box(layer_norm(&x, &w, &b));
        });
        p.memory.push((bytes, t));
        let t = fastest(3, budget, || {
            std::hint::black_box(gelu(&x));
        });
        p.memory.push((bytes, t));
    }
    p.p2p = ping_pong(&[64, 1024, 16 * 1024, 256 * 1024])?;
    for group in 2..=ranks.max(2) {
        for len in [1024usize, 64 * 1024, 1024 * 1024] {
            for kind in ["all_reduce", "all_gather", "reduce_scatter", "broadcast"] {
                let t = collective(kind, group, len)?;
                p.collectives
                    .push((kind.to_string(), group as u32, (len * 4) as f64, t));
            }
        }
    }
    Ok(p)
}

/// One-way times of messages of `lens` f32 values between two threads (half a round trip,
/// the fastest of 20).
fn ping_pong(lens: &[usize]) -> Result<Vec<(f64, f64)>, RuntimeError> {
    let mut eps = fabric(2, Duration::from_secs(30));
    let mut b = eps.pop().expect("two endpoints");
    let mut a = eps.pop().expect("two endpoints");
    let lens = lens.to_vec();
    let echo_lens = lens.clone();
    std::thread::scope(|s| {
        let echo = s.spawn(move || -> Result<(), RuntimeError> {
            for (i, _) in echo_lens.iter().enumerate() {
                for r in 0..20u64 {
                    let tag = (i as u64) << 8 | r;
                    let m = b.recv(0, tag)?;
                    b.send(0, tag, &m)?;
                }
            }
            Ok(())
        });
        let mut out = Vec::new();
        for (i, &len) in lens.iter().enumerate() {
            let buf = vec![1.0f32; len];
            let mut best = f64::INFINITY;
            for r in 0..20u64 {
                let tag = (i as u64) << 8 | r;
                let t = Instant::now();
                a.send(1, tag, &buf)?;
                a.recv(1, tag)?;
                best = best.min(t.elapsed().as_secs_f64() / 2.0);
            }
            out.push(((len * 4) as f64, best));
        }
        echo.join().expect("the echo thread")?;
        Ok(out)
    })
}

/// The slowest rank's time of one collective of `len` f32 values per rank over `group`
/// threads, the fastest of 5.
fn collective(kind: &str, group: usize, len: usize) -> Result<f64, RuntimeError> {
    let mut best = f64::INFINITY;
    for rep in 0..5u64 {
        let eps = fabric(group, Duration::from_secs(30));
        let members: Vec<u32> = (0..group as u32).collect();
        let times: Vec<Result<f64, RuntimeError>> = std::thread::scope(|s| {
            let hs: Vec<_> = eps
                .into_iter()
                .map(|mut e| {
                    let members = &members;
                    s.spawn(move || -> Result<f64, RuntimeError> {
                        let mut buf = vec![1.0f32; len];
                        let t = Instant::now();
                        match kind {
                            "all_reduce" => e.all_reduce_sum(members, rep, &mut buf)?,
                            "all_gather" => {
                                std::hint::black_box(e.all_gather(members, rep, &buf)?);
                            }
                            "reduce_scatter" => {
                                // Every member's piece: an equal share of the buffer.
                                let piece = len / group;
                                let parts: Vec<Vec<f32>> =
                                    (0..group).map(|_| vec![1.0f32; piece]).collect();
                                std::hint::black_box(e.reduce_scatter(members, rep, &parts)?);
                            }
                            _ => e.broadcast(members, 0, rep, &mut buf)?,
                        }
                        Ok(t.elapsed().as_secs_f64())
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("a collective thread"))
                .collect()
        });
        let mut slowest = 0.0f64;
        for t in times {
            slowest = slowest.max(t?);
        }
        best = best.min(slowest);
    }
    Ok(best)
}
