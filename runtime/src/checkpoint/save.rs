//! Saving a run (`--save DIR --save-every N`). Every `N` steps, and after the last, each rank
//! writes the slices it is the first holder of (its weights and Adam's moments, whole over its
//! dp × cp group) to its own file, all ranks at once, into `DIR/.step-XXXXXXXX.partial/`. When
//! every rank has written, the lowest consolidates them into the Hugging Face form (`model*.safetensors`,
//! with `model.safetensors.index.json` when sharded, and the source's `config.json`) and
//! hetpar's training state under `hetpar/` (whole moments, `state.json`, the model and the
//! program the run was written under), removes the rank files, renames the directory to
//! `step-XXXXXXXX` and then atomically replaces the `latest` file that names it. A save cut
//! short leaves only a `.partial` directory: `latest` still names the previous one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::exec::rank::RankState;
use crate::exec::shard_params::{belongs, holder, holders, unslice, Split};
use crate::hf_names::to_hf_in;
use crate::hf_vision::hf_shape;
use crate::reference::params::{param_specs, Config};
use crate::tensor::Tensor;
use crate::RuntimeError;
use hetpar_ir::program::Program;

/// The file naming the newest complete save.
pub const LATEST: &str = "latest";
/// hetpar's part of a save.
pub const STATE_DIR: &str = "hetpar";
/// Adam's first and second moments, whole, under the weights' names.
pub const EXP_AVG: &str = "exp_avg.safetensors";
pub const EXP_AVG_SQ: &str = "exp_avg_sq.safetensors";

/// Where and how often a run saves, and what it writes beside the tensors.
#[derive(Clone, Debug)]
pub struct SaveSpec {
    pub dir: PathBuf,
    /// Save after every `every` steps (counted from the first run's start), and after the last.
    pub every: usize,
    /// Steps taken before this run (a resumed run's), so step numbers continue.
    pub first_step: u64,
    /// The seed of the run's synthetic data and weights (recorded; the caller resumes by it).
    pub seed: u64,
    /// Adam's learning rate (recorded).
    pub lr: f64,
    /// The Hugging Face `config.json` the model came from, copied as is.
    pub config_json: Option<String>,
    /// The hetpar model file of the run.
    pub model_json: String,
    /// The most bytes of one consolidated weights file (Hugging Face's shards).
    pub max_shard_bytes: usize,
}

/// `hetpar/state.json`: where training stood.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    pub format_version: u32,
    /// Training steps taken.
    pub step: u64,
    /// Adam's updates taken (its bias corrections' `t`).
    pub adam_steps: u64,
    /// Batches consumed: synthetic batch `k` is drawn from `seed`, `k` (the data's position).
    pub data_position: u64,
    pub seed: u64,
    pub lr: f64,
}

/// A step directory's name.
pub fn step_dir(step: u64) -> String {
    format!("step-{step:08}")
}

fn io_err(what: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Checkpoint(format!("{}: {e}", what.display()))
}

/// Writes `bytes` to `path`, flushed to the disk.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut f = std::fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

// Safetensors stores little-endian values, which f32 memory then already is.
const _: () = assert!(cfg!(target_endian = "little"));

/// `x`'s values as the bytes safetensors stores.
fn le_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and u8 no alignment; the length covers the same memory; on a
    // little-endian target (asserted above) these are the values' little-endian bytes.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), std::mem::size_of_val(x)) }
}

/// Writes named f32 tensors to `path` as safetensors (names sorted: deterministic bytes),
/// streamed from the tensors' memory, flushed to the disk when `sync`.
fn write_tensors(
    path: &Path,
    tensors: &[(String, &Tensor)],
    sync: bool,
) -> Result<(), RuntimeError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = TensorView::new(Dtype::F32, t.shape().to_vec(), le_bytes(t.data()))
            .map_err(|e| io_err(path, e))?;
        views.push((name.as_str(), v));
    }
    views.sort_by(|a, b| a.0.cmp(b.0));
    safetensors::serialize_to_file(views, None, path).map_err(|e| io_err(path, e))?;
    if sync {
        let f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        f.sync_all().map_err(|e| io_err(path, e))?;
    }
    Ok(())
}

impl SaveSpec {
    /// Whether the run saves after its step `k` (from 0) of `steps`.
    pub fn due(&self, k: usize, steps: usize) -> bool {
        let done = self.first_step + k as u64 + 1;
        k + 1 == steps || done.is_multiple_of(self.every.max(1) as u64)
    }

