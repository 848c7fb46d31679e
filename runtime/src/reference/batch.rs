//! One global batch of the reference model and its validation.

use std::ops::Range;

use super::params::Config;
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
}

/// Where each image's patches and each sample's images lie, once a batch is validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Patch rows of each image.
    pub images: Vec<Range<usize>>,
    /// Image indices of each sample.
    pub sample_images: Vec<Range<usize>>,
    /// The number of targets `≠ -100` in the whole batch (the loss's denominator).
    pub targets: usize,
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
    pub fn layout(&self, cfg: &Config) -> Result<Layout, RuntimeError> {
        let (b, s) = (self.batch_size, self.seq_len);
        if s == 0 || s > cfg.s {
            return Err(bad(format!(
                "sequence length {s} is not in 1..={} (the position table)",
                cfg.s
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
        if self.patches.shape().len() != 2 || self.patches.cols() != cfg.p {
            return Err(bad(format!(
                "patches have shape {:?}, but must be [Tv, P = {}]",
                self.patches.shape(),
                cfg.p
            )));
        }
        if self.sample_images.len() != b {
            return Err(bad(format!(
                "sample_images has {} entries for {b} samples",
                self.sample_images.len()
            )));
        }
        let mut images = Vec::with_capacity(self.patch_counts.len());
        let mut row = 0usize;
        for (i, &c) in self.patch_counts.iter().enumerate() {
            let c = count("patch_counts", i, c)?;
            if c == 0 || c > cfg.np {
                return Err(bad(format!(
                    "image {i} has {c} patches, not in 1..={} (the position table)",
                    cfg.np
                )));
            }
            images.push(row..row + c);
            row += c;
        }
        if row != self.patches.rows() {
            return Err(bad(format!(
                "patch_counts sum to {row}, but patches has {} rows",
                self.patches.rows()
            )));
        }
        let mut sample_images = Vec::with_capacity(b);
        let mut next = 0usize;
        for (i, &n) in self.sample_images.iter().enumerate() {
            let n = count("sample_images", i, n)?;
            sample_images.push(next..next + n);
            next += n;
        }
        if next != images.len() {
            return Err(bad(format!(
                "sample_images sum to {next}, but patch_counts lists {} images",
                images.len()
            )));
        }
        let mut targets = 0usize;
        for (sample, own_images) in sample_images.iter().enumerate() {
            let mut placeholders = 0usize;
            for pos in 0..s {
                let tok = self.tokens[sample * s + pos];
                if tok == self.image_token_id {
                    placeholders += 1;
                } else if tok < 0 || tok as u64 >= cfg.v as u64 {
                    return Err(bad(format!(
                        "sample {sample}, position {pos}: token {tok} is outside the vocabulary \
                         0..{}",
                        cfg.v
                    )));
                }
                let t = self.targets[sample * s + pos];
                if t != IGNORE {
                    if t < 0 || t as u64 >= cfg.v as u64 {
                        return Err(bad(format!(
                            "sample {sample}, position {pos}: target {t} is neither -100 nor in \
                             0..{}",
                            cfg.v
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
        }
        if targets == 0 {
            return Err(RuntimeError::NoTargets);
        }
        Ok(Layout {
            images,
            sample_images,
            targets,
        })
    }
}
