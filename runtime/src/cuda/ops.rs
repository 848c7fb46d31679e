//! The reference model's operations on device tensors, one rank's stream each: matrix products
//! by cuBLAS (row-major tensors read as their column-major transposes, so no copies), the rest
//! by the kernels of `kernels.cu`. Each mirrors a CPU function of `crate::reference` or
//! `crate::tensor` with the same arguments and results, which is what `check.rs` compares.
//!
//! Row-major `R[r, c]` is the column-major `Rᵀ` with leading dimension `c`, so
//! `Y = X·Wᵀ` is computed as `Yᵀ = W·Xᵀ`: `gemm(T, N, m = out, n = rows, k = in)` (`Prod`).

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::device::{device_err, Gpu};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// A row-major f32 tensor in one rank's device memory.
pub struct DTensor {
    shape: Vec<usize>,
    pub(crate) buf: CudaSlice<f32>,
}

impl std::fmt::Debug for DTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DTensor{:?}", self.shape)
    }
}

impl DTensor {
    pub(crate) fn from_parts(shape: Vec<usize>, buf: CudaSlice<f32>) -> DTensor {
        DTensor { shape, buf }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    pub fn rows(&self) -> usize {
        self.numel() / self.cols().max(1)
    }

    pub fn slice(&self) -> &CudaSlice<f32> {
        &self.buf
    }
}

/// What LayerNorm's backward needs on the device.
pub struct DLayerNormCache {
    pub xhat: DTensor,
    pub rstd: CudaSlice<f64>,
}

/// Matrix products in f32, or with bf16 inputs and f32 accumulation (`BF16`): the precision
/// the backend's parity is stated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 products",
        })
    }
}

const BLOCK: u32 = 256;

fn elems(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK).max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_row(rows: usize, heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, heads.max(1) as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i32_of(n: usize, what: &str) -> Result<i32, RuntimeError> {
    i32::try_from(n).map_err(|_| RuntimeError::Device(format!("{what} {n} exceeds i32")))
}

fn launch_err(k: &str) -> impl Fn(cudarc::driver::DriverError) -> RuntimeError + '_ {
    move |e| device_err(&format!("kernel {k}"), e)
}

fn blas_err(e: cudarc::cublas::result::CublasError) -> RuntimeError {
    device_err("cuBLAS", e)
}

/// Which product, in row-major terms: `Y = X·Wᵀ`, `Y = X·W` or `Y = Xᵀ·W`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    XWt,
    XW,
    XtW,
}

/// A product `Y [rows, cols]` with `inner` summed, on row-major operands with leading
/// dimensions `ld` (of X, W, Y), for `heads` operands `stride` (of X, W, Y) values apart.
#[derive(Clone, Copy)]
struct Prod {
    form: Form,
    rows: usize,
    cols: usize,
    inner: usize,
    ld: [usize; 3],
    heads: usize,
    stride: [usize; 3],
    alpha: f32,
}

impl Prod {
    /// One product, its operands dense (leading dimension = row length).
    fn dense(form: Form, rows: usize, cols: usize, inner: usize) -> Prod {
        let ld = match form {
            Form::XWt => [inner, inner, cols],
            Form::XW => [inner, cols, cols],
            Form::XtW => [rows, cols, cols],
        };
        Prod {
            form,
            rows,
            cols,
            inner,
            ld,
            heads: 1,
            stride: [0; 3],
            alpha: 1.0,
        }
    }

    /// The same product per head, each operand's heads `stride` apart, leading dims `ld`.
    fn per_head(self, heads: usize, ld: [usize; 3], stride: [usize; 3]) -> Prod {
        Prod {
            heads,
            ld,
            stride,
            ..self
        }
    }
}

impl Gpu {
    /// Copies a host tensor to the device.
    pub fn upload(&self, t: &Tensor) -> Result<DTensor, RuntimeError> {
        if t.numel() == 0 {
            return self.zeros(t.shape());
        }
        let buf = self
            .stream
            .clone_htod(t.data())
            .map_err(|e| device_err("host to device copy", e))?;
        Ok(DTensor {
            shape: t.shape().to_vec(),
            buf,
        })
    }

