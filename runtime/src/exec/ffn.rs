//! A feed-forward network on one rank's tp shard: a block's FFN or a projector. The input
//! linears (`fc1`, or `gate` and `up`) are column-parallel, the output linear (`fc2` or
//! `down`) row-parallel: its output is this tp rank's partial sum, its bias added by tp rank 0.
//! The caller gathers the input rows and reduces the output over the tp group.

use super::math::{accumulate, linear_named, linear_named_backward, Math};
use crate::reference::arch::Ffn;
use crate::reference::params::{Grads, Params};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// What the backward needs.
#[derive(Clone, Debug)]
pub struct FfnCache {
    /// The input rows (every local row).
    pub x: Tensor,
    /// `fc1(x)`, or `gate(x)`.
    pub a: Tensor,
    /// `up(x)` of a gated FFN.
    pub u: Option<Tensor>,
    /// The output linear's input.
    pub g: Tensor,
}

impl FfnCache {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        4 * (self.x.numel()
            + self.a.numel()
            + self.g.numel()
            + self.u.as_ref().map_or(0, Tensor::numel))
    }
}

/// The linears' names under `prefix`: input(s) and output.
fn names(prefix: &str, ffn: Ffn) -> (String, String, String) {
    match ffn {
        Ffn::Mlp(_) => (
            format!("{prefix}.fc1"),
            String::new(),
            format!("{prefix}.fc2"),
        ),
        Ffn::Gated(_) => (
            format!("{prefix}.gate"),
            format!("{prefix}.up"),
            format!("{prefix}.down"),
        ),
    }
}

/// A row-parallel linear layer's partial output; tp rank 0 adds the bias.
pub fn row_partial(
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
pub fn row_backward(
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
    let b = format!("{name}.bias");
    if p.get(&b).is_some() {
        accumulate(mx, g, &b, &mx.col_sums(dy_mine)?)?;
    }
    Ok(dx)
}

/// The FFN `prefix` over the gathered rows `x`: this tp rank's partial output.
pub fn ffn_forward(
    mx: &dyn Math,
    p: &Params,
    prefix: &str,
    ffn: Ffn,
    x: &Tensor,
    t: usize,
) -> Result<(Tensor, FfnCache), RuntimeError> {
    let (first, up, out) = names(prefix, ffn);
    let a = linear_named(mx, p, &first, x)?;
    let (u, g) = match ffn {
        Ffn::Mlp(f) => (None, mx.activation(&a, f)?),
        Ffn::Gated(f) => {
            let u = linear_named(mx, p, &up, x)?;
            let g = mx.gated(&a, &u, f)?;
            (Some(u), g)
        }
    };
    let m = row_partial(mx, p, &out, &g, t)?;
    let cache = FfnCache {
        x: x.clone(),
        a,
        u,
        g,
    };
    Ok((m, cache))
}

/// The backward of [`ffn_forward`] from the output's gradient on every local row (`dy_all`)
/// and on this rank's rows (`dy_mine`): this tp rank's partial gradient of the input rows.
#[allow(clippy::too_many_arguments)]
pub fn ffn_backward(
    mx: &dyn Math,
    p: &Params,
    prefix: &str,
    ffn: Ffn,
    c: &FfnCache,
    dy_all: &Tensor,
    dy_mine: &Tensor,
    grads: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let (first, up, out) = names(prefix, ffn);
    let dg = row_backward(mx, p, &out, &c.g, dy_all, dy_mine, grads)?;
    match (ffn, &c.u) {
        (Ffn::Gated(f), Some(u)) => {
            let (da, du) = mx.gated_backward(&c.a, u, &dg, f)?;
            let dx = linear_named_backward(mx, p, &first, &c.x, &da, grads)?;
            let dxu = linear_named_backward(mx, p, &up, &c.x, &du, grads)?;
            mx.add(&dx, &dxu)
        }
        (Ffn::Mlp(f), _) | (Ffn::Gated(f), None) => {
            let da = mx.activation_backward(&c.a, &dg, f)?;
            linear_named_backward(mx, p, &first, &c.x, &da, grads)
        }
    }
}
