//! hetpar-ir: the intermediate representation every other hetpar crate speaks.
//!
//! - `model`: the model graph (modules, boundaries, training data), its file format, verifier
//!   and derived sizes (parameters, FLOPs);
//! - `cluster` and `gpu`: nodes of GPUs, the built-in GPU table and overrides;
//! - `layout`, `placement`, `plan`: per-module layouts and rank grids, the plan file and its
//!   verifier against a model and a cluster;
//! - `hf`: import of Hugging Face `config.json` files;
//! - `diag`, `rule`, `json`, `error`: diagnostics with JSON paths, the named rules, parsing.
//!
//! Loading is two steps: parse (syntax, types, unknown fields) then verify (every rule), and
//! each step reports every problem it finds.

pub mod cluster;
pub mod diag;
pub mod error;
pub mod gpu;
pub mod hf;
pub mod ids;
pub mod json;
pub mod layout;
pub mod model;
pub mod placement;
pub mod plan;
pub mod rule;

pub use cluster::{Cluster, ClusterFile};
pub use diag::{Diagnostic, Diagnostics, Severity};
pub use error::IrError;
pub use ids::{BoundaryId, ModuleId, Rank};
pub use json::{FileKind, FORMAT_VERSION};
pub use model::{ModelFile, ModelGraph};
pub use plan::{Plan, PlanFile};
pub use rule::Rule;

/// A loaded value with the warnings its verification produced.
pub type Loaded<T> = (T, Diagnostics);

/// Parses and verifies a model file.
pub fn load_model(text: &str) -> Result<Loaded<ModelGraph>, Diagnostics> {
    let file: ModelFile = json::parse_file(text, FileKind::Model)?;
    model::verify::build(file)
}

/// Parses and verifies a cluster file.
pub fn load_cluster(text: &str) -> Result<Cluster, Diagnostics> {
    let file: ClusterFile = json::parse_file(text, FileKind::Cluster)?;
    Cluster::from_file(file)
}

/// Parses a plan file and verifies it against a model and a cluster.
pub fn load_plan(
    text: &str,
    model: &ModelGraph,
    cluster: &Cluster,
) -> Result<Loaded<Plan>, Diagnostics> {
    let file: PlanFile = json::parse_file(text, FileKind::Plan)?;
    Plan::build(file, model, cluster)
}
