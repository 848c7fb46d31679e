//! Calibration: the cost model's figures measured on a machine instead of taken from the
//! built-in tables. `hetpar profile` measures hardware figures with microbenchmarks
//! ([`from_profile`]); `hetpar autotune` fits the efficiency constants to measured steps
//! ([`fit`]). Both write a calibration file, which every command that estimates reads with
//! `--calibration` ([`Calibration::apply`]).

use hetpar_ir::gpu::GpuModel;
use hetpar_ir::json::FORMAT_VERSION;
use hetpar_ir::Cluster;
use serde::{Deserialize, Serialize};

use crate::{Constants, Options};

/// Measured hardware figures that replace the cluster's (SI units); absent ones stay.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareFigures {
    /// The peak the matrix-product efficiency is relative to, FLOP/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_flops: Option<f64>,
    /// Memory bandwidth of memory-bound kernels, bytes/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bandwidth: Option<f64>,
    /// Point-to-point bandwidth within a node, bytes/s, and latency per message, s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intra_node_bandwidth: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intra_node_latency_s: Option<f64>,
}

/// One measurement behind a calibration, kept for the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// `matmul`, `attention`, `memory`, `p2p`, `all_reduce`, `all_gather`,
    /// `reduce_scatter`, `broadcast`, `kernel_launch` (seconds per launch), or `step` (a
    /// plan's measured step).
    pub kind: String,
    /// What was measured (a shape, a message size and group, a plan).
    pub what: String,
    /// Its size: FLOPs for compute, bytes for memory and communication, samples for a step.
    pub amount: f64,
    pub seconds: f64,
}

/// A calibration file (`"kind": "calibration"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub kind: String,
    pub format_version: u32,
    /// The device it was measured on.
    pub gpu_model: GpuModel,
    /// The backend that ran the measurements: `cpu` or `cuda`.
    pub backend: String,
    /// `profile` (microbenchmarks) or `autotune` (fitted to measured steps).
    pub source: String,
    pub hardware: HardwareFigures,
    pub constants: Constants,
    pub measurements: Vec<Measurement>,
}

impl Calibration {
    /// A calibration with the built-in figures of `gpu_model` and no measurements.
    pub fn built_in(gpu_model: GpuModel, backend: &str, source: &str) -> Calibration {
        Calibration {
            kind: "calibration".into(),
            format_version: FORMAT_VERSION,
            gpu_model,
            backend: backend.into(),
            source: source.into(),
            hardware: HardwareFigures::default(),
            constants: Constants::for_gpu(gpu_model),
            measurements: Vec::new(),
        }
    }

