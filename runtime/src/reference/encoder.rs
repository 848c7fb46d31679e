//! The vision encoder and its projector, one image at a time (attention never crosses images):
//!
//! ```text
//! x = patches · patch.weightᵀ + patch.bias + pos[0:n]
//! for each block:  x = x + attn(ln1(x));  x = x + fc2(gelu(fc1(ln2(x))))
//! y = proj.fc2(gelu(proj.fc1(ln_f(x))))            # [n, H]
//! ```

use super::block::{block_backward, block_forward, BlockCache};
use super::layers::{
    gelu, gelu_backward, linear_named, linear_named_backward, norm_named, norm_named_backward,
    LayerNormCache,
};
use super::params::{EncoderConfig, Grads, Params};
use crate::tensor::Tensor;

/// What the encoder's backward needs for one image.
#[derive(Clone, Debug)]
pub struct EncoderCache {
    patches: Tensor,
    blocks: Vec<BlockCache>,
    ln_f: LayerNormCache,
    /// `ln_f(x)`, the projector's input.
    xf: Tensor,
    /// `proj.fc1(xf)`, GELU's input.
    a: Tensor,
    /// `gelu(a)`, `proj.fc2`'s input.
    g: Tensor,
}

/// One image's patches `[n, P]` to its projected rows `[n, H]`, by the encoder whose tensors
/// are named `{prefix}.*`.
pub fn encoder_forward(
    cfg: &EncoderConfig,
    prefix: &str,
    p: &Params,
    patches: &Tensor,
) -> (Tensor, EncoderCache) {
    let mut x = linear_named(p, &format!("{prefix}.patch"), patches);
    let pos = p.t(&format!("{prefix}.pos"));
    for i in 0..x.rows() {
        for (v, q) in x.row_mut(i).iter_mut().zip(pos.row(i)) {
            *v += *q;
        }
    }
    let mut blocks = Vec::with_capacity(cfg.stack.layers);
    for i in 0..cfg.stack.layers {
        let (y, c) = block_forward(
            p,
            &format!("{prefix}.blocks.{i}"),
            &x,
            cfg.stack.heads,
            false,
        );
        x = y;
        blocks.push(c);
    }
    let (xf, ln_f) = norm_named(p, &format!("{prefix}.ln_f"), &x);
    let a = linear_named(p, &format!("{prefix}.proj.fc1"), &xf);
    let g = gelu(&a);
    let y = linear_named(p, &format!("{prefix}.proj.fc2"), &g);
    let cache = EncoderCache {
        patches: patches.clone(),
        blocks,
        ln_f,
        xf,
        a,
        g,
    };
    (y, cache)
}

/// The backward of [`encoder_forward`] for one image, from the gradient of its projected rows;
/// accumulates into `grads`.
pub fn encoder_backward(
    cfg: &EncoderConfig,
    prefix: &str,
    p: &Params,
    cache: &EncoderCache,
    dy: &Tensor,
    grads: &mut Grads,
) {
    let dg = linear_named_backward(p, &format!("{prefix}.proj.fc2"), &cache.g, dy, grads);
    let da = gelu_backward(&cache.a, &dg);
    let dxf = linear_named_backward(p, &format!("{prefix}.proj.fc1"), &cache.xf, &da, grads);
    let mut dx = norm_named_backward(p, &format!("{prefix}.ln_f"), &cache.ln_f, &dxf, grads);
    for i in (0..cfg.stack.layers).rev() {
        dx = block_backward(
            p,
            &format!("{prefix}.blocks.{i}"),
            &cache.blocks[i],
            &dx,
            grads,
        );
    }
    let mut dpos = Tensor::zeros(&[cfg.max_rows, cfg.stack.hidden]);
    for i in 0..dx.rows() {
        dpos.row_mut(i).copy_from_slice(dx.row(i));
    }
    grads.accumulate(&format!("{prefix}.pos"), &dpos);
    linear_named_backward(p, &format!("{prefix}.patch"), &cache.patches, &dx, grads);
}
