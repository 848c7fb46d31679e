//! The autotune report: as text (`render`) and as one JSON document (`json_report`,
//! `hetpar autotune --format json`).

use serde::Serialize;

use hetpar_cost::Constants;
use hetpar_ir::plan::PlanFile;

use super::{Report, Role};

/// The report as text: a row per plan (predicted before and after calibration, measured,
/// and the errors), the fit, and the choices.
pub fn render(r: &Report) -> String {
    use crate::report::{bytes, Table};
    let pct = |p: f64, m: f64| format!("{:+.0}%", (p / m - 1.0) * 100.0);
    let mut t = Table::new(&[
        "#",
        "role",
        "predicted (ms)",
        "calibrated (ms)",
        "measured (ms)",
        "error before",
        "error after",
        "peak memory",
        "plan",
    ]);
    for (i, row) in r.rows.iter().enumerate() {
        let m = row.measured.step_s;
        let mut mark = String::new();
        if i == r.uncalibrated_choice {
            mark += "u";
        }
        if i == r.final_choice {
            mark += "c";
        }
        t.row(vec![
            format!("{}{mark}", i + 1),
            match row.role {
                Role::Fitted => "fitted",
                Role::HeldOut => "held out",
                Role::Final => "final",
            }
            .to_string(),
            format!("{:.2}", row.predicted_before_s * 1e3),
            format!("{:.2}", row.predicted_after_s * 1e3),
            format!("{:.2}", m * 1e3),
            pct(row.predicted_before_s, m),
            pct(row.predicted_after_s, m),
            bytes(row.measured.peak_bytes as f64),
            row.label.clone(),
        ]);
    }
    let f = &r.fit;
    let c = &f.constants;
    format!(
        "{}\nu: the choice before calibration, c: after.\n\
         fit: rms log error {:.3} -> {:.3} over the fitted plans ({} of {} evaluations, {})\n\
         constants: matmul {:.3}, attention {:.3}, memory {:.3}, link {:.3}, per kernel {:.2e} s\n\
         choice: {} ({:.2} ms measured)\n",
        t.render(),
        f.rms_log_error_before,
        f.rms_log_error_after,
        f.evaluations,
        f.max_evaluations,
        f.stop_reason,
        c.matmul_max_efficiency,
        c.attention_efficiency,
        c.hbm_efficiency,
        c.nvlink_efficiency,
        c.kernel_launch_s,
        r.rows[r.final_choice].label,
        r.rows[r.final_choice].measured.step_s * 1e3,
    )
}

/// `hetpar autotune --format json`: every measured plan with its predictions and errors, the
/// fitted constants and why the fit stopped.
#[derive(Clone, Debug, Serialize)]
pub struct JsonReport {
    /// `"autotune_report"`.
    pub kind: &'static str,
    pub plans: Vec<JsonPlan>,
    pub fit: JsonFit,
    /// Indices into `plans` of the choice before calibration (the search's winner) and after.
    pub uncalibrated_choice: usize,
    pub calibrated_choice: usize,
}

/// One measured plan. Errors are relative and signed: predicted / measured - 1. A prediction
/// the cost model could not make is `null`, and so is its error.
#[derive(Clone, Debug, Serialize)]
pub struct JsonPlan {
    pub label: String,
    pub role: Role,
    pub plan: PlanFile,
    pub predicted_before_s: Option<f64>,
    pub predicted_after_s: Option<f64>,
    pub measured_s: f64,
    pub relative_error_before: Option<f64>,
    pub relative_error_after: Option<f64>,
    /// Slowest measured round over the fastest, after scaling by each round's speed.
    pub spread: f64,
    pub peak_bytes: u64,
    pub predicted_peak_bytes: Option<f64>,
}

/// The fit: the constants it chose, its error before and after over the fitted plans, and
/// why it stopped.
#[derive(Clone, Debug, Serialize)]
pub struct JsonFit {
    pub constants: Constants,
    pub rms_log_error_before: f64,
    pub rms_log_error_after: f64,
    pub evaluations: usize,
    pub max_evaluations: usize,
    pub stop_reason: String,
}

/// The report as one JSON document.
pub fn json_report(r: &Report) -> JsonReport {
    let finite = |x: f64| x.is_finite().then_some(x);
    let plans = r
        .rows
        .iter()
        .map(|row| {
            let m = row.measured.step_s;
            let before = finite(row.predicted_before_s);
            let after = finite(row.predicted_after_s);
            JsonPlan {
                label: row.label.clone(),
                role: row.role,
                plan: row.measured.plan.clone(),
                predicted_before_s: before,
                predicted_after_s: after,
                measured_s: m,
                relative_error_before: before.map(|p| p / m - 1.0),
                relative_error_after: after.map(|p| p / m - 1.0),
                spread: row.measured.spread,
                peak_bytes: row.measured.peak_bytes,
                predicted_peak_bytes: finite(row.predicted_peak_bytes),
            }
        })
        .collect();
    let f = &r.fit;
    JsonReport {
        kind: "autotune_report",
        plans,
        fit: JsonFit {
            constants: f.constants,
            rms_log_error_before: f.rms_log_error_before,
            rms_log_error_after: f.rms_log_error_after,
            evaluations: f.evaluations,
            max_evaluations: f.max_evaluations,
            stop_reason: f.stop_reason.clone(),
        },
        uncalibrated_choice: r.uncalibrated_choice,
        calibrated_choice: r.final_choice,
    }
}
