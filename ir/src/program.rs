//! The program: a lowered plan as an ordered instruction list for every rank. It is the one
//! contract between planning and execution (the runtime interprets it, code generation emits
//! it as straight-line code), so it is versioned and golden-tested.
//!
//! Instructions name modules and boundaries by name and ranks by number. Point-to-point
//! pipeline transfers come in matching pairs (a `send_*` on one rank, the `recv_*` on its
//! peer); a boundary transfer is one fused call per rank per boundary and micro-batch, made by
//! every rank that sends or receives rows of it (its row lists come from the boundary
//! synthesis).

use serde::{Deserialize, Serialize};

use crate::ids::Rank;

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

/// A whole program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub kind: String,
    pub format_version: u32,
    pub model: String,
    pub cluster: String,
    pub micro_batches: u32,
    pub ranks: Vec<RankProgram>,
}