    fn partial(&self, step: u64) -> PathBuf {
        self.dir.join(format!(".{}.partial", step_dir(step)))
    }
}

/// The save after step `k` (from 0) of this run, on rank `st`; `ranks` are every rank, sorted.
pub fn save_step(
    st: &mut RankState<'_>,
    spec: &SaveSpec,
    k: usize,
    ranks: &[u32],
) -> Result<(), RuntimeError> {
    let step = spec.first_step + k as u64 + 1;
    let partial = spec.partial(step);
    let state_dir = partial.join(STATE_DIR);
    std::fs::create_dir_all(&state_dir).map_err(|e| io_err(&state_dir, e))?;
    let written = write_rank_file(st, &state_dir);
    // Every rank has written (or failed) before the lowest reads their files.
    let word = [if written.is_ok() { 1.0f32 } else { 0.0 }];
    let t = crate::exec::comm::tag(crate::exec::comm::Kind::GradSync, 63, 2, 0, 255);
    let all = st.net.all_gather(ranks, t, &word)?;
    written?;
    if ranks.first() != Some(&st.rank) {
        return Ok(());
    }
    if let Some(r) = all.iter().position(|w| w.first() != Some(&1.0)) {
        return Err(RuntimeError::Checkpoint(format!(
            "{}: rank {} could not write its part",
            partial.display(),
            ranks[r]
        )));
    }
    let state = TrainingState {
        format_version: 1,
        step,
        adam_steps: st.adam.step_count(),
        data_position: step,
        seed: spec.seed,
        lr: spec.lr,
    };
    consolidate(&partial, st.program, &st.cfg, ranks, spec, &state)?;
    publish(&spec.dir, &partial, step)
}

/// The rank's file: the slices it is the first holder of (the tp slices at the holder's cp and
/// dp coordinate, on their stage; not a tied head's copy), with Adam's moments whole over its
/// dp × cp group. Every rank joins the moments' gathers, whether it writes or not.
fn write_rank_file(st: &mut RankState<'_>, dir: &Path) -> Result<(), RuntimeError> {
    let (m1, m2) = st.whole_moments()?;
    let mut out: Vec<(String, &Tensor)> = Vec::new();
    for m in st.modules.iter().flatten() {
        for n in &m.names {
            let (c, d) = holder(n, m.prog, m.experts());
            if (c, d) != (m.coord[1], m.coord[2]) || !belongs(n, m.unit, m.prog, m.coord[3]) {
                continue;
            }
            out.push((format!("w.{n}"), st.params.get(n).expect("held")));
            if let (Some(a), Some(b)) = (m1.get(n), m2.get(n)) {
                out.push((format!("m.{n}"), a));
                out.push((format!("v.{n}"), b));
            }
        }
    }
    // Not flushed: the lowest rank reads it back at once and removes it.
    write_tensors(&dir.join(rank_file(st.rank)), &out, false)
}

fn rank_file(rank: u32) -> String {
    format!("rank-{rank:05}.safetensors")
}

/// The rank files of `partial`, memory-mapped.
struct RankFiles {
    dir: PathBuf,
    maps: BTreeMap<u32, Mmap>,
}

impl RankFiles {
    fn open(dir: &Path, ranks: &[u32]) -> Result<RankFiles, RuntimeError> {
        let mut maps = BTreeMap::new();
        for &r in ranks {
            let p = dir.join(rank_file(r));
            let f = std::fs::File::open(&p).map_err(|e| io_err(&p, e))?;
            // SAFETY: read only, and written in full by its rank before the barrier.
            let map = unsafe { Mmap::map(&f) }.map_err(|e| io_err(&p, e))?;
            maps.insert(r, map);
        }
        Ok(RankFiles {
            dir: dir.to_path_buf(),
            maps,
        })
    }

