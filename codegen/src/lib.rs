//! hetpar-codegen: emits a lowered program as a Rust crate plus launch scripts.
//!
//! Empty until the code-generation issue lands; the crate exists so that the workspace and its
//! dependency rules (see `ARCHITECTURE.md`) are in place from the start.
