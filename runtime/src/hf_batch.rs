//! A batch in Hugging Face's convention, as a `transformers` training loop feeds a causal
//! language model: `input_ids` i64 [B, S] and, optionally, `labels` i64 [B, S] (unshifted,
//! -100 where ignored; `input_ids` when absent). hetpar's targets are the labels shifted by
//! one (`targets[b, p] = labels[b, p + 1]`, -100 at the end), as `transformers` shifts them.
//! Text only: images in this convention (`pixel_values`) are refused by name.

use safetensors::SafeTensors;

use crate::dump::i64_tensor;
use crate::reference::batch::IGNORE;
use crate::reference::Batch;
use crate::tensor::Tensor;
use crate::RuntimeError;

/// Whether `st` is a Hugging Face batch (it has `input_ids`).
pub fn is_hf_batch(st: &SafeTensors<'_>) -> bool {
    st.tensor("input_ids").is_ok()
}

/// The batch of `st` (`input_ids`, optional `labels`).
pub fn batch_from_hf(st: &SafeTensors<'_>) -> Result<Batch, RuntimeError> {
    let has = |name: &str| st.tensor(name).is_ok();
    if has("pixel_values") {
        return Err(RuntimeError::Safetensors(
            "`pixel_values`: images in Hugging Face's convention are not read yet; give them \
             as `vision.patches` (docs/reference-model.md, \"Inputs\")"
                .into(),
        ));
    }
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
    Ok(Batch {
        batch_size: b,
        seq_len: s,
        tokens,
        targets,
        patches: Tensor::zeros(&[0, 1]),
        patch_counts: Vec::new(),
        sample_images: vec![0; b],
        image_token_id: -1,
        audio: None,
    })
}
