//! The text form: a header, a legend, then one line per lane with a fixed-width character
//! timeline (each column is one slice of the iteration and shows what the lane spends most of
//! that slice on), the lane's busy share, peak memory per rank, peak activations and when they
//! peak, and what the lane runs.

use std::fmt::Write as _;

use hetpar_cost::tasks::{Task, TaskKind};

use super::{secs, Schedule};
use crate::report::{bytes, display_width, pad};

/// Idle columns.
pub const IDLE: char = '.';
/// Gradient synchronization columns.
pub const GRAD_SYNC: char = 'g';
/// Optimizer step columns.
pub const OPTIMIZER: char = 'o';

/// Renders the text form with `width` timeline columns and at most `max_lanes` lanes.
pub fn render(s: &Schedule<'_>, width: usize, max_lanes: usize) -> String {
    let width = width.max(1);
    let e = s.estimate;
    let t = s.iteration_time();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} on {} GPUs, {}: iteration {}, bubble {:.1}%, peak memory {} of {} (rank {}){}",
        s.model,
        e.gpus,
        s.schedule_kind,
        secs(t),
        100.0 * e.bubble_fraction,
        bytes(e.peak_memory_bytes),
        bytes(e.memory_capacity_bytes),
        e.peak_memory_rank,
        if e.feasible { "" } else { ", INFEASIBLE" }
    );
    let _ = writeln!(
        out,
        "{} lanes (sets of ranks doing identical work); {width} columns of {} each, shared between activities by their time",
        s.lanes.len(),
        secs(t / width as f64)
    );
    let letters: Vec<String> = s
        .module_order
        .iter()
        .filter_map(|&m| s.modules.get(m))
        .map(|m| format!("{} {}", m.letter, m.name))
        .collect();
    let _ = writeln!(
        out,
        "key: {} (upper case forward, lower case backward); {GRAD_SYNC} grad sync, {OPTIMIZER} optimizer, {IDLE} idle",
        letters.join(", ")
    );
    let _ = writeln!(out);

    let shown = s.select_lanes(max_lanes);
    let head = ["ranks", "busy", "memory", "activations", "peak at", "runs"];
    let rows: Vec<[String; 6]> = shown
        .iter()
        .map(|&l| {
            let lane = &s.lanes[l];
            let busy = if t > 0.0 { lane.busy / t } else { 0.0 };
            [
                lane.label.clone(),
                format!("{:.1}%", 100.0 * busy),
                bytes(lane.peak_memory),
                bytes(lane.peak_activations),
                secs(lane.peak_at),
                lane.role.clone(),
            ]
        })
        .collect();
    let mut w = head.map(display_width);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(display_width(c));
        }
    }
    let cells = |r: &[String; 6], line: &str| {
        format!(
            "{} |{line}| {:>w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
            pad(&r[0], w[0]),
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4],
        )
        .trim_end()
        .to_string()
    };
    let _ = writeln!(
        out,
        "{}",
        cells(
            &head.map(str::to_string),
            &format!("{:<width$}", "timeline")
        )
    );
    for (r, &l) in rows.iter().zip(&shown) {
        let _ = writeln!(out, "{}", cells(r, &timeline_chars(s, l, width)));
    }
    if shown.len() < s.lanes.len() {
        let _ = writeln!(
            out,
            "... {} more lanes not shown (--lanes N shows more; one lane of every module stage comes first)",
            s.lanes.len() - shown.len()
        );
    }
    out
}

/// The character of one task.
pub fn task_char(s: &Schedule<'_>, task: &Task) -> char {
    let letter = task
        .module
        .and_then(|m| s.modules.get(m.index()))
        .map_or('?', |m| m.letter);
    match task.kind {
        TaskKind::Forward => letter,
        TaskKind::Backward => letter.to_ascii_lowercase(),
        TaskKind::GradSync => GRAD_SYNC,
        TaskKind::Optimizer => OPTIMIZER,
    }
}

/// Lane `l`'s timeline: column c covers `[c, c + 1) x T / width` and shows one activity that
/// happens in it (idle included). Columns are apportioned by error diffusion: every activity
/// accrues its share of each column it appears in, and a column shows the activity present in
/// it with the largest accrued share (ties: first seen), which then pays one column. Each
/// activity gets about as many columns as its time fills. A slice mixing forwards and backwards in a 1:2 ratio reads `Lll`, and a bubble spread
/// thinly over many slices still shows as dots, in proportion.
pub fn timeline_chars(s: &Schedule<'_>, l: usize, width: usize) -> String {
    let t = s.iteration_time();
    if t <= 0.0 {
        return IDLE.to_string().repeat(width);
    }
    let dt = t / width as f64;
    // Per column: (char, seconds) in first-seen order.
    let mut cover: Vec<Vec<(char, f64)>> = vec![Vec::new(); width];
    for &id in &s.graph.orders[l] {
        let (a, b) = (s.timeline.start[id as usize], s.timeline.end[id as usize]);
        if a.is_nan() || b.is_nan() || b <= a {
            continue;
        }
        let ch = task_char(s, &s.graph.tasks[id as usize]);
        let c0 = ((a / dt).floor().max(0.0) as usize).min(width - 1);
        let c1 = ((b / dt).ceil().max(0.0) as usize).min(width);
        for (c, col) in cover.iter_mut().enumerate().take(c1).skip(c0) {
            let lo = c as f64 * dt;
            let overlap = b.min(lo + dt) - a.max(lo);
            if overlap <= 0.0 {
                continue;
            }
            match col.iter_mut().find(|x| x.0 == ch) {
                Some(x) => x.1 += overlap,
                None => col.push((ch, overlap)),
            }
        }
    }
    // Accrued shares (seen minus shown, in columns) of every activity so far.
    let mut debt: Vec<(char, f64)> = Vec::new();
    let mut out = String::with_capacity(width);
    for mut col in cover {
        let busy: f64 = col.iter().map(|x| x.1).sum();
        let idle = dt - busy;
        if idle > 1e-9 * dt {
            col.push((IDLE, idle));
        }
        let mut best: Option<(usize, f64)> = None;
        for &(ch, secs) in &col {
            let i = match debt.iter().position(|d| d.0 == ch) {
                Some(i) => i,
                None => {
                    debt.push((ch, 0.0));
                    debt.len() - 1
                }
            };
            debt[i].1 += secs / dt;
            if best.is_none_or(|(_, d)| debt[i].1 > d + 1e-12) {
                best = Some((i, debt[i].1));
            }
        }
        match best {
            Some((i, _)) => {
                out.push(debt[i].0);
                debt[i].1 -= 1.0;
            }
            None => out.push(IDLE),
        }
    }
    out
}
