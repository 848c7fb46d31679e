//! The program: a lowered plan as an ordered instruction list for every rank. It is the one
//! contract between planning and execution (the runtime interprets it, code generation emits
//! it as straight-line code), so it is versioned and golden-tested.
//!
//! Instructions name modules and boundaries by name and ranks by number. Point-to-point
//! pipeline transfers come in matching pairs (a `send_*` on one rank, the `recv_*` on its
//! peer); a boundary transfer is one fused call per rank per boundary and micro-batch, made by
//! every rank that sends or receives rows of it (its row lists come from the boundary
//! synthesis).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::ids::Rank;
use crate::layout::RecomputeSpec;
use crate::model::ModuleKind;

/// One instruction. In transfers, `chunk` is the global pipeline chunk (`c x pp + s`) of the
/// receiving side: the forward that takes the activations, the backward that takes the
/// gradients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Instruction {
    /// Forward of one pipeline chunk of a module for a micro-batch.
    Forward {
        module: String,
        stage: u32,
        chunk: u32,
        micro_batch: u32,
    },
    /// Backward of it (with the recompute its layout asks for).
    Backward {
        module: String,
        stage: u32,
        chunk: u32,
        micro_batch: u32,
    },
    /// Activations of a micro-batch to the next pipeline chunk's rank.
    SendActivation {
        module: String,
        micro_batch: u32,
        chunk: u32,
        to: Rank,
    },
    RecvActivation {
        module: String,
        micro_batch: u32,
        chunk: u32,
        from: Rank,
    },
    /// Gradients of a micro-batch back to the previous pipeline chunk's rank.
    SendGradient {
        module: String,
        micro_batch: u32,
        chunk: u32,
        to: Rank,
    },
    RecvGradient {
        module: String,
        micro_batch: u32,
        chunk: u32,
        from: Rank,
    },
    /// The fused transfer of a boundary's rows (forward) for a micro-batch.
    BoundaryForward { boundary: String, micro_batch: u32 },
    /// The fused transfer of a boundary's gradients (backward) for a micro-batch.
    BoundaryBackward { boundary: String, micro_batch: u32 },
    /// Gradient reduction of a module stage over its data-parallel (x cp) group.
    GradSync { module: String, stage: u32 },
    /// The optimizer step of everything the rank holds.
    OptimizerStep,
}

/// The instructions of one rank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankProgram {
    pub rank: Rank,
    pub instructions: Vec<Instruction>,
}

/// A module's layout as the runtime needs it: degrees, layers per chunk and its rank grid.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleProgram {
    pub name: String,
    pub kind: ModuleKind,
    pub tp: u32,
    pub cp: u32,
    pub pp: u32,
    pub dp: u32,
    pub vpp: u32,
    pub sequence_parallel: bool,
    pub micro_batch_size: u32,
    /// Layers of every pipeline chunk, chunk `c` of stage `s` at index `c x pp + s`.
    pub chunk_layers: Vec<u32>,
    #[serde(default)]
    pub recompute: RecomputeSpec,
    /// The ranks by grid coordinate: index `tp + tp_n (cp + cp_n (dp + dp_n pp))`.
    pub ranks: Vec<Rank>,
}

/// Rows `start..end` of one sample's rows of a boundary.
pub type Rows = (u32, Range<u64>);

/// One operation of a fused boundary transfer. Rows are numbered per sample: the boundary's
/// rows of that sample, items in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Transfer {
    /// Point-to-point (phase 1).
    Send {
        src: Rank,
        dst: Rank,
        rows: Vec<Rows>,
    },
    /// The root sends the rows to every other member (phase 2, inside one node).
    Broadcast {
        root: Rank,
        group: Vec<Rank>,
        rows: Vec<Rows>,
    },
    /// Every member contributes its part; all end with every part (phase 2, inside one node).
    AllGather {
        group: Vec<Rank>,
        parts: Vec<(Rank, Vec<Rows>)>,
    },
}

/// A boundary's fused transfers: per micro-batch, the operations in order, forward
/// (activations, source holders to destination needers) and backward (gradients, back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundaryProgram {
    pub name: String,
    pub from: String,
    pub to: String,
    /// Values per row.
    pub width: u32,
    pub forward: Vec<Vec<Transfer>>,
    pub backward: Vec<Vec<Transfer>>,
}

/// A whole program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub kind: String,
    pub format_version: u32,
    pub model: String,
    pub cluster: String,
    pub micro_batches: u32,
    pub modules: Vec<ModuleProgram>,
    pub boundaries: Vec<BoundaryProgram>,
    pub ranks: Vec<RankProgram>,
}

impl ModuleProgram {
    /// The rank at grid coordinates `(tp, cp, dp, pp)`.
    pub fn rank_at(&self, tp: u32, cp: u32, dp: u32, pp: u32) -> Rank {
        self.ranks[(tp + self.tp * (cp + self.cp * (dp + self.dp * pp))) as usize]
    }

    /// The grid coordinates `(tp, cp, dp, pp)` of `rank`, if the module holds it.
    pub fn coord_of(&self, rank: Rank) -> Option<[u32; 4]> {
        let i = self.ranks.iter().position(|&r| r == rank)? as u32;
        let (tp, rest) = (i % self.tp, i / self.tp);
        let (cp, rest) = (rest % self.cp, rest / self.cp);
        Some([tp, cp, rest % self.dp, rest / self.dp])
    }
}