    /// `key` (`w.`, `m.` or `v.` and the name) whole, from its holders' slices.
    fn whole(&self, key: &str, ranks: &[u32], split: Split) -> Result<Tensor, RuntimeError> {
        let mut parts = Vec::with_capacity(ranks.len());
        for r in ranks {
            let missing = || io_err(&self.dir.join(rank_file(*r)), format!("no `{key}`"));
            let map = self.maps.get(r).ok_or_else(missing)?;
            let st = SafeTensors::deserialize(map).map_err(|e| io_err(&self.dir, e))?;
            let view = st.tensor(key).map_err(|_| missing())?;
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            parts.push(Tensor::from_vec(view.shape(), values)?);
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        Ok(unslice(&refs, split))
    }
}

/// The consolidated files of a save, from its ranks' files (then removed).
fn consolidate(
    partial: &Path,
    program: &Program,
    cfg: &Config,
    ranks: &[u32],
    spec: &SaveSpec,
    state: &TrainingState,
) -> Result<(), RuntimeError> {
    let state_dir = partial.join(STATE_DIR);
    let files = RankFiles::open(&state_dir, ranks)?;
    let names: Vec<String> = param_specs(cfg).into_iter().map(|s| s.name).collect();
    let holders = holders(program, cfg, &names);
    // Hugging Face names, sorted: the files' order and contents are deterministic.
    let named: BTreeMap<String, (&String, &(Vec<u32>, Split))> = holders
        .iter()
        .map(|(n, h)| (to_hf_in(n, cfg).unwrap_or_else(|| n.clone()), (n, h)))
        .collect();
    let specs: BTreeMap<String, usize> = param_specs(cfg)
        .into_iter()
        .map(|s| (s.name, s.shape.iter().product::<usize>() * 4))
        .collect();
    let mut shards: Vec<Vec<&String>> = vec![Vec::new()];
    let mut size = 0;
    for (hf, (n, _)) in &named {
        let b = specs[*n];
        if size > 0 && size + b > spec.max_shard_bytes {
            shards.push(Vec::new());
            size = 0;
        }
        size += b;
        shards.last_mut().expect("one at least").push(hf);
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if count == 1 {
            super::read::SINGLE.to_string()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let mut tensors = Vec::with_capacity(shard.len());
        for hf in shard {
            let (n, (rs, split)) = named[*hf];
            let t = files.whole(&format!("w.{n}"), rs, *split)?;
            // Under the shape the checkpoint gives it (LLaVA's patch and class embeddings).
            tensors.push(((*hf).clone(), hf_shape(n, &t, cfg)));
            weight_map.insert((*hf).clone(), file.clone().into());
        }
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        write_tensors(&partial.join(&file), &refs, true)?;
    }
    if count > 1 {
        let total: usize = specs.values().sum();
        let index =
            serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        let text = serde_json::to_string_pretty(&index).expect("JSON");
        write_synced(&partial.join(super::read::INDEX), text.as_bytes())?;
    }
    for (prefix, file) in [("m.", EXP_AVG), ("v.", EXP_AVG_SQ)] {
        let mut tensors = Vec::with_capacity(named.len());
        for (hf, (n, (rs, split))) in &named {
            let t = files.whole(&format!("{prefix}{n}"), rs, *split)?;
            tensors.push((hf.clone(), hf_shape(n, &t, cfg)));
        }
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
        write_tensors(&state_dir.join(file), &refs, true)?;
    }
    drop(files);
    for &r in ranks {
        let p = state_dir.join(rank_file(r));
        std::fs::remove_file(&p).map_err(|e| io_err(&p, e))?;
    }
    let program_json = serde_json::to_string_pretty(program).expect("JSON");
    let state_json = serde_json::to_string_pretty(state).expect("JSON");
    for (file, text) in [
        ("program.json", program_json.as_str()),
        ("model.json", spec.model_json.as_str()),
        ("state.json", state_json.as_str()),
    ] {
        write_synced(&state_dir.join(file), text.as_bytes())?;
    }
    if let Some(c) = &spec.config_json {
        write_synced(&partial.join("config.json"), c.as_bytes())?;
    }
    Ok(())
}

/// Renames the finished `partial` to its step directory, then points `latest` at it (a new
/// file renamed over the old: readers see the old name or the new, never a torn one).
fn publish(dir: &Path, partial: &Path, step: u64) -> Result<(), RuntimeError> {
    let name = step_dir(step);
    let done = dir.join(&name);
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| io_err(&done, e))?;
    }
    std::fs::rename(partial, &done).map_err(|e| io_err(partial, e))?;
    let tmp = dir.join(format!(".{LATEST}.{}", std::process::id()));
    write_synced(&tmp, format!("{name}\n").as_bytes())?;
    std::fs::rename(&tmp, dir.join(LATEST)).map_err(|e| io_err(&tmp, e))?;
    // The renames themselves reach the disk.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
