//! The elementwise and per-row layers: LayerNorm (eps 1e-5), tanh-GELU, softmax, and linear
//! layers by parameter name, each with its backward.
//!
//! Functions on tensors are pure; the `*_named` helpers read a layer's weights from
//! [`Params`] by name (`{name}.weight`, `{name}.bias`) and accumulate their gradients into
//! [`Grads`].

use super::params::{Grads, Params};
use crate::tensor::Tensor;

/// LayerNorm's epsilon.
pub const LN_EPS: f64 = 1e-5;

/// `√(2/π)`, the GELU tanh approximation's constant.
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;

/// What LayerNorm's backward needs: the normalised input and each row's `1/σ`.
#[derive(Clone, Debug)]
pub struct LayerNormCache {
    pub xhat: Tensor,
    /// Each row's `1/σ` on the host; empty when a backend keeps it on its device instead.
    pub rstd: Vec<f64>,
    /// A backend's device copy of each row's `1/σ` (`crate::cuda`), opaque here.
    pub device_rstd: Option<DeviceRstd>,
}

/// A backend's device values of a LayerNorm's `1/σ` per row.
#[derive(Clone)]
pub struct DeviceRstd(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for DeviceRstd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceRstd")
    }
}

/// Per row: `(x - mean) / √(var + eps) · w + b`, the variance biased (divided by the width).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> (Tensor, LayerNormCache) {
    let (n, c) = (x.rows(), x.cols());
    assert_eq!(w.numel(), c, "layer_norm: weight width");
    let (wd, bd) = (w.data(), b.data());
    let mut y = vec![0.0f32; n * c];
    let mut xhat = vec![0.0f32; n * c];
    let mut rstd = Vec::with_capacity(n);
    let rows = x.data().chunks_exact(c.max(1));
    for ((row, out), hat) in rows
        .zip(y.chunks_exact_mut(c.max(1)))
        .zip(xhat.chunks_exact_mut(c.max(1)))
    {
        let mean = row.iter().map(|v| f64::from(*v)).sum::<f64>() / c as f64;
        let var = row
            .iter()
            .map(|v| (f64::from(*v) - mean).powi(2))
            .sum::<f64>()
            / c as f64;
        let r = 1.0 / (var + LN_EPS).sqrt();
        rstd.push(r);
        for j in 0..c {
            let h = (f64::from(row[j]) - mean) * r;
            out[j] = (h * f64::from(wd[j]) + f64::from(bd[j])) as f32;
            hat[j] = h as f32;
        }
    }
    let t = |v| Tensor::from_vec(x.shape(), v).expect("x's shape");
    (
        t(y),
        LayerNormCache {
            xhat: t(xhat),
            rstd,
            device_rstd: None,
        },
    )
}

/// LayerNorm's backward: `(dx, dw, db)` with
/// `dx = rstd · (dx̂ - mean(dx̂) - x̂ · mean(dx̂ · x̂))`, `dx̂ = dy · w`.
pub fn layer_norm_backward(
    cache: &LayerNormCache,
    w: &Tensor,
    dy: &Tensor,
) -> (Tensor, Tensor, Tensor) {
    let c = dy.cols();
    let wd = w.data();
    let mut dx = vec![0.0f32; dy.numel()];
    let mut dw = vec![0.0f64; c];
    let mut db = vec![0.0f64; c];
    let rows = dy.data().chunks_exact(c.max(1));
    let hats = cache.xhat.data().chunks_exact(c.max(1));
    for (((g, h), out), r) in rows
        .zip(hats)
        .zip(dx.chunks_exact_mut(c.max(1)))
        .zip(&cache.rstd)
    {
        let mut mean_d = 0.0f64;
        let mut mean_dh = 0.0f64;
        for j in 0..c {
            let d = f64::from(g[j]) * f64::from(wd[j]);
            mean_d += d;
            mean_dh += d * f64::from(h[j]);
            dw[j] += f64::from(g[j]) * f64::from(h[j]);
            db[j] += f64::from(g[j]);
        }
        mean_d /= c as f64;
        mean_dh /= c as f64;
        for j in 0..c {
            let d = f64::from(g[j]) * f64::from(wd[j]);
            out[j] = (r * (d - mean_d - f64::from(h[j]) * mean_dh)) as f32;
        }
    }
    let to_t = |v: Vec<f64>| {
        Tensor::from_vec(&[c], v.into_iter().map(|x| x as f32).collect())
            .expect("length is the width")
    };
    (
        Tensor::from_vec(dy.shape(), dx).expect("dy's shape"),
        to_t(dw),
        to_t(db),
    )
}

