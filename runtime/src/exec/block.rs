//! The transformer block and the projector MLP on one rank's shard: tensor parallel
//! (column-parallel q, k, v and fc1 over heads and FFN columns; row-parallel o and fc2 whose
//! partial outputs are summed over the tp group, their bias added once, by tp rank 0),
//! sequence parallel (LayerNorm and the residual on this rank's rows; all-gather before a
//! column-parallel layer, reduce-scatter after a row-parallel one) and context parallel
//! (keys and values gathered whole over the cp group; their gradients reduce-scattered back).
//!
//! The same mathematics as `reference::block`, with the same f64 accumulation per product.

use super::comm::Env;
use super::math::{
    accumulate, linear_named, linear_named_backward, norm_named, norm_named_backward, Math,
};
use crate::reference::layers::LayerNormCache;
use crate::reference::params::{Grads, Params};
use crate::tensor::Tensor;
use crate::transport::Endpoint;
use crate::RuntimeError;

/// Column sums in f64, rounded once: a bias gradient over this rank's rows.
pub fn col_sums(dy: &Tensor) -> Tensor {
    let c = dy.cols();
    let mut acc = vec![0.0f64; c];
    for i in 0..dy.rows() {
        for (a, v) in acc.iter_mut().zip(dy.row(i)) {
            *a += f64::from(*v);
        }
    }
    Tensor::from_vec(&[c], acc.into_iter().map(|v| v as f32).collect()).expect("c values")
}

/// A row-parallel linear layer's partial output; tp rank 0 adds the bias.
fn row_partial(
    mx: &dyn Math,
    p: &Params,
    name: &str,
    x: &Tensor,
    t: usize,
) -> Result<Tensor, RuntimeError> {
    let b = if t == 0 {
        p.get(&format!("{name}.bias"))
    } else {
        None
    };
    mx.linear(x, p.t(&format!("{name}.weight")), b)
}

/// Backward of [`row_partial`] from the whole output gradient `dy_all` (all local rows) and
/// this rank's rows of it `dy_mine` (the bias gradient's share).
fn row_backward(
    mx: &dyn Math,
    p: &Params,
    name: &str,
    x: &Tensor,
    dy_all: &Tensor,
    dy_mine: &Tensor,
    g: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let w = format!("{name}.weight");
    let (dx, dw, _) = mx.linear_backward(x, p.t(&w), dy_all)?;
    accumulate(mx, g, &w, &dw)?;
    accumulate(mx, g, &format!("{name}.bias"), &mx.col_sums(dy_mine)?)?;
    Ok(dx)
}

/// What a block's backward needs.
#[derive(Clone, Debug)]
pub struct BlockCache {
    ln1: LayerNormCache,
    h1: Tensor,
    /// Per sequence: the local rows of its queries, their q rows, whole k and v, and the
    /// heads' probabilities.
    seq_rows: Vec<Vec<usize>>,
    q: Vec<Tensor>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Per sequence, its heads' probabilities `[heads, queries, keys]`.
    probs: Vec<Tensor>,
    ctx: Tensor,
    ln2: LayerNormCache,
    h2: Tensor,
    a: Tensor,
    g: Tensor,
}

/// Bytes of f32 values held by tensors.
pub fn tensor_bytes<'a>(ts: impl IntoIterator<Item = &'a Tensor>) -> usize {
    ts.into_iter().map(|t| t.numel() * 4).sum()
}

/// Bytes a LayerNorm's cache holds.
pub fn norm_bytes(c: &LayerNormCache) -> usize {
    c.xhat.numel() * 4 + c.xhat.rows() * 8
}

impl BlockCache {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        norm_bytes(&self.ln1)
            + norm_bytes(&self.ln2)
            + tensor_bytes([&self.h1, &self.ctx, &self.h2, &self.a, &self.g])
            + tensor_bytes(self.q.iter().chain(&self.k).chain(&self.v))
            + tensor_bytes(&self.probs)
    }
}

