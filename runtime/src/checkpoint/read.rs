//! A Hugging Face model directory read slice by slice: `model.safetensors`, or the shards a
//! `model.safetensors.index.json` names, memory-mapped. Opening reads only the files' headers
//! and checks every tensor against the model (missing, extra, mis-shaped, of a dtype hetpar
//! does not read), every problem at once, each naming the tensor and its file. A slice then
//! copies only its own bytes out of the map: a column split's rows are one contiguous run, a
//! row split's columns one run per row.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::WeightSource;
use crate::exec::shard_params::{tp_part, Split};
use crate::hf_names::{from_hf, to_hf_in};
use crate::hf_vision;
use crate::reference::params::{param_specs, Config};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// The index of a sharded save (`save_pretrained`'s name).
pub const INDEX: &str = "model.safetensors.index.json";
/// The single file of an unsharded save.
pub const SINGLE: &str = "model.safetensors";

/// Where one tensor's values lie.
#[derive(Clone, Debug)]
struct Located {
    /// Index into `HfDir::files`.
    file: usize,
    /// The name in the file.
    stored: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Its first byte in the file.
    start: usize,
}

/// A directory of safetensors files holding one model's tensors, memory-mapped.
pub struct HfDir {
    dir: PathBuf,
    /// (file name, its map).
    files: Vec<(String, Mmap)>,
    /// By hetpar name.
    tensors: BTreeMap<String, Located>,
}

fn problem(dir: &Path, problems: Vec<String>) -> RuntimeError {
    RuntimeError::Checkpoint(format!("{}: {}", dir.display(), problems.join("; ")))
}

/// Each tensor's file, as an index names it.
type WeightMap = BTreeMap<String, String>;

/// The files of a model directory: the index's (in name order), else `model.safetensors`.
fn model_files(dir: &Path) -> Result<(Vec<String>, Option<WeightMap>), String> {
    let index = dir.join(INDEX);
    if !index.exists() {
        if dir.join(SINGLE).exists() {
            return Ok((vec![SINGLE.to_string()], None));
        }
        return Err(format!("neither {INDEX} nor {SINGLE} is there"));
    }
    let text = std::fs::read_to_string(&index).map_err(|e| format!("{INDEX}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{INDEX}: not JSON: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{INDEX}: no `weight_map` object"))?;
    let mut weight_map = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.contains('/') && !f.contains('\\') && *f != ".." && !f.is_empty())
            .ok_or_else(|| format!("{INDEX}: weight_map.{name} is not a file name beside it"))?;
        weight_map.insert(name.clone(), file.to_string());
    }
    let files: BTreeSet<String> = weight_map.values().cloned().collect();
    Ok((files.into_iter().collect(), Some(weight_map)))
}

