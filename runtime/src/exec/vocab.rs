//! The vocabulary-parallel embedding, output layer and cross-entropy under tensor parallelism
//! (Megatron's): tp rank `t` holds vocabulary rows [`range`] of the embedding and of the head
//! (the same rows, so a tied head is the embedding's slice). The embedding's rows are partial
//! sums (a token's row comes from the rank holding it) reduced like a row-parallel output; the
//! head's logits stay split by vocabulary, and the cross-entropy combines each row's
//! per-rank maximum, exponential sum and target logit, exchanged once.

use std::ops::Range;

use super::comm::Env;
use super::math::Math;
use crate::reference::batch::IGNORE;
use crate::tensor::Tensor;
use crate::transport::Endpoint;
use crate::RuntimeError;

/// Message slots of the language model's ends (`Env` tags, index 0, above the blocks').
pub const EMBED: u8 = 20;
pub const EMBED_BACKWARD: u8 = 21;
pub const HEAD_GATHER: u8 = 22;
pub const CE_STATS: u8 = 23;
pub const HEAD_BACKWARD: u8 = 24;

/// The vocabulary rows tp rank `t` of `tp` holds: its column slice of the embedding.
pub fn range(vocab: usize, tp: usize, t: usize) -> Range<usize> {
    super::shard_params::tp_part(vocab, tp, t)
}

/// Of `tokens`, those this rank holds: their rows in the slice and their indices.
fn held_rows(tokens: &[Option<usize>], held: &Range<usize>) -> (Vec<usize>, Vec<usize>) {
    tokens
        .iter()
        .enumerate()
        .filter_map(|(k, t)| t.filter(|t| held.contains(t)).map(|t| (t - held.start, k)))
        .unzip()
}

/// Rows `[tokens.len(), width]`: row k is the slice's row of `tokens[k]` when this rank holds
/// it, zero otherwise (placeholders are `None`).
pub fn embed_partial(
    mx: &dyn Math,
    slice: &Tensor,
    tokens: &[Option<usize>],
    held: &Range<usize>,
) -> Result<Tensor, RuntimeError> {
    let (rows, at) = held_rows(tokens, held);
    let part = mx.gather_rows(slice, &rows)?;
    mx.scatter_rows(&[part], &[at], tokens.len(), slice.cols())
}

/// The slice's gradient from the gradient `de` of every row of `tokens`.
pub fn embed_grad(
    mx: &dyn Math,
    de: &Tensor,
    tokens: &[Option<usize>],
    held: &Range<usize>,
) -> Result<Tensor, RuntimeError> {
    let (rows, at) = held_rows(tokens, held);
    mx.scatter_add_rows(held.len(), &mx.gather_rows(de, &at)?, &rows)
}

/// Per row of this rank's logits: its maximum, `Σ exp(l − max)` (in f64) and the target's
/// logit if this rank holds the target (else 0); `[rows, 3]`.
pub fn stats(logits: &Tensor, targets: &[i64], held: &Range<usize>) -> Tensor {
    let mut out = Tensor::zeros(&[logits.rows(), 3]);
    for (i, &t) in targets.iter().enumerate() {
        let row = logits.row(i);
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let s: f64 = row
            .iter()
            .map(|&v| (f64::from(v) - f64::from(m)).exp())
            .sum();
        let tgt = match usize::try_from(t) {
            Ok(t) if t != IGNORE as usize && held.contains(&t) => row[t - held.start],
            _ => 0.0,
        };
        out.row_mut(i).copy_from_slice(&[m, s as f32, tgt]);
    }
    out
}

/// The cross-entropy of this rank's vocabulary slice of the logits (`[rows, held.len()]`,
/// rows of `targets`): the sum over targets `≠ -100` of `lse − logit[target]`, and the
/// gradient of the batch loss (that sum over `global_targets`) for this slice.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    logits: &Tensor,
    targets: &[i64],
    held: &Range<usize>,
    global_targets: usize,
) -> Result<(f64, Tensor), RuntimeError> {
    let mine = mx.vocab_stats(logits, targets, held.start)?;
    let parts = env.gather_members(mx, net, 0, CE_STATS, &mine)?;
    let mut sum = 0.0f64;
    let mut lse = vec![0.0f64; targets.len()];
    for (i, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let rows: Vec<&[f32]> = parts.iter().map(|p| p.row(i)).collect();
        let top = rows.iter().fold(f32::NEG_INFINITY, |a, r| a.max(r[0]));
        let s: f64 = rows
            .iter()
            .map(|r| f64::from(r[1]) * (f64::from(r[0]) - f64::from(top)).exp())
            .sum();
        lse[i] = f64::from(top) + s.ln();
        let target_logit: f64 = rows.iter().map(|r| f64::from(r[2])).sum();
        sum += lse[i] - target_logit;
    }
    let d = mx.vocab_ce_grad(logits, targets, held.start, &lse, global_targets)?;
    Ok((sum, d))
}

/// The slice's gradient of the batch loss: `(exp(l − lse) − onehot) / global_targets` on
/// rows with a target, 0 elsewhere.
pub fn ce_grad(
    logits: &Tensor,
    targets: &[i64],
    start: usize,
    lse: &[f64],
    global_targets: usize,
) -> Tensor {
    let n = global_targets as f64;
    let mut d = Tensor::zeros(logits.shape());
    for (i, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let row = logits.row(i);
        for (j, out) in d.row_mut(i).iter_mut().enumerate() {
            let onehot = if start + j == t as usize { 1.0 } else { 0.0 };
            *out = (((f64::from(row[j]) - lse[i]).exp() - onehot) / n) as f32;
        }
    }
    d
}