impl MlpCache {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        tensor_bytes([&self.x, &self.a, &self.g])
    }
}

/// The block `prefix` (block number `index`) over this rank's rows `x`.
#[allow(clippy::too_many_arguments)]
pub fn block_forward(
    mx: &dyn Math,
    ep: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    index: usize,
    x: &Tensor,
    heads: usize,
    causal: bool,
) -> Result<(Tensor, BlockCache), RuntimeError> {
    let t = env.shard.t;
    let (h1m, ln1) = norm_named(mx, p, &format!("{prefix}.ln1"), x)?;
    let h1 = env.gather(mx, ep, index, 0, &h1m)?;
    let q = linear_named(mx, p, &format!("{prefix}.attn.q"), &h1)?;
    let k = linear_named(mx, p, &format!("{prefix}.attn.k"), &h1)?;
    let v = linear_named(mx, p, &format!("{prefix}.attn.v"), &h1)?;
    let ks = env.sequences(mx, ep, index, 1, &k)?;
    let vs = env.sequences(mx, ep, index, 2, &v)?;
    let seq_rows = env.shard.seq_local_rows();
    let local = env.shard.local();
    let mut qs = Vec::with_capacity(seq_rows.len());
    let mut ctxs = Vec::with_capacity(seq_rows.len());
    let mut probs = Vec::with_capacity(seq_rows.len());
    for (s, idx) in seq_rows.iter().enumerate() {
        let qi = mx.gather_rows(&q, idx)?;
        let pos: Vec<usize> = idx.iter().map(|&i| local[i].pos as usize).collect();
        let (c, pr) = mx.attention_core(&qi, &ks[s], &vs[s], heads, causal, &pos)?;
        qs.push(qi);
        ctxs.push(c);
        probs.push(pr);
    }
    let ctx = mx.scatter_rows(&ctxs, &seq_rows, q.rows(), q.cols())?;
    let o = row_partial(mx, p, &format!("{prefix}.attn.o"), &ctx, t)?;
    let x1 = mx.add(x, &env.reduce(mx, ep, index, 3, o)?)?;
    let (h2m, ln2) = norm_named(mx, p, &format!("{prefix}.ln2"), &x1)?;
    let h2 = env.gather(mx, ep, index, 4, &h2m)?;
    let a = linear_named(mx, p, &format!("{prefix}.mlp.fc1"), &h2)?;
    let g = mx.gelu(&a)?;
    let m = row_partial(mx, p, &format!("{prefix}.mlp.fc2"), &g, t)?;
    let y = mx.add(&x1, &env.reduce(mx, ep, index, 5, m)?)?;
    Ok((
        y,
        BlockCache {
            ln1,
            h1,
            seq_rows,
            q: qs,
            k: ks,
            v: vs,
            probs,
            ctx,
            ln2,
            h2,
            a,
            g,
        },
    ))
}

