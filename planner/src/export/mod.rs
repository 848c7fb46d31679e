//! Plans exported to other trainers. `megatron`: Megatron-LM's command-line arguments for a
//! plan without heterogeneity (`pretrain_gpt.py`, `pretrain_vlm.py`), and the MIMO example's
//! heterogeneous grid for a non-colocated one (`mimo`); whatever the target cannot express is
//! refused, naming the feature and the plan field to change.

pub mod bridge;
pub mod megatron;
pub mod mimo;

/// Why a plan cannot be exported: the feature, why, and what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{feature}: {reason}; {fix}")]
pub struct Refusal {
    pub feature: String,
    pub reason: String,
    pub fix: String,
}

impl Refusal {
    pub fn new(feature: &str, reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Refusal {
            feature: feature.into(),
            reason: reason.into(),
            fix: fix.into(),
        }
    }
}

/// Whether the model's language model mixes experts (expert parallelism flags apply).
pub fn is_moe(model: &hetpar_ir::model::ModelGraph) -> bool {
    model
        .module(model.language_model())
        .transformer()
        .is_some_and(|t| t.moe.is_some())
}
