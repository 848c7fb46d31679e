//! The arithmetic a rank's interpreter asks of its backend: the matrix products and the
//! reference model's other operations, on host tensors. [`CpuMath`] is the CPU reference
//! itself (so the CPU backend is bitwise what it was); `crate::cuda::GpuMath` runs the same
//! operations on a GPU. Everything else (sharding, row stores, transfers, Adam) is shared.

use crate::reference::adam::AdamStep;
use crate::reference::arch::{Act, Norm};
use crate::reference::attention::{attention_core_at, attention_core_backward};
use crate::reference::layers::{self, LayerNormCache};
use crate::reference::llm;
use crate::reference::params::{Grads, Params};
use crate::reference::{act, moe, rmsnorm, rope};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// The operations, each as the CPU reference function of the same name defines it.
pub trait Math: Send {
    /// Whether results stay on a device, so that collectives between threads should move
    /// them there too (`collective.rs`).
    fn on_device(&self) -> bool {
        false
    }
    /// The flat values `ranges[c]` of `parts[c]`, for every `c`, as one tensor of the parts'
    /// shape (the ranges tile it).
    fn select_ranges(
        &self,
        parts: &[Tensor],
        ranges: &[std::ops::Range<usize>],
    ) -> Result<Tensor, RuntimeError>;
    /// `x · wᵀ + b` ([`Tensor::linear`]).
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, RuntimeError>;
    /// `(dx, dw, db)` ([`Tensor::linear_backward`]).
    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError>;
    fn layer_norm(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<(Tensor, LayerNormCache), RuntimeError>;
    fn layer_norm_backward(
        &self,
        cache: &LayerNormCache,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError>;
    fn gelu(&self, x: &Tensor) -> Result<Tensor, RuntimeError>;
    fn gelu_backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor, RuntimeError>;
    /// [`attention_core_at`]: the heads' outputs and their probabilities `[heads, nq, nk]`.
    fn attention_core(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
        positions: &[usize],
    ) -> Result<(Tensor, Tensor), RuntimeError>;
    /// [`attention_core_backward`], the probabilities as `attention_core` gave them.
    fn attention_core_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        dctx: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError>;
    /// Rows `index` of `x`, in order.
    fn gather_rows(&self, x: &Tensor, index: &[usize]) -> Result<Tensor, RuntimeError>;
    /// A `[n, cols]` tensor whose row `rows[p][k]` is row `k` of `parts[p]`; rows no part
    /// writes are zero.
    fn scatter_rows(
        &self,
        parts: &[Tensor],
        rows: &[Vec<usize>],
        n: usize,
        cols: usize,
    ) -> Result<Tensor, RuntimeError>;
    /// `into += delta` (a gradient's accumulation).
    fn accumulate(&self, into: &mut Tensor, delta: &Tensor) -> Result<(), RuntimeError> {
        *into = self.add(into, delta)?;
        Ok(())
    }
    /// Per column, the sum over rows in f64, rounded once ([`super::block::col_sums`]).
    fn col_sums(&self, x: &Tensor) -> Result<Tensor, RuntimeError>;
    /// One Adam update of `p` and its moments `m`, `v` from the gradient `g`
    /// ([`AdamStep::apply`]).
    fn adam(
        &self,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<(), RuntimeError>;
    /// A `[n, cols]` tensor of zeros with `src`'s row `k` added to row `index[k]`, for `k`
    /// in order (an embedding's backward).
    fn scatter_add_rows(
        &self,
        n: usize,
        src: &Tensor,
        index: &[usize],
    ) -> Result<Tensor, RuntimeError>;
    /// `a + b`, elementwise ([`Tensor::add`]).
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, RuntimeError>;
    /// [`llm::cross_entropy`].
    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &[i64],
        global_targets: usize,
    ) -> Result<(f64, Tensor), RuntimeError>;

    // The operations of the other architectures (`reference::arch`). Their defaults compute on
    // the host, so a device backend is correct before it has kernels of its own.

    /// [`rmsnorm::rms_norm`].
    fn rms_norm(
        &self,
        x: &Tensor,
        w: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, LayerNormCache), RuntimeError> {
        Ok(rmsnorm::rms_norm(x, w, eps))
    }
    /// [`rmsnorm::rms_norm_backward`]: `(dx, dw)`.
    fn rms_norm_backward(
        &self,
        cache: &LayerNormCache,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor), RuntimeError> {
        Ok(rmsnorm::rms_norm_backward(cache, w, dy))
    }
    /// [`act::activation`]; the tanh GELU is [`Math::gelu`].
    fn activation(&self, x: &Tensor, f: Act) -> Result<Tensor, RuntimeError> {
        match f {
            Act::GeluTanh => self.gelu(x),
            _ => Ok(act::activation(x, f)),
        }
    }
    /// [`act::activation_backward`].
    fn activation_backward(&self, x: &Tensor, dy: &Tensor, f: Act) -> Result<Tensor, RuntimeError> {
        match f {
            Act::GeluTanh => self.gelu_backward(x, dy),
            _ => Ok(act::activation_backward(x, dy, f)),
        }
    }
    /// [`act::gated`]: `f(gate) · up`.
    fn gated(&self, gate: &Tensor, up: &Tensor, f: Act) -> Result<Tensor, RuntimeError> {
        Ok(act::gated(gate, up, f))
    }
    /// [`act::gated_backward`]: `(dgate, dup)`.
    fn gated_backward(
        &self,
        gate: &Tensor,
        up: &Tensor,
        dy: &Tensor,
        f: Act,
    ) -> Result<(Tensor, Tensor), RuntimeError> {
        Ok(act::gated_backward(gate, up, dy, f))
    }
    /// [`rope::rope`].
    fn rope(
        &self,
        x: &Tensor,
        positions: &[usize],
        head_dim: usize,
        inv_freq: &[f64],
        inverse: bool,
    ) -> Result<Tensor, RuntimeError> {
        Ok(rope::rope(x, positions, head_dim, inv_freq, inverse))
    }
    /// [`super::vocab::stats`]: per row of a vocabulary slice starting at `start`, its
    /// maximum, exponential sum and target logit `[rows, 3]`.
    fn vocab_stats(
        &self,
        logits: &Tensor,
        targets: &[i64],
        start: usize,
    ) -> Result<Tensor, RuntimeError> {
        let held = start..start + logits.cols();
        Ok(super::vocab::stats(logits, targets, &held))
    }
    /// [`super::vocab::ce_grad`].
    fn vocab_ce_grad(
        &self,
        logits: &Tensor,
        targets: &[i64],
        start: usize,
        lse: &[f64],
        global_targets: usize,
    ) -> Result<Tensor, RuntimeError> {
        Ok(super::vocab::ce_grad(
            logits,
            targets,
            start,
            lse,
            global_targets,
        ))
    }
    /// [`rope::repeat_heads`].
    fn repeat_heads(
        &self,
        x: &Tensor,
        head_dim: usize,
        groups: usize,
    ) -> Result<Tensor, RuntimeError> {
        Ok(rope::repeat_heads(x, head_dim, groups))
    }
    /// [`moe::combine`]: each row the weighted sum of its experts' output rows.
    fn moe_combine(
        &self,
        x: &Tensor,
        rows: &[usize],
        weights: &[f64],
        n: usize,
    ) -> Result<Tensor, RuntimeError> {
        Ok(moe::combine(x, rows, weights, n))
    }
    /// [`moe::combine_backward`]: the expert outputs' gradients and the weights' (on the host).
    fn moe_combine_backward(
        &self,
        x: &Tensor,
        rows: &[usize],
        weights: &[f64],
        dy: &Tensor,
    ) -> Result<(Tensor, Vec<f64>), RuntimeError> {
        Ok(moe::combine_backward(x, rows, weights, dy))
    }
    /// [`rope::sum_heads`].
    fn sum_heads(
        &self,
        dx: &Tensor,
        head_dim: usize,
        groups: usize,
    ) -> Result<Tensor, RuntimeError> {
        Ok(rope::sum_heads(dx, head_dim, groups))
    }
}

/// The CPU reference's own functions.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuMath;

impl Math for CpuMath {
    fn scatter_add_rows(
        &self,
        n: usize,
        src: &Tensor,
        index: &[usize],
    ) -> Result<Tensor, RuntimeError> {
        let mut out = Tensor::zeros(&[n, src.cols()]);
        for (k, &i) in index.iter().enumerate() {
            for (d, g) in out.row_mut(i).iter_mut().zip(src.row(k)) {
                *d += *g;
            }
        }
        Ok(out)
    }

    fn adam(
        &self,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<(), RuntimeError> {
        step.apply(p.data_mut(), g.data(), m.data_mut(), v.data_mut());
        Ok(())
    }

    fn accumulate(&self, into: &mut Tensor, delta: &Tensor) -> Result<(), RuntimeError> {
        into.add_assign(delta);
        Ok(())
    }

    fn col_sums(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
        Ok(super::block::col_sums(x))
    }

    fn select_ranges(
        &self,
        parts: &[Tensor],
        ranges: &[std::ops::Range<usize>],
    ) -> Result<Tensor, RuntimeError> {
        let mut out = Tensor::zeros(parts[0].shape());
        for (p, r) in parts.iter().zip(ranges) {
            out.data_mut()[r.clone()].copy_from_slice(&p.data()[r.clone()]);
        }
        Ok(out)
    }

    fn gather_rows(&self, x: &Tensor, index: &[usize]) -> Result<Tensor, RuntimeError> {
        Ok(super::comm::gather_rows(x, index))
    }

    fn scatter_rows(
        &self,
        parts: &[Tensor],
        rows: &[Vec<usize>],
        n: usize,
        cols: usize,
    ) -> Result<Tensor, RuntimeError> {
        let mut out = Tensor::zeros(&[n, cols]);
        for (t, idx) in parts.iter().zip(rows) {
            for (k, &i) in idx.iter().enumerate() {
                out.row_mut(i).copy_from_slice(t.row(k));
            }
        }
        Ok(out)
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, RuntimeError> {
        Ok(a.add(b))
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, RuntimeError> {
        Ok(Tensor::linear(x, w, b))
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        Ok(Tensor::linear_backward(x, w, dy))
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<(Tensor, LayerNormCache), RuntimeError> {
        Ok(layers::layer_norm(x, w, b))
    }

    fn layer_norm_backward(
        &self,
        cache: &LayerNormCache,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        Ok(layers::layer_norm_backward(cache, w, dy))
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
        Ok(layers::gelu(x))
    }

    fn gelu_backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor, RuntimeError> {
        Ok(layers::gelu_backward(x, dy))
    }

    fn attention_core(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
        positions: &[usize],
    ) -> Result<(Tensor, Tensor), RuntimeError> {
        let (ctx, probs) = attention_core_at(q, k, v, heads, causal, positions);
        let (nq, nk) = (q.rows(), k.rows());
        let mut all = Vec::with_capacity(heads * nq * nk);
        for p in &probs {
            all.extend_from_slice(p.data());
        }
        Ok((ctx, Tensor::from_vec(&[heads, nq, nk], all)?))
    }

    fn attention_core_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        dctx: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let (heads, nq, nk) = (probs.shape()[0], q.rows(), k.rows());
        let per_head = (0..heads)
            .map(|h| {
                Tensor::from_vec(
                    &[nq, nk],
                    probs.data()[h * nq * nk..(h + 1) * nq * nk].to_vec(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(attention_core_backward(q, k, v, &per_head, dctx))
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &[i64],
        global_targets: usize,
    ) -> Result<(f64, Tensor), RuntimeError> {
        Ok(llm::cross_entropy(logits, targets, global_targets))
    }
}

/// `g[name] += delta`, with `mx`'s arithmetic (the gradient then lives where `mx` computes).
pub fn accumulate(
    mx: &dyn Math,
    g: &mut Grads,
    name: &str,
    delta: &Tensor,
) -> Result<(), RuntimeError> {
    let into = g
        .get_mut(name)
        .unwrap_or_else(|| panic!("gradient `{name}` missing"));
    mx.accumulate(into, delta)
}

/// The linear layer `name` (`{name}.weight`, `{name}.bias` if a parameter) on `x`.
pub fn linear_named(
    mx: &dyn Math,
    p: &Params,
    name: &str,
    x: &Tensor,
) -> Result<Tensor, RuntimeError> {
    let w = p.t(&format!("{name}.weight"));
    mx.linear(x, w, p.get(&format!("{name}.bias")))
}

/// Its backward: accumulates the weight's (and bias's) gradient into `g`, returns `dx`.
pub fn linear_named_backward(
    mx: &dyn Math,
    p: &Params,
    name: &str,
    x: &Tensor,
    dy: &Tensor,
    g: &mut Grads,
) -> Result<Tensor, RuntimeError> {
    let wname = format!("{name}.weight");
    let bname = format!("{name}.bias");
    let (dx, dw, db) = mx.linear_backward(x, p.t(&wname), dy)?;
    accumulate(mx, g, &wname, &dw)?;
    if p.get(&bname).is_some() {
        accumulate(mx, g, &bname, &db)?;
    }
    Ok(dx)
}

/// The norm `name` of kind `norm` (LayerNorm: `.weight`, `.bias`; RMSNorm: `.weight`).
pub fn norm_named(
    mx: &dyn Math,
    p: &Params,
    name: &str,
    x: &Tensor,
    norm: Norm,
) -> Result<(Tensor, LayerNormCache), RuntimeError> {
    let w = p.t(&format!("{name}.weight"));
    match norm {
        Norm::Layer { .. } => mx.layer_norm(x, w, p.t(&format!("{name}.bias"))),
        Norm::Rms { eps } => mx.rms_norm(x, w, eps),
    }
}

/// Its backward: accumulates its gradients into `g`, returns `dx`.
pub fn norm_named_backward(
    mx: &dyn Math,
    p: &Params,
    name: &str,
    cache: &LayerNormCache,
    dy: &Tensor,
    g: &mut Grads,
    norm: Norm,
) -> Result<Tensor, RuntimeError> {
    let wname = format!("{name}.weight");
    if let Norm::Rms { .. } = norm {
        let (dx, dw) = mx.rms_norm_backward(cache, p.t(&wname), dy)?;
        accumulate(mx, g, &wname, &dw)?;
        return Ok(dx);
    }
    let (dx, dw, db) = mx.layer_norm_backward(cache, p.t(&wname), dy)?;
    accumulate(mx, g, &wname, &dw)?;
    accumulate(mx, g, &format!("{name}.bias"), &db)?;
    Ok(dx)
}
