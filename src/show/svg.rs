//! The SVG timeline: one row per lane (labelled by its ranks and what it runs), boxes for every
//! task (a color per module; backward darker and hatched; gradient sync and optimizer gray),
//! idle as gaps on a light background, pipeline and boundary transfers as thin arrows from the
//! end of the producing task to the start of the consuming one, each lane's live activations
//! as a step line, a time axis in seconds above and below, and a legend.
//!
//! Bounded for big plans: at most `max_lanes` rows (every module stage first), at most
//! `MAX_BOXES` boxes (narrow neighbours of one kind are merged first) and `MAX_LINES` arrows;
//! a note says what was left out. Coordinates have two decimals.

use std::fmt::Write as _;

use hetpar_cost::tasks::{DepKind, LaneId, TaskKind};

use super::{kind_name, secs, xml_escape, Schedule};
use crate::report::bytes;

/// Most task boxes drawn.
pub const MAX_BOXES: usize = 60_000;
/// Most transfer arrows drawn.
pub const MAX_LINES: usize = 1_500;

const MARGIN: f64 = 12.0;
const PLOT_W: f64 = 1000.0;
const STATS_W: f64 = 230.0;
const ROW_H: f64 = 34.0;
const BOX_Y: f64 = 3.0;
const BOX_H: f64 = 19.0;
/// The band under the boxes where live activations are drawn.
const MEM_Y: f64 = 23.0;
const MEM_H: f64 = 8.0;
const TOP: f64 = 74.0;

/// Forward colors per module (Tableau 10 without its gray), cycled.
const PALETTE: [(u8, u8, u8); 9] = [
    (0x4e, 0x79, 0xa7),
    (0xf2, 0x8e, 0x2b),
    (0x59, 0xa1, 0x4f),
    (0xe1, 0x57, 0x59),
    (0x76, 0xb7, 0xb2),
    (0xed, 0xc9, 0x48),
    (0xb0, 0x7a, 0xa1),
    (0xff, 0x9d, 0xa7),
    (0x9c, 0x75, 0x5f),
];

fn hex((r, g, b): (u8, u8, u8)) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

fn darker((r, g, b): (u8, u8, u8)) -> (u8, u8, u8) {
    let d = |c: u8| (f64::from(c) * 0.6).round() as u8;
    (d(r), d(g), d(b))
}

/// Truncates to `n` characters, marking the cut with an ellipsis.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Tick step (1, 2 or 5 times a power of ten) for about eight ticks over `t`, and its decimals.
fn ticks(t: f64) -> (f64, usize) {
    let raw = t / 8.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = mag
        * if norm < 1.5 {
            1.0
        } else if norm < 3.5 {
            2.0
        } else if norm < 7.5 {
            5.0
        } else {
            10.0
        };
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    (step, decimals)
}

struct Pending {
    class: String,
    x0: f64,
    x1: f64,
    first: u32,
    last_mb: u32,
    count: usize,
    text_white: bool,
    kind: TaskKind,
}

