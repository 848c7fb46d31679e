//! End-to-end tests of `hetpar show`: the text form, the SVG timeline and the Chrome trace of a
//! plan's simulated schedule, checked against the cost model's own task graph and timeline
//! (computed here through the library), for determinism, and against a golden text output.

use std::path::Path;

use expect_test::expect_file;

use hetpar::cost::estimate::{simulate_plan, Estimate};
use hetpar::cost::simulate::Timeline;
use hetpar::cost::tasks::TaskGraph;
use hetpar::cost::Options;
use hetpar::report::rank_list;

mod common;
use common::{hetpar, root, scratch, stderr, stdout};

#[derive(Clone, Copy, Debug)]
struct Example {
    name: &'static str,
    model: &'static str,
    cluster: &'static str,
    plan: &'static str,
}

const TINY: Example = Example {
    name: "tiny",
    model: "examples/models/tiny-uneven.json",
    cluster: "examples/clusters/h100-8.json",
    plan: "examples/plans/tiny-uneven-colocated-8.json",
};
const LLAMA: Example = Example {
    name: "llama",
    model: "examples/models/llama-3-8b.json",
    cluster: "examples/clusters/h100-8.json",
    plan: "examples/plans/llama-3-8b-homogeneous-8.json",
};
const VIT: Example = Example {
    name: "vit",
    model: "examples/models/vit6b-70b-32k.json",
    cluster: "examples/clusters/h100-1024.json",
    plan: "examples/plans/vit6b-70b-32k-noncolocated-1024.json",
};
const EXAMPLES: [Example; 3] = [TINY, LLAMA, VIT];

/// Runs `hetpar show` on an example with extra arguments; asserts success.
fn show(ex: Example, extra: &[&str]) -> String {
    let mut args = vec![
        "show",
        ex.plan,
        "--model",
        ex.model,
        "--cluster",
        ex.cluster,
    ];
    args.extend_from_slice(extra);
    let o = hetpar(&args);
    assert!(o.status.success(), "{ex:?} {extra:?}\n{}", stderr(&o));
    stdout(&o)
}

