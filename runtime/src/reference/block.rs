//! A pre-norm transformer block:
//! `x = x + attn(ln1(x)); x = x + fc2(gelu(fc1(ln2(x))))`.

use super::attention::{attention, attention_backward, AttentionCache};
use super::layers::{
    gelu, gelu_backward, linear_named, linear_named_backward, norm_named, norm_named_backward,
    LayerNormCache,
};
use super::params::{Grads, Params};
use crate::tensor::Tensor;

/// What the block's backward needs.
#[derive(Clone, Debug)]
pub struct BlockCache {
    ln1: LayerNormCache,
    attn: AttentionCache,
    ln2: LayerNormCache,
    /// `ln2(x1)`, the MLP's input.
    h2: Tensor,
    /// `fc1(h2)`, GELU's input.
    a: Tensor,
    /// `gelu(a)`, fc2's input.
    g: Tensor,
}

/// The block `prefix` (`{prefix}.ln1`, `.attn`, `.ln2`, `.mlp.fc1`, `.mlp.fc2`) over one
/// sequence `x` `[n, hidden]`.
pub fn block_forward(
    p: &Params,
    prefix: &str,
    x: &Tensor,
    heads: usize,
    causal: bool,
) -> (Tensor, BlockCache) {
    let (h1, ln1) = norm_named(p, &format!("{prefix}.ln1"), x);
    let (att, attn) = attention(p, &format!("{prefix}.attn"), &h1, heads, causal);
    let x1 = x.add(&att);
    let (h2, ln2) = norm_named(p, &format!("{prefix}.ln2"), &x1);
    let a = linear_named(p, &format!("{prefix}.mlp.fc1"), &h2);
    let g = gelu(&a);
    let m = linear_named(p, &format!("{prefix}.mlp.fc2"), &g);
    let y = x1.add(&m);
    (
        y,
        BlockCache {
            ln1,
            attn,
            ln2,
            h2,
            a,
            g,
        },
    )
}

/// The backward of [`block_forward`]: accumulates the block's gradients into `grads`, returns
/// `dx`.
pub fn block_backward(
    p: &Params,
    prefix: &str,
    cache: &BlockCache,
    dy: &Tensor,
    grads: &mut Grads,
) -> Tensor {
    let dg = linear_named_backward(p, &format!("{prefix}.mlp.fc2"), &cache.g, dy, grads);
    let da = gelu_backward(&cache.a, &dg);
    let dh2 = linear_named_backward(p, &format!("{prefix}.mlp.fc1"), &cache.h2, &da, grads);
    let mut dx1 = dy.clone();
    dx1.add_assign(&norm_named_backward(
        p,
        &format!("{prefix}.ln2"),
        &cache.ln2,
        &dh2,
        grads,
    ));
    let dh1 = attention_backward(p, &format!("{prefix}.attn"), &cache.attn, &dx1, grads);
    let mut dx = dx1;
    dx.add_assign(&norm_named_backward(
        p,
        &format!("{prefix}.ln1"),
        &cache.ln1,
        &dh1,
        grads,
    ));
    dx
}
