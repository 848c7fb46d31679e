//! The language model, one sample (one sequence) at a time, and its loss:
//!
//! ```text
//! e = embed[tokens]; e[placeholders] = the sample's encoder rows, in order (image rows at
//!     image placeholders, audio rows at audio placeholders); e = e + pos[0:S]
//! for each block:  e = e + attn_causal(ln1(e));  e = e + fc2(gelu(fc1(ln2(e))))
//! logits = ln_f(e) · head.weightᵀ                  # untied head, no bias
//! loss = Σ_{targets ≠ -100} CE(logits, target) / (targets ≠ -100 in the whole batch)
//! ```

use super::batch::IGNORE;
use super::block::{block_backward, block_forward, BlockCache};
use super::layers::{
    linear_named, linear_named_backward, norm_named, norm_named_backward, LayerNormCache,
};
use super::params::{Config, Grads, Params};
use crate::tensor::Tensor;

/// What the language model's backward needs for one sample.
#[derive(Clone, Debug)]
pub struct LlmCache {
    blocks: Vec<BlockCache>,
    ln_f: LayerNormCache,
    /// `ln_f(e)`, the head's input.
    hf: Tensor,
}

/// The positions holding `token` take, left to right, the rows of `items` in order.
pub struct Placeholders<'a> {
    pub token: i64,
    pub items: Vec<&'a Tensor>,
}

/// The input rows `[S, H]` of one sample: its tokens' embeddings, with the positions holding a
/// placeholder token replaced by its encoder's rows, plus positions. The batch's validation
/// guarantees the placeholder counts equal the rows.
pub fn embed(p: &Params, tokens: &[i64], sources: &[Placeholders<'_>]) -> Tensor {
    let table = p.t("llm.embed.weight");
    let pos = p.t("llm.pos");
    let mut rows: Vec<_> = sources
        .iter()
        .map(|src| {
            src.items
                .iter()
                .flat_map(|t| (0..t.rows()).map(move |r| t.row(r)))
        })
        .collect();
    let mut e = Tensor::zeros(&[tokens.len(), table.cols()]);
    for (s, &tok) in tokens.iter().enumerate() {
        let src = match sources.iter().position(|x| x.token == tok) {
            Some(k) => rows[k]
                .next()
                .expect("placeholders were counted against the rows"),
            None => table.row(tok as usize),
        };
        for ((v, a), b) in e.row_mut(s).iter_mut().zip(src).zip(pos.row(s)) {
            *v = *a + *b;
        }
    }
    e
}

/// The backward of [`embed`]: accumulates the embedding and position gradients into `grads`
/// and returns, per source `(token, rows of each item)`, the gradient of each item's rows.
pub fn embed_backward(
    cfg: &Config,
    tokens: &[i64],
    sources: &[(i64, Vec<usize>)],
    de: &Tensor,
    grads: &mut Grads,
) -> Vec<Vec<Tensor>> {
    let mut dtable = Tensor::zeros(&[cfg.llm.vocab, cfg.llm.stack.hidden]);
    let mut dpos = Tensor::zeros(&[cfg.llm.seq_len, cfg.llm.stack.hidden]);
    let mut placeholder_rows = vec![Vec::new(); sources.len()];
    for (s, &tok) in tokens.iter().enumerate() {
        dpos.row_mut(s).copy_from_slice(de.row(s));
        if let Some(k) = sources.iter().position(|x| x.0 == tok) {
            placeholder_rows[k].push(s);
        } else {
            for (d, g) in dtable.row_mut(tok as usize).iter_mut().zip(de.row(s)) {
                *d += *g;
            }
        }
    }
    grads.accumulate("llm.embed.weight", &dtable);
    grads.accumulate("llm.pos", &dpos);
    sources
        .iter()
        .zip(placeholder_rows)
        .map(|((_, counts), at)| {
            let mut next = at.into_iter();
            counts
                .iter()
                .map(|&n| {
                    let mut d = Tensor::zeros(&[n, cfg.llm.stack.hidden]);
                    for r in 0..n {
                        let s = next
                            .next()
                            .expect("placeholders were counted against the rows");
                        d.row_mut(r).copy_from_slice(de.row(s));
                    }
                    d
                })
                .collect()
        })
        .collect()
}

/// The blocks, `ln_f` and the head over one sample's input rows: its logits `[S, V]`.
pub fn llm_forward(cfg: &Config, p: &Params, e: &Tensor) -> (Tensor, LlmCache) {
    let mut x = e.clone();
    let mut blocks = Vec::with_capacity(cfg.llm.stack.layers);
    for i in 0..cfg.llm.stack.layers {
        let (y, c) = block_forward(p, &format!("llm.blocks.{i}"), &x, cfg.llm.stack.heads, true);
        x = y;
        blocks.push(c);
    }
    let (hf, ln_f) = norm_named(p, "llm.ln_f", &x);
    let logits = linear_named(p, "llm.head", &hf);
    (logits, LlmCache { blocks, ln_f, hf })
}

/// The backward of [`llm_forward`] from the logits' gradient: accumulates into `grads`,
/// returns the gradient of the input rows.
pub fn llm_backward(
    cfg: &Config,
    p: &Params,
    cache: &LlmCache,
    dlogits: &Tensor,
    grads: &mut Grads,
) -> Tensor {
    let dhf = linear_named_backward(p, "llm.head", &cache.hf, dlogits, grads);
    let mut dx = norm_named_backward(p, "llm.ln_f", &cache.ln_f, &dhf, grads);
    for i in (0..cfg.llm.stack.layers).rev() {
        dx = block_backward(p, &format!("llm.blocks.{i}"), &cache.blocks[i], &dx, grads);
    }
    dx
}

/// Cross-entropy of one sample: the sum over its targets `≠ -100` of
/// `logsumexp(logits) - logits[target]` (in f64), and the gradient of the batch loss
/// (that sum divided by `global_targets`) with respect to the logits:
/// `(softmax(logits) - onehot(target)) / global_targets` on counted rows, 0 elsewhere.
pub fn cross_entropy(logits: &Tensor, targets: &[i64], global_targets: usize) -> (f64, Tensor) {
    let mut dlogits = Tensor::zeros(logits.shape());
    let mut sum = 0.0f64;
    let n = global_targets as f64;
    for (s, &t) in targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let row = logits.row(s);
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b)));
        let lse = m + row
            .iter()
            .map(|&v| (f64::from(v) - m).exp())
            .sum::<f64>()
            .ln();
        sum += lse - f64::from(row[t as usize]);
        for (j, d) in dlogits.row_mut(s).iter_mut().enumerate() {
            let onehot = if j == t as usize { 1.0 } else { 0.0 };
            *d = (((f64::from(row[j]) - lse).exp() - onehot) / n) as f32;
        }
    }
    (sum, dlogits)
}
