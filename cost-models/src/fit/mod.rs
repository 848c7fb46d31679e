//! Calibration as code: fits the efficiency constants the published measurements identify
//! (`cost-models/data/*.json`) on the rows named for training, and reports the error on the
//! rows held out and the leave-one-out error over every row. `hetpar calibrate` runs it; the
//! constants in `constants.rs` are its output, and `tests/calibration.rs` checks that a refit
//! reproduces them.
//!
//! The fit minimizes the mean squared log error of the simulated iteration time over the
//! training rows, by Nelder-Mead in log space within the bounds [0.05, 1].

pub mod rows;

use serde::Serialize;

use crate::estimate::{estimate, Options};
use crate::Constants;
use rows::{Case, Measurements};

/// A constant the fit can set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    MatmulMaxEfficiency,
    AttentionEfficiency,
    NvlinkEfficiency,
    NetworkEfficiency,
    HbmEfficiency,
}

impl Param {
    pub const NAMES: [&'static str; 5] = [
        "matmul_max_efficiency",
        "attention_efficiency",
        "nvlink_efficiency",
        "network_efficiency",
        "hbm_efficiency",
    ];

    pub fn parse(s: &str) -> Option<Param> {
        Some(match s {
            "matmul_max_efficiency" => Param::MatmulMaxEfficiency,
            "attention_efficiency" => Param::AttentionEfficiency,
            "nvlink_efficiency" => Param::NvlinkEfficiency,
            "network_efficiency" => Param::NetworkEfficiency,
            "hbm_efficiency" => Param::HbmEfficiency,
            _ => return None,
        })
    }

    fn slot(self, c: &mut Constants) -> &mut f64 {
        match self {
            Param::MatmulMaxEfficiency => &mut c.matmul_max_efficiency,
            Param::AttentionEfficiency => &mut c.attention_efficiency,
            Param::NvlinkEfficiency => &mut c.nvlink_efficiency,
            Param::NetworkEfficiency => &mut c.network_efficiency,
            Param::HbmEfficiency => &mut c.hbm_efficiency,
        }
    }
}

/// One row's prediction.
#[derive(Clone, Debug, Serialize)]
pub struct RowError {
    pub name: String,
    pub measured_s: f64,
    pub predicted_s: f64,
    /// (predicted - measured) / measured.
    pub error: f64,
    /// Whether the row fitted the constants (else it was held out).
    pub trained: bool,
    /// The prediction of a fit on every other row (leave-one-out).
    pub left_out_predicted_s: f64,
    pub left_out_error: f64,
}

/// What a calibration run found.
#[derive(Clone, Debug, Serialize)]
pub struct FitReport {
    pub name: String,
    pub source: String,
    pub fitted: Vec<(String, f64)>,
    pub constants: Constants,
    pub rows: Vec<RowError>,
    /// Mean absolute relative error over the held-out rows, the training rows, and
    /// leave-one-out over every row.
    pub held_out_mae: f64,
    pub train_mae: f64,
    pub leave_one_out_mae: f64,
}

fn options(m: &Measurements, c: Constants) -> Options {
    Options {
        attention: m.software.attention,
        constants: Some(c),
    }
}

/// Predicted iteration time of a case under constants `c`, s.
pub fn predict(m: &Measurements, case: &Case, c: Constants) -> Result<f64, String> {
    estimate(&case.model, &case.cluster, &case.plan, &options(m, c))
        .map(|e| e.iteration_time_s)
        .map_err(|e| e.to_string())
}

fn loss(m: &Measurements, cases: &[&Case], c: Constants) -> Result<f64, String> {
    let mut sum = 0.0;
    for case in cases {
        let r = (predict(m, case, c)? / case.measured_s).ln();
        sum += r * r;
    }
    Ok(sum / cases.len().max(1) as f64)
}

const BOUNDS: (f64, f64) = (0.05, 1.0);

/// `base` with `params` set to `exp(x)`, each clamped to the bounds.
fn with(base: Constants, params: &[Param], x: &[f64]) -> Constants {
    let mut c = base;
    for (p, v) in params.iter().zip(x) {
        *p.slot(&mut c) = v.exp().clamp(BOUNDS.0, BOUNDS.1);
    }
    c
}

