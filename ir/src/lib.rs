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
pub mod megatron;
pub mod model;
pub mod placement;
pub mod plan;
pub mod program;
pub mod rule;
pub mod shard;

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
    model_from_value(&json::parse_value(text)?)
}

/// Parses and verifies a cluster file.
pub fn load_cluster(text: &str) -> Result<Cluster, Diagnostics> {
    cluster_from_value(&json::parse_value(text)?)
}

/// Parses a plan file and verifies it against a model and a cluster.
pub fn load_plan(
    text: &str,
    model: &ModelGraph,
    cluster: &Cluster,
) -> Result<Loaded<Plan>, Diagnostics> {
    plan_from_value(&json::parse_value(text)?, model, cluster)
}

/// Parses a program file (`hetpar lower`'s output): its header, then every field by type.
/// Whether it fits a model is the runtime's check.
pub fn load_program(text: &str) -> Result<program::Program, Diagnostics> {
    let value = json::parse_value(text)?;
    json::check_header(&value, FileKind::Program)?;
    json::from_value(&value)
}

/// Runs `verify` on a leniently parsed value, so that unknown fields and rule violations are
/// reported together.
fn typed_then_verified<F, T>(
    value: &serde_json::Value,
    kind: FileKind,
    verify: impl FnOnce(F) -> Result<Loaded<T>, Diagnostics>,
) -> Result<Loaded<T>, Diagnostics>
where
    F: serde::de::DeserializeOwned,
{
    json::check_header(value, kind)?;
    let (file, mut ds) = json::from_value_lenient::<F>(value)?;
    match verify(file) {
        Ok((v, warnings)) if ds.is_empty() => Ok((v, warnings)),
        Ok((_, warnings)) => {
            ds.extend(warnings);
            Err(ds)
        }
        Err(e) => {
            ds.extend(e);
            Err(ds)
        }
    }
}

/// Verifies a parsed model document.
pub fn model_from_value(value: &serde_json::Value) -> Result<Loaded<ModelGraph>, Diagnostics> {
    typed_then_verified(value, FileKind::Model, model::verify::build)
}

/// Verifies a parsed cluster document.
pub fn cluster_from_value(value: &serde_json::Value) -> Result<Cluster, Diagnostics> {
    typed_then_verified(value, FileKind::Cluster, |f| {
        Cluster::from_file(f).map(|c| (c, Diagnostics::new()))
    })
    .map(|(c, _)| c)
}

/// Verifies a parsed plan document against a model and a cluster.
pub fn plan_from_value(
    value: &serde_json::Value,
    model: &ModelGraph,
    cluster: &Cluster,
) -> Result<Loaded<Plan>, Diagnostics> {
    typed_then_verified(value, FileKind::Plan, |f| Plan::build(f, model, cluster))
}
