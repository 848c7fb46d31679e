//! hetpar-cost: predicts the iteration time, throughput and memory of a plan.
//!
//! Pure computation, no IO. Two entry points:
//! - `estimate`: builds the plan's task graph (schedules as data, `schedule`), prices every
//!   task (`compute`, `collective`), simulates it (`simulate`) and reports metrics and memory
//!   per rank (`memory`);
//! - `estimate_quick` (`quick`): a closed form over per-stage times and the same per-rank
//!   memory, for ranking many candidates fast.
//!
//! The efficiency constants live in `constants`, the stated error of the predictions in `error`;
//! `docs/cost-model.md` defines every metric.

pub mod calibration;
pub mod collective;
pub mod combine;
pub mod compute;
pub mod constants;
pub mod cost;
pub mod error;
pub mod estimate;
pub mod fit;
pub mod floor;
pub mod fold;
pub mod memory;
pub mod quick;
pub mod schedule;
pub mod simulate;
pub mod sync;
pub mod tasks;

pub use constants::Constants;
pub use cost::Cost;
pub use error::{stated_error, StatedError};
pub use estimate::{estimate, estimate_with_boundaries, Estimate, Options};
pub use fold::{Fold, Folds};
pub use memory::AttentionKernel;
pub use quick::{estimate_quick, estimate_quick_with, Quick};
pub use schedule::BoundaryTimes;

/// Errors of the cost model.
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// The plan is valid but asks for something the cost model does not price yet.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A bug in hetpar.
    #[error("internal error (a bug in hetpar, please report it): {0}")]
    Internal(String),
}
