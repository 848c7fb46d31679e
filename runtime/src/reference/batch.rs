//! One global batch of the reference model and its validation.

use std::ops::Range;

use super::params::{Config, EncoderConfig, Source};
use crate::error::RuntimeError;
use crate::tensor::Tensor;

/// The value of a target that is ignored (placeholders, padding).
pub const IGNORE: i64 = -100;

/// One global batch (`docs/reference-model.md`, "Inputs").
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Samples (`B`).
    pub batch_size: usize,
    /// Sequence length of every sample (at most the configuration's `S`).
    pub seq_len: usize,
    /// Token ids, `[B, S]` row-major; positions holding `image_token_id` receive encoder rows.
    pub tokens: Vec<i64>,
    /// Next-token targets, `[B, S]` row-major, [`IGNORE`] (`-100`) where ignored.
    pub targets: Vec<i64>,
    /// Patches of all images, image after image, sample after sample: `[Tv, P]`.
    pub patches: Tensor,
    /// Patches of each image, `[Nimg]`.
    pub patch_counts: Vec<i64>,
    /// Images of each sample, in order, `[B]`.
    pub sample_images: Vec<i64>,
    /// The placeholder token id.
    pub image_token_id: i64,
    /// The second encoder's inputs, when the model has one.
    pub audio: Option<EncoderBatch>,
}

/// One encoder's inputs besides the vision encoder's (`audio.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderBatch {
    /// Frames of all items, item after item, sample after sample: `[Ta, Pa]`.
    pub patches: Tensor,
    /// Frames of each item.
    pub patch_counts: Vec<i64>,
    /// Items of each sample, in order, `[B]`.
    pub sample_images: Vec<i64>,
    /// Its placeholder token id.
    pub token_id: i64,
}

/// Where one encoder's items lie.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct EncoderLayout {
    /// Patch rows of each item.
    pub images: Vec<Range<usize>>,
    /// Item indices of each sample.
    pub sample_images: Vec<Range<usize>>,
}

/// Where each image's patches and each sample's images lie, once a batch is validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLayout {
    /// Patch rows of each image.
    pub images: Vec<Range<usize>>,
    /// Image indices of each sample.
    pub sample_images: Vec<Range<usize>>,
    /// The number of targets `≠ -100` in the whole batch (the loss's denominator).
    pub targets: usize,
    /// The audio encoder's items, when there is one.
    pub audio: Option<EncoderLayout>,
}

impl BatchLayout {
    /// Encoder `s`'s items.
    pub fn encoder(&self, s: Source) -> EncoderLayout {
        match (s, &self.audio) {
            (Source::Audio, Some(a)) => a.clone(),
            _ => EncoderLayout {
                images: self.images.clone(),
                sample_images: self.sample_images.clone(),
            },
        }
    }
}

impl Batch {
    /// Encoder `s`'s patches and placeholder token id.
    pub fn encoder_inputs(&self, s: Source) -> (&Tensor, i64) {
        match (s, &self.audio) {
            (Source::Audio, Some(a)) => (&a.patches, a.token_id),
            _ => (&self.patches, self.image_token_id),
        }
    }
}

/// Checks one encoder's inputs: `what` names them in messages.
fn encoder_layout(
    what: &str,
    e: &EncoderConfig,
    b: usize,
    patches: &Tensor,
    patch_counts: &[i64],
    sample_images: &[i64],
) -> Result<EncoderLayout, RuntimeError> {
    if patches.shape().len() != 2 || patches.cols() != e.patch_len {
        return Err(bad(format!(
            "{what}.patches have shape {:?}, but must be [T, P = {}]",
            patches.shape(),
            e.patch_len
        )));
    }
    if sample_images.len() != b {
        return Err(bad(format!(
            "{what}.sample_images has {} entries for {b} samples",
            sample_images.len()
        )));
    }
    let mut images = Vec::with_capacity(patch_counts.len());
    let mut row = 0usize;
    for (i, &c) in patch_counts.iter().enumerate() {
        let c = count(&format!("{what}.patch_counts"), i, c)?;
        // A class row takes a position of the table too.
        let most = e.max_rows.saturating_sub(e.lead());
        if c == 0 || c > most {
            return Err(bad(format!(
                "{what} item {i} has {c} rows, not in 1..={most} (the position table)"
            )));
        }
        images.push(row..row + c);
        row += c;
    }
    if row != patches.rows() {
        return Err(bad(format!(
            "{what}.patch_counts sum to {row}, but {what}.patches has {} rows",
            patches.rows()
        )));
    }
    let mut per_sample = Vec::with_capacity(b);
    let mut next = 0usize;
    for (i, &n) in sample_images.iter().enumerate() {
        let n = count(&format!("{what}.sample_images"), i, n)?;
        per_sample.push(next..next + n);
        next += n;
    }
    if next != images.len() {
        return Err(bad(format!(
            "{what}.sample_images sum to {next}, but {what}.patch_counts lists {} items",
            images.len()
        )));
    }
    Ok(EncoderLayout {
        images,
        sample_images: per_sample,
    })
}

