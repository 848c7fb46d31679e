//! Showing a plan's simulated schedule: a compact text form for terminals (`text`), an SVG
//! timeline (`svg`) and a Chrome trace for Perfetto or chrome://tracing (`trace`).
//!
//! All three read one `Schedule`: the cost model's task graph and its simulated timeline, plus
//! what every rendering needs and is derived once here: lane labels and roles, live activation
//! memory over time, module letters and colors, which lanes to show under a cap, and between
//! which lanes a transfer is drawn. Every number is printed with a fixed format, so the same
//! inputs give byte-identical outputs.

pub mod svg;
pub mod text;
pub mod trace;

use std::collections::BTreeSet;

use hetpar_cost::estimate::Estimate;
use hetpar_cost::simulate::Timeline;
use hetpar_cost::tasks::{DepKind, LaneId, Task, TaskGraph, TaskId, TaskKind};
use hetpar_ir::{ModelGraph, Plan};

use crate::report::rank_list;

/// One module as shown.
#[derive(Clone, Debug)]
pub struct ModuleView {
    pub name: String,
    /// Its letter in the text timeline: upper case forward, lower case backward. Unique, and
    /// never `G` or `O` (`g` and `o` are gradient sync and optimizer).
    pub letter: char,
    pub pp: u32,
}

/// One lane (a set of ranks doing identical work) as shown.
#[derive(Clone, Debug)]
pub struct LaneView {
    /// The ranks, compact: `0-3,8-11`.
    pub label: String,
    /// What the lane runs, in order: module names, with the stage where pp > 1 (`vision+llm s1`).
    pub role: String,
    /// (module, stage) pairs the lane runs, sorted: lanes with equal keys play the same role.
    role_key: Vec<(u32, u32)>,
    /// Seconds running tasks.
    pub busy: f64,
    /// Live activation bytes per rank over time, as steps: (time, bytes from then on),
    /// starting with (0, 0). A forward's activations count from its start (they are being
    /// written) until the end of its backward (they are freed as it runs).
    pub activations: Vec<(f64, f64)>,
    pub peak_activations: f64,
    /// When the activations first reach their peak, s.
    pub peak_at: f64,
    /// Peak memory per rank: weights, gradients, optimizer, activations, buffers, reserve.
    pub peak_memory: f64,
}

/// A transfer drawn between two lanes: the producing task ends, the consuming one starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transfer {
    pub kind: DepKind,
    pub producer: TaskId,
    pub consumer: TaskId,
    pub from_lane: LaneId,
    pub to_lane: LaneId,
}

/// A plan's simulated schedule, ready to render.
pub struct Schedule<'a> {
    pub graph: &'a TaskGraph,
    pub timeline: &'a Timeline,
    pub estimate: &'a Estimate,
    pub model: String,
    /// The plan's schedule kind as written in plan files: `pipeline_1f1b`.
    pub schedule_kind: String,
    pub modules: Vec<ModuleView>,
    /// Module indices in the model's topological order (legends list them so).
    pub module_order: Vec<usize>,
    pub lanes: Vec<LaneView>,
}

impl<'a> Schedule<'a> {
    pub fn new(
        model: &ModelGraph,
        plan: &Plan,
        estimate: &'a Estimate,
        graph: &'a TaskGraph,
        timeline: &'a Timeline,
    ) -> Self {
        let modules = module_views(model, plan);
        let lanes = graph
            .lanes
            .iter()
            .enumerate()
            .map(|(l, lane)| lane_view(l, &lane.ranks, graph, timeline, estimate, &modules))
            .collect();
        let schedule_kind = serde_json::to_value(plan.schedule.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Schedule {
            graph,
            timeline,
            estimate,
            model: model.name().to_string(),
            schedule_kind,
            modules,
            module_order: model
                .topological_order()
                .iter()
                .map(|m| m.index())
                .collect(),
            lanes,
        }
    }

    /// The simulated iteration time, s.
    pub fn iteration_time(&self) -> f64 {
        self.timeline.makespan
    }

    /// At most `cap` lanes to show, in lane order: first one lane of every role (module and
    /// stage set), so each stage of each module appears, then the others in lane order.
    pub fn select_lanes(&self, cap: usize) -> Vec<usize> {
        let n = self.lanes.len();
        if n <= cap {
            return (0..n).collect();
        }
        let mut picked = vec![false; n];
        let mut count = 0usize;
        let mut seen: BTreeSet<&[(u32, u32)]> = BTreeSet::new();
        for (l, lane) in self.lanes.iter().enumerate() {
            if count < cap && seen.insert(&lane.role_key) {
                picked[l] = true;
                count += 1;
            }
        }
        for p in picked.iter_mut() {
            if count >= cap {
                break;
            }
            if !*p {
                *p = true;
                count += 1;
            }
        }
        (0..n).filter(|&l| picked[l]).collect()
    }

    /// The task's module name, or "" for the optimizer step (every module of the lane).
    pub fn module_name(&self, task: &Task) -> &str {
        task.module
            .and_then(|m| self.modules.get(m.index()))
            .map_or("", |m| m.name.as_str())
    }

    /// A one-line description: `llm backward mb 3 (stage 1, chunk 0, replica 0)`.
    pub fn describe_task(&self, t: TaskId) -> String {
        let task = &self.graph.tasks[t as usize];
        let name = self.module_name(task);
        match task.kind {
            TaskKind::Forward | TaskKind::Backward => format!(
                "{name} {} mb {} (stage {}, chunk {}, replica {})",
                kind_name(task.kind),
                task.micro_batch,
                task.stage,
                task.chunk,
                task.replica
            ),
            TaskKind::GradSync => format!("{name} grad sync (stage {})", task.stage),
            TaskKind::Optimizer => "optimizer step".to_string(),
        }
    }

    /// Every pipeline and boundary dependency between tasks that run (nonzero duration) on
    /// different lanes, as a transfer between the nearest pair of distinct lanes that `shown`
    /// maps to a position (nearest by that position), in task and dependency order.
    pub fn transfers(&self, shown: &dyn Fn(LaneId) -> Option<usize>) -> Vec<Transfer> {
        let mut out = Vec::new();
        for (c, task) in self.graph.tasks.iter().enumerate() {
            for d in &task.deps {
                if d.kind == DepKind::Local {
                    continue;
                }
                let producer = &self.graph.tasks[d.task as usize];
                if producer.lanes == task.lanes || producer.duration <= 0.0 || task.duration <= 0.0
                {
                    continue;
                }
                let mut best: Option<(usize, LaneId, LaneId)> = None;
                for &a in &producer.lanes {
                    let Some(pa) = shown(a) else { continue };
                    for &b in &task.lanes {
                        let Some(pb) = shown(b) else { continue };
                        if a == b {
                            continue;
                        }
                        let dist = pa.abs_diff(pb);
                        if best.is_none_or(|(bd, _, _)| dist < bd) {
                            best = Some((dist, a, b));
                        }
                    }
                }
                if let Some((_, a, b)) = best {
                    out.push(Transfer {
                        kind: d.kind,
                        producer: d.task,
                        consumer: c as TaskId,
                        from_lane: a,
                        to_lane: b,
                    });
                }
            }
        }
        out
    }
}

pub fn kind_name(k: TaskKind) -> &'static str {
    match k {
        TaskKind::Forward => "forward",
        TaskKind::Backward => "backward",
        TaskKind::GradSync => "grad sync",
        TaskKind::Optimizer => "optimizer",
    }
}