    /// Checks what the format cannot: a kind, a version, positive figures.
    pub fn check(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.kind != "calibration" {
            problems.push(format!(
                "kind: expected \"calibration\", found \"{}\"",
                self.kind
            ));
        }
        if self.format_version != FORMAT_VERSION {
            problems.push(format!(
                "format_version: {} is not supported; this hetpar reads {FORMAT_VERSION}",
                self.format_version
            ));
        }
        let h = &self.hardware;
        for (name, v) in [
            ("hardware.dense_flops", h.dense_flops),
            ("hardware.memory_bandwidth", h.memory_bandwidth),
            ("hardware.intra_node_bandwidth", h.intra_node_bandwidth),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                problems.push(format!("{name}: must be a positive number"));
            }
        }
        let c = &self.constants;
        for (name, v) in [
            ("constants.matmul_max_efficiency", c.matmul_max_efficiency),
            ("constants.attention_efficiency", c.attention_efficiency),
            ("constants.hbm_efficiency", c.hbm_efficiency),
            ("constants.nvlink_efficiency", c.nvlink_efficiency),
            ("constants.network_efficiency", c.network_efficiency),
        ] {
            if !(v.is_finite() && v > 0.0) {
                problems.push(format!("{name}: must be a positive number"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Puts the calibration in force: the cluster's figures replaced by the measured ones,
    /// the options' constants by its constants. A calibration of another device is refused.
    pub fn apply(&self, cluster: &mut Cluster, opts: &mut Options) -> Result<(), String> {
        self.check()?;
        if cluster.gpu_model != self.gpu_model {
            return Err(format!(
                "it was measured on {}, but cluster `{}` has {}",
                self.gpu_model.as_str(),
                cluster.name,
                cluster.gpu_model.as_str()
            ));
        }
        let h = &self.hardware;
        if let Some(v) = h.dense_flops {
            cluster.gpu.dense_bf16_flops = v;
        }
        if let Some(v) = h.memory_bandwidth {
            cluster.gpu.hbm_bandwidth = v;
        }
        if let Some(v) = h.intra_node_bandwidth {
            cluster.gpu.nvlink_bandwidth = v;
        }
        if let Some(v) = h.intra_node_latency_s {
            cluster.gpu.nvlink_latency = v;
        }
        opts.constants = Some(self.constants);
        Ok(())
    }
}

/// Microbenchmark results (from the runtime), in the cost model's terms.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    /// `(m, k, n, seconds)` of `[m, k] x [k, n]` products.
    pub matmuls: Vec<(f64, f64, f64, f64)>,
    /// `(flops, seconds)` of attention cores.
    pub attention: Vec<(f64, f64)>,
    /// `(bytes moved, seconds)` of memory-bound kernels.
    pub memory: Vec<(f64, f64)>,
    /// `(bytes, seconds)` of point-to-point messages.
    pub p2p: Vec<(f64, f64)>,
    /// `(kind, group size, bytes, seconds)` of collectives, for the record.
    pub collectives: Vec<(String, u32, f64, f64)>,
}

fn sq(x: f64) -> f64 {
    x * x
}

/// A calibration from microbenchmarks: the peak is fitted with the matrix-product shape
/// model (`efficiency = g(m) g(n) g(k)`, `g(x) = x / (x + half_dim)`, maximum efficiency 1
/// against the fitted peak), attention's efficiency against that peak, memory bandwidth the
/// best memory-bound rate, and the link a latency plus bandwidth line through the
/// point-to-point messages.
pub fn from_profile(gpu_model: GpuModel, backend: &str, p: &Profile) -> Calibration {
    let mut cal = Calibration::built_in(gpu_model, backend, "profile");
    // Peak and half dimension: for each half dimension on a log grid the best log-peak is the
    // mean residual; keep the half dimension with the least squared log error.
    let mut best: Option<(f64, f64, f64)> = None;
    for i in 0..=120 {
        let h = 0.25 * 2f64.powf(f64::from(i) / 10.0);
        let g = |x: f64| x / (x + h);
        let logs: Vec<f64> = p
            .matmuls
            .iter()
            .map(|&(m, k, n, t)| (2.0 * m * k * n / (g(m) * g(n) * g(k) * t)).ln())
            .collect();
        if logs.is_empty() {
            break;
        }
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let err: f64 = logs.iter().map(|l| sq(l - mean)).sum();
        if best.is_none_or(|b| err < b.2) {
            best = Some((h, mean.exp(), err));
        }
    }
    if let Some((h, peak, _)) = best {
        cal.constants.matmul_half_dim = h;
        cal.constants.matmul_max_efficiency = 1.0;
        cal.hardware.dense_flops = Some(peak);
        let rates: Vec<f64> = p.attention.iter().map(|&(f, t)| f / t / peak).collect();
        if let Some(m) = median(&rates) {
            cal.constants.attention_efficiency = m;
        }
    }
    if let Some(bw) = p.memory.iter().map(|&(b, t)| b / t).reduce(f64::max) {
        cal.hardware.memory_bandwidth = Some(bw);
        cal.constants.hbm_efficiency = 1.0;
    }
    if let Some((latency, bw)) = line_fit(&p.p2p) {
        cal.hardware.intra_node_bandwidth = Some(bw);
        cal.hardware.intra_node_latency_s = Some(latency);
        cal.constants.nvlink_efficiency = 1.0;
    }
    let mut ms = Vec::new();
    let mut record = |kind: &str, what: String, amount: f64, seconds: f64| {
        ms.push(Measurement {
            kind: kind.into(),
            what,
            amount,
            seconds,
        })
    };
    for &(m, k, n, t) in &p.matmuls {
        record(
            "matmul",
            format!("[{m}, {k}] x [{k}, {n}]"),
            2.0 * m * k * n,
            t,
        );
    }
    for &(f, t) in &p.attention {
        record("attention", format!("{f} FLOPs"), f, t);
    }
    for (kind, list) in [("memory", &p.memory), ("p2p", &p.p2p)] {
        for &(b, t) in list {
            record(kind, format!("{b} bytes"), b, t);
        }
    }
    for (kind, g, b, t) in &p.collectives {
        record(kind, format!("{b} bytes over {g} ranks"), *b, *t);
    }
    cal.measurements = ms;
    cal
}

fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Least squares `t = latency + bytes / bandwidth`; `None` without two distinct sizes or with
/// a non-positive slope.
fn line_fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| sq(p.0 - mx)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx <= 0.0 || sxy <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let latency = (my - slope * mx).max(0.0);
    Some((latency, 1.0 / slope))
}

/// The constants `autotune` fits, as multipliers of a base set.
const FITTED: [&str; 5] = [
    "matmul_max_efficiency",
    "attention_efficiency",
    "hbm_efficiency",
    "nvlink_efficiency",
    "kernel_launch_s",
];

fn with_multipliers(base: Constants, x: &[f64]) -> Constants {
    let mut c = base;
    c.matmul_max_efficiency *= x[0].exp();
    c.attention_efficiency *= x[1].exp();
    c.hbm_efficiency *= x[2].exp();
    c.nvlink_efficiency *= x[3].exp();
    // A fixed cost per kernel (on the CPU: per call's bookkeeping), from 1 ns up.
    c.kernel_launch_s = 1e-9 * x[4].exp();
    c
}

/// The outcome of a fit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fit {
    pub constants: Constants,
    /// Root mean square of `ln(predicted / measured)` before and after.
    pub rms_log_error_before: f64,
    pub rms_log_error_after: f64,
    /// Objective evaluations used, and the search's limit.
    pub evaluations: usize,
    pub max_evaluations: usize,
    /// Why the search stopped.
    pub stop_reason: String,
}

/// Fits the efficiency constants (matrix-product, attention, memory and link efficiencies, and
/// the fixed cost per kernel) so that `predict(constants, i)` matches `measured[i]` (seconds),
/// minimising the mean absolute log error with Nelder-Mead from `base`, within
/// `max_evaluations`. `predict` returns `None` for a plan it cannot price (which weighs as a
/// large error).
pub fn fit(
    base: Constants,
    measured: &[f64],
    predict: &dyn Fn(&Constants, usize) -> Option<f64>,
    max_evaluations: usize,
) -> Fit {
    let residuals = |c: &Constants| -> Vec<f64> {
        measured
            .iter()
            .enumerate()
            .map(|(i, &m)| match predict(c, i) {
                Some(p) if p > 0.0 && p.is_finite() => (p / m).ln(),
                _ => 10.0,
            })
            .collect()
    };
    let n = measured.len().max(1) as f64;
    let error =
        |c: &Constants| -> f64 { (residuals(c).iter().map(|r| sq(*r)).sum::<f64>() / n).sqrt() };
    let before = error(&base);
    let dim = FITTED.len();
    let start: Vec<f64> = {
        let mut v = vec![0.0; dim];
        v[4] = (base.kernel_launch_s.max(1e-9) / 1e-9).ln();
        v
    };
    // The mean absolute log error, so that one plan measured in a noisy moment moves the
    // fit less than a squared error would; a light pull towards the base constants keeps the
    // problem well posed when few plans are measured (a constant moved by a factor e costs
    // what a 1% error on every plan does).
    let f = |x: &[f64]| {
        let pull: f64 = x.iter().zip(&start).map(|(a, b)| sq(a - b)).sum::<f64>();
        let r = residuals(&with_multipliers(base, x));
        r.iter().map(|v| v.abs()).sum::<f64>() / n + 1e-2 * pull
    };
    let (x, evaluations, stop_reason) = nelder_mead(&f, &start, 0.5, max_evaluations, 1e-7);
    let constants = with_multipliers(base, &x);
    let after = error(&constants);
    // Never worse than where it started.
    let (constants, after) = if after <= before {
        (constants, after)
    } else {
        (base, before)
    };
    Fit {
        constants,
        rms_log_error_before: before,
        rms_log_error_after: after,
        evaluations,
        max_evaluations,
        stop_reason,
    }
}

/// Nelder-Mead minimisation: returns the best point, the evaluations used and why it stopped.
fn nelder_mead(
    f: &dyn Fn(&[f64]) -> f64,
    start: &[f64],
    step: f64,
    max_evaluations: usize,
    tolerance: f64,
) -> (Vec<f64>, usize, String) {
    let n = start.len();
    let mut evals = 0usize;
    let eval = |x: &[f64], evals: &mut usize| {
        *evals += 1;
        f(x)
    };
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    let v0 = eval(start, &mut evals);
    simplex.push((start.to_vec(), v0));
    for i in 0..n {
        let mut x = start.to_vec();
        x[i] += step;
        let v = eval(&x, &mut evals);
        simplex.push((x, v));
    }
    loop {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let spread = simplex[n].1 - simplex[0].1;
        if spread.abs() < tolerance {
            return (simplex[0].0.clone(), evals, "converged".into());
        }
        if evals >= max_evaluations {
            return (
                simplex[0].0.clone(),
                evals,
                format!("evaluation limit {max_evaluations}"),
            );
        }
        let centroid: Vec<f64> = (0..n)
            .map(|j| simplex[..n].iter().map(|p| p.0[j]).sum::<f64>() / n as f64)
            .collect();
        let along = |t: f64| -> Vec<f64> {
            centroid
                .iter()
                .zip(&simplex[n].0)
                .map(|(c, w)| c + t * (w - c))
                .collect()
        };
        let xr = along(-1.0);
        let vr = eval(&xr, &mut evals);
        if vr < simplex[0].1 {
            let xe = along(-2.0);
            let ve = eval(&xe, &mut evals);
            simplex[n] = if ve < vr { (xe, ve) } else { (xr, vr) };
        } else if vr < simplex[n - 1].1 {
            simplex[n] = (xr, vr);
        } else {
            let xc = along(0.5);
            let vc = eval(&xc, &mut evals);
            if vc < simplex[n].1 {
                simplex[n] = (xc, vc);
            } else {
                let best = simplex[0].0.clone();
                for p in simplex.iter_mut().skip(1) {
                    let x: Vec<f64> = best
                        .iter()
                        .zip(&p.0)
                        .map(|(b, x)| b + 0.5 * (x - b))
                        .collect();
                    let v = eval(&x, &mut evals);
                    *p = (x, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nelder_mead_finds_the_minimum_of_a_quadratic() {
        let f = |x: &[f64]| sq(x[0] - 1.0) + 3.0 * sq(x[1] + 2.0);
        let (x, _, why) = nelder_mead(&f, &[0.0, 0.0], 0.5, 2000, 1e-12);
        assert_eq!(why, "converged");
        assert!(
            (x[0] - 1.0).abs() < 1e-4 && (x[1] + 2.0).abs() < 1e-4,
            "{x:?}"
        );
    }

    #[test]
    fn a_latency_bandwidth_line_is_recovered() {
        let pts: Vec<(f64, f64)> = [1e3, 1e4, 1e5, 1e6]
            .iter()
            .map(|&b| (b, 2e-5 + b / 5e9))
            .collect();
        let (lat, bw) = line_fit(&pts).unwrap();
        assert!((lat - 2e-5).abs() < 1e-9 && (bw / 5e9 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_matmul_shape_model_is_recovered_from_its_own_times() {
        let (peak, h) = (3e9, 12.0);
        let g = |x: f64| x / (x + h);
        let mut p = Profile::default();
        for &(m, k, n) in &[
            (8.0, 8.0, 8.0),
            (64.0, 16.0, 32.0),
            (256.0, 64.0, 64.0),
            (512.0, 256.0, 256.0),
        ] {
            p.matmuls
                .push((m, k, n, 2.0 * m * k * n / (peak * g(m) * g(n) * g(k))));
        }
        let cal = from_profile(GpuModel::CpuThread, "cpu", &p);
        let got = cal.hardware.dense_flops.unwrap();
        assert!((got / peak - 1.0).abs() < 0.05, "{got}");
        assert!((cal.constants.matmul_half_dim / h - 1.0).abs() < 0.05);
    }
}
