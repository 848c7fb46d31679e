//! The Chrome trace (Trace Event Format, opened by Perfetto and chrome://tracing).
//!
//! Process 0 is the plan; thread `l` is lane `l`, named by its ranks (`"ph":"M"` metadata).
//! Every task with a nonzero duration is one complete event (`"ph":"X"`) on each lane it
//! occupies; live activation memory per rank of each lane is a counter track (`"ph":"C"`, MiB);
//! pipeline and boundary transfers between lanes are flow arrows (`"ph":"s"` and `"ph":"f"`).
//! Times are microseconds rounded to nanoseconds. One event per line.

use serde_json::{json, Map, Value};

use hetpar_cost::tasks::{DepKind, LaneId, TaskKind};

use super::{kind_name, Schedule};

/// Most complete events written; the rest are counted in `otherData.slices_omitted`.
pub const MAX_SLICES: usize = 2_000_000;
/// Most flow arrows written; the rest are counted in `otherData.flows_omitted`.
pub const MAX_FLOWS: usize = 200_000;

/// Seconds to microseconds, rounded to nanoseconds.
fn us(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e9).round() / 1e3
    } else {
        0.0
    }
}

fn round3(x: f64) -> f64 {
    if x.is_finite() {
        (x * 1e3).round() / 1e3
    } else {
        0.0
    }
}

pub fn render(s: &Schedule<'_>) -> String {
    let g = s.graph;
    let tl = s.timeline;
    let mut events: Vec<Value> = Vec::new();
    events.push(json!({
        "ph": "M", "name": "process_name", "pid": 0,
        "args": {"name": format!("{} on {} GPUs ({})", s.model, s.estimate.gpus, s.schedule_kind)}
    }));
    for (l, lane) in s.lanes.iter().enumerate() {
        events.push(json!({
            "ph": "M", "name": "thread_name", "pid": 0, "tid": l,
            "args": {"name": format!("ranks {} ({})", lane.label, lane.role)}
        }));
        events.push(json!({
            "ph": "M", "name": "thread_sort_index", "pid": 0, "tid": l,
            "args": {"sort_index": l}
        }));
    }

    let mut slices = 0usize;
    let mut slices_omitted = 0usize;
    for (l, order) in g.orders.iter().enumerate() {
        for &t in order {
            let task = &g.tasks[t as usize];
            if task.duration <= 0.0 {
                continue;
            }
            if slices >= MAX_SLICES {
                slices_omitted += 1;
                continue;
            }
            slices += 1;
            let (a, b) = (us(tl.start[t as usize]), us(tl.end[t as usize]));
            let module = s.module_name(task);
            let name = match task.kind {
                TaskKind::Forward => format!("{module} F{}", task.micro_batch),
                TaskKind::Backward => format!("{module} B{}", task.micro_batch),
                TaskKind::GradSync => format!("{module} grad sync"),
                TaskKind::Optimizer => "optimizer".to_string(),
            };
            let mut args = Map::new();
            args.insert("task".into(), t.into());
            if !module.is_empty() {
                args.insert("module".into(), module.into());
            }
            args.insert("stage".into(), task.stage.into());
            if matches!(task.kind, TaskKind::Forward | TaskKind::Backward) {
                args.insert("micro_batch".into(), task.micro_batch.into());
                args.insert("chunk".into(), task.chunk.into());
                args.insert("replica".into(), task.replica.into());
                args.insert(
                    "activations_MiB".into(),
                    round3(task.activation_bytes / (1u64 << 20) as f64).into(),
                );
                let p = &task.parts;
                for (k, v) in [
                    ("compute_us", p.compute),
                    ("recompute_us", p.recompute),
                    ("tp_comm_us", p.tp_comm),
                    ("cp_comm_us", p.cp_comm),
                    ("ep_comm_us", p.ep_comm),
                ] {
                    if v != 0.0 {
                        args.insert(k.into(), us(v).into());
                    }
                }
            }
            events.push(json!({
                "ph": "X", "name": name, "cat": kind_name(task.kind), "pid": 0, "tid": l,
                "ts": a, "dur": round3(b - a), "args": args
            }));
        }
    }

    for (l, lane) in s.lanes.iter().enumerate() {
        let name = format!("activations, ranks {}", lane.label);
        for &(t, b) in &lane.activations {
            events.push(json!({
                "ph": "C", "name": name, "pid": 0, "tid": l, "ts": us(t),
                "args": {"MiB": round3(b / (1u64 << 20) as f64)}
            }));
        }
    }

    let all = |l: LaneId| Some(l as usize);
    let transfers = s.transfers(&all);
    let mut flows = 0usize;
    let mut flows_omitted = 0usize;
    for tr in &transfers {
        let (p, c) = (tr.producer as usize, tr.consumer as usize);
        if g.tasks[p].duration <= 0.0 || g.tasks[c].duration <= 0.0 {
            continue;
        }
        if flows >= MAX_FLOWS {
            flows_omitted += 1;
            continue;
        }
        flows += 1;
        let name = match tr.kind {
            DepKind::Boundary => "boundary transfer",
            _ => "pipeline transfer",
        };
        events.push(json!({
            "ph": "s", "id": flows, "name": name, "cat": "transfer", "pid": 0,
            "tid": tr.from_lane, "ts": us((tl.start[p] + tl.end[p]) / 2.0)
        }));
        events.push(json!({
            "ph": "f", "bp": "e", "id": flows, "name": name, "cat": "transfer", "pid": 0,
            "tid": tr.to_lane, "ts": us((tl.start[c] + tl.end[c]) / 2.0)
        }));
    }

    let other = json!({
        "model": s.model,
        "schedule": s.schedule_kind,
        "gpus": s.estimate.gpus,
        "lanes": s.lanes.len(),
        "iteration_time_s": s.iteration_time(),
        "iteration_time_us": us(s.iteration_time()),
        "slices": slices,
        "slices_omitted": slices_omitted,
        "flows": flows,
        "flows_omitted": flows_omitted,
    });
    let mut out = String::new();
    out.push_str("{\"displayTimeUnit\":\"ms\",\"otherData\":");
    out.push_str(&other.to_string());
    out.push_str(",\"traceEvents\":[\n");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push_str(",\n");
        }
        out.push_str(&e.to_string());
    }
    out.push_str("\n]}\n");
    out
}
