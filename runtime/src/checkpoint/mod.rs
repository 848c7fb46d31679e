//! Checkpoints (`docs/checkpoints.md`): a Hugging Face model directory read slice by slice
//! (`read.rs`), and hetpar's saves of a run in the same form plus its training state
//! (`save.rs`), from which a run resumes under the same plan or another (`resume.rs`).
//!
//! A rank never builds the whole model: it asks a [`WeightSource`] for the slices its layout
//! holds (`exec/shard_params.rs`), which an in-memory [`Params`] cuts from whole tensors and a
//! checkpoint reads from its memory-mapped files, touching only those slices' bytes.

pub mod read;
pub mod resume;
pub mod save;

use crate::exec::shard_params::{slice, Split};
use crate::reference::params::param_specs;
use crate::reference::{Config, Params};
use crate::tensor::Tensor;
use crate::RuntimeError;

pub use read::HfDir;
pub use resume::Resume;
pub use save::{SaveSpec, TrainingState};

/// Where a run's initial weights (and, resuming, Adam's state) come from, slice by slice.
pub trait WeightSource: Sync {
    /// Every parameter's hetpar name, sorted.
    fn names(&self) -> Vec<String>;

    /// Slice `t` of `tp` of parameter `name` under `split` (`exec/shard_params.rs`).
    fn slice(&self, name: &str, split: Split, t: usize, tp: usize) -> Result<Tensor, RuntimeError>;

    /// Adam's first and second moments of the same slice, and the updates taken, when the
    /// run resumes; `None` for a fresh start (moments start at zero).
    fn moments(
        &self,
        _name: &str,
        _split: Split,
        _t: usize,
        _tp: usize,
    ) -> Option<Result<(Tensor, Tensor), RuntimeError>> {
        None
    }

    /// Adam updates taken before this start (0 for a fresh one).
    fn adam_steps(&self) -> u64 {
        0
    }

    /// Whether it holds every parameter of `cfg`'s model and nothing else (a checkpoint checked
    /// its shapes on opening).
    fn check_fits(&self, cfg: &Config) -> Result<(), RuntimeError> {
        let names = self.names();
        let specs = param_specs(cfg);
        if let Some(s) = specs.iter().find(|s| !names.contains(&s.name)) {
            return Err(RuntimeError::MissingParam(s.name.clone()));
        }
        if let Some(n) = names.iter().find(|n| !specs.iter().any(|s| &s.name == *n)) {
            return Err(RuntimeError::UnexpectedParam(n.clone()));
        }
        Ok(())
    }
}

impl WeightSource for Params {
    fn names(&self) -> Vec<String> {
        self.iter().map(|(n, _)| n.clone()).collect()
    }

    fn slice(&self, name: &str, split: Split, t: usize, tp: usize) -> Result<Tensor, RuntimeError> {
        let x = self
            .get(name)
            .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
        Ok(slice(x, split, t, tp))
    }

    fn check_fits(&self, cfg: &Config) -> Result<(), RuntimeError> {
        self.check(cfg)
    }
}