fn module_views(model: &ModelGraph, plan: &Plan) -> Vec<ModuleView> {
    let mut used: BTreeSet<char> = BTreeSet::from(['G', 'O']);
    model
        .modules()
        .iter()
        .enumerate()
        .map(|(m, module)| {
            let letter = module
                .name
                .chars()
                .map(|c| c.to_ascii_uppercase())
                .chain('A'..='Z')
                .chain('0'..='9')
                .find(|c| c.is_ascii_alphanumeric() && !used.contains(c))
                .unwrap_or('?');
            used.insert(letter);
            ModuleView {
                name: module.name.clone(),
                letter,
                pp: plan.modules().get(m).map_or(1, |mp| mp.layout.pp),
            }
        })
        .collect()
}

fn lane_view(
    l: usize,
    ranks: &[u32],
    graph: &TaskGraph,
    timeline: &Timeline,
    estimate: &Estimate,
    modules: &[ModuleView],
) -> LaneView {
    let order = &graph.orders[l];
    let mut role: Vec<(u32, u32)> = Vec::new();
    let (mut live, mut peak, mut peak_at) = (0.0f64, 0.0f64, 0.0f64);
    let mut activations = vec![(0.0, 0.0)];
    let mut busy = 0.0;
    for &t in order {
        let task = &graph.tasks[t as usize];
        busy += task.duration;
        if let (Some(m), TaskKind::Forward | TaskKind::Backward) = (task.module, task.kind) {
            let key = (m.index() as u32, task.stage);
            if !role.contains(&key) {
                role.push(key);
            }
        }
        let at = match task.kind {
            TaskKind::Forward => {
                live += task.activation_bytes;
                timeline.start[t as usize]
            }
            TaskKind::Backward => {
                live -= task.activation_bytes;
                timeline.end[t as usize]
            }
            _ => continue,
        };
        if task.activation_bytes != 0.0 {
            activations.push((at, live.max(0.0)));
        }
        if live > peak {
            peak = live;
            peak_at = at;
        }
    }
    let role_text = role
        .iter()
        .map(|&(m, s)| {
            let mv = &modules[m as usize];
            if mv.pp > 1 {
                format!("{} s{s}", mv.name)
            } else {
                mv.name.clone()
            }
        })
        .collect::<Vec<_>>()
        .join("+");
    role.sort_unstable();
    LaneView {
        label: rank_list(ranks),
        role: role_text,
        role_key: role,
        busy,
        activations,
        peak_activations: peak,
        peak_at,
        peak_memory: estimate.per_rank.get(l).map_or(0.0, |r| r.memory.total),
    }
}

/// Seconds with four significant digits and no exponent: `26.56 s`, `0.0007578 s`.
pub fn secs(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return "0 s".to_string();
    }
    let mag = x.abs().log10().floor() as i32;
    let decimals = (3 - mag).clamp(0, 12) as usize;
    format!("{x:.decimals$} s")
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_keeps_four_significant_digits_without_exponent() {
        assert_eq!(secs(26.5583), "26.56 s");
        assert_eq!(secs(0.000757812), "0.0007578 s");
        assert_eq!(secs(1.0), "1.000 s");
        assert_eq!(secs(0.0), "0 s");
    }

    #[test]
    fn xml_escape_escapes_markup() {
        assert_eq!(xml_escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
