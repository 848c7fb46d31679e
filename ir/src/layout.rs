//! A module's parallel layout: degrees per axis, sequence parallel, recompute, optimizer
//! sharding, micro-batch size and the split of layers over pipeline stages.
//!
//! Vocabulary: an *axis* is a dimension of the rank grid (tp, cp, dp, pp; ep is carved out of
//! dp x cp); a *dim* is a dimension of a tensor. The two words are never mixed.

use serde::{Deserialize, Serialize};

fn one() -> u32 {
    1
}
fn is_one(v: &u32) -> bool {
    *v == 1
}
fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecomputePolicy {
    #[default]
    None,
    /// Recompute the attention core (scores, softmax, context) in backward.
    Selective,
    /// Keep only each layer's input and recompute the whole layer in backward.
    Full,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecomputeSpec {
    pub policy: RecomputePolicy,
    /// Recompute only the first `layers` layers of every pipeline stage (chunk); all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<u32>,
}

impl RecomputeSpec {
    fn is_none(&self) -> bool {
        self.policy == RecomputePolicy::None && self.layers.is_none()
    }
}

/// How context parallelism exchanges keys and values (Megatron-LM's `--cp-comm-type`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CpComm {
    /// Every cp rank all-gathers the unit's keys and values before attention (Megatron
    /// `all_gather`); what hetpar's runtime executes, so the default.
    #[default]
    AllGather,
    /// Keys and values pass around the cp ring, overlapped with attention (Megatron `p2p`).
    Ring,
}

impl CpComm {
    pub fn is_default(&self) -> bool {
        *self == CpComm::AllGather
    }

    /// The name the plan format uses.
    pub fn as_str(self) -> &'static str {
        match self {
            CpComm::AllGather => "all_gather",
            CpComm::Ring => "ring",
        }
    }
}

/// A layout as written in a plan file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutSpec {
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub tp: u32,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub cp: u32,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub pp: u32,
    /// Data-parallel replicas; derived as ranks / (tp x cp x pp) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<u32>,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub ep: u32,
    /// Virtual pipeline chunks per stage (interleaved schedule).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub vpp: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub sequence_parallel: bool,
    /// Overlap tensor-parallel communication with compute (Megatron-LM `--tp-comm-overlap`);
    /// needs sequence parallel and tp > 1.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tp_comm_overlap: bool,
    /// How cp ranks exchange keys and values; ignored at cp 1.
    #[serde(default, skip_serializing_if = "CpComm::is_default")]
    pub cp_comm: CpComm,
    #[serde(default, skip_serializing_if = "RecomputeSpec::is_none")]
    pub recompute: RecomputeSpec,
    /// Shard optimizer state over the data-parallel ranks.
    #[serde(default, skip_serializing_if = "is_false")]
    pub distributed_optimizer: bool,
    #[serde(default = "one")]
    pub micro_batch_size: u32,
    /// Layers of each pipeline chunk in order (pp x vpp entries); even split when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_layers: Option<Vec<u32>>,
}

/// A verified layout with every derived value resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub tp: u32,
    pub cp: u32,
    pub pp: u32,
    pub dp: u32,
    pub ep: u32,
    pub vpp: u32,
    pub sequence_parallel: bool,
    pub tp_comm_overlap: bool,
    pub cp_comm: CpComm,
    pub recompute: RecomputeSpec,
    pub distributed_optimizer: bool,
    pub micro_batch_size: u32,
    /// Layers of every pipeline chunk, chunk `c` of stage `s` at index `c * pp + s`.
    pub chunk_layers: Vec<u32>,
    /// Micro-batches per data-parallel replica per step.
    pub micro_batches: u32,
}

impl Layout {
    /// Ranks the layout spans.
    pub fn size(&self) -> u64 {
        u64::from(self.tp) * u64::from(self.cp) * u64::from(self.pp) * u64::from(self.dp)
    }

    /// Layers held by pipeline stage `s` over all its chunks.
    pub fn stage_layers(&self, s: u32) -> u32 {
        (0..self.vpp)
            .filter_map(|c| self.chunk_layers.get((c * self.pp + s) as usize))
            .sum()
    }
}
