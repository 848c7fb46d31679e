//! hetpar-cost: predicts the time, throughput and memory of a plan (compute, communication,
//! memory, pipeline simulation). Pure computation, no IO.
//!
//! Empty until the cost-model issue lands; the crate exists so that the workspace and its
//! dependency rules (see `ARCHITECTURE.md`) are in place from the start.
