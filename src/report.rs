//! Reports the commands print, as serializable structs with a human rendering.

use std::fmt::Write as _;

use serde::Serialize;

use hetpar_ir::model::{module_flops, module_params, ModelGraph};

#[derive(Debug, Serialize)]
pub struct ModuleRow {
    pub name: String,
    pub kind: &'static str,
    pub parameters: u64,
    pub active_parameters: u64,
    pub layers: u32,
    /// Mean rows (tokens) the module processes per sample.
    pub rows_per_sample: f64,
    pub forward_flops_per_sample: f64,
    /// Forward + backward, no recompute.
    pub training_flops_per_sample: f64,
}

#[derive(Debug, Serialize)]
pub struct BoundaryRow {
    pub name: String,
    pub from: String,
    pub to: String,
    pub landing: hetpar_ir::model::Landing,
    pub width: u32,
    pub rows_per_sample: f64,
    pub bytes_per_sample: f64,
    pub bytes_per_batch: u64,
}

#[derive(Debug, Serialize)]
pub struct Describe {
    pub model: String,
    pub global_batch: u32,
    pub sequence_length: u32,
    pub precision: hetpar_ir::model::Precision,
    pub total_parameters: u64,
    pub training_flops_per_sample: f64,
    pub modules: Vec<ModuleRow>,
    pub boundaries: Vec<BoundaryRow>,
}

impl Describe {
    pub fn new(g: &ModelGraph) -> Self {
        let batch = f64::from(g.data().global_batch.max(1));
        let modules: Vec<ModuleRow> = g
            .topological_order()
            .iter()
            .map(|&id| {
                let m = g.module(id);
                let p = module_params(m);
                let f = module_flops(g, id);
                let rows: u64 = (0..g.data().global_batch as usize)
                    .map(|s| g.rows_of_sample(id, s))
                    .sum();
                ModuleRow {
                    name: m.name.clone(),
                    kind: m.kind.as_str(),
                    parameters: p.total,
                    active_parameters: p.active,
                    layers: m.layer_count(),
                    rows_per_sample: rows as f64 / batch,
                    forward_flops_per_sample: f.forward / batch,
                    training_flops_per_sample: f.training() / batch,
                }
            })
            .collect();
        let boundaries = g
            .boundaries()
            .iter()
            .map(|b| {
                let bytes = g.boundary_bytes_per_batch(b.id);
                BoundaryRow {
                    name: b.name.clone(),
                    from: g.module(b.from).name.clone(),
                    to: g.module(b.to).name.clone(),
                    landing: b.landing,
                    width: b.width,
                    rows_per_sample: g.boundary_rows_per_batch(b.id) as f64 / batch,
                    bytes_per_sample: bytes as f64 / batch,
                    bytes_per_batch: bytes,
                }
            })
            .collect();
        Describe {
            model: g.name().to_string(),
            global_batch: g.data().global_batch,
            sequence_length: g.data().sequence_length,
            precision: g.data().precision,
            total_parameters: modules.iter().map(|m| m.parameters).sum(),
            training_flops_per_sample: modules.iter().map(|m| m.training_flops_per_sample).sum(),
            modules,
            boundaries,
        }
    }

    pub fn to_human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "model {}: {} parameters, {} training FLOPs per sample (global batch {}, sequence {}, {})",
            self.model,
            si(self.total_parameters as f64),
            si(self.training_flops_per_sample),
            self.global_batch,
            self.sequence_length,
            serde_json::to_value(self.precision).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
        );
        let _ = writeln!(s);
        let mut t = Table::new(&[
            "module",
            "kind",
            "params",
            "active",
            "layers",
            "rows/sample",
            "train FLOPs/sample",
        ]);
        for m in &self.modules {
            t.row(vec![
                m.name.clone(),
                m.kind.to_string(),
                si(m.parameters as f64),
                si(m.active_parameters as f64),
                m.layers.to_string(),
                format!("{:.1}", m.rows_per_sample),
                si(m.training_flops_per_sample),
            ]);
        }
        s.push_str(&t.render());
        if !self.boundaries.is_empty() {
            let _ = writeln!(s);
            let mut t = Table::new(&[
                "boundary",
                "from",
                "to",
                "landing",
                "width",
                "rows/sample",
                "bytes/sample",
                "bytes/batch",
            ]);
            for b in &self.boundaries {
                t.row(vec![
                    b.name.clone(),
                    b.from.clone(),
                    b.to.clone(),
                    format!("{:?}", b.landing).to_lowercase(),
                    b.width.to_string(),
                    format!("{:.1}", b.rows_per_sample),
                    bytes(b.bytes_per_sample),
                    bytes(b.bytes_per_batch as f64),
                ]);
            }
            s.push_str(&t.render());
        }
        s
    }
}

/// A number with an SI suffix and three significant digits: 7.06 G.
pub fn si(x: f64) -> String {
    const UNITS: [(f64, &str); 6] = [
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
    ];
    for (scale, unit) in UNITS {
        if x.abs() >= scale {
            return format!("{:.3} {unit}", x / scale);
        }
    }
    format!("{x:.0}")
}

