//! hetpar-planner: searches per-module layouts, placements and schedules, synthesizes boundary
//! reshards and lowers a plan to a per-rank program.
//!
//! Empty until the planner and boundary issues land; the crate exists so that the workspace and
//! its dependency rules (see `ARCHITECTURE.md`) are in place from the start.
