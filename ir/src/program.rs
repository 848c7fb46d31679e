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
use crate::layout::{CpComm, RecomputeSpec};
use crate::model::ModuleKind;

/// One instruction. In transfers, `chunk` is the global pipeline chunk (`c x pp + s`) of the
/// receiving side: the forward that takes the activations, the backward that takes the
/// gradients. `micro_batch` is the language model's micro-batch, except for a module that
/// processes encoder items (an encoder, a projector), where it is the encoder pass, and for a
/// boundary transfer, where it is its destination's unit: the pass for a boundary into an
/// encoder or projector, else the micro-batch.
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
    /// Expert parallelism: each `ep` consecutive members of the dp x cp group (cp varying
    /// fastest) split the routed experts; absent (1) without a mixture of experts.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ep: u32,
    pub vpp: u32,
    pub sequence_parallel: bool,
    /// The plan's TP communication overlap; absent in programs written before the field (and
    /// when false).
    #[serde(default, skip_serializing_if = "is_false")]
    pub tp_comm_overlap: bool,
    /// The plan's CP communication kind; absent when the default (all-gather).
    #[serde(default, skip_serializing_if = "CpComm::is_default")]
    pub cp_comm: CpComm,
    /// The plan's distributed optimizer: Adam's state sharded over the dp x cp group,
    /// gradients reduce-scattered and parameters all-gathered; absent when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub distributed_optimizer: bool,
    /// Samples per data-parallel replica and micro-batch; 1 and unused for encoders and
    /// projectors, whose items are dealt per encoder pass.
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
    /// Every source sends its partial sums of the rows to `dst`, which ends with their sum,
    /// added in `srcs` order (its own partial among them when it is a source): a producer's
    /// reduction folded into the transfer (phase 1, [`BoundaryProgram::fold_forward`]).
    Reduce {
        srcs: Vec<Rank>,
        dst: Rank,
        rows: Vec<Rows>,
    },
}

/// What one rank does in a [`Transfer`], in the order the transfer lists it: every backend and
/// check that executes or inspects transfers reads them through this.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roles<'t> {
    /// Rows this rank sends, the ranks it sends them to (never itself), and which part of the
    /// transfer they are (0 but for an all-gather's parts).
    pub sends: Vec<(Vec<Rank>, &'t [Rows], usize)>,
    /// Rows this rank receives, the rank they come from, and which part.
    pub receives: Vec<(Rank, &'t [Rows], usize)>,
    /// Partial sums this rank receives and adds up (a [`Transfer::Reduce`]'s destination): the
    /// rank each comes from, in the order they are added; its own partial is not listed.
    pub adds: Vec<(Rank, &'t [Rows])>,
}

impl Transfer {
    /// Rank `me`'s sends and receives in this transfer.
    pub fn roles(&self, me: Rank) -> Roles<'_> {
        let others = |group: &[Rank]| group.iter().copied().filter(|&r| r != me).collect();
        let mut out = Roles::default();
        match self {
            Transfer::Send { src, dst, rows } => {
                if *src == me {
                    out.sends.push((vec![*dst], rows, 0));
                } else if *dst == me {
                    out.receives.push((*src, rows, 0));
                }
            }
            Transfer::Broadcast { root, group, rows } => {
                if *root == me {
                    out.sends.push((others(group), rows, 0));
                } else if group.contains(&me) {
                    out.receives.push((*root, rows, 0));
                }
            }
            Transfer::AllGather { group, parts } if group.contains(&me) => {
                for (p, (owner, rows)) in parts.iter().enumerate() {
                    if *owner == me {
                        out.sends.push((others(group), rows, p));
                    } else {
                        out.receives.push((*owner, rows, p));
                    }
                }
            }
            Transfer::AllGather { .. } => {}
            Transfer::Reduce { srcs, dst, rows } => {
                if *dst == me {
                    out.adds
                        .extend(srcs.iter().filter(|&&r| r != me).map(|&r| (r, &rows[..])));
                } else if srcs.contains(&me) {
                    out.sends.push((vec![*dst], rows, 0));
                }
            }
        }
        out
    }
}

/// A boundary's fused transfers: per unit of its destination (encoder pass into an encoder or
/// projector, micro-batch into the language model), the operations in order, forward
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
    /// The source's last reduction is folded into the forward transfer: every tp rank of the
    /// source keeps its partial sums of all its replica's rows, and `Reduce` operations sum
    /// them where they are needed. Absent (false) in programs written before the field.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fold_forward: bool,
    /// The source's first backward gather is folded into the backward transfer: every tp rank
    /// of the source receives the whole gradient of all its replica's rows.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fold_backward: bool,
}

