//! RMSNorm: `x / √(mean(x²) + eps) · w` per row, no bias (Llama's `LlamaRMSNorm`), and its
//! backward. Sums in f64, rounded once, as LayerNorm's.

use super::layers::LayerNormCache;
use crate::tensor::Tensor;

/// `(y, cache)`; the cache's `xhat` is `x / rms`, its `rstd` each row's `1 / rms`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> (Tensor, LayerNormCache) {
    let (n, c) = (x.rows(), x.cols());
    assert_eq!(w.numel(), c, "rms_norm: weight width");
    let mut y = Tensor::zeros(x.shape());
    let mut xhat = Tensor::zeros(x.shape());
    let mut rstd = Vec::with_capacity(n);
    for i in 0..n {
        let row = x.row(i);
        let ms = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / c as f64;
        let r = 1.0 / (ms + eps).sqrt();
        rstd.push(r);
        let out = y.row_mut(i);
        for (j, xv) in row.iter().enumerate() {
            out[j] = (f64::from(*xv) * r * f64::from(w.data()[j])) as f32;
        }
        for (h, xv) in xhat.row_mut(i).iter_mut().zip(row) {
            *h = (f64::from(*xv) * r) as f32;
        }
    }
    let cache = LayerNormCache {
        xhat,
        rstd,
        device_rstd: None,
    };
    (y, cache)
}

/// `(dx, dw)` with `dx = rstd · (d - x̂ · mean(d · x̂))`, `d = dy · w`, `dw = Σ dy · x̂`.
pub fn rms_norm_backward(cache: &LayerNormCache, w: &Tensor, dy: &Tensor) -> (Tensor, Tensor) {
    let (n, c) = (dy.rows(), dy.cols());
    let mut dx = Tensor::zeros(dy.shape());
    let mut dw = vec![0.0f64; c];
    for i in 0..n {
        let (g, h) = (dy.row(i), cache.xhat.row(i));
        let mut mean_dh = 0.0f64;
        for j in 0..c {
            let d = f64::from(g[j]) * f64::from(w.data()[j]);
            mean_dh += d * f64::from(h[j]);
            dw[j] += f64::from(g[j]) * f64::from(h[j]);
        }
        mean_dh /= c as f64;
        for (j, out) in dx.row_mut(i).iter_mut().enumerate() {
            let d = f64::from(g[j]) * f64::from(w.data()[j]);
            *out = (cache.rstd[i] * (d - f64::from(h[j]) * mean_dh)) as f32;
        }
    }
    let dw = Tensor::from_vec(&[c], dw.into_iter().map(|x| x as f32).collect())
        .expect("length is the width");
    (dx, dw)
}