/// `x` to `digits` significant digits, without an exponent: 12.2, 463, 0.0345.
pub fn significant(x: f64, digits: u32) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let digits = digits.max(1) as i32;
    let decimals = |v: f64| (digits - 1 - v.abs().log10().floor() as i32).max(0);
    // Rounding may carry into another digit (9.996 -> 10.0): count the digits after it.
    let d = decimals(x);
    let rounded: f64 = format!("{x:.0$}", d as usize).parse().unwrap_or(x);
    let d = if rounded == 0.0 { d } else { decimals(rounded) };
    format!("{rounded:.0$}", d as usize)
}

/// A figure with its stated error: `12.2 s ± 10%` (3 significant digits; `unit` may be empty).
pub fn with_band(x: f64, unit: &str, error: f64) -> String {
    let value = significant(x, 3);
    let sep = if unit.is_empty() { "" } else { " " };
    format!("{value}{sep}{unit} ± {}", percent(error))
}

/// A stated error as a percentage to two significant digits: `8.6%`, `10%`.
pub fn percent(error: f64) -> String {
    format!("{}%", significant(100.0 * error, 2))
}

/// Bytes with a binary suffix and 3 significant digits, for a figure shown with its error.
pub fn bytes3(x: f64) -> String {
    let (v, unit) = scaled_bytes(x);
    format!("{} {unit}", significant(v, 3))
}

fn scaled_bytes(x: f64) -> (f64, &'static str) {
    const UNITS: [(f64, &str); 4] = [
        (1024.0 * 1024.0 * 1024.0 * 1024.0, "TiB"),
        (1024.0 * 1024.0 * 1024.0, "GiB"),
        (1024.0 * 1024.0, "MiB"),
        (1024.0, "KiB"),
    ];
    UNITS
        .iter()
        .find(|(scale, _)| x.abs() >= *scale)
        .map_or((x, "B"), |&(scale, unit)| (x / scale, unit))
}

/// Bytes with a binary suffix: 4.50 MiB.
pub fn bytes(x: f64) -> String {
    match scaled_bytes(x) {
        (_, "B") => format!("{x:.0} B"),
        (v, unit) => format!("{v:.2} {unit}"),
    }
}

/// The columns `s` takes in a terminal: a CJK character two, a combining mark none. `format!`'s
/// padding counts characters, which misaligns tables of wide names.
pub fn display_width(s: &str) -> usize {
    unicode_width::UnicodeWidthStr::width(s)
}

/// `s` padded with spaces to `width` terminal columns (left-aligned).
pub fn pad(s: &str, width: usize) -> String {
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(
        ' ',
        width.saturating_sub(display_width(s)),
    ));
    out
}

/// A plain text table with left-aligned columns, measured in terminal columns.
pub struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: &[&str]) -> Self {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, r: Vec<String>) {
        self.rows.push(r);
    }

    pub fn render(&self) -> String {
        let n = self.head.len();
        let mut w = vec![0usize; n];
        for r in std::iter::once(&self.head).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(display_width(c));
            }
        }
        let line = |r: &Vec<String>| {
            let cells: Vec<String> = r.iter().enumerate().map(|(i, c)| pad(c, w[i])).collect();
            cells.join("  ").trim_end().to_string() + "\n"
        };
        let mut s = line(&self.head);
        s.push_str(&line(&w.iter().map(|&k| "-".repeat(k)).collect()));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// The human form of an estimate.
pub struct EstimateReport<'a> {
    model: &'a ModelGraph,
    est: &'a hetpar_cost::Estimate,
}

impl<'a> EstimateReport<'a> {
    pub fn new(model: &'a ModelGraph, est: &'a hetpar_cost::Estimate) -> Self {
        EstimateReport { model, est }
    }

