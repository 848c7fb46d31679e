//! Weights, gradients, batches and losses as safetensors bytes, with the documented names
//! (`docs/reference-model.md`): parameters by their names, gradients with the prefix `grad.`,
//! losses as `loss` f32 [steps]. Tensors are whole (as one device holds them), whatever plan
//! produced them. Bytes in, bytes out: callers do the file IO (atomically).

use std::collections::BTreeMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::tensor::Tensor;
use crate::RuntimeError;

fn err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Safetensors(e.to_string())
}

/// Serializes named f32 tensors (names sorted: deterministic bytes).
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (String, &'a Tensor)>,
) -> Result<Vec<u8>, RuntimeError> {
    let owned: BTreeMap<String, (Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let bytes: Vec<u8> = t.data().iter().flat_map(|x| x.to_le_bytes()).collect();
            (name, (t.shape().to_vec(), bytes))
        })
        .collect();
    let views = owned
        .iter()
        .map(|(name, (shape, bytes))| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    safetensors::tensor::serialize(views, None).map_err(err)
}

/// Reads every tensor of a safetensors buffer; every tensor must be f32.
pub fn from_bytes(bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, RuntimeError> {
    let st = SafeTensors::deserialize(bytes).map_err(err)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(RuntimeError::Safetensors(format!(
                "tensor `{name}` is {:?}, expected F32",
                view.dtype()
            )));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name.clone(), Tensor::from_vec(view.shape(), data)?);
    }
    Ok(out)
}

/// The losses of a run as `loss` f32 [steps].
pub fn losses_to_bytes(losses: &[f32]) -> Result<Vec<u8>, RuntimeError> {
    let t = Tensor::from_vec(&[losses.len()], losses.to_vec())?;
    to_bytes([("loss".to_string(), &t)])
}

/// Batch tensor names (`docs/reference-model.md`, "Inputs").
const TOKENS: &str = "tokens";
const TARGETS: &str = "targets";
const PATCHES: &str = "vision.patches";
const PATCH_COUNTS: &str = "vision.patch_counts";
const SAMPLE_IMAGES: &str = "vision.sample_images";
const IMAGE_TOKEN_ID: &str = "image_token_id";
const AUDIO_PATCHES: &str = "audio.patches";
const AUDIO_COUNTS: &str = "audio.patch_counts";
const AUDIO_SAMPLE_ITEMS: &str = "audio.sample_images";
const AUDIO_TOKEN_ID: &str = "audio_token_id";

