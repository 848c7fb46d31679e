//! Multi-head attention over one sequence (one image, or one sample's tokens), causal or
//! bidirectional: per head `softmax(q kᵀ / √d) v`, d the head size, no dropout; then the
//! output projection.

use super::layers::{linear_named, linear_named_backward, softmax_in_place};
use super::params::{Grads, Params};
use crate::tensor::Tensor;

/// What the backward needs: the input, q, k, v, each head's probabilities `[n, n]` (zero where
/// masked) and the heads' concatenated output.
#[derive(Clone, Debug)]
pub struct AttentionCache {
    pub x: Tensor,
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub probs: Vec<Tensor>,
    pub ctx: Tensor,
}

/// The core: `q`, `k`, `v` are `[n, hidden]`, split into `heads` column blocks. Returns the
/// concatenated head outputs `[n, hidden]` and each head's probabilities.
pub fn attention_core(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
) -> (Tensor, Vec<Tensor>) {
    let positions: Vec<usize> = (0..q.rows()).collect();
    attention_core_at(q, k, v, heads, causal, &positions)
}

/// The core for some of a sequence's queries against all its keys (a context-parallel
/// shard): `q` is `[nq, hidden]` with query `i` at sequence position `positions[i]`, `k` and
/// `v` are the whole sequence `[nk, hidden]`. Causal masking keeps keys `j <= positions[i]`.
/// Probabilities are `[nq, nk]`, zero where masked.
pub fn attention_core_at(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
    positions: &[usize],
) -> (Tensor, Vec<Tensor>) {
    let (nq, nk, hidden) = (q.rows(), k.rows(), q.cols());
    let d = hidden / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut ctx = Tensor::zeros(&[nq, hidden]);
    let mut probs = Vec::with_capacity(heads);
    for h in 0..heads {
        let cols = h * d..(h + 1) * d;
        let mut p = Tensor::zeros(&[nq, nk]);
        for (i, &at) in positions.iter().enumerate().take(nq) {
            let end = if causal { at + 1 } else { nk };
            let qi = &q.row(i)[cols.clone()];
            let row = &mut p.row_mut(i)[..end];
            for (j, s) in row.iter_mut().enumerate() {
                let kj = &k.row(j)[cols.clone()];
                let dot: f64 = qi
                    .iter()
                    .zip(kj)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                *s = (dot * scale) as f32;
            }
            softmax_in_place(row);
        }
        for i in 0..nq {
            for c in cols.clone() {
                let mut acc = 0.0f64;
                for j in 0..nk {
                    acc += f64::from(p.row(i)[j]) * f64::from(v.row(j)[c]);
                }
                ctx.row_mut(i)[c] = acc as f32;
            }
        }
        probs.push(p);
    }
    (ctx, probs)
}

/// The core's backward: `(dq, dk, dv)` from the gradient of the concatenated head outputs,
/// for `q` `[nq, hidden]` against `k`, `v` `[nk, hidden]` (`dk`, `dv` are the contributions
/// of these queries alone). Masked probabilities are zero, so they contribute nothing and
/// need no mask here.
pub fn attention_core_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &[Tensor],
    dctx: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let (nq, nk, hidden) = (q.rows(), k.rows(), q.cols());
    let heads = probs.len();
    let d = hidden / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let mut dq = Tensor::zeros(&[nq, hidden]);
    let mut dk = Tensor::zeros(&[nk, hidden]);
    let mut dv = Tensor::zeros(&[nk, hidden]);
    for (h, p) in probs.iter().enumerate() {
        let cols = h * d..(h + 1) * d;
        // dv_j = Σ_i p_ij dctx_i
        for j in 0..nk {
            for c in cols.clone() {
                let mut acc = 0.0f64;
                for i in 0..nq {
                    acc += f64::from(p.row(i)[j]) * f64::from(dctx.row(i)[c]);
                }
                dv.row_mut(j)[c] = acc as f32;
            }
        }
        // dp_ij = dctx_i · v_j;  ds_ij = p_ij (dp_ij - Σ_j' p_ij' dp_ij'), times the scale.
        let mut ds = vec![0.0f64; nq * nk];
        for i in 0..nq {
            let dci = &dctx.row(i)[cols.clone()];
            let mut dp = vec![0.0f64; nk];
            let mut dot = 0.0f64;
            for (j, dpj) in dp.iter_mut().enumerate() {
                let vj = &v.row(j)[cols.clone()];
                *dpj = dci
                    .iter()
                    .zip(vj)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                dot += f64::from(p.row(i)[j]) * *dpj;
            }
            for j in 0..nk {
                ds[i * nk + j] = f64::from(p.row(i)[j]) * (dp[j] - dot) * scale;
            }
        }
        // dq_i = Σ_j ds_ij k_j;  dk_j = Σ_i ds_ij q_i.
        for i in 0..nq {
            for c in cols.clone() {
                let mut acc = 0.0f64;
                for j in 0..nk {
                    acc += ds[i * nk + j] * f64::from(k.row(j)[c]);
                }
                dq.row_mut(i)[c] = acc as f32;
            }
        }
        for j in 0..nk {
            for c in cols.clone() {
                let mut acc = 0.0f64;
                for i in 0..nq {
                    acc += ds[i * nk + j] * f64::from(q.row(i)[c]);
                }
                dk.row_mut(j)[c] = acc as f32;
            }
        }
    }
    (dq, dk, dv)
}

/// Attention `prefix` (`{prefix}.q`, `.k`, `.v`, `.o` linear layers) over the sequence `x`.
pub fn attention(
    p: &Params,
    prefix: &str,
    x: &Tensor,
    heads: usize,
    causal: bool,
) -> (Tensor, AttentionCache) {
    let q = linear_named(p, &format!("{prefix}.q"), x);
    let k = linear_named(p, &format!("{prefix}.k"), x);
    let v = linear_named(p, &format!("{prefix}.v"), x);
    let (ctx, probs) = attention_core(&q, &k, &v, heads, causal);
    let y = linear_named(p, &format!("{prefix}.o"), &ctx);
    let cache = AttentionCache {
        x: x.clone(),
        q,
        k,
        v,
        probs,
        ctx,
    };
    (y, cache)
}

/// The backward of [`attention`]: accumulates its weights' gradients into `g`, returns `dx`.
pub fn attention_backward(
    p: &Params,
    prefix: &str,
    cache: &AttentionCache,
    dy: &Tensor,
    g: &mut Grads,
) -> Tensor {
    let dctx = linear_named_backward(p, &format!("{prefix}.o"), &cache.ctx, dy, g);
    let (dq, dk, dv) = attention_core_backward(&cache.q, &cache.k, &cache.v, &cache.probs, &dctx);
    let mut dx = linear_named_backward(p, &format!("{prefix}.q"), &cache.x, &dq, g);
    dx.add_assign(&linear_named_backward(
        p,
        &format!("{prefix}.k"),
        &cache.x,
        &dk,
        g,
    ));
    dx.add_assign(&linear_named_backward(
        p,
        &format!("{prefix}.v"),
        &cache.x,
        &dv,
        g,
    ));
    dx
}