    pub fn to_human(&self) -> String {
        let e = self.est;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} on {} GPUs: {}",
            self.model.name(),
            e.gpus,
            if e.feasible {
                "feasible".to_string()
            } else {
                format!(
                    "INFEASIBLE: {}",
                    e.infeasible_reason.clone().unwrap_or_default()
                )
            }
        );
        // Figures with an error band to 3 significant digits (`with_band`).
        let (et, em) = (e.stated_error.time, e.stated_error.memory);
        let _ = writeln!(
            s,
            "iteration time   {}",
            with_band(e.iteration_time_s, "s", et)
        );
        let _ = writeln!(s, "tokens/s         {}", si_band(e.tokens_per_s, et));
        let _ = writeln!(s, "samples/s        {}", with_band(e.samples_per_s, "", et));
        let _ = writeln!(
            s,
            "TFLOP/s per GPU  {}",
            with_band(e.tflops_per_gpu, "", et)
        );
        let _ = writeln!(s, "MFU              {}", mfu_band(e.mfu, et));
        let _ = writeln!(s, "bubble           {:.1}%", 100.0 * e.bubble_fraction);
        let _ = writeln!(
            s,
            "peak memory      {} ± {} of {} (rank {})",
            bytes3(e.peak_memory_bytes),
            percent(em),
            bytes(e.memory_capacity_bytes),
            e.peak_memory_rank
        );
        let _ = writeln!(s, "stated error     {}", stated_error_line(&e.stated_error));
        let b = &e.time_breakdown;
        let _ = writeln!(
            s,
            "last rank's time compute {:.3} s, recompute {:.3}, tp {:.3}, cp {:.3}, ep {:.3}, grad sync {:.3}, optimizer {:.3}, idle {:.3}",
            b.compute, b.recompute, b.tp_comm, b.cp_comm, b.ep_comm, b.grad_sync, b.optimizer, b.idle
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "memory per rank, GiB (the terms add up to the total):");
        let mut t = Table::new(&MEMORY_COLUMNS);
        for r in e.per_rank.iter().take(16) {
            let busy = 1.0 - r.time.idle / e.iteration_time_s.max(f64::MIN_POSITIVE);
            let mut row = vec![rank_list(&r.ranks)];
            row.extend(
                memory_terms(&r.memory)
                    .iter()
                    .map(|x| format!("{:.2}", gib(*x))),
            );
            row.push(moment(r.memory.peak_moment).to_string());
            row.push(format!("{:.1}", 100.0 * busy));
            t.row(row);
        }
        s.push_str(&t.render());
        if e.per_rank.len() > 16 {
            let _ = writeln!(
                s,
                "... {} more rank groups (--format json lists all)",
                e.per_rank.len() - 16
            );
        }
        s.push_str(MEMORY_LEGEND);
        s
    }
}

/// The stated error in words: `time ± 10%, memory ± 5% (basis)`.
pub fn stated_error_line(e: &hetpar_cost::StatedError) -> String {
    format!(
        "time ± {}, memory ± {} ({})",
        percent(e.time),
        percent(e.memory),
        e.basis
    )
}

/// An MFU with its band in percentage points: `46.8% ± 4.7 points`.
pub fn mfu_band(mfu: f64, error: f64) -> String {
    format!(
        "{}% ± {} points",
        significant(100.0 * mfu, 3),
        significant(100.0 * mfu * error, 2)
    )
}

/// A number with an SI suffix, 3 significant digits and its band: `85.8 k ± 10%`.
fn si_band(x: f64, error: f64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    let (v, unit) = UNITS
        .iter()
        .find(|(scale, _)| x.abs() >= *scale)
        .map_or((x, ""), |&(scale, unit)| (x / scale, unit));
    with_band(v, unit, error)
}

/// The memory table's columns: the ranks, every term of `memory_terms` in order, the total,
/// the moment of the transient terms, the busy share.
const MEMORY_COLUMNS: [&str; 15] = [
    "ranks", "weights", "grads", "optim", "activ", "recomp", "gather", "logits", "bound", "nccl",
    "margin", "context", "total", "peak at", "busy %",
];

const MEMORY_LEGEND: &str = "\
optim: optimizer state; activ: activations kept for backward. Transient terms, at the rank's
largest moment (peak at): recomp, the layer a backward rebuilds by recompute; gather, the
sequence-parallel gathered input; logits, fp32 logits and their gradient; bound, a boundary's
buffers. nccl: NCCL buffers; margin: caching-allocator fragmentation; context: CUDA context.
";

/// Every term of a rank's memory in the table's order, then the total: the first eleven add
/// up to the last.
fn memory_terms(m: &hetpar_cost::estimate::MemoryBreakdown) -> [f64; 12] {
    [
        m.weights,
        m.gradients,
        m.optimizer,
        m.activations,
        m.recompute,
        m.sp_gather,
        m.logits,
        m.boundary,
        m.nccl,
        m.allocator_margin,
        m.cuda_context,
        m.total,
    ]
}

fn moment(m: hetpar_cost::memory::Moment) -> &'static str {
    use hetpar_cost::memory::Moment;
    match m {
        Moment::None => "-",
        Moment::Backward => "backward",
        Moment::Loss => "loss",
        Moment::Boundary => "boundary",
    }
}

fn gib(x: f64) -> f64 {
    x / (1u64 << 30) as f64
}

/// Ranks as compact ranges: 0-3,8-11.
pub fn rank_list(ranks: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ranks[i].to_string()
        } else {
            format!("{}-{}", ranks[i], ranks[j])
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_with_a_band_keep_three_significant_digits() {
        assert_eq!(significant(12.2228, 3), "12.2");
        assert_eq!(significant(462.9, 3), "463");
        assert_eq!(significant(85_788.0, 3), "85788");
        assert_eq!(significant(0.034_56, 3), "0.0346");
        // Rounding that carries into another digit keeps three, not four.
        assert_eq!(significant(9.996, 3), "10.0");
        assert_eq!(with_band(12.2228, "s", 0.1), "12.2 s ± 10%");
        assert_eq!(si_band(85_788.0, 0.1), "85.8 k ± 10%");
        assert_eq!(mfu_band(0.4684, 0.1), "46.8% ± 4.7 points");
        assert_eq!(bytes3(45.28 * 1024.0 * 1024.0 * 1024.0), "45.3 GiB");
    }
}