/// `tanh u` as `1 - 2 / (e^{2u} + 1)`: one `exp`, several times faster than libm's `tanh`, within
/// a few f64 ulps of 1 (far below the f32 the results round to); ±1 where `e^{2u}` overflows or
/// vanishes.
fn tanh(u: f64) -> f64 {
    1.0 - 2.0 / ((2.0 * u).exp() + 1.0)
}

/// GELU, tanh form: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, elementwise.
pub fn gelu(x: &Tensor) -> Tensor {
    let mut y = x.clone();
    for v in y.data_mut() {
        let x = f64::from(*v);
        let t = tanh(GELU_C * (x + GELU_A * x * x * x));
        *v = (0.5 * x * (1.0 + t)) as f32;
    }
    y
}

/// GELU's backward: `dy · gelu'(x)` with
/// `gelu'(x) = 0.5·(1 + t) + 0.5·x·(1 - t²)·√(2/π)·(1 + 3·0.044715·x²)`.
pub fn gelu_backward(x: &Tensor, dy: &Tensor) -> Tensor {
    assert_eq!(x.shape(), dy.shape(), "gelu_backward: shapes");
    let mut dx = dy.clone();
    for (d, xv) in dx.data_mut().iter_mut().zip(x.data()) {
        let x = f64::from(*xv);
        let t = tanh(GELU_C * (x + GELU_A * x * x * x));
        let g = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
        *d = (f64::from(*d) * g) as f32;
    }
    dx
}

/// Softmax of one row in place (the maximum subtracted first).
pub fn softmax_in_place(row: &mut [f32]) {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    // The exponentials wait in the row itself (rounded to f32): no allocation per row.
    let mut sum = 0.0f64;
    for v in row.iter_mut() {
        let e = f64::from(*v - m).exp();
        sum += e;
        *v = e as f32;
    }
    for v in row.iter_mut() {
        *v = (f64::from(*v) / sum) as f32;
    }
}

/// The linear layer `name`: `x · {name}.weightᵀ + {name}.bias` (no bias if `{name}.bias` is not
/// a parameter).
pub fn linear_named(p: &Params, name: &str, x: &Tensor) -> Tensor {
    let w = p.t(&format!("{name}.weight"));
    let b = p.get(&format!("{name}.bias"));
    Tensor::linear(x, w, b)
}

/// The backward of [`linear_named`] given its input `x`: accumulates the weight's (and bias's)
/// gradient into `g` and returns `dx`.
pub fn linear_named_backward(
    p: &Params,
    name: &str,
    x: &Tensor,
    dy: &Tensor,
    g: &mut Grads,
) -> Tensor {
    let wname = format!("{name}.weight");
    let bname = format!("{name}.bias");
    let (dx, dw, db) = Tensor::linear_backward(x, p.t(&wname), dy);
    g.accumulate(&wname, &dw);
    if p.get(&bname).is_some() {
        g.accumulate(&bname, &db);
    }
    dx
}

/// The LayerNorm `name` (`{name}.weight`, `{name}.bias`).
pub fn norm_named(p: &Params, name: &str, x: &Tensor) -> (Tensor, LayerNormCache) {
    layer_norm(
        x,
        p.t(&format!("{name}.weight")),
        p.t(&format!("{name}.bias")),
    )
}

/// The backward of [`norm_named`]: accumulates its gradients into `g` and returns `dx`.
pub fn norm_named_backward(
    p: &Params,
    name: &str,
    cache: &LayerNormCache,
    dy: &Tensor,
    g: &mut Grads,
) -> Tensor {
    let wname = format!("{name}.weight");
    let (dx, dw, db) = layer_norm_backward(cache, p.t(&wname), dy);
    g.accumulate(&wname, &dw);
    g.accumulate(&format!("{name}.bias"), &db);
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_at_known_points() {
        let x = Tensor::from_vec(&[3], vec![0.0, 1.0, -1.0]).unwrap();
        let y = gelu(&x);
        assert_eq!(y.data()[0], 0.0);
        assert!((y.data()[1] - 0.841_192).abs() < 1e-5);
        assert!((y.data()[2] + 0.158_808).abs() < 1e-5);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut r = [1.0f32, 2.0, 3.0, 1000.0];
        softmax_in_place(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(r[3] > 0.999);
    }
}
