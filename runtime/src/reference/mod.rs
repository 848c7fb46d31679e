//! The reference model (`docs/reference-model.md`) on one device, on the CPU: the numerical
//! ground truth every parallel plan is compared against.
//!
//! Plain `std` f32 code, deterministic: fixed loop orders, no threads, reductions accumulated
//! in f64 and rounded once (see [`crate::tensor`]). One concept per file:
//! [`params`] (configuration, tensor names, initialisation), [`rng`] (splitmix64),
//! [`batch`] (inputs and their validation), [`layers`] (LayerNorm, GELU, linear, softmax),
//! [`attention`], [`block`] (a pre-norm transformer block), [`encoder`] (vision encoder and
//! projector), [`llm`] (language model and loss), [`model`] (loss and gradients of a batch,
//! a training step) and [`adam`]; beside them the other architectures' pieces, among them
//! [`arch`] (a stack's variant) and [`moe`] (a mixture of experts' routing and combination).

pub mod act;
pub mod adam;
pub mod arch;
pub mod attention;
pub mod batch;
pub mod block;
pub mod encoder;
pub mod from_model;
pub mod layers;
pub mod llm;
pub mod model;
pub mod moe;
pub mod params;
pub mod rmsnorm;
pub mod rng;
pub mod rope;

pub use adam::Adam;
pub use arch::{Act, BlockArch, Ffn, Norm, Rope, Stack};
pub use batch::Batch;
pub use model::{loss, loss_and_grads, train_step};
pub use params::{param_specs, Config, EncoderConfig, Grads, Init, LlmConfig, ParamSpec, Params};
pub use rng::SplitMix64;