    /// Copies a device tensor to the host (waits for it).
    pub fn download(&self, t: &DTensor) -> Result<Tensor, RuntimeError> {
        let n = t.numel();
        if n == 0 {
            return Ok(Tensor::zeros(&t.shape));
        }
        let v = self
            .stream
            .clone_dtoh(&t.buf.slice(0..n))
            .map_err(|e| device_err("device to host copy", e))?;
        Tensor::from_vec(&t.shape, v)
    }

    /// f64 values to the device (at least one slot, so nothing allocates zero bytes).
    pub fn upload_f64(&self, v: &[f64]) -> Result<CudaSlice<f64>, RuntimeError> {
        if v.is_empty() {
            return self
                .stream
                .alloc_zeros::<f64>(1)
                .map_err(|e| device_err("allocation", e));
        }
        self.stream
            .clone_htod(v)
            .map_err(|e| device_err("host to device copy", e))
    }

    pub fn zeros(&self, shape: &[usize]) -> Result<DTensor, RuntimeError> {
        let n: usize = shape.iter().product();
        let buf = self
            .stream
            .alloc_zeros::<f32>(n.max(1))
            .map_err(|e| device_err("allocation", e))?;
        Ok(DTensor {
            shape: shape.to_vec(),
            buf,
        })
    }

    /// A device-to-device copy (this rank's stream).
    pub fn copy(&self, t: &DTensor) -> Result<DTensor, RuntimeError> {
        let buf = self
            .stream
            .clone_dtod(&t.buf)
            .map_err(|e| device_err("device to device copy", e))?;
        Ok(DTensor {
            shape: t.shape.clone(),
            buf,
        })
    }