/// A whole program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub kind: String,
    pub format_version: u32,
    pub model: String,
    pub cluster: String,
    /// The language model's micro-batches per step.
    pub micro_batches: u32,
    /// The pass size: language-model micro-batches per encoder pass (`crate::shard::Passes`);
    /// programs written before encoder passes have none and mean 1.
    #[serde(default = "one")]
    pub encoder_chunk: u32,
    pub modules: Vec<ModuleProgram>,
    pub boundaries: Vec<BoundaryProgram>,
    pub ranks: Vec<RankProgram>,
}

fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Program {
    /// The encoder passes of a step: encoders and projectors run one pass per
    /// `encoder_chunk` micro-batches, and their instructions' `micro_batch` is the pass.
    pub fn passes(&self) -> crate::shard::Passes {
        crate::shard::Passes::new(self.micro_batches, self.encoder_chunk)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rank_sees_its_own_sends_and_receives_of_a_transfer() {
        let (a, b) = (vec![(0u32, 0..2u64)], vec![(1u32, 0..1u64)]);
        let gather = Transfer::AllGather {
            group: vec![3, 5, 7],
            parts: vec![(3, a.clone()), (5, b.clone())],
        };
        let r = gather.roles(5);
        assert_eq!(r.sends, vec![(vec![3, 7], &b[..], 1)]);
        assert_eq!(r.receives, vec![(3, &a[..], 0)]);
        assert_eq!(gather.roles(9), Roles::default(), "not a member");
        let cast = Transfer::Broadcast {
            root: 2,
            group: vec![2, 4],
            rows: a.clone(),
        };
        assert_eq!(cast.roles(2).sends, vec![(vec![4], &a[..], 0)]);
        assert_eq!(cast.roles(4).receives, vec![(2, &a[..], 0)]);
        let send = Transfer::Send {
            src: 1,
            dst: 6,
            rows: b.clone(),
        };
        assert_eq!(send.roles(6).receives, vec![(1, &b[..], 0)]);
        assert!(send.roles(1).receives.is_empty());
        let reduce = Transfer::Reduce {
            srcs: vec![4, 2, 9],
            dst: 2,
            rows: a.clone(),
        };
        assert_eq!(
            reduce.roles(2).adds,
            vec![(4, &a[..]), (9, &a[..])],
            "in srcs order"
        );
        assert!(reduce.roles(2).sends.is_empty(), "its own partial stays");
        assert_eq!(reduce.roles(9).sends, vec![(vec![2], &a[..], 0)]);
        assert_eq!(reduce.roles(7), Roles::default(), "not a member");
    }

    #[test]
    fn a_program_written_before_encoder_passes_loads_with_one_micro_batch_per_pass() {
        let text = r#"{"kind": "program", "format_version": 1, "model": "m", "cluster": "c",
            "micro_batches": 4, "modules": [], "boundaries": [], "ranks": []}"#;
        let p = crate::load_program(text).expect("an older program loads");
        assert_eq!(p.encoder_chunk, 1);
        assert_eq!(p.passes().count(), 4);
        assert_eq!(p.passes().micro_batches_of(3), 3..4);
    }
}
