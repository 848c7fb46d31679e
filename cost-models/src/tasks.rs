//! Schedules as data: per-lane ordered task lists with their dependencies.
//!
//! A *lane* is a set of ranks that do exactly the same work (they differ only in tp or cp
//! coordinates of every module they run), so it is simulated once. A *task* is the forward or
//! backward of one pipeline chunk of one module for one unit (a micro-batch, or an encoder
//! pass for encoders and projectors) on one data-parallel replica, a gradient synchronization, or an optimizer step; it occupies every lane whose ranks
//! run it (a task spanning lanes starts when all of them reach it).

use hetpar_ir::{ModuleId, Rank};

pub type TaskId = u32;
pub type LaneId = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Forward,
    Backward,
    GradSync,
    Optimizer,
}

/// Why one task waits for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DepKind {
    /// The same unit on the previous (forward) or next (backward) pipeline chunk: a
    /// point-to-point transfer between stages.
    Pipeline,
    /// Rows crossing a module boundary.
    Boundary,
    /// The forward of the same chunk, needed by its backward.
    Local,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Dep {
    pub task: TaskId,
    /// Transfer time added after the task ends, s.
    pub latency: f64,
    pub kind: DepKind,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Task {
    pub kind: TaskKind,
    #[serde(serialize_with = "ser_module")]
    pub module: Option<ModuleId>,
    pub replica: u32,
    pub stage: u32,
    /// Virtual chunk index within the stage (0 without interleaving).
    pub chunk: u32,
    /// The unit of work: the language-model micro-batch for the language model and the
    /// modules after it; the encoder pass (`Plan::passes`) for encoders and projectors
    /// (`ModelGraph::item_origin`). Lowering reads it as the instruction's micro-batch.
    pub micro_batch: u32,
    pub lanes: Vec<LaneId>,
    pub deps: Vec<Dep>,
    /// Seconds the task occupies its lanes.
    pub duration: f64,
    /// Activation bytes per rank a forward leaves until its backward.
    pub activation_bytes: f64,
    /// What the duration is spent on (module tasks).
    pub parts: crate::compute::PassTime,
}

fn ser_module<S: serde::Serializer>(m: &Option<ModuleId>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_u32(m.index() as u32),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lane {
    pub ranks: Vec<Rank>,
}

/// Every lane's ordered tasks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TaskGraph {
    pub lanes: Vec<Lane>,
    pub tasks: Vec<Task>,
    pub orders: Vec<Vec<TaskId>>,
}
