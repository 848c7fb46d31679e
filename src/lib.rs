//! hetpar: a compiler for heterogeneous parallel training plans of multimodal models.
//!
//! This facade re-exports the workspace crates and holds what the CLI needs beyond them: file
//! IO (atomic writes, loading with file names on every diagnostic), the embedded examples, the
//! reports the commands print and the progress of a training run.

pub use hetpar_codegen as codegen;
pub use hetpar_cost as cost;
pub use hetpar_ir as ir;
pub use hetpar_planner as planner;
pub use hetpar_runtime as runtime;

pub mod autotune;
pub mod examples;
pub mod io;
#[cfg(feature = "cuda")]
pub mod profile;
pub mod progress;
pub mod report;
pub mod show;
