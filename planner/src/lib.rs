//! hetpar-planner: boundary reshard synthesis today; layout search and lowering next.
//!
//! - `boundary`: every module boundary as a general resharding problem: ownership maps on both
//!   sides, a transfer plan meeting the byte lower bound, an e-graph choosing how each flow is
//!   delivered, and its lowering into one fused communication call per rank per micro-batch.

pub mod boundary;
pub mod export;
pub mod lower;
pub mod search;

/// Errors of the planner.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("internal error (a bug in hetpar, please report it): {0}")]
    Internal(String),
}
