//! The real-valued fields of an architecture that only execution reads: the norms' epsilon and
//! the rotary rescaling. Each is finite and positive; Llama 3's bands are ordered.

use super::arch::{PositionsSpec, TransformerSpec};
use crate::diag::{join, Diagnostics};
use crate::rule::Rule;

fn positive(ds: &mut Diagnostics, path: String, v: f64) {
    if !(v.is_finite() && v > 0.0) {
        ds.error(
            path,
            Rule::ArchReal,
            format!("{v} is not a finite positive number"),
        );
    }
}

/// `t.norm_eps`.
pub(super) fn check_transformer(path: &str, t: &TransformerSpec, ds: &mut Diagnostics) {
    if let Some(e) = t.norm_eps {
        positive(ds, join(path, "norm_eps"), e.0);
    }
}

/// `p.rope_scaling`.
pub(super) fn check_positions(path: &str, p: &PositionsSpec, ds: &mut Diagnostics) {
    let Some(s) = &p.rope_scaling else { return };
    let at = join(path, "rope_scaling");
    for (field, v) in [
        ("factor", s.factor.0),
        ("low_freq_factor", s.low_freq_factor.0),
        ("high_freq_factor", s.high_freq_factor.0),
    ] {
        positive(ds, join(&at, field), v);
    }
    if s.high_freq_factor.0 <= s.low_freq_factor.0 {
        ds.error(
            join(&at, "high_freq_factor"),
            Rule::ArchReal,
            "must exceed low_freq_factor",
        );
    }
    if s.original_max_positions == 0 {
        ds.error(
            join(&at, "original_max_positions"),
            Rule::ArchPositive,
            "must be at least 1",
        );
    }
    if p.kind != super::arch::PositionKind::Rope {
        ds.error(at, Rule::ModulePart, "only rotary positions rescale");
    }
}
