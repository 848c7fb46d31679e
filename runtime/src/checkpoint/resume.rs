//! Resuming a saved run (`--resume DIR`): the step directory `DIR/latest` names (or `DIR`
//! itself when it is one), its weights read as any Hugging Face directory is and Adam's
//! moments from `hetpar/` the same way, slice by slice for the plan of the resumed run. The
//! saved tensors are whole, so a different plan (tp, pp, dp, ep) reshards them by the same
//! arithmetic that cut them (`ir::shard::even_part`), and the same plan gets back the bits it
//! saved.

use std::path::{Path, PathBuf};

use super::read::HfDir;
use super::save::{TrainingState, EXP_AVG, EXP_AVG_SQ, LATEST, STATE_DIR};
use super::WeightSource;
use crate::exec::shard_params::Split;
use crate::reference::params::Config;
use crate::tensor::Tensor;
use crate::RuntimeError;

/// A saved run, opened for resuming.
pub struct Resume {
    pub dir: PathBuf,
    pub state: TrainingState,
    weights: HfDir,
    exp_avg: HfDir,
    exp_avg_sq: HfDir,
}

fn err(p: &Path, what: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Checkpoint(format!("{}: {what}", p.display()))
}

/// The step directory to resume from: the one `dir/latest` names, or `dir` itself.
pub fn step_directory(dir: &Path) -> Result<PathBuf, RuntimeError> {
    let latest = dir.join(LATEST);
    if latest.is_file() {
        let name = std::fs::read_to_string(&latest).map_err(|e| err(&latest, e))?;
        let name = name.trim();
        if name.is_empty() || name.contains('/') || name.contains('\\') || name == ".." {
            return Err(err(
                &latest,
                format!("`{name}` is not a step directory's name"),
            ));
        }
        return Ok(dir.join(name));
    }
    if dir.join(STATE_DIR).join("state.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    Err(err(
        dir,
        format!("neither a `{LATEST}` file nor a saved step (no {STATE_DIR}/state.json)"),
    ))
}

/// A saved step's training state.
pub fn read_state(step: &Path) -> Result<TrainingState, RuntimeError> {
    let p = step.join(STATE_DIR).join("state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| err(&p, e))?;
    let state: TrainingState = serde_json::from_str(&text).map_err(|e| err(&p, e))?;
    if state.format_version != 1 {
        return Err(err(
            &p,
            format!("format_version {} (hetpar reads 1)", state.format_version),
        ));
    }
    Ok(state)
}

impl Resume {
    /// Opens the save in `dir` for `cfg`'s model, checking every tensor of it.
    pub fn open(dir: &Path, cfg: &Config) -> Result<Resume, RuntimeError> {
        let step = step_directory(dir)?;
        let state = read_state(&step)?;
        let weights = HfDir::open(&step, cfg)?;
        let hetpar = step.join(STATE_DIR);
        let exp_avg = HfDir::open_files(&hetpar, &[EXP_AVG.to_string()], None, cfg)?;
        let exp_avg_sq = HfDir::open_files(&hetpar, &[EXP_AVG_SQ.to_string()], None, cfg)?;
        Ok(Resume {
            dir: step,
            state,
            weights,
            exp_avg,
            exp_avg_sq,
        })
    }
}

impl WeightSource for Resume {
    fn names(&self) -> Vec<String> {
        self.weights.names()
    }

    fn slice(&self, name: &str, split: Split, t: usize, tp: usize) -> Result<Tensor, RuntimeError> {
        self.weights.slice(name, split, t, tp)
    }

    fn moments(
        &self,
        name: &str,
        split: Split,
        t: usize,
        tp: usize,
    ) -> Option<Result<(Tensor, Tensor), RuntimeError>> {
        let m = self.exp_avg.slice(name, split, t, tp);
        let v = self.exp_avg_sq.slice(name, split, t, tp);
        Some(m.and_then(|m| v.map(|v| (m, v))))
    }

    fn adam_steps(&self) -> u64 {
        self.state.adam_steps
    }
}
