//! A minimal row-major f32 tensor (a shape and its values) with the few operations the reference
//! model needs: addition, row slicing, matrix products (`matmul_nt`, `matmul_nn`, `matmul_tn`
//! on the strided views of `gemm.rs`), and the linear map `y = x · Wᵀ + b` (weights stored
//! `[out, in]`) with its backward.
//!
//! Products accumulate in f32 (`matrixmultiply`) in an order fixed by their sizes; other sums
//! over rows accumulate in f64 in a fixed order and round once. Results are deterministic.

use std::sync::{Arc, OnceLock};

use crate::error::RuntimeError;
pub use crate::gemm::{gemm, MatMut, MatRef};

/// A copy of a tensor's values in a backend's device memory (`crate::cuda`): tensors a GPU
/// computed live there until the host reads them, and host tensors a GPU reads keep their
/// upload, until they are changed.
pub trait DeviceBuffer: Send + Sync + std::fmt::Debug {
    /// The values, copied to the host. A device that fails here has failed mid-run, past
    /// anything a caller could recover from: implementations panic, naming the device error.
    fn to_host(&self) -> Vec<f32>;
    /// A copy on the same device (what a transfer between ranks sharing it carries).
    fn duplicate(&self) -> Result<Arc<dyn DeviceBuffer>, RuntimeError>;
    /// For the backend to recognise its own buffers.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A dense row-major f32 tensor. The last dimension is the row length ("columns"); all earlier
/// dimensions together count the rows. Its values live on the host, on a device, or both
/// (`DeviceBuffer`): reading them on the host copies them there once; changing them drops the
/// device copy.
pub struct Tensor {
    shape: Vec<usize>,
    host: OnceLock<Vec<f32>>,
    device: OnceLock<Arc<dyn DeviceBuffer>>,
}

impl Clone for Tensor {
    fn clone(&self) -> Tensor {
        let t = Tensor {
            shape: self.shape.clone(),
            host: OnceLock::new(),
            device: OnceLock::new(),
        };
        if let Some(h) = self.host.get() {
            let _ = t.host.set(h.clone());
        }
        // Device values are never changed in place, so a copy may share them.
        if let Some(d) = self.device.get() {
            let _ = t.device.set(d.clone());
        }
        t
    }
}

impl PartialEq for Tensor {
    fn eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.data() == other.data()
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("data", &self.data())
            .finish()
    }
}

