//! Calibration as code: fits the efficiency constants the published measurements identify
//! (`cost-models/data/*.json`) on the rows named for training, and reports the error on the
//! rows held out and the leave-one-out error over every row. `hetpar calibrate` runs it; the
//! constants in `constants.rs` are its output, and `tests/calibration.rs` checks that a refit
//! reproduces them.
//!
//! The fit minimizes the mean squared log error of the simulated iteration time over the
//! training rows by coordinate descent: a golden-section search over each constant in turn,
//! in log space within its bounds, until no constant moves by more than 0.1%.

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

/// Golden-section search of `p` in log space within the bounds.
fn line_search(m: &Measurements, cases: &[&Case], c: Constants, p: Param) -> Result<f64, String> {
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (BOUNDS.0.ln(), BOUNDS.1.ln());
    let at = |x: f64| -> Result<f64, String> {
        let mut t = c;
        *p.slot(&mut t) = x.exp();
        loss(m, cases, t)
    };
    let (mut x1, mut x2) = (b - phi * (b - a), a + phi * (b - a));
    let (mut f1, mut f2) = (at(x1)?, at(x2)?);
    while b - a > 1e-4 {
        if f1 <= f2 {
            b = x2;
            (x2, f2) = (x1, f1);
            x1 = b - phi * (b - a);
            f1 = at(x1)?;
        } else {
            a = x1;
            (x1, f1) = (x2, f2);
            x2 = a + phi * (b - a);
            f2 = at(x2)?;
        }
    }
    Ok(((a + b) / 2.0).exp())
}

/// Fits `params` of `base` to `cases`; each fitted value is rounded to three decimals, the
/// precision `constants.rs` keeps.
pub fn fit(
    m: &Measurements,
    cases: &[&Case],
    base: Constants,
    params: &[Param],
) -> Result<Constants, String> {
    let mut c = base;
    for _round in 0..20 {
        let mut moved = false;
        for &p in params {
            let v = line_search(m, cases, c, p)?;
            let old = *p.slot(&mut c);
            moved |= (v / old - 1.0).abs() > 1e-3;
            *p.slot(&mut c) = v;
        }
        if !moved {
            break;
        }
    }
    for &p in params {
        let s = p.slot(&mut c);
        *s = (*s * 1000.0).round() / 1000.0;
    }
    Ok(c)
}

/// Fits the file's constants on its training rows and reports every row's error, held out
/// and leave-one-out. `progress` hears of each fit as it starts.
pub fn calibrate(
    m: &Measurements,
    base: Constants,
    progress: &mut dyn FnMut(&str),
) -> Result<FitReport, String> {
    let params: Vec<Param> = m.fit.constants.iter().filter_map(|s| Param::parse(s)).collect();
    let cases: Vec<Case> = m.rows.iter().map(|r| m.case(r)).collect::<Result<_, _>>()?;
    let trained: Vec<bool> = m.rows.iter().map(|r| m.fit.train.contains(&r.name)).collect();
    progress("fit on the training rows");
    let train: Vec<&Case> = cases.iter().zip(&trained).filter(|(_, &t)| t).map(|(c, _)| c).collect();
    let fitted = fit(m, &train, base, &params)?;
    let mut rows = Vec::new();
    for (i, (r, case)) in m.rows.iter().zip(&cases).enumerate() {
        progress(&format!("leave-one-out fit without {}", r.name));
        let others: Vec<&Case> = cases.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c).collect();
        let loo = fit(m, &others, base, &params)?;
        let predicted_s = predict(m, case, fitted)?;
        let left_out_predicted_s = predict(m, case, loo)?;
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
    let mut fitted_values = Vec::new();
    for &p in &params {
        let mut c = fitted;
        fitted_values.push((Param::NAMES[p as usize].to_string(), *p.slot(&mut c)));
    }
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
