//! The model: a graph of modules (encoders, projectors, a language model, generators) joined
//! by boundaries, with the training data.

pub mod arch;
pub mod counts;
pub mod data;
pub mod file;
pub mod graph;
pub mod limits;
pub mod placeholders;
pub mod verify;
mod verify_reals;

pub use arch::*;
pub use counts::{module_flops, module_params, Flops, ParamCount};
pub use data::{ItemTokens, TrainingData};
pub use file::*;
pub use graph::{Body, Boundary, ModelGraph, Module};