/// Runs `hetpar show` writing the SVG and the trace into `dir`: (text, svg, trace).
fn show_files(ex: Example, dir: &Path, extra: &[&str]) -> (String, String, String) {
    let svg = dir.join("schedule.svg");
    let trace = dir.join("trace.json");
    let mut args = vec![
        "--svg",
        svg.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let text = show(ex, &args);
    (
        text,
        std::fs::read_to_string(&svg).expect("the SVG is written"),
        std::fs::read_to_string(&trace).expect("the trace is written"),
    )
}

/// The cost model's view of an example, through the library.
fn simulate(ex: Example) -> (Estimate, TaskGraph, Timeline) {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    let (model, _) = hetpar::ir::load_model(&read(ex.model)).expect("model loads");
    let cluster = hetpar::ir::load_cluster(&read(ex.cluster)).expect("cluster loads");
    let (plan, _) = hetpar::ir::load_plan(&read(ex.plan), &model, &cluster).expect("plan loads");
    let (est, (graph, timeline)) = {
        // As `hetpar show` does: boundaries priced by their synthesis.
        let times = hetpar::planner::boundary::boundary_times(&model, &cluster, &plan);
        simulate_plan(&model, &cluster, &plan, &Options::default(), Some(&times))
            .expect("estimates")
    };
    (est, graph, timeline)
}

/// The lane lines of the text form: (ranks label, timeline, rest of the line).
fn lane_lines(text: &str) -> Vec<(String, String, String)> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("ranks "));
    let header = lines.next().expect("a header line starting with \"ranks\"");
    assert!(header.contains("|timeline"), "{header}");
    lines
        .take_while(|l| l.contains('|'))
        .map(|l| {
            let mut parts = l.splitn(3, '|');
            (
                parts.next().unwrap().trim().to_string(),
                parts.next().unwrap().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A small well-formedness check: every tag is closed in order, attribute values and text
/// hold no raw `<`, and every `&` starts an entity.
fn assert_well_formed_xml(s: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        let text = &rest[..i];
        for (j, _) in text.match_indices('&') {
            let after = &text[j..];
            assert!(
                ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"]
                    .iter()
                    .any(|e| after.starts_with(e)),
                "a bare & in text: {:?}",
                &after[..after.len().min(20)]
            );
        }
        rest = &rest[i..];
        let end = rest.find('>').expect("every tag ends");
        let tag = &rest[1..end];
        assert!(!tag.contains('<'), "a < inside a tag: {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            let open = stack.pop().unwrap_or_default();
            assert_eq!(open, name.trim(), "closing tag matches the open one");
        } else if !tag.ends_with('/') {
            let name: String = tag
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '/')
                .collect();
            stack.push(name);
        }
        rest = &rest[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
}

fn trace_events(trace: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
    let v: serde_json::Value = serde_json::from_str(trace).expect("the trace is JSON");
    let events = v["traceEvents"]
        .as_array()
        .expect("traceEvents is an array")
        .clone();
    (v, events)
}

#[test]
fn text_has_one_line_per_lane_with_a_timeline_of_the_requested_width() {
    for ex in EXAMPLES {
        let (_, graph, _) = simulate(ex);
        for width in [100usize, 37] {
            let text = show(ex, &["--width", &width.to_string()]);
            let lines = lane_lines(&text);
            let want: Vec<String> = graph.lanes.iter().map(|l| rank_list(&l.ranks)).collect();
            let got: Vec<String> = lines.iter().map(|l| l.0.clone()).collect();
            assert_eq!(got, want, "{ex:?}: one line per lane, in lane order");
            for (label, timeline, _) in &lines {
                assert_eq!(timeline.chars().count(), width, "{ex:?} lane {label}");
                assert!(
                    timeline
                        .chars()
                        .all(|c| c.is_ascii_alphabetic() || c == '.'),
                    "{timeline}"
                );
            }
            assert!(text.contains("iteration ") && text.contains("bubble "));
        }
    }
}

#[test]
fn text_prints_each_lanes_peak_memory_and_when_its_activations_peak() {
    let (est, graph, timeline) = simulate(LLAMA);
    let text = show(LLAMA, &[]);
    let lines = lane_lines(&text);
    assert_eq!(lines.len(), graph.lanes.len());
    for ((_, _, rest), entry) in lines.iter().zip(&est.per_rank) {
        let mem = hetpar::report::bytes(entry.memory.total);
        let act = hetpar::report::bytes(entry.memory.activations);
        assert!(rest.contains(&mem), "{rest} lacks memory {mem}");
        assert!(rest.contains(&act), "{rest} lacks activations {act}");
        let at: f64 = rest
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[1] == "s")
            .map(|w| w[0].parse().unwrap())
            .expect("a peak time in seconds");
        assert!(at >= 0.0 && at <= timeline.makespan, "{at}");
    }
}

#[test]
fn trace_has_one_complete_event_per_task_and_lane_with_nonzero_duration_within_the_iteration() {
    for ex in EXAMPLES {
        let (_, graph, timeline) = simulate(ex);
        let dir = scratch(&format!("show-trace-{}", ex.name));
        let (_, _, trace) = show_files(ex, &dir, &[]);
        let (v, events) = trace_events(&trace);
        assert_eq!(v["displayTimeUnit"], "ms");
        let want: usize = graph
            .orders
            .iter()
            .map(|o| {
                o.iter()
                    .filter(|&&t| graph.tasks[t as usize].duration > 0.0)
                    .count()
            })
            .sum();
        let xs: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "X").collect();
        assert_eq!(xs.len(), want, "{ex:?}");
        let end_us = timeline.makespan * 1e6;
        for e in &xs {
            let ts = e["ts"].as_f64().expect("ts");
            let dur = e["dur"].as_f64().expect("dur");
            assert!(ts >= 0.0 && dur >= 0.0, "{e}");
            assert!(
                ts + dur <= end_us * (1.0 + 1e-9) + 1e-3,
                "{e} ends after {end_us}"
            );
            assert_eq!(e["pid"], 0);
            let tid = e["tid"].as_u64().expect("tid") as usize;
            assert!(tid < graph.lanes.len());
        }
        for (l, lane) in graph.lanes.iter().enumerate() {
            let named = events.iter().any(|e| {
                e["ph"] == "M"
                    && e["name"] == "thread_name"
                    && e["tid"] == l
                    && e["args"]["name"].as_str().is_some_and(|n| {
                        n.starts_with(&format!("ranks {} ", rank_list(&lane.ranks)))
                    })
            });
            assert!(named, "{ex:?}: lane {l} has a thread_name naming its ranks");
        }
    }
}

#[test]
fn trace_counts_live_activations_per_lane_up_to_the_estimates_peak() {
    for ex in EXAMPLES {
        let (est, graph, timeline) = simulate(ex);
        let dir = scratch(&format!("show-counter-{}", ex.name));
        let (_, _, trace) = show_files(ex, &dir, &[]);
        let (_, events) = trace_events(&trace);
        for (l, entry) in est.per_rank.iter().enumerate() {
            let values: Vec<(f64, f64)> = events
                .iter()
                .filter(|e| e["ph"] == "C" && e["tid"] == l)
                .map(|e| {
                    (
                        e["ts"].as_f64().unwrap(),
                        e["args"]["MiB"].as_f64().unwrap(),
                    )
                })
                .collect();
            assert!(!values.is_empty(), "{ex:?}: lane {l} has a counter track");
            assert!(values.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
            assert!(values
                .iter()
                .all(|&(t, b)| t >= 0.0 && t <= timeline.makespan * 1e6 + 1e-3 && b >= 0.0));
            let peak = values.iter().map(|v| v.1).fold(0.0, f64::max);
            let want = entry.memory.activations / (1u64 << 20) as f64;
            assert!(
                (peak - want).abs() <= 1e-3 + 1e-9 * want,
                "{ex:?} lane {l}: {peak} vs {want}"
            );
        }
        assert_eq!(est.per_rank.len(), graph.lanes.len());
    }
}

#[test]
fn trace_draws_transfers_as_paired_flow_events() {
    let dir = scratch("show-flows");
    let (_, _, trace) = show_files(VIT, &dir, &[]);
    let (v, events) = trace_events(&trace);
    let starts: Vec<u64> = events
        .iter()
        .filter(|e| e["ph"] == "s")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    let ends: Vec<u64> = events
        .iter()
        .filter(|e| e["ph"] == "f")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert!(!starts.is_empty(), "the non-colocated plan has transfers");
    assert_eq!(starts, ends, "every flow starts and ends once");
    assert!(events
        .iter()
        .any(|e| e["ph"] == "s" && e["name"] == "boundary transfer"));
    assert!(events
        .iter()
        .any(|e| e["ph"] == "s" && e["name"] == "pipeline transfer"));
    assert_eq!(
        v["otherData"]["flows"].as_u64().unwrap() as usize,
        starts.len()
    );
}

#[test]
fn svg_is_well_formed_with_one_row_label_per_lane_boxes_axis_and_legend() {
    for ex in EXAMPLES {
        let (_, graph, _) = simulate(ex);
        let dir = scratch(&format!("show-svg-{}", ex.name));
        let (_, svg, _) = show_files(ex, &dir, &[]);
        assert!(svg.starts_with("<svg"), "{ex:?}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_well_formed_xml(&svg);
        assert!(svg.contains("<rect class=\"f"), "forward boxes");
        assert!(svg.contains("<rect class=\"b"), "backward boxes");
        assert!(svg.contains("time (s)"), "a time axis in seconds");
        assert!(
            svg.contains("grad sync") && svg.contains("optimizer step"),
            "a legend"
        );
        let labels = svg.matches("class=\"lab\"").count();
        assert_eq!(labels, graph.lanes.len().min(64), "{ex:?}");
        for lane in graph.lanes.iter().take(64) {
            let want = format!(">{}</text>", rank_list(&lane.ranks));
            assert!(svg.contains(&want), "{ex:?}: no row labelled {want}");
        }
    }
}

#[test]
fn svg_draws_pipeline_and_boundary_transfers() {
    // Arrows in the plot, not the legend's sample (which sits at x1 = 0).
    let arrows = |svg: &str, class: &str| {
        svg.matches(&format!("<line class=\"{class}\" x1=\""))
            .count()
            - svg
                .matches(&format!("<line class=\"{class}\" x1=\"0.00\""))
                .count()
    };
    let dir = scratch("show-svg-transfers");
    let (_, svg, _) = show_files(VIT, &dir, &[]);
    assert!(arrows(&svg, "db") > 0, "boundary transfer arrows");
    assert!(arrows(&svg, "dp") > 0, "pipeline transfer arrows");
    let (_, svg, _) = show_files(LLAMA, &dir, &[]);
    assert!(arrows(&svg, "dp") > 0, "pipeline transfer arrows");
    assert_eq!(arrows(&svg, "db"), 0, "a single module has no boundary");
}

#[test]
fn lane_cap_keeps_every_module_stage_and_says_how_many_lanes_are_omitted() {
    let (_, graph, _) = simulate(VIT);
    let n = graph.lanes.len();
    assert!(n > 12, "the example has more lanes than the cap");
    let dir = scratch("show-cap");
    let (text, svg, trace) = show_files(VIT, &dir, &["--lanes", "12"]);
    let lines = lane_lines(&text);
    assert_eq!(lines.len(), 12);
    for stage in 0..8 {
        let role = format!("llm s{stage}");
        assert!(
            lines.iter().any(|l| l.2.trim_end().ends_with(&role)),
            "{role} shown:\n{text}"
        );
    }
    assert!(lines.iter().any(|l| l.2.contains("vision")));
    assert!(
        text.contains(&format!("{} more lanes not shown", n - 12)),
        "{text}"
    );
    assert_eq!(svg.matches("class=\"lab\"").count(), 12);
    assert!(svg.contains(&format!("showing 12 of {n} lanes ({} omitted", n - 12)));
    assert_well_formed_xml(&svg);
    let (_, events) = trace_events(&trace);
    let threads = events.iter().filter(|e| e["name"] == "thread_name").count();
    assert_eq!(threads, n, "the trace keeps every lane");
}

#[test]
fn outputs_are_byte_identical_across_two_runs() {
    for ex in EXAMPLES {
        let a = show_files(ex, &scratch("show-twice-a"), &[]);
        let b = show_files(ex, &scratch("show-twice-b"), &[]);
        assert!(a.0 == b.0, "{ex:?}: text differs");
        assert!(a.1 == b.1, "{ex:?}: SVG differs");
        assert!(a.2 == b.2, "{ex:?}: trace differs");
    }
}

#[test]
fn files_are_written_without_leaving_temporary_files() {
    let dir = scratch("show-atomic");
    show_files(TINY, &dir, &[]);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["schedule.svg", "trace.json"]);
}

#[test]
fn text_of_the_tiny_uneven_example_is_stable() {
    expect_file!["golden/show-tiny-uneven.txt"].assert_eq(&show(TINY, &[]));
}

#[test]
fn show_rejects_a_plan_for_another_model_with_exit_1_and_diagnostics() {
    let o = hetpar(&[
        "show",
        "examples/plans/llava-1.5-7b-colocated-8.json",
        "--model",
        "examples/models/llama-3-8b.json",
        "--cluster",
        "examples/clusters/h100-8.json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("[plan.modules]"), "{}", stderr(&o));
    assert!(stdout(&o).is_empty());
}

#[test]
fn show_help_has_an_example() {
    let o = hetpar(&["show", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("Example"), "{out}");
    for flag in ["--svg", "--trace", "--width", "--lanes", "--attention"] {
        assert!(out.contains(flag), "{flag} in:\n{out}");
    }
}
