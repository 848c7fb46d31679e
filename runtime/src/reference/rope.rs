//! Rotary positions in the rotate-half form (Llama, Qwen2): per head, the first and second
//! halves `(x1, x2)` of its columns turn by `pos · inv_freq[i]`:
//! `(x1 cos − x2 sin, x2 cos + x1 sin)`, angles in f64; the backward turns the other way.

use crate::tensor::Tensor;

/// Rows `x` (`[n, heads · head_dim]`), row `k` at sequence position `positions[k]`, turned
/// forward, or back when `inverse` (the backward of the forward turn).
pub fn rope(
    x: &Tensor,
    positions: &[usize],
    head_dim: usize,
    inv_freq: &[f64],
    inverse: bool,
) -> Tensor {
    let half = head_dim / 2;
    assert_eq!(inv_freq.len(), half, "rope: one frequency per column pair");
    assert_eq!(positions.len(), x.rows(), "rope: one position per row");
    let mut y = x.clone();
    let sign = if inverse { -1.0f64 } else { 1.0 };
    for (k, &pos) in positions.iter().enumerate() {
        let turns: Vec<(f64, f64)> = inv_freq
            .iter()
            .map(|&f| {
                let angle = pos as f64 * f;
                (angle.cos(), sign * angle.sin())
            })
            .collect();
        let src = x.row(k);
        let out = y.row_mut(k);
        for h in 0..src.len() / head_dim {
            let base = h * head_dim;
            for (i, &(c, s)) in turns.iter().enumerate() {
                let (a, b) = (f64::from(src[base + i]), f64::from(src[base + half + i]));
                out[base + i] = (a * c - b * s) as f32;
                out[base + half + i] = (b * c + a * s) as f32;
            }
        }
    }
    y
}

/// Each of the `kv_heads` column blocks of `x` repeated `groups` times in place
/// (`transformers`' `repeat_kv`: query head `h` reads key head `h / groups`).
pub fn repeat_heads(x: &Tensor, head_dim: usize, groups: usize) -> Tensor {
    let (n, w) = (x.rows(), x.cols());
    let mut data = Vec::with_capacity(n * w * groups);
    for r in 0..n {
        for block in x.row(r).chunks(head_dim) {
            for _ in 0..groups {
                data.extend_from_slice(block);
            }
        }
    }
    Tensor::from_vec(&[n, w * groups], data).expect("rows x repeated width")
}

/// The backward of [`repeat_heads`]: each group of `groups` column blocks summed into one.
pub fn sum_heads(dx: &Tensor, head_dim: usize, groups: usize) -> Tensor {
    let (n, w) = (dx.rows(), dx.cols() / groups);
    let mut out = Tensor::zeros(&[n, w]);
    for r in 0..n {
        let src = dx.row(r);
        for (kv, dst) in out.row_mut(r).chunks_mut(head_dim).enumerate() {
            for (c, d) in dst.iter_mut().enumerate() {
                let sum: f64 = (0..groups)
                    .map(|g| f64::from(src[(kv * groups + g) * head_dim + c]))
                    .sum();
                *d = sum as f32;
            }
        }
    }
    out
}