fn bad(msg: String) -> RuntimeError {
    RuntimeError::InvalidBatch(msg)
}

fn count(what: &str, i: usize, v: i64) -> Result<usize, RuntimeError> {
    usize::try_from(v).map_err(|_| bad(format!("{what}[{i}] is negative ({v})")))
}

impl Batch {
    /// Checks every shape, count and id against `cfg`, then says where each image and each
    /// sample's images lie. Sample `b`'s placeholders must number the sum of its images' patch
    /// counts ([`RuntimeError::PlaceholderMismatch`] otherwise).
    pub fn layout(&self, cfg: &Config) -> Result<BatchLayout, RuntimeError> {
        let (b, s) = (self.batch_size, self.seq_len);
        if s == 0 || s > cfg.llm.seq_len {
            return Err(bad(format!(
                "sequence length {s} is not in 1..={} (the position table)",
                cfg.llm.seq_len
            )));
        }
        for (what, v) in [("tokens", &self.tokens), ("targets", &self.targets)] {
            if v.len() != b * s {
                return Err(bad(format!(
                    "{what} holds {} values, but [B, S] = [{b}, {s}] needs {}",
                    v.len(),
                    b * s
                )));
            }
        }
        let vision = match &cfg.vision {
            Some(e) => encoder_layout(
                "vision",
                e,
                b,
                &self.patches,
                &self.patch_counts,
                &self.sample_images,
            )?,
            None if self.patch_counts.is_empty() && self.sample_images.iter().all(|&n| n == 0) => {
                EncoderLayout {
                    images: Vec::new(),
                    sample_images: vec![0..0; b],
                }
            }
            None => return Err(bad("images, but the model has no vision encoder".into())),
        };
        let audio = match (&self.audio, &cfg.audio) {
            (Some(a), Some(e)) => Some(encoder_layout(
                "audio",
                e,
                b,
                &a.patches,
                &a.patch_counts,
                &a.sample_images,
            )?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(bad(
                    "audio inputs, but the model has no audio encoder".into()
                ))
            }
            (None, Some(_)) => {
                return Err(bad(
                    "no audio inputs, but the model has an audio encoder".into()
                ))
            }
        };
        let audio_token = self.audio.as_ref().map(|a| a.token_id);
        if audio_token == Some(self.image_token_id) {
            return Err(bad("audio and image placeholders share a token id".into()));
        }
        let (images, sample_images) = (vision.images, vision.sample_images);
        let mut targets = 0usize;
        for (sample, own_images) in sample_images.iter().enumerate() {
            let mut placeholders = 0usize;
            let mut audio_placeholders = 0usize;
            for pos in 0..s {
                let tok = self.tokens[sample * s + pos];
                if tok == self.image_token_id {
                    placeholders += 1;
                } else if Some(tok) == audio_token {
                    audio_placeholders += 1;
                } else if tok < 0 || tok as u64 >= cfg.llm.vocab as u64 {
                    return Err(bad(format!(
                        "sample {sample}, position {pos}: token {tok} is outside the vocabulary \
                         0..{}",
                        cfg.llm.vocab
                    )));
                }
                let t = self.targets[sample * s + pos];
                if t != IGNORE {
                    if t < 0 || t as u64 >= cfg.llm.vocab as u64 {
                        return Err(bad(format!(
                            "sample {sample}, position {pos}: target {t} is neither -100 nor in \
                             0..{}",
                            cfg.llm.vocab
                        )));
                    }
                    targets += 1;
                }
            }
            let patches: usize = own_images.clone().map(|i| images[i].len()).sum();
            if placeholders != patches {
                return Err(RuntimeError::PlaceholderMismatch {
                    sample,
                    placeholders,
                    patches,
                });
            }
            if let Some(a) = &audio {
                let frames: usize = a.sample_images[sample]
                    .clone()
                    .map(|i| a.images[i].len())
                    .sum();
                if audio_placeholders != frames {
                    return Err(bad(format!(
                        "sample {sample}: {audio_placeholders} audio placeholder tokens, but its \
                         audio items have {frames} rows in total (they must be equal)"
                    )));
                }
            }
        }
        if targets == 0 {
            return Err(RuntimeError::NoTargets);
        }
        Ok(BatchLayout {
            images,
            sample_images,
            targets,
            audio,
        })
    }
}
