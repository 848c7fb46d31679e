//! hetpar-runtime: executes a per-rank program, on CPU threads or on CUDA + NCCL.
//!
//! Today it holds the numerical ground truth: [`reference`], a single-device CPU
//! implementation of the reference model (`docs/reference-model.md`), forward, backward and
//! Adam, in plain `std` f32 code on a minimal row-major [`tensor::Tensor`]. Every parallel
//! plan's results are to be compared against it.

pub mod checkpoint;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dump;
pub mod error;
pub mod exec;
pub mod gemm;
pub mod hf_batch;
pub mod hf_names;
pub mod hf_vision;
pub mod libs;
pub mod profile;
pub mod reference;
pub mod rendezvous;
pub mod tensor;
pub mod transport;

pub use error::RuntimeError;