/// The backward of [`block_forward`] from the gradient of this rank's output rows.
#[allow(clippy::too_many_arguments)]
pub fn block_backward(
    mx: &dyn Math,
    ep: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    index: usize,
    c: &BlockCache,
    dy: &Tensor,
    grads: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let dy_all = env.gather(mx, ep, index, 10, dy)?;
    let dg = row_backward(
        mx,
        p,
        &format!("{prefix}.mlp.fc2"),
        &c.g,
        &dy_all,
        dy,
        grads,
    )?;
    let da = mx.gelu_backward(&c.a, &dg)?;
    let dh2 = linear_named_backward(mx, p, &format!("{prefix}.mlp.fc1"), &c.h2, &da, grads)?;
    let dh2 = env.reduce(mx, ep, index, 11, dh2)?;
    let dln2 = norm_named_backward(mx, p, &format!("{prefix}.ln2"), &c.ln2, &dh2, grads)?;
    let dx1 = mx.add(dy, &dln2)?;
    let do_all = env.gather(mx, ep, index, 12, &dx1)?;
    let dctx = row_backward(
        mx,
        p,
        &format!("{prefix}.attn.o"),
        &c.ctx,
        &do_all,
        &dx1,
        grads,
    )?;
    let (n, w) = (dctx.rows(), dctx.cols());
    let mut dqs = Vec::with_capacity(c.seq_rows.len());
    let mut dks = Vec::with_capacity(c.seq_rows.len());
    let mut dvs = Vec::with_capacity(c.seq_rows.len());
    for (s, idx) in c.seq_rows.iter().enumerate() {
        let dci = mx.gather_rows(&dctx, idx)?;
        let (dq, dk, dv) =
            mx.attention_core_backward(&c.q[s], &c.k[s], &c.v[s], &c.probs[s], &dci)?;
        dqs.push(dq);
        dks.push(dk);
        dvs.push(dv);
    }
    let dq = mx.scatter_rows(&dqs, &c.seq_rows, n, w)?;
    let dk = env.unsequences(mx, ep, index, 13, &dks, w)?;
    let dv = env.unsequences(mx, ep, index, 14, &dvs, w)?;
    let mut dh1 = linear_named_backward(mx, p, &format!("{prefix}.attn.q"), &c.h1, &dq, grads)?;
    for (name, d) in [("k", &dk), ("v", &dv)] {
        let part = linear_named_backward(mx, p, &format!("{prefix}.attn.{name}"), &c.h1, d, grads)?;
        dh1 = mx.add(&dh1, &part)?;
    }
    let dh1 = env.reduce(mx, ep, index, 15, dh1)?;
    let dln1 = norm_named_backward(mx, p, &format!("{prefix}.ln1"), &c.ln1, &dh1, grads)?;
    mx.add(&dx1, &dln1)
}

/// What the projector's backward needs.
#[derive(Clone, Debug)]
pub struct MlpCache {
    x: Tensor,
    a: Tensor,
    g: Tensor,
}

/// The projector `prefix` (`.fc1` column-parallel, GELU, `.fc2` row-parallel) over this
/// rank's rows. With `fold` the output stays this tp rank's partial sums of every local row
/// (the boundary's `Reduce` operations sum them where they are needed).
#[allow(clippy::too_many_arguments)]
pub fn mlp_forward(
    mx: &dyn Math,
    ep: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    x: &Tensor,
    fold: bool,
) -> Result<(Tensor, MlpCache), RuntimeError> {
    let xa = env.gather(mx, ep, 0, 0, x)?;
    let a = linear_named(mx, p, &format!("{prefix}.fc1"), &xa)?;
    let g = mx.gelu(&a)?;
    let m = row_partial(mx, p, &format!("{prefix}.fc2"), &g, env.shard.t)?;
    let y = if fold {
        m
    } else {
        env.reduce(mx, ep, 0, 1, m)?
    };
    Ok((y, MlpCache { x: xa, a, g }))
}

/// The backward of [`mlp_forward`].
#[allow(clippy::too_many_arguments)]
pub fn mlp_backward(
    mx: &dyn Math,
    ep: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    c: &MlpCache,
    dy: &Tensor,
    whole: bool,
    grads: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    // `whole`: the boundary brought the gradient of every local row (its gather folded in);
    // the bias gradient still takes only this rank's sequence-parallel part, as without it.
    let (dy_all, dy_mine) = if whole {
        let mine = if env.sp && env.tp_group.len() > 1 {
            mx.gather_rows(dy, &env.shard.mine_indices())?
        } else {
            dy.clone()
        };
        (dy.clone(), mine)
    } else {
        (env.gather(mx, ep, 0, 10, dy)?, dy.clone())
    };
    let dg = row_backward(
        mx,
        p,
        &format!("{prefix}.fc2"),
        &c.g,
        &dy_all,
        &dy_mine,
        grads,
    )?;
    let da = mx.gelu_backward(&c.a, &dg)?;
    let dx = linear_named_backward(mx, p, &format!("{prefix}.fc1"), &c.x, &da, grads)?;
    env.reduce(mx, ep, 0, 11, dx)
}
