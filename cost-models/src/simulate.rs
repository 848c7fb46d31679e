//! Event simulation over a task graph: each lane runs its tasks in order; a task starts when
//! every lane it occupies has reached it and every dependency has ended (plus its transfer
//! time). Yields start and end of every task, the makespan, busy time per lane, and the live
//! activation memory along each lane's order.

use crate::tasks::{TaskGraph, TaskId, TaskKind};
use crate::CostError;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    pub start: Vec<f64>,
    pub end: Vec<f64>,
    /// Makespan over all lanes, s.
    pub makespan: f64,
    /// Seconds each lane spends running tasks.
    pub busy: Vec<f64>,
    /// Peak activation bytes alive on each lane (per rank).
    pub peak_activations: Vec<f64>,
}

pub fn simulate(g: &TaskGraph) -> Result<Timeline, CostError> {
    let n = g.tasks.len();
    let mut succ: Vec<Vec<TaskId>> = vec![Vec::new(); n];
    for (t, task) in g.tasks.iter().enumerate() {
        for d in &task.deps {
            succ[d.task as usize].push(t as TaskId);
        }
    }
    let mut head = vec![0usize; g.lanes.len()];
    let mut lane_free = vec![0.0f64; g.lanes.len()];
    let mut deps_left: Vec<usize> = g.tasks.iter().map(|t| t.deps.len()).collect();
    let mut ready_at = vec![0.0f64; n];
    let mut start = vec![f64::NAN; n];
    let mut end = vec![f64::NAN; n];
    let mut done = 0usize;
    let mut queue: Vec<TaskId> = g.orders.iter().filter_map(|o| o.first().copied()).collect();
    while let Some(t) = queue.pop() {
        let tu = t as usize;
        if !start[tu].is_nan() || deps_left[tu] > 0 {
            continue;
        }
        let task = &g.tasks[tu];
        let at_heads = task
            .lanes
            .iter()
            .all(|&l| g.orders[l as usize].get(head[l as usize]) == Some(&t));
        if !at_heads {
            continue;
        }
        let s = task
            .lanes
            .iter()
            .map(|&l| lane_free[l as usize])
            .fold(ready_at[tu], f64::max);
        let e = s + task.duration;
        start[tu] = s;
        end[tu] = e;
        done += 1;
        for &l in &task.lanes {
            let l = l as usize;
            lane_free[l] = e;
            head[l] += 1;
            if let Some(&next) = g.orders[l].get(head[l]) {
                queue.push(next);
            }
        }
        for &sx in &succ[tu] {
            let su = sx as usize;
            let lat = g.tasks[su]
                .deps
                .iter()
                .filter(|d| d.task == t)
                .map(|d| d.latency)
                .fold(0.0, f64::max);
            ready_at[su] = ready_at[su].max(e + lat);
            deps_left[su] -= 1;
            if deps_left[su] == 0 {
                queue.push(sx);
            }
        }
    }
    if done < g.orders.iter().map(Vec::len).sum::<usize>().min(n) {
        let stuck: Vec<String> = g
            .orders
            .iter()
            .enumerate()
            .filter_map(|(l, o)| o.get(head[l]).map(|&t| (l, t)))
            .take(4)
            .map(|(l, t)| {
                let task = &g.tasks[t as usize];
                format!(
                    "lane {l} waits at {:?} of micro-batch {} stage {}",
                    task.kind, task.micro_batch, task.stage
                )
            })
            .collect();
        return Err(CostError::Internal(format!(
            "the schedule deadlocks ({done} of {n} tasks ran): {}",
            stuck.join("; ")
        )));
    }
    let makespan = end
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(0.0, f64::max);
    let busy = g
        .orders
        .iter()
        .map(|o| o.iter().map(|&t| g.tasks[t as usize].duration).sum())
        .collect();
    let peak_activations = g
        .orders
        .iter()
        .map(|o| {
            let (mut live, mut peak) = (0.0f64, 0.0f64);
            for &t in o {
                let task = &g.tasks[t as usize];
                match task.kind {
                    TaskKind::Forward => live += task.activation_bytes,
                    TaskKind::Backward => live -= task.activation_bytes,
                    _ => {}
                }
                peak = peak.max(live);
            }
            peak
        })
        .collect();
    Ok(Timeline {
        start,
        end,
        makespan,
        busy,
        peak_activations,
    })
}
