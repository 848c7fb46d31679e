//! The transformer block and the projector MLP on one rank's shard: tensor parallel
//! (column-parallel q, k, v and fc1 over heads and FFN columns; row-parallel o and fc2 whose
//! partial outputs are summed over the tp group, their bias added once, by tp rank 0),
//! sequence parallel (LayerNorm and the residual on this rank's rows; all-gather before a
//! column-parallel layer, reduce-scatter after a row-parallel one) and context parallel
//! (keys and values gathered whole over the cp group; their gradients reduce-scattered back).
//!
//! The same mathematics as `reference::block`, with the same f64 accumulation per product.

use super::attn::{attn_backward, attn_forward, AttnCache};
use super::comm::Env;
use super::ffn::{ffn_backward, ffn_forward, FfnCache};
use super::math::{norm_named, norm_named_backward, Math};
use super::moe::{moe_backward, moe_forward, MoeBlock, MoeCache};
use crate::reference::arch::{Act, Ffn, Stack};
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

/// What a block's backward needs.
#[derive(Clone, Debug)]
pub struct BlockCache {
    ln1: LayerNormCache,
    h1: Tensor,
    attn: AttnCache,
    ln2: LayerNormCache,
    ffn: FeedForward,
}

/// A block's FFN cache: dense, or a mixture of experts (`exec/moe.rs`).
#[derive(Clone, Debug)]
enum FeedForward {
    Dense(FfnCache),
    Moe(MoeCache),
}

impl FeedForward {
    fn bytes(&self) -> usize {
        match self {
            FeedForward::Dense(c) => c.bytes(),
            FeedForward::Moe(c) => c.bytes(),
        }
    }
}

/// Block `index`'s mixture of experts under `prefix`, if it has one.
fn moe_of<'a>(prefix: &'a str, index: usize, stack: &Stack) -> Option<MoeBlock<'a>> {
    stack.moe_at(index).map(|moe| MoeBlock {
        prefix,
        index,
        moe,
        ffn: stack.block.ffn,
    })
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
            + tensor_bytes([&self.h1])
            + self.attn.bytes()
            + self.ffn.bytes()
    }
}

/// The block `prefix` (block number `index`) over this rank's rows `x`.
#[allow(clippy::too_many_arguments)]
pub fn block_forward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    index: usize,
    x: &Tensor,
    stack: &Stack,
    causal: bool,
) -> Result<(Tensor, BlockCache), RuntimeError> {
    let (t, a) = (env.shard.t, &stack.block);
    let (h1m, ln1) = norm_named(mx, p, &format!("{prefix}.ln1"), x, a.norm)?;
    let h1 = env.gather(mx, net, index, 0, &h1m)?;
    let attn_prefix = format!("{prefix}.attn");
    let (o, attn) = attn_forward(mx, net, env, p, &attn_prefix, index, &h1, stack, causal)?;
    let x1 = mx.add(x, &env.reduce(mx, net, index, 3, o)?)?;
    let (h2m, ln2) = norm_named(mx, p, &format!("{prefix}.ln2"), &x1, a.norm)?;
    let h2 = env.gather(mx, net, index, 4, &h2m)?;
    let moe = format!("{prefix}.moe");
    let (m, ffn) = match moe_of(&moe, index, stack) {
        Some(b) => {
            let (m, c) = moe_forward(mx, net, env, p, b, &h2)?;
            (m, FeedForward::Moe(c))
        }
        None => {
            let (m, c) = ffn_forward(mx, p, &format!("{prefix}.mlp"), a.ffn, &h2, t)?;
            (m, FeedForward::Dense(c))
        }
    };
    let y = mx.add(&x1, &env.reduce(mx, net, index, 5, m)?)?;
    let cache = BlockCache {
        ln1,
        h1,
        attn,
        ln2,
        ffn,
    };
    Ok((y, cache))
}

/// The backward of [`block_forward`] from the gradient of this rank's output rows.
#[allow(clippy::too_many_arguments)]
pub fn block_backward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    index: usize,
    c: &BlockCache,
    dy: &Tensor,
    stack: &Stack,
    grads: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let a = &stack.block;
    let dy_all = env.gather(mx, net, index, 10, dy)?;
    let (mlp, moe) = (format!("{prefix}.mlp"), format!("{prefix}.moe"));
    let dh2 = match (&c.ffn, moe_of(&moe, index, stack)) {
        (FeedForward::Moe(cache), Some(b)) => {
            moe_backward(mx, net, env, p, b, cache, &dy_all, grads)?
        }
        (FeedForward::Dense(cache), None) => {
            ffn_backward(mx, p, &mlp, a.ffn, cache, &dy_all, dy, grads)?
        }
        _ => unreachable!("a block's cache is of its own FFN"),
    };
    let dh2 = env.reduce(mx, net, index, 11, dh2)?;
    let ln2 = format!("{prefix}.ln2");
    let dln2 = norm_named_backward(mx, p, &ln2, &c.ln2, &dh2, grads, a.norm)?;
    let dx1 = mx.add(dy, &dln2)?;
    let do_all = env.gather(mx, net, index, 12, &dx1)?;
    let attn = format!("{prefix}.attn");
    let dh1 = attn_backward(
        mx, net, env, p, &attn, index, &c.attn, &c.h1, &do_all, &dx1, stack, grads,
    )?;
    let dh1 = env.reduce(mx, net, index, 15, dh1)?;
    let ln1 = format!("{prefix}.ln1");
    let dln1 = norm_named_backward(mx, p, &ln1, &c.ln1, &dh1, grads, a.norm)?;
    mx.add(&dx1, &dln1)
}

/// What the projector's backward needs.
pub type MlpCache = FfnCache;

/// The projector `prefix` (`.fc1` column-parallel, `act`, `.fc2` row-parallel) over this
/// rank's rows. With `fold` the output stays this tp rank's partial sums of every local row
/// (the boundary's `Reduce` operations sum them where they are needed).
#[allow(clippy::too_many_arguments)]
pub fn mlp_forward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    act: Act,
    x: &Tensor,
    fold: bool,
) -> Result<(Tensor, MlpCache), RuntimeError> {
    let xa = env.gather(mx, net, 0, 0, x)?;
    let (m, cache) = ffn_forward(mx, p, prefix, Ffn::Mlp(act), &xa, env.shard.t)?;
    let y = if fold {
        m
    } else {
        env.reduce(mx, net, 0, 1, m)?
    };
    Ok((y, cache))
}

/// The backward of [`mlp_forward`].
#[allow(clippy::too_many_arguments)]
pub fn mlp_backward(
    mx: &dyn Math,
    net: &mut Endpoint,
    env: &Env<'_>,
    p: &Params,
    prefix: &str,
    act: Act,
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
        (env.gather(mx, net, 0, 10, dy)?, dy.clone())
    };
    let dx = ffn_backward(mx, p, prefix, Ffn::Mlp(act), c, &dy_all, &dy_mine, grads)?;
    env.reduce(mx, net, 0, 11, dx)
}
