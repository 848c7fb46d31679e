//! Self-attention on one rank's shard: q, k and v column-parallel over heads (key/value heads
//! too, under grouped-query attention), rotary positions on q and k, keys and values gathered
//! whole per sequence over the cp group, each query head reading its key head
//! (`repeat_heads`), and the output projection row-parallel.

use super::comm::Env;
use super::ffn::{row_backward, row_partial};
use super::math::{linear_named, linear_named_backward, Math};
use crate::reference::arch::Stack;
use crate::reference::params::{Grads, Params};
use crate::tensor::Tensor;
use crate::transport::Endpoint;
use crate::RuntimeError;

/// What the backward needs.
#[derive(Clone, Debug)]
pub struct AttnCache {
    /// Per sequence: the local rows of its queries.
    pub seq_rows: Vec<Vec<usize>>,
    /// Per sequence: its queries' rows, and whole keys and values (repeated per query head).
    pub q: Vec<Tensor>,
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Per sequence, its heads' probabilities `[heads, queries, keys]`.
    pub probs: Vec<Tensor>,
    pub ctx: Tensor,
}

impl AttnCache {
    pub fn bytes(&self) -> usize {
        let all = self
            .q
            .iter()
            .chain(&self.k)
            .chain(&self.v)
            .chain(&self.probs);
        4 * (all.map(Tensor::numel).sum::<usize>() + self.ctx.numel())
    }
}

/// The shape of attention on this tp rank.
struct Local {
    head_dim: usize,
    heads: usize,
    /// Query heads per key/value head.
    groups: usize,
    inv_freq: Option<Vec<f64>>,
}

fn local(stack: &Stack, tp: usize) -> Local {
    Local {
        head_dim: stack.head_dim,
        heads: stack.heads / tp,
        groups: stack.heads / stack.kv_heads,
        inv_freq: stack.block.rope.map(|r| r.inv_freq(stack.head_dim)),
    }
}

/// Every local row's sequence position.
fn positions(env: &Env<'_>) -> Vec<usize> {
    env.shard.local().iter().map(|r| r.pos as usize).collect()
}

/// Attention `prefix` (`.q`, `.k`, `.v`, `.o`) over the gathered local rows `h`: this tp
/// rank's partial output (its heads' part of the output projection).
#[allow(clippy::too_many_arguments)]
pub fn attn_forward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    index: usize,
    h: &Tensor,
    stack: &Stack,
    causal: bool,
) -> Result<(Tensor, AttnCache), RuntimeError> {
    let l = local(stack, env.tp_group.len().max(1));
    let mut q = linear_named(mx, p, &format!("{prefix}.q"), h)?;
    let mut k = linear_named(mx, p, &format!("{prefix}.k"), h)?;
    let v = linear_named(mx, p, &format!("{prefix}.v"), h)?;
    if let Some(f) = &l.inv_freq {
        let pos = positions(env);
        q = mx.rope(&q, &pos, l.head_dim, f, false)?;
        k = mx.rope(&k, &pos, l.head_dim, f, false)?;
    }
    let mut ks = env.sequences(mx, net, index, 1, &k)?;
    let mut vs = env.sequences(mx, net, index, 2, &v)?;
    if l.groups > 1 {
        for t in ks.iter_mut().chain(vs.iter_mut()) {
            *t = mx.repeat_heads(t, l.head_dim, l.groups)?;
        }
    }
    let seq_rows = env.shard.seq_local_rows();
    let rows = env.shard.local();
    let mut qs = Vec::with_capacity(seq_rows.len());
    let mut ctxs = Vec::with_capacity(seq_rows.len());
    let mut probs = Vec::with_capacity(seq_rows.len());
    for (s, idx) in seq_rows.iter().enumerate() {
        let qi = mx.gather_rows(&q, idx)?;
        let pos: Vec<usize> = idx.iter().map(|&i| rows[i].pos as usize).collect();
        let (c, pr) = mx.attention_core(&qi, &ks[s], &vs[s], l.heads, causal, &pos)?;
        qs.push(qi);
        ctxs.push(c);
        probs.push(pr);
    }
    let ctx = mx.scatter_rows(&ctxs, &seq_rows, q.rows(), q.cols())?;
    let o = row_partial(mx, p, &format!("{prefix}.o"), &ctx, env.shard.t)?;
    let cache = AttnCache {
        seq_rows,
        q: qs,
        k: ks,
        v: vs,
        probs,
        ctx,
    };
    Ok((o, cache))
}

/// The backward of [`attn_forward`] from the output's gradient on every local row (`do_all`)
/// and on this rank's rows (`do_mine`): this tp rank's partial gradient of `h`.
#[allow(clippy::too_many_arguments)]
pub fn attn_backward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    index: usize,
    c: &AttnCache,
    h: &Tensor,
    do_all: &Tensor,
    do_mine: &Tensor,
    stack: &Stack,
    grads: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let l = local(stack, env.tp_group.len().max(1));
    let name = |x: &str| format!("{prefix}.{x}");
    let dctx = row_backward(mx, p, &name("o"), &c.ctx, do_all, do_mine, grads)?;
    let (n, w) = (dctx.rows(), dctx.cols());
    let mut dqs = Vec::with_capacity(c.seq_rows.len());
    let mut dks = Vec::with_capacity(c.seq_rows.len());
    let mut dvs = Vec::with_capacity(c.seq_rows.len());
    for (s, idx) in c.seq_rows.iter().enumerate() {
        let dci = mx.gather_rows(&dctx, idx)?;
        let (dq, mut dk, mut dv) =
            mx.attention_core_backward(&c.q[s], &c.k[s], &c.v[s], &c.probs[s], &dci)?;
        if l.groups > 1 {
            dk = mx.sum_heads(&dk, l.head_dim, l.groups)?;
            dv = mx.sum_heads(&dv, l.head_dim, l.groups)?;
        }
        dqs.push(dq);
        dks.push(dk);
        dvs.push(dv);
    }
    let kv_w = w / l.groups;
    let mut dq = mx.scatter_rows(&dqs, &c.seq_rows, n, w)?;
    let mut dk = env.unsequences(mx, net, index, 13, &dks, kv_w)?;
    let dv = env.unsequences(mx, net, index, 14, &dvs, kv_w)?;
    if let Some(f) = &l.inv_freq {
        let pos = positions(env);
        dq = mx.rope(&dq, &pos, l.head_dim, f, true)?;
        dk = mx.rope(&dk, &pos, l.head_dim, f, true)?;
    }
    let mut dh = linear_named_backward(mx, p, &name("q"), h, &dq, grads)?;
    for (x, d) in [("k", &dk), ("v", &dv)] {
        let part = linear_named_backward(mx, p, &name(x), h, d, grads)?;
        dh = mx.add(&dh, &part)?;
    }
    Ok(dh)
}