/// Renders the SVG with at most `max_lanes` rows.
pub fn render(s: &Schedule<'_>, max_lanes: usize) -> String {
    let shown = s.select_lanes(max_lanes);
    let mut row_of: Vec<Option<usize>> = vec![None; s.lanes.len()];
    for (i, &l) in shown.iter().enumerate() {
        row_of[l] = Some(i);
    }
    let t = s.iteration_time();
    let t_axis = if t > 0.0 { t } else { 1.0 };
    let scale = PLOT_W / t_axis;

    let labels: Vec<(String, String)> = shown
        .iter()
        .map(|&l| (clip(&s.lanes[l].label, 32), clip(&s.lanes[l].role, 40)))
        .collect();
    let label_w = labels
        .iter()
        .map(|(a, b)| (a.chars().count() as f64 * 6.6).max(b.chars().count() as f64 * 5.2))
        .fold(40.0, f64::max)
        + 14.0;
    let plot_x = MARGIN + label_w;
    let width = plot_x + PLOT_W + STATS_W + MARGIN;
    let x_of = |sec: f64| plot_x + sec * scale;
    let row_y = |i: usize| TOP + i as f64 * ROW_H;
    let rows_end = row_y(shown.len());

    let mut body = String::new();
    // Title.
    let e = s.estimate;
    let _ = writeln!(
        body,
        r#"<text class="title" x="{MARGIN:.2}" y="20.00">{}</text>"#,
        xml_escape(&format!(
            "{} on {} GPUs, {}",
            s.model, e.gpus, s.schedule_kind
        ))
    );
    let _ = writeln!(
        body,
        r#"<text class="sub" x="{MARGIN:.2}" y="38.00">{}</text>"#,
        xml_escape(&format!(
            "iteration {}, bubble {:.1}%, peak memory {} of {} (rank {}){}, {} lanes",
            secs(t),
            100.0 * e.bubble_fraction,
            bytes(e.peak_memory_bytes),
            bytes(e.memory_capacity_bytes),
            e.peak_memory_rank,
            if e.feasible { "" } else { ", INFEASIBLE" },
            s.lanes.len()
        ))
    );
    let _ = writeln!(
        body,
        r#"<text class="head" x="{MARGIN:.2}" y="{:.2}">ranks</text>"#,
        TOP - 6.0
    );
    let _ = writeln!(
        body,
        r#"<text class="head" x="{:.2}" y="{:.2}">busy, peak activations per rank</text>"#,
        plot_x + PLOT_W + 10.0,
        TOP - 6.0
    );

    // Row backgrounds (idle shows through), labels and per-lane numbers.
    for (i, &l) in shown.iter().enumerate() {
        let lane = &s.lanes[l];
        let y = row_y(i);
        let _ = writeln!(
            body,
            r#"<rect class="bg" x="{plot_x:.2}" y="{:.2}" width="{PLOT_W:.2}" height="{BOX_H:.2}"/>"#,
            y + BOX_Y
        );
        let _ = writeln!(
            body,
            r#"<text class="lab" x="{MARGIN:.2}" y="{:.2}">{}</text>"#,
            y + 15.0,
            xml_escape(&labels[i].0)
        );
        let _ = writeln!(
            body,
            r#"<text class="role" x="{MARGIN:.2}" y="{:.2}">{}</text>"#,
            y + 28.0,
            xml_escape(&labels[i].1)
        );
        let busy = if t > 0.0 { lane.busy / t } else { 0.0 };
        let _ = writeln!(
            body,
            r#"<text class="stat" x="{:.2}" y="{:.2}">busy {:.1}%, memory {}</text>"#,
            plot_x + PLOT_W + 10.0,
            y + 15.0,
            100.0 * busy,
            bytes(lane.peak_memory)
        );
        let _ = writeln!(
            body,
            r#"<text class="role" x="{:.2}" y="{:.2}">activations {} at {}</text>"#,
            plot_x + PLOT_W + 10.0,
            y + 28.0,
            bytes(lane.peak_activations),
            secs(lane.peak_at)
        );
    }

    // Time axis above and below, with grid lines through the rows.
    let (step, decimals) = ticks(t_axis);
    let n_ticks = (t_axis / step + 1e-9).floor() as usize;
    let axis_top = TOP - 2.0;
    let axis_bottom = rows_end + 2.0;
    let _ = writeln!(
        body,
        r#"<line class="axis" x1="{plot_x:.2}" y1="{axis_top:.2}" x2="{:.2}" y2="{axis_top:.2}"/>"#,
        plot_x + PLOT_W
    );
    let _ = writeln!(
        body,
        r#"<line class="axis" x1="{plot_x:.2}" y1="{axis_bottom:.2}" x2="{:.2}" y2="{axis_bottom:.2}"/>"#,
        plot_x + PLOT_W
    );
    for k in 0..=n_ticks {
        let sec = k as f64 * step;
        let x = x_of(sec);
        let label = format!("{sec:.decimals$}");
        let _ = writeln!(
            body,
            r#"<line class="grid" x1="{x:.2}" y1="{axis_top:.2}" x2="{x:.2}" y2="{axis_bottom:.2}"/>"#
        );
        let _ = writeln!(
            body,
            r#"<text class="tick" x="{x:.2}" y="{:.2}">{label}</text>"#,
            axis_top - 16.0
        );
        let _ = writeln!(
            body,
            r#"<text class="tick" x="{x:.2}" y="{:.2}">{label}</text>"#,
            axis_bottom + 13.0
        );
    }
    let _ = writeln!(
        body,
        r#"<text class="unit" x="{:.2}" y="{:.2}">time (s)</text>"#,
        plot_x + PLOT_W,
        axis_bottom + 26.0
    );

    // Task boxes.
    let mut boxes = 0usize;
    let mut boxes_omitted = 0usize;
    for (i, &l) in shown.iter().enumerate() {
        let y = row_y(i) + BOX_Y;
        let mut pending: Option<Pending> = None;
        let flush = |p: Pending, body: &mut String, boxes: &mut usize, omitted: &mut usize| {
            if *boxes >= MAX_BOXES {
                *omitted += p.count;
                return;
            }
            *boxes += 1;
            let w = p.x1 - p.x0;
            let task = &s.graph.tasks[p.first as usize];
            let title = if p.count == 1 {
                let id = p.first as usize;
                format!(
                    "{}: {} to {}",
                    s.describe_task(p.first),
                    secs(s.timeline.start[id]),
                    secs(s.timeline.end[id])
                )
            } else {
                format!(
                    "{} {} mb {} to {} ({} tasks)",
                    s.module_name(task),
                    kind_name(p.kind),
                    task.micro_batch,
                    p.last_mb,
                    p.count
                )
            };
            let _ = writeln!(
                body,
                r#"<rect class="{}" x="{:.2}" y="{y:.2}" width="{w:.2}" height="{BOX_H:.2}"><title>{}</title></rect>"#,
                p.class,
                p.x0,
                xml_escape(&title)
            );
            let mb = task.micro_batch.to_string();
            let fits = w >= mb.len() as f64 * 5.6 + 4.0;
            if p.count == 1 && fits && matches!(p.kind, TaskKind::Forward | TaskKind::Backward) {
                let _ = writeln!(
                    body,
                    r#"<text class="{}" x="{:.2}" y="{:.2}">{mb}</text>"#,
                    if p.text_white { "mbw" } else { "mb" },
                    p.x0 + w / 2.0,
                    y + 13.5
                );
            }
        };
        for &id in &s.graph.orders[l] {
            let task = &s.graph.tasks[id as usize];
            if task.duration <= 0.0 {
                continue;
            }
            let m = task.module.map_or(0, |m| m.index());
            let class = match task.kind {
                TaskKind::Forward => format!("f{m}"),
                TaskKind::Backward => format!("b{m}"),
                TaskKind::GradSync => "g".to_string(),
                TaskKind::Optimizer => "o".to_string(),
            };
            let x0 = x_of(s.timeline.start[id as usize]);
            let x1 = x_of(s.timeline.end[id as usize]);
            if let Some(p) = pending.as_mut() {
                if p.class == class && x1 - x0 < 2.0 && p.x1 - p.x0 < 2.0 && x0 - p.x1 < 0.5 {
                    p.x1 = x1;
                    p.count += 1;
                    p.last_mb = task.micro_batch;
                    continue;
                }
            }
            if let Some(p) = pending.take() {
                flush(p, &mut body, &mut boxes, &mut boxes_omitted);
            }
            pending = Some(Pending {
                class,
                x0,
                x1,
                first: id,
                last_mb: task.micro_batch,
                count: 1,
                text_white: task.kind != TaskKind::Forward,
                kind: task.kind,
            });
        }
        if let Some(p) = pending.take() {
            flush(p, &mut body, &mut boxes, &mut boxes_omitted);
        }
    }

    // Live activations per rank: a filled step area in a band under each row's boxes, scaled
    // to the largest peak shown.
    let peak_shown = shown
        .iter()
        .map(|&l| s.lanes[l].peak_activations)
        .fold(0.0, f64::max);
    for (i, &l) in shown.iter().enumerate() {
        let base = row_y(i) + MEM_Y + MEM_H;
        let _ = writeln!(
            body,
            r#"<line class="membase" x1="{plot_x:.2}" y1="{base:.2}" x2="{:.2}" y2="{base:.2}"/>"#,
            plot_x + PLOT_W
        );
        if peak_shown <= 0.0 {
            continue;
        }
        let y_of = |b: f64| base - (b / peak_shown).clamp(0.0, 1.0) * MEM_H;
        let mut d = format!("M{plot_x:.2},{base:.2}");
        let mut last_y = format!("{base:.2}");
        for &(sec, b) in &s.lanes[l].activations {
            let ny = format!("{:.2}", y_of(b));
            if ny != last_y {
                let _ = write!(d, "H{:.2}V{ny}", x_of(sec));
                last_y = ny;
            }
        }
        let _ = write!(d, "H{:.2}V{base:.2}Z", plot_x + PLOT_W);
        let _ = writeln!(body, r#"<path class="mem" d="{d}"/>"#);
    }

    // Transfers between shown lanes.
    // By the time the consumer starts, so a cap keeps the earliest (the pipeline filling).
    let mut transfers = s.transfers(&|l: LaneId| row_of.get(l as usize).copied().flatten());
    transfers.sort_by(|a, b| {
        let key = |t: &super::Transfer| {
            (
                s.timeline.start[t.consumer as usize],
                s.timeline.end[t.producer as usize],
            )
        };
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(a.consumer.cmp(&b.consumer))
            .then(a.producer.cmp(&b.producer))
    });
    let mut lines_until = 0.0f64;
    let mut lines = 0usize;
    let mut lines_omitted = 0usize;
    for tr in &transfers {
        let (Some(ra), Some(rb)) = (row_of[tr.from_lane as usize], row_of[tr.to_lane as usize])
        else {
            continue;
        };
        if lines >= MAX_LINES {
            lines_omitted += 1;
            continue;
        }
        lines += 1;
        lines_until = s.timeline.start[tr.consumer as usize];
        let (class, marker) = match tr.kind {
            DepKind::Boundary => ("db", "ab"),
            _ => ("dp", "ap"),
        };
        let _ = writeln!(
            body,
            r#"<line class="{class}" x1="{:.2}" y1="{:.2}" x2="{:.2}" y2="{:.2}" marker-end="url(#{marker})"/>"#,
            x_of(s.timeline.end[tr.producer as usize]),
            row_y(ra) + BOX_Y + BOX_H / 2.0,
            x_of(s.timeline.start[tr.consumer as usize]),
            row_y(rb) + BOX_Y + BOX_H / 2.0
        );
    }

    // Legend.
    let mut items: Vec<(String, String)> = Vec::new(); // (swatch element, text)
    let swatch = |class: &str| {
        format!(r#"<rect class="{class}" x="0.00" y="-9.00" width="14.00" height="11.00"/>"#)
    };
    let stroke = |class: &str, marker: Option<&str>| {
        let m = marker.map_or(String::new(), |m| format!(r#" marker-end="url(#{m})""#));
        format!(r#"<line class="{class}" x1="0.00" y1="-3.50" x2="14.00" y2="-3.50"{m}/>"#)
    };
    for &m in &s.module_order {
        let Some(mv) = s.modules.get(m) else { continue };
        items.push((swatch(&format!("f{m}")), format!("{} forward", mv.name)));
        items.push((swatch(&format!("b{m}")), format!("{} backward", mv.name)));
    }
    items.push((swatch("g"), "grad sync".to_string()));
    items.push((swatch("o"), "optimizer step".to_string()));
    items.push((swatch("bg"), "idle".to_string()));
    items.push((stroke("db", Some("ab")), "boundary transfer".to_string()));
    items.push((stroke("dp", Some("ap")), "pipeline transfer".to_string()));
    items.push((
        swatch("mem"),
        format!(
            "live activations per rank (band under each row, full height = {})",
            bytes(peak_shown)
        ),
    ));
    let mut lx = MARGIN;
    let mut ly = axis_bottom + 48.0;
    for (sw, text) in &items {
        let w = 22.0 + text.chars().count() as f64 * 6.2 + 16.0;
        if lx + w > width - MARGIN && lx > MARGIN {
            lx = MARGIN;
            ly += 18.0;
        }
        let _ = writeln!(
            body,
            r#"<g transform="translate({lx:.2},{ly:.2})">{sw}<text class="leg" x="20.00" y="0.00">{}</text></g>"#,
            xml_escape(text)
        );
        lx += w;
    }
    ly += 8.0;

    // What was left out.
    let mut notes: Vec<String> = Vec::new();
    if shown.len() < s.lanes.len() {
        notes.push(format!(
            "showing {} of {} lanes ({} omitted; one lane of every module stage first; --lanes N shows more)",
            shown.len(),
            s.lanes.len(),
            s.lanes.len() - shown.len()
        ));
    }
    if boxes_omitted > 0 {
        notes.push(format!(
            "{boxes_omitted} tasks not drawn (at most {MAX_BOXES} boxes)"
        ));
    }
    if lines_omitted > 0 {
        notes.push(format!(
            "{lines_omitted} later transfer arrows not drawn (the first {MAX_LINES}, until {})",
            secs(lines_until)
        ));
    }
    for n in &notes {
        ly += 16.0;
        let _ = writeln!(
            body,
            r#"<text class="note" x="{MARGIN:.2}" y="{ly:.2}">{}</text>"#,
            xml_escape(n)
        );
    }
    let height = ly + MARGIN;

    // Header: styles, hatch patterns, arrowheads.
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.2} {height:.2}">"#
    );
    out.push_str("<style>\n");
    out.push_str("text{font-family:Helvetica,Arial,sans-serif;font-size:11px;fill:#222}\n");
    out.push_str(".title{font-size:15px;font-weight:bold}.sub{font-size:12px;fill:#444}\n");
    out.push_str(".head{font-size:10px;fill:#666;font-style:italic}\n");
    out.push_str(".lab{font-size:11px;font-weight:bold}.role,.stat{font-size:9.5px;fill:#555}\n");
    out.push_str(".tick{font-size:9.5px;fill:#555;text-anchor:middle}.unit{font-size:10px;fill:#555;text-anchor:end}\n");
    out.push_str(".mb{font-size:9px;text-anchor:middle;fill:#111}.mbw{font-size:9px;text-anchor:middle;fill:#fff;font-weight:bold}\n");
    out.push_str(".leg{font-size:11px}.note{font-size:11px;fill:#a33}\n");
    out.push_str(".bg{fill:#eeeeee}.axis{stroke:#888;stroke-width:1}.grid{stroke:#cfcfcf;stroke-width:0.6}\n");
    out.push_str(".g{fill:#8c8c8c}.o{fill:#3a3a3a}\n");
    out.push_str(".db{stroke:#c0392b;stroke-width:0.8;opacity:0.7;fill:none}.dp{stroke:#1f4e9a;stroke-width:0.7;opacity:0.6;fill:none}\n");
    out.push_str(
        ".mem{fill:#7a4f9a;fill-opacity:0.75;stroke:none}.membase{stroke:#bbb;stroke-width:0.5}\n",
    );
    let mut defs = String::new();
    for m in 0..s.modules.len() {
        let c = PALETTE[m % PALETTE.len()];
        let _ = writeln!(out, ".f{m}{{fill:{}}}.b{m}{{fill:url(#h{m})}}", hex(c));
        let _ = writeln!(
            defs,
            r##"<pattern id="h{m}" width="5" height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" fill="{}"/><rect width="1.5" height="5" fill="#ffffff" fill-opacity="0.3"/></pattern>"##,
            hex(darker(c))
        );
    }
    out.push_str("</style>\n<defs>\n");
    out.push_str(&defs);
    out.push_str(r##"<marker id="ab" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="5" markerHeight="5" orient="auto"><path d="M0,0L6,3L0,6Z" fill="#c0392b"/></marker>"##);
    out.push('\n');
    out.push_str(r##"<marker id="ap" viewBox="0 0 6 6" refX="6" refY="3" markerWidth="5" markerHeight="5" orient="auto"><path d="M0,0L6,3L0,6Z" fill="#1f4e9a"/></marker>"##);
    out.push_str("\n</defs>\n");
    let _ = writeln!(
        out,
        r##"<rect x="0" y="0" width="{width:.2}" height="{height:.2}" fill="#ffffff"/>"##
    );
    out.push_str(&body);
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(ticks(26.5583), (2.0, 0));
        assert_eq!(ticks(40.0).1, 0);
        assert_eq!(ticks(0.004).1, 4);
        let (step, dec) = ticks(0.000758);
        assert!((step - 1e-4).abs() < 1e-12, "{step}");
        assert_eq!(dec, 4);
    }

    #[test]
    fn clip_marks_the_cut() {
        assert_eq!(clip("0-3,8-11", 32), "0-3,8-11");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
