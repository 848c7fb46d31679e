//! hetpar-runtime: executes a per-rank program, on CPU threads or on CUDA + NCCL.
//!
//! Empty until the runtime issue lands; the crate exists so that the workspace and its
//! dependency rules (see `ARCHITECTURE.md`) are in place from the start.