/// Fits `params` of `base` to `cases` by Nelder-Mead in log space (deterministic: the simplex
/// starts at `base` and one 20% step per constant); each fitted value is rounded to three
/// decimals, the precision `constants.rs` keeps.
pub fn fit(
    m: &Measurements,
    cases: &[&Case],
    base: Constants,
    params: &[Param],
) -> Result<Constants, String> {
    let n = params.len();
    let f = |x: &[f64]| loss(m, cases, with(base, params, x));
    let x0: Vec<f64> = params
        .iter()
        .map(|&p| {
            let mut c = base;
            p.slot(&mut c).clamp(BOUNDS.0, BOUNDS.1).ln()
        })
        .collect();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.clone(), f(&x0)?));
    for i in 0..n {
        let mut x = x0.clone();
        x[i] += if x[i] > (BOUNDS.1 / 1.2).ln() {
            -0.2
        } else {
            0.2
        };
        let v = f(&x)?;
        simplex.push((x, v));
    }
    for _ in 0..400 {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let size = simplex[1..]
            .iter()
            .map(|(x, _)| {
                x.iter()
                    .zip(&simplex[0].0)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max)
            })
            .fold(0.0, f64::max);
        if size < 1e-4 {
            break;
        }
        let centroid: Vec<f64> = (0..n)
            .map(|i| simplex[..n].iter().map(|(x, _)| x[i]).sum::<f64>() / n as f64)
            .collect();
        let worst = simplex[n].clone();
        let along = |t: f64| -> Vec<f64> {
            centroid
                .iter()
                .zip(&worst.0)
                .map(|(c, w)| c + t * (c - w))
                .collect()
        };
        let r = along(1.0);
        let fr = f(&r)?;
        if fr < simplex[0].1 {
            let e = along(2.0);
            let fe = f(&e)?;
            simplex[n] = if fe < fr { (e, fe) } else { (r, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (r, fr);
        } else {
            let k = along(-0.5);
            let fk = f(&k)?;
            if fk < worst.1 {
                simplex[n] = (k, fk);
            } else {
                let best = simplex[0].0.clone();
                for (x, v) in simplex.iter_mut().skip(1) {
                    *x = x
                        .iter()
                        .zip(&best)
                        .map(|(a, b)| b + 0.5 * (a - b))
                        .collect();
                    *v = f(x)?;
                }
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut c = with(base, params, &simplex[0].0);
    for &p in params {
        let s = p.slot(&mut c);
        *s = (*s * 1000.0).round() / 1000.0;
    }
    Ok(c)
}

/// Fits the file's constants on its training rows and reports every row's error, held out
/// and leave-one-out. The fits (training rows, then each row left out) run on up to `threads`
/// threads; `progress(done, total, what)` hears of each as it ends.
pub fn calibrate(
    m: &Measurements,
    base: Constants,
    threads: usize,
    progress: &(dyn Fn(usize, usize, &str) + Sync),
) -> Result<FitReport, String> {
    let params: Vec<Param> = m
        .fit
        .constants
        .iter()
        .filter_map(|s| Param::parse(s))
        .collect();
    let cases: Vec<Case> = m.rows.iter().map(|r| m.case(r)).collect::<Result<_, _>>()?;
    let trained: Vec<bool> = m
        .rows
        .iter()
        .map(|r| m.fit.train.contains(&r.name))
        .collect();
    // Job 0 fits on the training rows, job i + 1 on every row but row i.
    let jobs: Vec<Vec<&Case>> = std::iter::once(
        cases
            .iter()
            .zip(&trained)
            .filter(|(_, &t)| t)
            .map(|(c, _)| c)
            .collect(),
    )
    .chain((0..cases.len()).map(|i| {
        cases
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, c)| c)
            .collect()
    }))
    .collect();
    let names: Vec<String> = std::iter::once("the training rows".to_string())
        .chain(m.rows.iter().map(|r| format!("every row but {}", r.name)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Option<Result<Constants, String>>>> =
        jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let r = fit(m, job, base, &params);
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                let d = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                progress(d, jobs.len(), &format!("fitted on {}", names[i]));
            });
        }
    });
    let fits: Vec<Constants> = results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| Err("a fit did not run".into()))
        })
        .collect::<Result<_, _>>()?;
    let fitted = fits[0];
    let mut rows = Vec::new();
    for (i, (r, case)) in m.rows.iter().zip(&cases).enumerate() {
        let predicted_s = predict(m, case, fitted)?;
        let left_out_predicted_s = predict(m, case, fits[i + 1])?;
        rows.push(RowError {
            name: r.name.clone(),
            measured_s: case.measured_s,
            predicted_s,
            error: predicted_s / case.measured_s - 1.0,
            trained: trained[i],
            left_out_predicted_s,
            left_out_error: left_out_predicted_s / case.measured_s - 1.0,
        });
    }
    let mae = |f: &dyn Fn(&RowError) -> Option<f64>| {
        let v: Vec<f64> = rows.iter().filter_map(f).collect();
        v.iter().map(|e| e.abs()).sum::<f64>() / v.len().max(1) as f64
    };
    let fitted_values = params
        .iter()
        .map(|&p| {
            let mut c = fitted;
            (Param::NAMES[p as usize].to_string(), *p.slot(&mut c))
        })
        .collect();
    Ok(FitReport {
        name: m.name.clone(),
        source: m.source.clone(),
        fitted: fitted_values,
        constants: fitted,
        held_out_mae: mae(&|r| (!r.trained).then_some(r.error)),
        train_mae: mae(&|r| r.trained.then_some(r.error)),
        leave_one_out_mae: mae(&|r| Some(r.left_out_error)),
        rows,
    })
}
