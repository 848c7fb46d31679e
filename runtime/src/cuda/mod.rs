//! The CUDA backend (feature `cuda`): device memory per rank, cuBLAS matrix products, the
//! reference model's other kernels compiled at run time by NVRTC, and NCCL communicators per
//! process group. Everything is loaded at run time (cudarc's dynamic loading), so the feature
//! builds and its tests run on machines without CUDA; there they skip, saying so.
//!
//! - `device.rs`: opening a GPU (presence checks first: cudarc panics on a missing library),
//!   compiling the kernels for its architecture, a stream and cuBLAS handle per rank.
//! - `kernels.cu`: the kernels, mirroring `crate::reference` operation by operation.
//! - `engine.rs`: what the operations need from a device ([`Engine`]: memory, kernel launches,
//!   cuBLAS's product), implemented by [`Gpu`] and, in the tests, by an emulated device that
//!   runs `kernels.cu` compiled for the CPU (`emulated.rs`).
//! - `ops.rs`: the operations on device tensors ([`DTensor`]), on any [`Engine`] ([`Ops`]).
//! - `math.rs`: those operations as the interpreter's arithmetic (`crate::exec::math::Math`).
//! - `nccl.rs`: communicators from a unique id exchanged over the TCP rendezvous, collectives
//!   and grouped point-to-point calls.
//! - `check.rs`: every operation against the CPU reference, a matrix-product throughput and a
//!   device-copy bandwidth figure (`hetpar device-check`).
//! - `profile.rs`: microbenchmarks of one device (products over a shape grid, attention,
//!   memory-bound kernels, the per-kernel cost) for `hetpar profile --backend cuda`.

pub mod check;
pub mod device;
#[cfg(any(test, feature = "emulator"))]
pub mod emulated;
pub mod engine;
pub mod math;
pub mod nccl;
pub mod ops;
pub mod ops_arch;
pub mod profile;

pub use device::{Device, Gpu};
pub use engine::Engine;
pub use math::GpuMath;
pub use ops::{DTensor, Ops, Precision};
