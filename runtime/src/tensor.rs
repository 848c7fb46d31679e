//! A minimal row-major f32 tensor (a shape and its values) with the few operations the reference
//! model needs: addition, row slicing, and the linear map `y = x · Wᵀ + b` (weights stored
//! `[out, in]`) with its backward.
//!
//! Reductions (dot products, sums over rows) accumulate in f64 in a fixed order and round once
//! to f32, so results are deterministic and as accurate as f32 storage allows.

use crate::error::RuntimeError;

/// A dense row-major f32 tensor. The last dimension is the row length ("columns"); all earlier
/// dimensions together count the rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor with every value `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: vec![value; shape.iter().product()],
        }
    }

    /// A tensor from its row-major values; their number must equal the product of the shape.
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<Tensor, RuntimeError> {
        let expected: usize = shape.iter().product();
        if expected != data.len() {
            return Err(RuntimeError::TensorSize {
                shape: shape.to_vec(),
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// The number of values.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The row length: the last dimension (1 for a scalar).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// The number of rows: the product of all dimensions but the last.
    pub fn rows(&self) -> usize {
        match self.cols() {
            0 => self.shape[..self.shape.len() - 1].iter().product(),
            c => self.numel() / c,
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        let c = self.cols();
        &self.data[i * c..(i + 1) * c]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let c = self.cols();
        &mut self.data[i * c..(i + 1) * c]
    }

    /// Rows `start..end` of a 2-D tensor, as a new `[end - start, cols]` tensor.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        assert_eq!(self.shape.len(), 2, "slice_rows needs a 2-D tensor");
        let c = self.cols();
        Tensor {
            shape: vec![end - start, c],
            data: self.data[start * c..end * c].to_vec(),
        }
    }

    /// `self += other`, elementwise; the shapes must be equal.
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!(self.shape, other.shape, "add_assign: shapes differ");
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a += *b;
        }
    }

    /// `self + other`, elementwise; the shapes must be equal.
    pub fn add(&self, other: &Tensor) -> Tensor {
        let mut out = self.clone();
        out.add_assign(other);
        out
    }

    /// The linear map `y = x · wᵀ + b`: `x` is `[n, in]`, `w` is `[out, in]`, `b` is `[out]`.
    pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (n, k) = (x.rows(), x.cols());
        let (m, wk) = (w.rows(), w.cols());
        assert_eq!(k, wk, "linear: x has {k} columns, the weight {wk}");
        if let Some(b) = b {
            assert_eq!(b.numel(), m, "linear: bias length");
        }
        let mut y = Tensor::zeros(&[n, m]);
        for i in 0..n {
            let xi = x.row(i);
            for o in 0..m {
                let wo = w.row(o);
                let mut acc = b.map_or(0.0, |b| f64::from(b.data[o]));
                for (xv, wv) in xi.iter().zip(wo) {
                    acc += f64::from(*xv) * f64::from(*wv);
                }
                y.data[i * m + o] = acc as f32;
            }
        }
        y
    }

    /// The backward of [`Tensor::linear`] given its input `x`, weight `w` and the gradient `dy`
    /// of its output: `(dx, dw, db)` with `dx = dy · w` `[n, in]`, `dw = dyᵀ · x` `[out, in]`
    /// and `db = Σ_rows dy` `[out]`.
    pub fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> (Tensor, Tensor, Tensor) {
        let (n, k) = (x.rows(), x.cols());
        let m = w.rows();
        assert_eq!(dy.rows(), n, "linear_backward: dy rows");
        assert_eq!(dy.cols(), m, "linear_backward: dy columns");
        let mut dx = Tensor::zeros(&[n, k]);
        for i in 0..n {
            let dyi = dy.row(i);
            for c in 0..k {
                let mut acc = 0.0f64;
                for (o, g) in dyi.iter().enumerate() {
                    acc += f64::from(*g) * f64::from(w.data[o * k + c]);
                }
                dx.data[i * k + c] = acc as f32;
            }
        }
        let mut dw = Tensor::zeros(&[m, k]);
        let mut db = Tensor::zeros(&[m]);
        for o in 0..m {
            let mut bacc = 0.0f64;
            for i in 0..n {
                bacc += f64::from(dy.data[i * m + o]);
            }
            db.data[o] = bacc as f32;
            for c in 0..k {
                let mut acc = 0.0f64;
                for i in 0..n {
                    acc += f64::from(dy.data[i * m + o]) * f64::from(x.data[i * k + c]);
                }
                dw.data[o * k + c] = acc as f32;
            }
        }
        (dx, dw, db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_a_hand_computed_product() {
        let x = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let w = Tensor::from_vec(&[2, 3], vec![1., 0., -1., 0.5, 0.5, 0.5]).unwrap();
        let b = Tensor::from_vec(&[2], vec![10., 20.]).unwrap();
        let y = Tensor::linear(&x, &w, Some(&b));
        assert_eq!(y.data(), &[8., 23., 8., 27.5]);
        let dy = Tensor::from_vec(&[2, 2], vec![1., 0., 0., 1.]).unwrap();
        let (dx, dw, db) = Tensor::linear_backward(&x, &w, &dy);
        assert_eq!(dx.data(), &[1., 0., -1., 0.5, 0.5, 0.5]);
        assert_eq!(dw.data(), &[1., 2., 3., 4., 5., 6.]);
        assert_eq!(db.data(), &[1., 1.]);
    }

    #[test]
    fn from_vec_rejects_a_wrong_length() {
        assert_eq!(
            Tensor::from_vec(&[2, 2], vec![1.0; 3]),
            Err(RuntimeError::TensorSize {
                shape: vec![2, 2],
                expected: 4,
                got: 3
            })
        );
    }
}
