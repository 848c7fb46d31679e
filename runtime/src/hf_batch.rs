//! A batch in Hugging Face's convention, as a `transformers` training loop feeds a causal
//! language model: `input_ids` i64 [B, S] and, optionally, `labels` i64 [B, S] (unshifted,
//! -100 where ignored; `input_ids` when absent). hetpar's targets are the labels shifted by
//! one (`targets[b, p] = labels[b, p + 1]`, -100 at the end), as `transformers` shifts them.
//! A LLaVA batch adds `pixel_values` f32 [N, C, H, W]: every image of the batch in order, cut
//! into patches by the vision encoder's patch size (row after row of patches, each flattened as
//! (channel, row, column)); each sample takes, in order, as many images as its runs of the
//! model's image token (`token_id`) hold patches. An optional `image_counts` i64 [B] must agree.

use safetensors::SafeTensors;

use crate::dump::{f32_tensor, i64_tensor};
use crate::reference::batch::IGNORE;
use crate::reference::{Batch, Config};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// Whether `st` is a Hugging Face batch (it has `input_ids`).
pub fn is_hf_batch(st: &SafeTensors<'_>) -> bool {
    st.tensor("input_ids").is_ok()
}

/// The batch of `st` (`input_ids`, optional `labels`, and a VLM's `pixel_values`) for the
/// model `cfg`.
pub fn batch_from_hf(st: &SafeTensors<'_>, cfg: &Config) -> Result<Batch, RuntimeError> {
    let has = |name: &str| st.tensor(name).is_ok();
    let (shape, tokens) = i64_tensor(st, "input_ids")?;
    let [b, s] = shape[..] else {
        return Err(RuntimeError::Safetensors(format!(
            "`input_ids` has shape {shape:?}, expected [batch, sequence]"
        )));
    };
    let labels = if has("labels") {
        let (ls, l) = i64_tensor(st, "labels")?;
        if ls != shape {
            return Err(RuntimeError::Safetensors(format!(
                "`labels` has shape {ls:?} but `input_ids` {shape:?}"
            )));
        }
        l
    } else {
        tokens.clone()
    };
    let mut targets = vec![IGNORE; b * s];
    for r in 0..b {
        for p in 0..s.saturating_sub(1) {
            targets[r * s + p] = labels[r * s + p + 1];
        }
    }
    let mut batch = Batch {
        batch_size: b,
        seq_len: s,
        tokens,
        targets,
        patches: Tensor::zeros(&[0, 1]),
        patch_counts: Vec::new(),
        sample_images: vec![0; b],
        image_token_id: -1,
        audio: None,
    };
    if has("pixel_values") {
        images(st, cfg, &mut batch)?;
    }
    Ok(batch)
}

/// `pixel_values` cut into patch rows, and each sample's images from its image tokens.
fn images(st: &SafeTensors<'_>, cfg: &Config, batch: &mut Batch) -> Result<(), RuntimeError> {
    let bad = |m: String| RuntimeError::Safetensors(format!("`pixel_values`: {m}"));
    let e = cfg
        .vision
        .ok_or_else(|| bad("the model has no vision encoder".into()))?;
    let ((c, p), token) = match (e.image_patch, e.token_id) {
        (Some(patch), Some(token)) => (patch, token),
        _ => {
            return Err(bad(
                "the vision encoder has no patch size or no image token (`token_id`) to read \
                 images by"
                    .into(),
            ))
        }
    };
    let (shape, pixels) = f32_tensor(st, "pixel_values")?;
    let [n, ch, h, w] = shape[..] else {
        return Err(bad(format!(
            "shape {shape:?}, expected [images, channels, height, width]"
        )));
    };
    if ch != c || h % p != 0 || w % p != 0 {
        return Err(bad(format!(
            "shape {shape:?}: the encoder takes {c} channels and sides that are multiples of \
             its patch, {p}"
        )));
    }
    let per_image = (h / p) * (w / p);
    let mut patches = Vec::with_capacity(n * per_image * c * p * p);
    for img in pixels.chunks_exact(c * h * w) {
        for (py, px) in (0..h / p).flat_map(|y| (0..w / p).map(move |x| (y, x))) {
            for ch in 0..c {
                for ky in 0..p {
                    let row = ch * h * w + (py * p + ky) * w + px * p;
                    patches.extend_from_slice(&img[row..row + p]);
                }
            }
        }
    }
    let s = batch.seq_len;
    let mut counts = Vec::with_capacity(batch.batch_size);
    for (k, sample) in batch.tokens.chunks(s).enumerate() {
        let marked = sample.iter().filter(|&&t| t == token).count();
        if marked % per_image != 0 {
            return Err(bad(format!(
                "sample {k} has {marked} image tokens ({token}), not a multiple of the {per_image} \
                 patches of one image"
            )));
        }
        counts.push((marked / per_image) as i64);
    }
    if st.tensor("image_counts").is_ok() {
        let (_, given) = i64_tensor(st, "image_counts")?;
        if given != counts {
            return Err(RuntimeError::Safetensors(format!(
                "`image_counts` {given:?} disagrees with the image tokens of `input_ids` \
                 ({counts:?})"
            )));
        }
    }
    if counts.iter().sum::<i64>() != n as i64 {
        return Err(bad(format!(
            "{n} images, but the samples' image tokens hold {}",
            counts.iter().sum::<i64>()
        )));
    }
    batch.patches = Tensor::from_vec(&[n * per_image, c * p * p], patches)?;
    batch.patch_counts = vec![per_image as i64; n];
    batch.sample_images = counts;
    batch.image_token_id = token;
    Ok(())
}