    /// `dst[range] = src[range]` (flat values), on the device.
    pub fn copy_range(
        &self,
        dst: &mut DTensor,
        src: &DTensor,
        range: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError> {
        assert!(
            range.end <= dst.numel() && range.end <= src.numel(),
            "copy_range: {range:?} past the tensors"
        );
        if range.is_empty() {
            return Ok(());
        }
        let from = src.buf.slice(range.clone());
        let mut to = dst.buf.slice_mut(range);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(|e| device_err("device to device copy", e))
    }

    fn ints(&self, v: &[usize]) -> Result<CudaSlice<i32>, RuntimeError> {
        let mut v: Vec<i32> = v
            .iter()
            .map(|&x| i32_of(x, "an index"))
            .collect::<Result<_, _>>()?;
        if v.is_empty() {
            v.push(0);
        }
        self.stream
            .clone_htod(&v)
            .map_err(|e| device_err("host to device copy", e))
    }

    /// `y = p(x, w)` in this rank's [`Precision`]: f32 throughout, or `x` and `w` rounded to
    /// bf16 with f32 accumulation and output. Column-major cuBLAS computes `Yᵀ = op(W)·op(X)`,
    /// which is the row-major `Y` with no copies.
    fn product(
        &self,
        p: Prod,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), RuntimeError> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        if p.rows == 0 || p.cols == 0 {
            return Ok(());
        }
        // cuBLAS runs in the thread's current context; a rank's thread may not have made it so.
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| device_err("CUDA context", e))?;
        let transa = if p.form == Form::XWt {
            CUBLAS_OP_T
        } else {
            CUBLAS_OP_N
        };
        let transb = if p.form == Form::XtW {
            CUBLAS_OP_T
        } else {
            CUBLAS_OP_N
        };
        let (alpha, beta) = (p.alpha, 0.0f32);
        let s = &self.stream;
        let (xb, wb);
        let ((xp, _gx), (wp, _gw), ty) = match self.precision {
            Precision::F32 => (x.device_ptr(s), w.device_ptr(s), cudaDataType::CUDA_R_32F),
            Precision::Bf16 => {
                xb = self.bf16_of(x)?;
                wb = self.bf16_of(w)?;
                (
                    xb.device_ptr(s),
                    wb.device_ptr(s),
                    cudaDataType::CUDA_R_16BF,
                )
            }
        };
        let (yp, _gy) = y.device_ptr_mut(s);
        let dim = |n: usize| i32_of(n, "a matrix dimension");
        // SAFETY: sizes, leading dimensions and strides describe the operands' own extents
        // (the callers assert the shapes); cuBLAS writes only y.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                transa,
                transb,
                dim(p.cols)?,
                dim(p.rows)?,
                dim(p.inner)?,
                (&alpha as *const f32).cast(),
                wp as *const _,
                ty,
                dim(p.ld[1])?,
                p.stride[1] as i64,
                xp as *const _,
                ty,
                dim(p.ld[0])?,
                p.stride[0] as i64,
                (&beta as *const f32).cast(),
                yp as *mut _,
                cudaDataType::CUDA_R_32F,
                dim(p.ld[2])?,
                p.stride[2] as i64,
                dim(p.heads)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err)
    }

    /// `y = x · wᵀ + b`, as [`Tensor::linear`].
    pub fn linear(
        &self,
        x: &DTensor,
        w: &DTensor,
        b: Option<&DTensor>,
    ) -> Result<DTensor, RuntimeError> {
        let (n, k, m) = (x.rows(), x.cols(), w.rows());
        assert_eq!(
            w.cols(),
            k,
            "linear: x has {k} columns, the weight {}",
            w.cols()
        );
        let mut y = self.zeros(&[n, m])?;
        self.product(Prod::dense(Form::XWt, n, m, k), &x.buf, &w.buf, &mut y.buf)?;
        if let Some(b) = b {
            assert_eq!(b.numel(), m, "linear: bias length");
            let (rows, cols) = (i32_of(n, "rows")?, i32_of(m, "columns")?);
            let f = self.kernel("add_bias");
            let mut l = self.stream.launch_builder(f);
            l.arg(&mut y.buf).arg(&b.buf).arg(&rows).arg(&cols);
            // SAFETY: one thread per value of y, b of length cols.
            unsafe { l.launch(elems(n * m)) }.map_err(launch_err("add_bias"))?;
        }
        Ok(y)
    }

    /// f32 values rounded to bf16 (round to nearest even), as raw 16-bit words.
    pub fn bf16_of(&self, x: &CudaSlice<f32>) -> Result<CudaSlice<u16>, RuntimeError> {
        let n = x.len();
        let mut out = self
            .stream
            .alloc_zeros::<u16>(n.max(1))
            .map_err(|e| device_err("allocation", e))?;
        let len = n as i64;
        let f = self.kernel("to_bf16");
        let mut l = self.stream.launch_builder(f);
        l.arg(x).arg(&mut out).arg(&len);
        // SAFETY: one thread per value.
        unsafe { l.launch(elems(n)) }.map_err(launch_err("to_bf16"))?;
        Ok(out)
    }

    /// The backward of [`Gpu::linear`]: `(dx, dw, db)` as [`Tensor::linear_backward`].
    pub fn linear_backward(
        &self,
        x: &DTensor,
        w: &DTensor,
        dy: &DTensor,
    ) -> Result<(DTensor, DTensor, DTensor), RuntimeError> {
        let (n, k, m) = (x.rows(), x.cols(), w.rows());
        assert_eq!((dy.rows(), dy.cols()), (n, m), "linear_backward: dy shape");
        let mut dx = self.zeros(&[n, k])?;
        // dX = dY·W
        self.product(Prod::dense(Form::XW, n, k, m), &dy.buf, &w.buf, &mut dx.buf)?;
        // dW = dYᵀ·X
        let mut dw = self.zeros(&[m, k])?;
        self.product(
            Prod::dense(Form::XtW, m, k, n),
            &dy.buf,
            &x.buf,
            &mut dw.buf,
        )?;
        let db = self.col_sum(dy, None)?;
        Ok((dx, dw, db))
    }

    /// Per column, the sum over rows of `a` (times `b` if given), in f64 rows in order.
    pub fn col_sum(&self, a: &DTensor, b: Option<&DTensor>) -> Result<DTensor, RuntimeError> {
        let (rows, cols) = (a.rows(), a.cols());
        let mut out = self.zeros(&[cols])?;
        let (r, c, acc) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?, 0i32);
        let null = 0u64;
        let f = self.kernel("col_sum");
        let mut l = self.stream.launch_builder(f);
        l.arg(&a.buf);
        match b {
            Some(b) => l.arg(&b.buf),
            None => l.arg(&null),
        };
        l.arg(&mut out.buf).arg(&r).arg(&c).arg(&acc);
        // SAFETY: one thread per column over rows·cols values.
        unsafe { l.launch(elems(cols)) }.map_err(launch_err("col_sum"))?;
        Ok(out)
    }

    /// `y += x`, elementwise.
    pub fn add_into(&self, y: &mut DTensor, x: &DTensor) -> Result<(), RuntimeError> {
        assert_eq!(y.shape, x.shape, "add_into: shapes differ");
        let count = y.numel();
        let n = count as i64;
        let f = self.kernel("add_into");
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut y.buf).arg(&x.buf).arg(&n);
        // SAFETY: one thread per value.
        unsafe { l.launch(elems(count)) }.map_err(launch_err("add_into"))?;
        Ok(())
    }

    /// LayerNorm as [`crate::reference::layers::layer_norm`].
    pub fn layer_norm(
        &self,
        x: &DTensor,
        w: &DTensor,
        b: &DTensor,
    ) -> Result<(DTensor, DLayerNormCache), RuntimeError> {
        let (rows, cols) = (x.rows(), x.cols());
        assert_eq!(w.numel(), cols, "layer_norm: weight width");
        let mut y = self.zeros(&x.shape)?;
        let mut xhat = self.zeros(&x.shape)?;
        let mut rstd = self
            .stream
            .alloc_zeros::<f64>(rows.max(1))
            .map_err(|e| device_err("allocation", e))?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        let eps = crate::reference::layers::LN_EPS;
        let f = self.kernel("layer_norm_fwd");
        let mut l = self.stream.launch_builder(f);
        l.arg(&x.buf)
            .arg(&w.buf)
            .arg(&b.buf)
            .arg(&mut y.buf)
            .arg(&mut xhat.buf)
            .arg(&mut rstd)
            .arg(&r)
            .arg(&c)
            .arg(&eps);
        // SAFETY: one block per row.
        unsafe { l.launch(per_row(rows, 1)) }.map_err(launch_err("layer_norm_fwd"))?;
        Ok((y, DLayerNormCache { xhat, rstd }))
    }

    /// LayerNorm's backward from its cache (`x̂`, each row's `1/σ`): `(dx, dw, db)`.
    pub fn layer_norm_backward(
        &self,
        xhat: &DTensor,
        rstd: &CudaSlice<f64>,
        w: &DTensor,
        dy: &DTensor,
    ) -> Result<(DTensor, DTensor, DTensor), RuntimeError> {
        let (rows, cols) = (dy.rows(), dy.cols());
        let mut dx = self.zeros(&dy.shape)?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        let f = self.kernel("layer_norm_bwd");
        let mut l = self.stream.launch_builder(f);
        l.arg(&dy.buf)
            .arg(&xhat.buf)
            .arg(rstd)
            .arg(&w.buf)
            .arg(&mut dx.buf)
            .arg(&r)
            .arg(&c);
        // SAFETY: one block per row.
        unsafe { l.launch(per_row(rows, 1)) }.map_err(launch_err("layer_norm_bwd"))?;
        let dw = self.col_sum(dy, Some(xhat))?;
        let db = self.col_sum(dy, None)?;
        Ok((dx, dw, db))
    }

    /// GELU (tanh form), elementwise.
    pub fn gelu(&self, x: &DTensor) -> Result<DTensor, RuntimeError> {
        let mut y = self.zeros(&x.shape)?;
        let n = x.numel() as i64;
        let f = self.kernel("gelu_fwd");
        let mut l = self.stream.launch_builder(f);
        l.arg(&x.buf).arg(&mut y.buf).arg(&n);
        // SAFETY: one thread per value.
        unsafe { l.launch(elems(x.numel())) }.map_err(launch_err("gelu_fwd"))?;
        Ok(y)
    }

    pub fn gelu_backward(&self, x: &DTensor, dy: &DTensor) -> Result<DTensor, RuntimeError> {
        assert_eq!(x.shape, dy.shape, "gelu_backward: shapes");
        let mut dx = self.zeros(&x.shape)?;
        let n = x.numel() as i64;
        let f = self.kernel("gelu_bwd");
        let mut l = self.stream.launch_builder(f);
        l.arg(&x.buf).arg(&dy.buf).arg(&mut dx.buf).arg(&n);
        // SAFETY: one thread per value.
        unsafe { l.launch(elems(x.numel())) }.map_err(launch_err("gelu_bwd"))?;
        Ok(dx)
    }

    /// Attention's core as [`crate::reference::attention::attention_core_at`]: `q` `[nq, H·d]`
    /// against `k`, `v` `[nk, H·d]`, query `i` at `positions[i]`. Returns the heads' outputs
    /// `[nq, H·d]` and probabilities `[H, nq, nk]` (zero where masked).
    pub fn attention_core(
        &self,
        q: &DTensor,
        k: &DTensor,
        v: &DTensor,
        heads: usize,
        causal: bool,
        positions: &[usize],
    ) -> Result<(DTensor, DTensor), RuntimeError> {
        let (nq, nk, hidden) = (q.rows(), k.rows(), q.cols());
        assert_eq!(positions.len(), nq, "attention_core: a position per query");
        let d = hidden / heads;
        let scale = 1.0 / (d as f64).sqrt();
        let mut s = self.zeros(&[heads, nq, nk])?;
        // S_h = Q_h·K_hᵀ·scale
        let p = Prod {
            alpha: scale as f32,
            ..Prod::dense(Form::XWt, nq, nk, d).per_head(
                heads,
                [hidden, hidden, nk],
                [d, d, nq * nk],
            )
        };
        self.product(p, &q.buf, &k.buf, &mut s.buf)?;
        let pos = self.ints(positions)?;
        let (a, b, c) = (
            i32_of(nq, "queries")?,
            i32_of(nk, "keys")?,
            i32::from(causal),
        );
        let f = self.kernel("attn_softmax");
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut s.buf).arg(&pos).arg(&a).arg(&b).arg(&c);
        // SAFETY: one block per (row, head) of s.
        unsafe { l.launch(per_row(nq, heads)) }.map_err(launch_err("attn_softmax"))?;
        // ctx_h = P_h·V_h
        let mut ctx = self.zeros(&[nq, hidden])?;
        let p =
            Prod::dense(Form::XW, nq, d, nk).per_head(heads, [nk, hidden, hidden], [nq * nk, d, d]);
        self.product(p, &s.buf, &v.buf, &mut ctx.buf)?;
        Ok((ctx, s))
    }

    /// The core's backward: `(dq, dk, dv)` as
    /// [`crate::reference::attention::attention_core_backward`].
    pub fn attention_core_backward(
        &self,
        q: &DTensor,
        k: &DTensor,
        v: &DTensor,
        probs: &DTensor,
        dctx: &DTensor,
    ) -> Result<(DTensor, DTensor, DTensor), RuntimeError> {
        let (nq, nk, hidden) = (q.rows(), k.rows(), q.cols());
        let heads = probs.shape[0];
        let d = hidden / heads;
        let scale = 1.0 / (d as f64).sqrt();
        // dV_h = P_hᵀ·dctx_h
        let mut dv = self.zeros(&[nk, hidden])?;
        let p = Prod::dense(Form::XtW, nk, d, nq).per_head(
            heads,
            [nk, hidden, hidden],
            [nq * nk, d, d],
        );
        self.product(p, &probs.buf, &dctx.buf, &mut dv.buf)?;
        // dP_h = dctx_h·V_hᵀ, then dS = P·(dP - Σ P·dP)·scale in place
        let mut ds = self.zeros(&[heads, nq, nk])?;
        let p = Prod::dense(Form::XWt, nq, nk, d).per_head(
            heads,
            [hidden, hidden, nk],
            [d, d, nq * nk],
        );
        self.product(p, &dctx.buf, &v.buf, &mut ds.buf)?;
        let (a, b) = (i32_of(nq, "queries")?, i32_of(nk, "keys")?);
        let f = self.kernel("attn_softmax_bwd");
        let mut l = self.stream.launch_builder(f);
        l.arg(&probs.buf)
            .arg(&mut ds.buf)
            .arg(&a)
            .arg(&b)
            .arg(&scale);
        // SAFETY: one block per (row, head).
        unsafe { l.launch(per_row(nq, heads)) }.map_err(launch_err("attn_softmax_bwd"))?;
        // dQ_h = dS_h·K_h
        let mut dq = self.zeros(&[nq, hidden])?;
        let p =
            Prod::dense(Form::XW, nq, d, nk).per_head(heads, [nk, hidden, hidden], [nq * nk, d, d]);
        self.product(p, &ds.buf, &k.buf, &mut dq.buf)?;
        // dK_h = dS_hᵀ·Q_h
        let mut dk = self.zeros(&[nk, hidden])?;
        let p = Prod::dense(Form::XtW, nk, d, nq).per_head(
            heads,
            [nk, hidden, hidden],
            [nq * nk, d, d],
        );
        self.product(p, &ds.buf, &q.buf, &mut dk.buf)?;
        Ok((dq, dk, dv))
    }

    /// Rows `index` of `src`, in order.
    pub fn gather_rows(&self, src: &DTensor, index: &[usize]) -> Result<DTensor, RuntimeError> {
        let cols = src.cols();
        let mut out = self.zeros(&[index.len(), cols])?;
        if index.is_empty() {
            return Ok(out);
        }
        let idx = self.ints(index)?;
        let (n, c) = (i32_of(index.len(), "rows")?, i32_of(cols, "columns")?);
        let f = self.kernel("gather_rows");
        let mut l = self.stream.launch_builder(f);
        l.arg(&src.buf).arg(&idx).arg(&mut out.buf).arg(&n).arg(&c);
        // SAFETY: one thread per value of out; indices checked by the caller's row counts.
        unsafe { l.launch(elems(index.len() * cols)) }.map_err(launch_err("gather_rows"))?;
        Ok(out)
    }

    /// `dst[index[k]] = src[k]` for every row k of `src`.
    pub fn scatter_rows(
        &self,
        dst: &mut DTensor,
        src: &DTensor,
        index: &[usize],
    ) -> Result<(), RuntimeError> {
        let cols = dst.cols();
        assert_eq!(src.cols(), cols, "scatter_rows: widths");
        assert_eq!(src.rows(), index.len(), "scatter_rows: a row index per row");
        if index.is_empty() {
            return Ok(());
        }
        let idx = self.ints(index)?;
        let (n, c) = (i32_of(index.len(), "rows")?, i32_of(cols, "columns")?);
        let f = self.kernel("scatter_rows");
        let mut l = self.stream.launch_builder(f);
        l.arg(&src.buf).arg(&idx).arg(&mut dst.buf).arg(&n).arg(&c);
        // SAFETY: one thread per value of src; the indices are rows of dst.
        unsafe { l.launch(elems(index.len() * cols)) }.map_err(launch_err("scatter_rows"))?;
        Ok(())
    }

    /// `table[index[k]] += src[k]` in order of k; a negative index skips its row.
    pub fn scatter_add_rows(
        &self,
        table: &mut DTensor,
        src: &DTensor,
        index: &[i64],
    ) -> Result<(), RuntimeError> {
        let cols = table.cols();
        assert_eq!(src.cols(), cols, "scatter_add_rows: widths");
        if index.is_empty() {
            return Ok(());
        }
        let v: Vec<i32> = index
            .iter()
            .map(|&i| i32::try_from(i).unwrap_or(-1))
            .collect();
        let idx = self
            .stream
            .clone_htod(&v)
            .map_err(|e| device_err("host to device copy", e))?;
        let (n, c) = (i32_of(index.len(), "rows")?, i32_of(cols, "columns")?);
        let f = self.kernel("scatter_add_rows");
        let mut l = self.stream.launch_builder(f);
        l.arg(&src.buf)
            .arg(&idx)
            .arg(&mut table.buf)
            .arg(&n)
            .arg(&c);
        // SAFETY: one thread per column.
        unsafe { l.launch(elems(cols)) }.map_err(launch_err("scatter_add_rows"))?;
        Ok(())
    }

    /// Cross-entropy as [`crate::reference::llm::cross_entropy`]: the sum of the counted
    /// rows' losses (f64, rows in order) and the logits' gradient.
    pub fn cross_entropy(
        &self,
        logits: &DTensor,
        targets: &[i64],
        global_targets: usize,
    ) -> Result<(f64, DTensor), RuntimeError> {
        let (rows, vocab) = (logits.rows(), logits.cols());
        assert_eq!(targets.len(), rows, "cross_entropy: a target per row");
        if rows == 0 {
            return Ok((0.0, self.zeros(&logits.shape)?));
        }
        let t = self
            .stream
            .clone_htod(targets)
            .map_err(|e| device_err("host to device copy", e))?;
        let mut d = self.zeros(&logits.shape)?;
        let mut loss = self
            .stream
            .alloc_zeros::<f64>(rows.max(1))
            .map_err(|e| device_err("allocation", e))?;
        let (r, v, n) = (
            i32_of(rows, "rows")?,
            i32_of(vocab, "vocabulary")?,
            global_targets as f64,
        );
        let f = self.kernel("cross_entropy");
        let mut l = self.stream.launch_builder(f);
        l.arg(&logits.buf)
            .arg(&t)
            .arg(&mut d.buf)
            .arg(&mut loss)
            .arg(&r)
            .arg(&v)
            .arg(&n);
        // SAFETY: one block per row.
        unsafe { l.launch(per_row(rows, 1)) }.map_err(launch_err("cross_entropy"))?;
        let per_row = self
            .stream
            .clone_dtoh(&loss)
            .map_err(|e| device_err("device to host copy", e))?;
        Ok((per_row.iter().take(rows).sum(), d))
    }

    /// One Adam update of `p` and its moments in place ([`AdamStep::apply`]).
    pub fn adam_step(
        &self,
        p: &mut DTensor,
        g: &DTensor,
        m: &mut DTensor,
        v: &mut DTensor,
        step: &crate::reference::adam::AdamStep,
    ) -> Result<(), RuntimeError> {
        let n = p.numel();
        assert!(
            g.numel() == n && m.numel() == n && v.numel() == n,
            "adam: sizes"
        );
        if n == 0 {
            return Ok(());
        }
        let len = n as i64;
        let f = self.kernel("adam");
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut p.buf)
            .arg(&g.buf)
            .arg(&mut m.buf)
            .arg(&mut v.buf)
            .arg(&len)
            .arg(&step.lr)
            .arg(&step.beta1)
            .arg(&step.beta2)
            .arg(&step.eps)
            .arg(&step.bc1)
            .arg(&step.bc2);
        // SAFETY: one thread per value.
        unsafe { l.launch(elems(n)) }.map_err(launch_err("adam"))?;
        Ok(())
    }
}
