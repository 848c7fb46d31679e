//! The runtime's errors: invalid inputs (a configuration, parameters or a batch that do not fit
//! the reference model), each naming what is wrong.

/// What went wrong running the reference model. Every variant is a user error: the inputs do
/// not fit the model; internal bugs panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// A size of the model configuration is zero or does not divide as it must.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// A tensor was built from a number of values that does not fit its shape.
    #[error("a tensor of shape {shape:?} holds {expected} values, but {got} were given")]
    TensorSize {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    /// A documented parameter tensor is missing.
    #[error("parameter `{0}` is missing")]
    MissingParam(String),
    /// A parameter tensor has the wrong shape for the configuration.
    #[error("parameter `{name}` has shape {got:?}, but the configuration needs {expected:?}")]
    ParamShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor that is not one of the model's documented parameters.
    #[error("`{0}` is not a parameter of the reference model")]
    UnexpectedParam(String),
    /// The batch is malformed (shapes, counts, ids out of range); the message says where.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// Sample `sample` holds `placeholders` image placeholder tokens, but its images have
    /// `patches` patches in total; the two must be equal.
    #[error(
        "sample {sample}: {placeholders} image placeholder tokens, but its images have {patches} \
         patches in total (they must be equal)"
    )]
    PlaceholderMismatch {
        sample: usize,
        placeholders: usize,
        patches: usize,
    },
    /// Every target of the batch is `-100`: the loss, normalised by their count, is undefined.
    #[error("the batch has no targets (every target is -100), so its loss is undefined")]
    NoTargets,
    /// A rank waited for a message from a peer that never came (a failed or missing peer
    /// becomes this error on every waiting rank, never a hang).
    #[error("rank {rank} waited {waited_ms} ms for {what} from rank {peer} and gave up")]
    Timeout {
        rank: u32,
        peer: u32,
        what: String,
        waited_ms: u64,
    },
    /// A peer's end of the transport is gone (its thread ended).
    #[error("rank {rank}: rank {peer} has left the transport")]
    PeerGone { rank: u32, peer: u32 },
    /// A checkpoint directory that cannot be read or does not fit the model: the directory,
    /// then every problem, each naming the tensor and its file.
    #[error("checkpoint {0}")]
    Checkpoint(String),
    /// A safetensors file that cannot be read as the reference model's tensors.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A peer's stream carried what no message of the program can be (a frame longer than its
    /// largest message); the stream was closed.
    #[error("rank {rank}: the stream from rank {peer} was closed: {what}")]
    BadStream { rank: u32, peer: u32, what: String },
    /// Ranks as processes could not meet (`crate::rendezvous`): who and what went wrong.
    #[error("rank {rank}: rendezvous: {what}")]
    Rendezvous { rank: u32, what: String },
    /// A program that cannot run: it disagrees with itself or with the model (a transfer of
    /// rows its sender does not hold, a module the reference model lacks, ...).
    #[error("invalid program: {0}")]
    InvalidProgram(String),
    /// The CUDA backend cannot run here or failed: no driver or device, a library that cannot be
    /// opened (named with where it was looked for), or an error the driver, cuBLAS, NVRTC or
    /// NCCL reported.
    #[error("CUDA backend: {0}")]
    Device(String),
    /// The program asks for a layout field value the runtime does not execute (TP communication
    /// overlap, a CP ring): every module and field named. Refused before any work.
    #[error(
        "the runtime does not execute {0}; lower a plan that keeps to what it runs \
         (`hetpar plan --runnable`)"
    )]
    NotExecuted(String),
    /// A value the run computed is not a finite number (NaN or ±inf), first of all a step's
    /// loss: the run diverged, and every rank stops at that step.
    #[error("step {step}: {what} is {value}, not a finite number: the run diverged")]
    NonFinite {
        step: usize,
        what: String,
        value: String,
    },
    /// A hetpar model the reference implementation does not compute; every difference is named.
    #[error("the runtime cannot compute this model: {0}")]
    Unsupported(String),
}
