//! Multi-head attention over one sequence (one image, or one sample's tokens), causal or
//! bidirectional: per head `softmax(q kᵀ / √d) v`, d the head size, no dropout; then the
//! output projection.

use super::layers::{linear_named, linear_named_backward, softmax_in_place};
use super::params::{Grads, Params};
use crate::tensor::{gemm, Tensor};

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
    let ends: Vec<usize> = positions
        .iter()
        .take(nq)
        .map(|&at| if causal { at + 1 } else { nk })
        .collect();
    for h in 0..heads {
        let cols = h * d..(h + 1) * d;
        let mut p = Tensor::zeros(&[nq, nk]);
        // Scores in blocks of rows, each up to its last key (masked keys are never computed).
        for (rows, kend) in row_blocks(&ends) {
            let (qh, kh) = (
                q.mat().col_range(cols.clone()),
                k.mat().col_range(cols.clone()),
            );
            gemm(
                qh.row_range(rows.clone()),
                kh.row_range(0..kend).t(),
                false,
                p.mat_mut().row_range(rows).col_range(0..kend),
            );
        }
        for (row, &end) in p.data_mut().chunks_exact_mut(nk.max(1)).zip(&ends) {
            let (live, masked) = row.split_at_mut(end);
            for s in live.iter_mut() {
                *s = (f64::from(*s) * scale) as f32;
            }
            softmax_in_place(live);
            masked.fill(0.0);
        }
        // Masked probabilities are zero, so leaving them out of a sum changes no bit.
        for (rows, kend) in row_blocks(&ends) {
            gemm(
                p.mat().row_range(rows.clone()).col_range(0..kend),
                v.mat().col_range(cols.clone()).row_range(0..kend),
                false,
                ctx.mat_mut().col_range(cols.clone()).row_range(rows),
            );
        }
        probs.push(p);
    }
    (ctx, probs)
}

/// Blocks of 64 rows, each with the largest of its rows' key counts `ends`.
fn row_blocks(ends: &[usize]) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> + '_ {
    const ROWS: usize = 64;
    (0..ends.len()).step_by(ROWS).map(move |i0| {
        let i1 = (i0 + ROWS).min(ends.len());
        (i0..i1, ends[i0..i1].iter().copied().max().unwrap_or(0))
    })
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
    let mut ds = Tensor::zeros(&[nq, nk]);
    for (h, p) in probs.iter().enumerate() {
        let cols = h * d..(h + 1) * d;
        // A row's probabilities end at its last non-zero one (the causal mask's zeros after).
        let ends: Vec<usize> = p
            .data()
            .chunks_exact(nk.max(1))
            .map(|r| r.iter().rposition(|&x| x != 0.0).map_or(0, |j| j + 1))
            .collect();
        // dv = pᵀ · dctx
        gemm(
            p.mat().t(),
            dctx.mat().col_range(cols.clone()),
            false,
            dv.mat_mut().col_range(cols.clone()),
        );
        // dp = dctx · vᵀ;  ds_ij = p_ij (dp_ij - Σ_j' p_ij' dp_ij'), times the scale.
        for (rows, kend) in row_blocks(&ends) {
            gemm(
                dctx.mat().col_range(cols.clone()).row_range(rows.clone()),
                v.mat().col_range(cols.clone()).row_range(0..kend).t(),
                false,
                ds.mat_mut().row_range(rows).col_range(0..kend),
            );
        }
        let pd = p.data();
        for ((dsr, pr), &end) in ds
            .data_mut()
            .chunks_exact_mut(nk.max(1))
            .zip(pd.chunks_exact(nk.max(1)))
            .zip(&ends)
        {
            let (live, rest) = dsr.split_at_mut(end);
            let dot: f64 = live
                .iter()
                .zip(pr)
                .map(|(dp, p)| f64::from(*dp) * f64::from(*p))
                .sum();
            for (x, p) in live.iter_mut().zip(pr) {
                *x = (f64::from(*p) * (f64::from(*x) - dot) * scale) as f32;
            }
            rest.fill(0.0);
        }
        // dq = ds · k (ds is zero past each row's end);  dk = dsᵀ · q.
        for (rows, kend) in row_blocks(&ends) {
            gemm(
                ds.mat().row_range(rows.clone()).col_range(0..kend),
                k.mat().col_range(cols.clone()).row_range(0..kend),
                false,
                dq.mat_mut().col_range(cols.clone()).row_range(rows),
            );
        }
        gemm(
            ds.mat().t(),
            q.mat().col_range(cols.clone()),
            false,
            dk.mat_mut().col_range(cols),
        );
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