/// The map of one file, and its tensors by stored name.
fn map_file(path: &Path) -> Result<(Mmap, Vec<(String, Located)>), String> {
    let file = File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    // SAFETY: the map is only read; a checkpoint changed under a running job is outside
    // what any trainer supports, and a header read here bounds every later slice.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| format!("cannot map it: {e}"))?;
    let (n, meta) =
        SafeTensors::read_metadata(&map).map_err(|e| format!("not safetensors: {e}"))?;
    let base = 8 + n;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        out.push((
            name.clone(),
            Located {
                file: 0,
                stored: name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: base + info.data_offsets.0,
            },
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((map, out))
}

impl HfDir {
    /// Opens a Hugging Face model directory for `cfg`'s model, checking every tensor.
    pub fn open(dir: &Path, cfg: &Config) -> Result<HfDir, RuntimeError> {
        let (files, weight_map) = model_files(dir).map_err(|p| problem(dir, vec![p]))?;
        HfDir::open_files(dir, &files, weight_map.as_ref(), cfg)
    }

    /// Opens `files` of `dir` as one model's tensors (named as Hugging Face names them, or as
    /// hetpar does where Hugging Face has no name), each listed in `weight_map` when given.
    pub fn open_files(
        dir: &Path,
        files: &[String],
        weight_map: Option<&BTreeMap<String, String>>,
        cfg: &Config,
    ) -> Result<HfDir, RuntimeError> {
        let mut problems = Vec::new();
        let mut maps = Vec::new();
        let mut found: BTreeMap<String, Located> = BTreeMap::new();
        for name in files {
            let (map, tensors) = match map_file(&dir.join(name)) {
                Ok(x) => x,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    continue;
                }
            };
            for (stored, mut loc) in tensors {
                loc.file = maps.len();
                if let Some(wm) = weight_map {
                    if wm.get(&stored) != Some(name) {
                        problems.push(format!(
                            "`{stored}` is in {name}, but {INDEX} does not say so"
                        ));
                        continue;
                    }
                }
                if let Some(prev) = found.get(&stored) {
                    let other = &files_of(&maps, prev.file);
                    problems.push(format!("`{stored}` is in both {other} and {name}"));
                    continue;
                }
                found.insert(stored, loc);
            }
            maps.push((name.clone(), map));
        }
        if let Some(wm) = weight_map {
            for (stored, file) in wm {
                if !found.contains_key(stored) && maps.iter().any(|(n, _)| n == file) {
                    problems.push(format!("{INDEX} puts `{stored}` in {file}, which lacks it"));
                }
            }
        }
        let tensors = check_against(&maps, found, cfg, &mut problems);
        if !problems.is_empty() {
            return Err(problem(dir, problems));
        }
        Ok(HfDir {
            dir: dir.to_path_buf(),
            files: maps,
            tensors,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of values under the maps (what a full read would copy).
    pub fn bytes(&self) -> usize {
        self.tensors
            .values()
            .map(|l| l.shape.iter().product::<usize>() * size_of(l.dtype))
            .sum()
    }

    /// Values `range` (element indices) of tensor `loc`, as f32, refusing a value that is not
    /// finite.
    fn values(
        &self,
        loc: &Located,
        range: Range<usize>,
        out: &mut Vec<f32>,
    ) -> Result<(), RuntimeError> {
        let (file, map) = &self.files[loc.file];
        let es = size_of(loc.dtype);
        let bytes = &map[loc.start + range.start * es..loc.start + range.end * es];
        let before = out.len();
        match loc.dtype {
            Dtype::BF16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)),
            ),
            _ => out.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
        }
        if let Some(x) = out[before..].iter().find(|x| !x.is_finite()) {
            return Err(RuntimeError::Checkpoint(format!(
                "{}: `{}` in {file} holds {x}, not a finite number",
                self.dir.display(),
                loc.stored
            )));
        }
        Ok(())
    }
}

fn files_of(maps: &[(String, Mmap)], i: usize) -> String {
    maps.get(i).map_or_else(String::new, |(n, _)| n.clone())
}

fn size_of(d: Dtype) -> usize {
    if d == Dtype::BF16 {
        2
    } else {
        4
    }
}

/// The tensors by hetpar name, each checked against the model: unknown names, dtypes other
/// than F32 and BF16, shapes the model does not have, and the model's tensors none holds.
fn check_against(
    maps: &[(String, Mmap)],
    found: BTreeMap<String, Located>,
    cfg: &Config,
    problems: &mut Vec<String>,
) -> BTreeMap<String, Located> {
    let specs: BTreeMap<String, Vec<usize>> = param_specs(cfg)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect();
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (stored, mut loc) in found {
        let file = files_of(maps, loc.file);
        // A LLaVA tower's layers past its feature layer feed nothing.
        if hf_vision::unused(&stored, cfg) {
            continue;
        }
        let ours = from_hf(&stored).unwrap_or_else(|| stored.clone());
        let Some(shape) = specs.get(&ours) else {
            problems.push(format!(
                "`{stored}` in {file} is not a tensor of this model"
            ));
            continue;
        };
        if !seen.insert(ours.clone()) {
            problems.push(format!("`{stored}` in {file} is a second copy of `{ours}`"));
            continue;
        }
        if !matches!(loc.dtype, Dtype::F32 | Dtype::BF16) {
            problems.push(format!(
                "`{stored}` in {file} is {:?}; hetpar reads F32 and BF16",
                loc.dtype
            ));
        } else if hf_vision::same_values(&ours, &loc.shape, shape) {
            // The patch convolution's and the class embedding's values, in hetpar's shape.
            loc.shape = shape.clone();
            out.insert(ours, loc);
        } else if &loc.shape != shape {
            problems.push(format!(
                "`{stored}` in {file} has shape {:?}, the model needs {shape:?}",
                loc.shape
            ));
        } else {
            out.insert(ours, loc);
        }
    }
    for name in specs.keys() {
        if !seen.contains(name) {
            let hf = to_hf_in(name, cfg).unwrap_or_else(|| name.clone());
            problems.push(format!("`{hf}` is missing (no file has it)"));
        }
    }
    out
}

impl WeightSource for HfDir {
    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn slice(&self, name: &str, split: Split, t: usize, tp: usize) -> Result<Tensor, RuntimeError> {
        let loc = self
            .tensors
            .get(name)
            .ok_or_else(|| RuntimeError::MissingParam(name.to_string()))?;
        let shape = &loc.shape;
        let mut values = Vec::new();
        let out_shape = match split {
            Split::Replicated => {
                self.values(loc, 0..shape.iter().product(), &mut values)?;
                shape.clone()
            }
            Split::Column => {
                let inner: usize = shape[1..].iter().product();
                let rows = tp_part(shape[0], tp, t);
                self.values(loc, rows.start * inner..rows.end * inner, &mut values)?;
                let mut s = shape.clone();
                s[0] = rows.len();
                s
            }
            Split::Row => {
                let (rows, cols) = (shape[0], shape[1]);
                let part = tp_part(cols, tp, t);
                values.reserve(rows * part.len());
                for r in 0..rows {
                    self.values(loc, r * cols + part.start..r * cols + part.end, &mut values)?;
                }
                vec![rows, part.len()]
            }
        };
        Tensor::from_vec(&out_shape, values)
    }
}