/// A batch as safetensors: `tokens`, `targets` i64 [B, S], `vision.patches` f32 [Tv, P],
/// `vision.patch_counts` i64 [Nimg], `vision.sample_images` i64 [B], `image_token_id` i64 [1];
/// with an audio encoder also `audio.patches`, `audio.patch_counts`, `audio.sample_images` and
/// `audio_token_id`, likewise.
pub fn batch_to_bytes(b: &crate::reference::Batch) -> Result<Vec<u8>, RuntimeError> {
    let i64s = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let f32s: Vec<u8> = b
        .patches
        .data()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let owned: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            TOKENS,
            Dtype::I64,
            vec![b.batch_size, b.seq_len],
            i64s(&b.tokens),
        ),
        (
            TARGETS,
            Dtype::I64,
            vec![b.batch_size, b.seq_len],
            i64s(&b.targets),
        ),
        (PATCHES, Dtype::F32, b.patches.shape().to_vec(), f32s),
        (
            PATCH_COUNTS,
            Dtype::I64,
            vec![b.patch_counts.len()],
            i64s(&b.patch_counts),
        ),
        (
            SAMPLE_IMAGES,
            Dtype::I64,
            vec![b.sample_images.len()],
            i64s(&b.sample_images),
        ),
        (
            IMAGE_TOKEN_ID,
            Dtype::I64,
            vec![1],
            i64s(&[b.image_token_id]),
        ),
    ];
    let mut owned = owned;
    if let Some(a) = &b.audio {
        let f: Vec<u8> = a
            .patches
            .data()
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        owned.extend([
            (AUDIO_PATCHES, Dtype::F32, a.patches.shape().to_vec(), f),
            (
                AUDIO_COUNTS,
                Dtype::I64,
                vec![a.patch_counts.len()],
                i64s(&a.patch_counts),
            ),
            (
                AUDIO_SAMPLE_ITEMS,
                Dtype::I64,
                vec![a.sample_images.len()],
                i64s(&a.sample_images),
            ),
            (AUDIO_TOKEN_ID, Dtype::I64, vec![1], i64s(&[a.token_id])),
        ]);
    }
    let views = owned
        .iter()
        .map(|(n, d, s, bytes)| TensorView::new(*d, s.clone(), bytes).map(|v| (n.to_string(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    safetensors::tensor::serialize(views, None).map_err(err)
}

/// Reads a batch written as [`batch_to_bytes`] describes; every missing or mistyped tensor is
/// named. The batch's own consistency is [`crate::reference::Batch::layout`]'s check.
pub fn batch_from_bytes(
    bytes: &[u8],
    cfg: &crate::reference::Config,
) -> Result<crate::reference::Batch, RuntimeError> {
    let st = SafeTensors::deserialize(bytes).map_err(err)?;
    if crate::hf_batch::is_hf_batch(&st) {
        return crate::hf_batch::batch_from_hf(&st, cfg);
    }
    let mut problems = Vec::new();
    let mut get = |name: &str, dtype: Dtype, rank: usize| -> Option<(Vec<usize>, Vec<u8>)> {
        match st.tensor(name) {
            Err(_) => problems.push(format!("tensor `{name}` is missing")),
            Ok(v) if v.dtype() != dtype => problems.push(format!(
                "tensor `{name}` is {:?}, expected {dtype:?}",
                v.dtype()
            )),
            Ok(v) if v.shape().len() != rank => problems.push(format!(
                "tensor `{name}` has shape {:?}, expected {rank} dimensions",
                v.shape()
            )),
            Ok(v) => return Some((v.shape().to_vec(), v.data().to_vec())),
        }
        None
    };
    let tokens = get(TOKENS, Dtype::I64, 2);
    let targets = get(TARGETS, Dtype::I64, 2);
    let patches = get(PATCHES, Dtype::F32, 2);
    let counts = get(PATCH_COUNTS, Dtype::I64, 1);
    let images = get(SAMPLE_IMAGES, Dtype::I64, 1);
    let image_token = get(IMAGE_TOKEN_ID, Dtype::I64, 1);
    let audio = if st.tensor(AUDIO_PATCHES).is_ok() {
        Some((
            get(AUDIO_PATCHES, Dtype::F32, 2),
            get(AUDIO_COUNTS, Dtype::I64, 1),
            get(AUDIO_SAMPLE_ITEMS, Dtype::I64, 1),
            get(AUDIO_TOKEN_ID, Dtype::I64, 1),
        ))
    } else {
        None
    };
    let (Some(tokens), Some(targets), Some(patches), Some(counts), Some(images), Some(image_token)) =
        (tokens, targets, patches, counts, images, image_token)
    else {
        return Err(RuntimeError::Safetensors(format!(
            "not a batch: {}",
            problems.join("; ")
        )));
    };
    let i64s = |b: &[u8]| -> Vec<i64> {
        b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    };
    let f32s = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let audio = match audio {
        None => None,
        Some((Some(p), Some(c), Some(s), Some(t))) => Some(crate::reference::batch::EncoderBatch {
            patches: Tensor::from_vec(&p.0, f32s(&p.1))?,
            patch_counts: i64s(&c.1),
            sample_images: i64s(&s.1),
            token_id: *i64s(&t.1).first().ok_or_else(|| {
                RuntimeError::Safetensors("`audio_token_id` holds no value".into())
            })?,
        }),
        Some(_) => {
            return Err(RuntimeError::Safetensors(format!(
                "not a batch: {}",
                problems.join("; ")
            )))
        }
    };
    if targets.0 != tokens.0 {
        return Err(RuntimeError::Safetensors(format!(
            "`targets` has shape {:?} but `tokens` {:?}",
            targets.0, tokens.0
        )));
    }
    let id = i64s(&image_token.1);
    Ok(crate::reference::Batch {
        batch_size: tokens.0[0],
        seq_len: tokens.0[1],
        tokens: i64s(&tokens.1),
        targets: i64s(&targets.1),
        patches: Tensor::from_vec(&patches.0, f32s(&patches.1))?,
        patch_counts: i64s(&counts.1),
        sample_images: i64s(&images.1),
        image_token_id: *id
            .first()
            .ok_or_else(|| RuntimeError::Safetensors("`image_token_id` holds no value".into()))?,
        audio,
    })
}

/// The tensor `name` of a safetensors buffer, of type `dtype`, each value read from its
/// little-endian bytes: its shape and values.
fn typed_tensor<T, const N: usize>(
    st: &SafeTensors<'_>,
    name: &str,
    dtype: Dtype,
    read: fn([u8; N]) -> T,
) -> Result<(Vec<usize>, Vec<T>), RuntimeError> {
    let v = st
        .tensor(name)
        .map_err(|_| RuntimeError::Safetensors(format!("tensor `{name}` is missing")))?;
    if v.dtype() != dtype {
        return Err(RuntimeError::Safetensors(format!(
            "tensor `{name}` is {:?}, expected {dtype:?}",
            v.dtype()
        )));
    }
    let data = v
        .data()
        .chunks_exact(N)
        .map(|c| read(c.try_into().expect("N bytes")))
        .collect();
    Ok((v.shape().to_vec(), data))
}

/// The i64 tensor `name` of a safetensors buffer: its shape and values.
pub(crate) fn i64_tensor(
    st: &SafeTensors<'_>,
    name: &str,
) -> Result<(Vec<usize>, Vec<i64>), RuntimeError> {
    typed_tensor(st, name, Dtype::I64, i64::from_le_bytes)
}

/// The f32 tensor `name` of a safetensors buffer: its shape and values.
pub(crate) fn f32_tensor(
    st: &SafeTensors<'_>,
    name: &str,
) -> Result<(Vec<usize>, Vec<f32>), RuntimeError> {
    typed_tensor(st, name, Dtype::F32, f32::from_le_bytes)
}