impl Tensor {
    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor with every value `value`.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor::host(shape.to_vec(), vec![value; shape.iter().product()])
    }

    fn host(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor {
            shape,
            host: OnceLock::from(data),
            device: OnceLock::new(),
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
        Ok(Tensor::host(shape.to_vec(), data))
    }

    /// A tensor whose values are on a device only (a backend's result).
    pub fn from_device(shape: &[usize], values: Arc<dyn DeviceBuffer>) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            host: OnceLock::new(),
            device: OnceLock::from(values),
        }
    }

    /// The device copy of the values, if there is one.
    pub fn device(&self) -> Option<&Arc<dyn DeviceBuffer>> {
        self.device.get()
    }

    /// A tensor of the same values in new device memory, if its values are on a device.
    pub fn device_copy(&self) -> Result<Option<Tensor>, RuntimeError> {
        match self.device.get() {
            Some(d) => Ok(Some(Tensor::from_device(&self.shape, d.duplicate()?))),
            None => Ok(None),
        }
    }

    /// Keeps `values` as this tensor's device copy (a backend's upload of it), unless it has
    /// one already; until the tensor changes, the backend reads that copy instead.
    pub fn keep_device_copy(&self, values: Arc<dyn DeviceBuffer>) {
        let _ = self.device.set(values);
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values on the host (copied from the device on first use).
    pub fn data(&self) -> &[f32] {
        self.host.get_or_init(|| {
            self.device
                .get()
                .expect("a tensor holds its values on the host or a device")
                .to_host()
        })
    }

    /// The values on the host, to change: the device copy, now stale, is dropped.
    pub fn data_mut(&mut self) -> &mut [f32] {
        self.data();
        self.device = OnceLock::new();
        self.host
            .get_mut()
            .expect("data() put the values on the host")
    }

    pub fn into_data(mut self) -> Vec<f32> {
        self.data();
        self.host.take().expect("data() put the values on the host")
    }

    /// The number of values.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
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
        &self.data()[i * c..(i + 1) * c]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let c = self.cols();
        &mut self.data_mut()[i * c..(i + 1) * c]
    }

    /// The same values under `shape` (of as many values), wherever they are: device values
    /// are never changed in place, so the two may share them. A backend whose device values
    /// carry their own shape (the CUDA backend's) still reads them under the old one: it
    /// takes a copy (`Math::select_ranges` makes its result in its first part's shape).
    pub fn reshaped(&self, shape: &[usize]) -> Result<Tensor, RuntimeError> {
        if shape.iter().product::<usize>() != self.numel() {
            return Err(RuntimeError::TensorSize {
                shape: shape.to_vec(),
                expected: shape.iter().product(),
                got: self.numel(),
            });
        }
        let mut t = self.clone();
        t.shape = shape.to_vec();
        Ok(t)
    }

    /// Rows `start..end` of a 2-D tensor, as a new `[end - start, cols]` tensor.
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        assert_eq!(self.shape.len(), 2, "slice_rows needs a 2-D tensor");
        let c = self.cols();
        Tensor::host(
            vec![end - start, c],
            self.data()[start * c..end * c].to_vec(),
        )
    }

    /// `self += other`, elementwise; the shapes must be equal.
    pub fn add_assign(&mut self, other: &Tensor) {
        assert_eq!(self.shape, other.shape, "add_assign: shapes differ");
        for (a, b) in self.data_mut().iter_mut().zip(other.data()) {
            *a += *b;
        }
    }

    /// `self + other`, elementwise; the shapes must be equal.
    pub fn add(&self, other: &Tensor) -> Tensor {
        let mut out = self.clone();
        out.add_assign(other);
        out
    }

    /// The values as a `[rows, cols]` matrix view (every dimension but the last counts rows).
    pub fn mat(&self) -> MatRef<'_> {
        let (r, c) = (self.rows(), self.cols());
        MatRef::new(self.data(), r, c, c, 1)
    }

    /// The values as a `[rows, cols]` matrix view, to write (drops the device copy).
    pub fn mat_mut(&mut self) -> MatMut<'_> {
        let (r, c) = (self.rows(), self.cols());
        MatMut::new(self.data_mut(), r, c, c, 1)
    }

    /// `a · bᵀ`: `a` is `[n, k]`, `b` is `[m, k]`; the result is `[n, m]`.
    pub fn matmul_nt(a: &Tensor, b: &Tensor) -> Tensor {
        Tensor::product(a.mat(), b.mat().t())
    }

    /// `a · b`: `a` is `[n, k]`, `b` is `[k, m]`; the result is `[n, m]`.
    pub fn matmul_nn(a: &Tensor, b: &Tensor) -> Tensor {
        Tensor::product(a.mat(), b.mat())
    }

    /// `aᵀ · b`: `a` is `[k, n]`, `b` is `[k, m]`; the result is `[n, m]`.
    pub fn matmul_tn(a: &Tensor, b: &Tensor) -> Tensor {
        Tensor::product(a.mat().t(), b.mat())
    }

    fn product(a: MatRef<'_>, b: MatRef<'_>) -> Tensor {
        let (n, m) = (a.rows(), b.cols());
        let mut out = Tensor::zeros(&[n, m]);
        gemm(a, b, false, out.mat_mut());
        out
    }

    /// The linear map `y = x · wᵀ + b`: `x` is `[n, in]`, `w` is `[out, in]`, `b` is `[out]`.
    pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (n, k) = (x.rows(), x.cols());
        let (m, wk) = (w.rows(), w.cols());
        assert_eq!(k, wk, "linear: x has {k} columns, the weight {wk}");
        let mut out = Tensor::zeros(&[n, m]);
        // The bias first, then the product added onto it: one pass over the output.
        let accumulate = match b {
            Some(b) => {
                assert_eq!(b.numel(), m, "linear: bias length");
                let b = b.data();
                for row in out.data_mut().chunks_exact_mut(m.max(1)) {
                    row.copy_from_slice(b);
                }
                true
            }
            None => false,
        };
        gemm(x.mat(), w.mat().t(), accumulate, out.mat_mut());
        out
    }

    /// The backward of [`Tensor::linear`] given its input `x`, weight `w` and the gradient `dy`
    /// of its output: `(dx, dw, db)` with `dx = dy · w` `[n, in]`, `dw = dyᵀ · x` `[out, in]`
    /// and `db = Σ_rows dy` `[out]` (in f64, row by row, rounded once).
    pub fn linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> (Tensor, Tensor, Tensor) {
        let n = x.rows();
        let m = w.rows();
        assert_eq!(dy.rows(), n, "linear_backward: dy rows");
        assert_eq!(dy.cols(), m, "linear_backward: dy columns");
        let dx = Tensor::matmul_nn(dy, w);
        let dw = Tensor::matmul_tn(dy, x);
        let mut acc = vec![0.0f64; m];
        for row in dy.data().chunks_exact(m.max(1)) {
            for (a, v) in acc.iter_mut().zip(row) {
                *a += f64::from(*v);
            }
        }
        let db = Tensor::host(vec![m], acc.into_iter().map(|v| v as f32).collect());
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
    fn matmul_helpers_agree_with_linear() {
        let x = Tensor::from_vec(&[5, 7], crate::gemm::tests::seeded(35, 6)).unwrap();
        let w = Tensor::from_vec(&[3, 7], crate::gemm::tests::seeded(21, 7)).unwrap();
        let y = Tensor::linear(&x, &w, None);
        assert_eq!(Tensor::matmul_nt(&x, &w), y);
        let wt = Tensor::from_vec(
            &[7, 3],
            (0..21).map(|i| w.data()[(i % 3) * 7 + i / 3]).collect(),
        )
        .unwrap();
        let close = |a: &Tensor, b: &Tensor| {
            a.shape() == b.shape()
                && a.data()
                    .iter()
                    .zip(b.data())
                    .all(|(p, q)| (p - q).abs() < 1e-6)
        };
        assert!(close(&Tensor::matmul_nn(&x, &wt), &y));
        let xt = Tensor::from_vec(
            &[7, 5],
            (0..35).map(|i| x.data()[(i % 5) * 7 + i / 5]).collect(),
        )
        .unwrap();
        assert!(close(&Tensor::matmul_tn(&xt, &wt), &y));
    }

    /// A stand-in device: its values, and how often they were copied to the host.
    #[derive(Debug)]
    struct Fake(Vec<f32>, std::sync::atomic::AtomicUsize);

    impl DeviceBuffer for Fake {
        fn to_host(&self) -> Vec<f32> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.clone()
        }
        fn duplicate(&self) -> Result<Arc<dyn DeviceBuffer>, RuntimeError> {
            Ok(Arc::new(Fake(self.0.clone(), Default::default())))
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    fn downloads(t: &Tensor) -> usize {
        let f = t.device().unwrap().as_any().downcast_ref::<Fake>().unwrap();
        f.1.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn device_values_reach_the_host_once_and_a_change_drops_them() {
        let dev = Arc::new(Fake(vec![1.0, 2.0, 3.0, 4.0], Default::default()));
        let mut t = Tensor::from_device(&[2, 2], dev);
        assert_eq!(downloads(&t), 0, "nothing is copied before it is read");
        let copy = t.clone();
        assert_eq!(t.row(1), &[3.0, 4.0]);
        assert_eq!(t.data(), &[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(downloads(&t), 1, "read twice, copied once");
        assert!(copy.device().is_some(), "a clone shares the device values");
        t.row_mut(0)[0] = 9.0;
        assert!(t.device().is_none(), "a change drops the stale device copy");
        assert_eq!(
            copy.data(),
            &[1.0, 2.0, 3.0, 4.0],
            "the clone keeps its values"
        );
        assert_eq!(t.into_data(), vec![9.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn a_kept_upload_is_the_first_one_until_the_tensor_changes() {
        let mut t = Tensor::from_vec(&[2], vec![1.0, 2.0]).unwrap();
        t.keep_device_copy(Arc::new(Fake(vec![1.0, 2.0], Default::default())));
        t.keep_device_copy(Arc::new(Fake(vec![7.0, 7.0], Default::default())));
        let kept = t.device().unwrap().as_any().downcast_ref::<Fake>().unwrap();
        assert_eq!(kept.0, vec![1.0, 2.0]);
        t.data_mut()[1] = 5.0;
        assert!(t.device().is_none());
        assert_eq!(t, Tensor::from_vec(&[2], vec![1.0, 5.0]).unwrap());
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
