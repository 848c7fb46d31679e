//! The reference model's operations on device tensors, one rank's stream each: matrix products
//! by cuBLAS (row-major tensors read as their column-major transposes, so no copies), the rest
//! by the kernels of `kernels.cu`. Each mirrors a CPU function of `crate::reference` or
//! `crate::tensor` with the same arguments and results, which is what `check.rs` compares.
//! They are written against [`Engine`], so the tests run them on an emulated device too.
//!
//! Row-major `R[r, c]` is the column-major `Rᵀ` with leading dimension `c`, so
//! `Y = X·Wᵀ` is computed as `Yᵀ = W·Xᵀ`: `gemm(T, N, m = out, n = rows, k = in)` (`Prod`).

use cudarc::driver::{CudaSlice, LaunchConfig};

use super::device::Gpu;
use super::engine::{Arg, Engine, Gemm, Operand};
use crate::tensor::Tensor;
use crate::RuntimeError;

/// A row-major f32 tensor in one rank's device memory (`B`: the device's buffer).
pub struct DTensor<B = CudaSlice<f32>> {
    shape: Vec<usize>,
    pub(crate) buf: B,
}

/// A device tensor of engine `E`.
pub type DT<E> = DTensor<<E as Engine>::Buf<f32>>;
/// A backward's three gradients.
pub type DT3<E> = (DT<E>, DT<E>, DT<E>);

impl<B> std::fmt::Debug for DTensor<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DTensor{:?}", self.shape)
    }
}

impl<B> DTensor<B> {
    pub(crate) fn from_parts(shape: Vec<usize>, buf: B) -> DTensor<B> {
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

    pub fn slice(&self) -> &B {
        &self.buf
    }
}

/// What LayerNorm's backward needs on the device.
pub struct DLayerNormCache<E: Engine + ?Sized = Gpu> {
    pub xhat: DT<E>,
    pub rstd: E::Buf<f64>,
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

/// Threads per block; `kernels.cu` sizes its shared memory by the same `BLOCK`.
pub(crate) const BLOCK: u32 = 256;

/// One thread per value.
pub(crate) fn elems(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(BLOCK).max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (and head).
pub(crate) fn per_row(rows: usize, heads: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, heads.max(1) as u32, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(crate) fn i32_of(n: usize, what: &str) -> Result<i32, RuntimeError> {
    i32::try_from(n).map_err(|_| RuntimeError::Device(format!("{what} {n} exceeds i32")))
}

/// Which product, in row-major terms: `Y = X·Wᵀ`, `Y = X·W` or `Y = Xᵀ·W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    XWt,
    XW,
    XtW,
}

/// A product `Y [rows, cols]` with `inner` summed, on row-major operands with leading
/// dimensions `ld` (of X, W, Y), for `heads` operands `stride` (of X, W, Y) values apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Prod {
    pub form: Form,
    pub rows: usize,
    pub cols: usize,
    pub inner: usize,
    pub ld: [usize; 3],
    pub heads: usize,
    pub stride: [usize; 3],
    pub alpha: f32,
}

impl Prod {
    /// One product, its operands dense (leading dimension = row length).
    pub fn dense(form: Form, rows: usize, cols: usize, inner: usize) -> Prod {
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
    pub fn per_head(self, heads: usize, ld: [usize; 3], stride: [usize; 3]) -> Prod {
        Prod {
            heads,
            ld,
            stride,
            ..self
        }
    }

    /// The column-major call: `Yᵀ = op(W)·op(X)`, so cuBLAS's `A` is W and `B` is X.
    pub fn gemm(&self) -> Gemm {
        Gemm {
            trans_a: self.form == Form::XWt,
            trans_b: self.form == Form::XtW,
            m: self.cols,
            n: self.rows,
            k: self.inner,
            lda: self.ld[1],
            ldb: self.ld[0],
            ldc: self.ld[2],
            stride_a: self.stride[1],
            stride_b: self.stride[0],
            stride_c: self.stride[2],
            batch: self.heads,
            alpha_bits: self.alpha.to_bits(),
        }
    }
}

/// The attention core's per-head products: `q`, `k`, `v` are `[n, heads·d]`, scores and
/// probabilities `[heads, nq, nk]`.
pub(crate) struct HeadProducts {
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub heads: usize,
}

impl HeadProducts {
    fn ld_strides(&self, form: Form) -> ([usize; 3], [usize; 3]) {
        let (h, s) = (self.heads * self.d, self.nq * self.nk);
        match form {
            // [nq, hidden] · [n, hidden]ᵀ -> scores
            Form::XWt => ([h, h, self.nk], [self.d, self.d, s]),
            // scores · [nk, hidden] -> [nq, hidden]
            Form::XW => ([self.nk, h, h], [s, self.d, self.d]),
            // scoresᵀ · [nq, hidden] -> [nk, hidden]
            Form::XtW => ([self.nk, h, h], [s, self.d, self.d]),
        }
    }

    /// `S_h = scale · A_h·B_hᵀ` for A `[nq, hidden]`, B `[nk, hidden]`.
    pub fn scores(&self, scale: f32) -> Prod {
        let (ld, st) = self.ld_strides(Form::XWt);
        Prod {
            alpha: scale,
            ..Prod::dense(Form::XWt, self.nq, self.nk, self.d).per_head(self.heads, ld, st)
        }
    }

    /// `O_h = S_h·B_h` for S `[heads, nq, nk]`, B `[nk, hidden]`: `[nq, hidden]`.
    pub fn apply(&self) -> Prod {
        let (ld, st) = self.ld_strides(Form::XW);
        Prod::dense(Form::XW, self.nq, self.d, self.nk).per_head(self.heads, ld, st)
    }

    /// `O_h = S_hᵀ·B_h` for S `[heads, nq, nk]`, B `[nq, hidden]`: `[nk, hidden]`.
    pub fn apply_transposed(&self) -> Prod {
        let (ld, st) = self.ld_strides(Form::XtW);
        Prod::dense(Form::XtW, self.nk, self.d, self.nq).per_head(self.heads, ld, st)
    }
}

/// The operations, on any [`Engine`].
pub trait Ops: Engine {
    /// Copies a host tensor to the device.
    fn upload(&self, t: &Tensor) -> Result<DT<Self>, RuntimeError> {
        if t.numel() == 0 {
            return self.zeros(t.shape());
        }
        Ok(DTensor::from_parts(
            t.shape().to_vec(),
            self.htod(t.data())?,
        ))
    }

    /// Copies a device tensor to the host (waits for it).
    fn download(&self, t: &DT<Self>) -> Result<Tensor, RuntimeError> {
        let n = t.numel();
        if n == 0 {
            return Ok(Tensor::zeros(&t.shape));
        }
        Tensor::from_vec(&t.shape, self.dtoh(&t.buf, n)?)
    }

    /// f64 values to the device (at least one slot, so nothing allocates zero bytes).
    fn upload_f64(&self, v: &[f64]) -> Result<Self::Buf<f64>, RuntimeError> {
        if v.is_empty() {
            return self.alloc_zeros::<f64>(1);
        }
        self.htod(v)
    }

    fn zeros(&self, shape: &[usize]) -> Result<DT<Self>, RuntimeError> {
        let n: usize = shape.iter().product();
        Ok(DTensor::from_parts(
            shape.to_vec(),
            self.alloc_zeros(n.max(1))?,
        ))
    }

    /// A device-to-device copy (this rank's stream).
    fn copy(&self, t: &DT<Self>) -> Result<DT<Self>, RuntimeError> {
        Ok(DTensor::from_parts(t.shape.clone(), self.dtod(&t.buf)?))
    }

    /// `dst[range] = src[range]` (flat values), on the device.
    fn copy_range(
        &self,
        dst: &mut DT<Self>,
        src: &DT<Self>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError> {
        assert!(
            range.end <= dst.numel() && range.end <= src.numel(),
            "copy_range: {range:?} past the tensors"
        );
        if range.is_empty() {
            return Ok(());
        }
        self.dtod_range(&mut dst.buf, &src.buf, range)
    }

    /// Row indices as the kernels' `int`s (one slot at least).
    fn ints(&self, v: &[usize]) -> Result<Self::Buf<i32>, RuntimeError> {
        let mut v: Vec<i32> = v
            .iter()
            .map(|&x| i32_of(x, "an index"))
            .collect::<Result<_, _>>()?;
        if v.is_empty() {
            v.push(0);
        }
        self.htod(&v)
    }

    /// f32 values rounded to bf16 (round to nearest even), as raw 16-bit words.
    fn bf16_of(&self, x: &Self::Buf<f32>) -> Result<Self::Buf<u16>, RuntimeError> {
        let n = Self::len(x);
        let mut out = self.alloc_zeros::<u16>(n.max(1))?;
        self.launch(
            "to_bf16",
            elems(n),
            &mut [Arg::F32(x), Arg::U16Mut(&mut out), Arg::I64(n as i64)],
        )?;
        Ok(out)
    }

    /// `y = x · wᵀ + b`, as [`Tensor::linear`].
    fn linear(
        &self,
        x: &DT<Self>,
        w: &DT<Self>,
        b: Option<&DT<Self>>,
    ) -> Result<DT<Self>, RuntimeError> {
        let (n, k, m) = (x.rows(), x.cols(), w.rows());
        assert_eq!(
            w.cols(),
            k,
            "linear: x has {k} columns, the weight {}",
            w.cols()
        );
        let mut y = self.zeros(&[n, m])?;
        product(
            self,
            Prod::dense(Form::XWt, n, m, k),
            &x.buf,
            &w.buf,
            &mut y.buf,
        )?;
        if let Some(b) = b {
            assert_eq!(b.numel(), m, "linear: bias length");
            let (rows, cols) = (i32_of(n, "rows")?, i32_of(m, "columns")?);
            self.launch(
                "add_bias",
                elems(n * m),
                &mut [
                    Arg::F32Mut(&mut y.buf),
                    Arg::F32(&b.buf),
                    Arg::I32(rows),
                    Arg::I32(cols),
                ],
            )?;
        }
        Ok(y)
    }

    /// The backward of [`Ops::linear`]: `(dx, dw, db)` as [`Tensor::linear_backward`].
    fn linear_backward(
        &self,
        x: &DT<Self>,
        w: &DT<Self>,
        dy: &DT<Self>,
    ) -> Result<DT3<Self>, RuntimeError> {
        let (n, k, m) = (x.rows(), x.cols(), w.rows());
        assert_eq!((dy.rows(), dy.cols()), (n, m), "linear_backward: dy shape");
        let mut dx = self.zeros(&[n, k])?;
        // dX = dY·W
        product(
            self,
            Prod::dense(Form::XW, n, k, m),
            &dy.buf,
            &w.buf,
            &mut dx.buf,
        )?;
        // dW = dYᵀ·X
        let mut dw = self.zeros(&[m, k])?;
        product(
            self,
            Prod::dense(Form::XtW, m, k, n),
            &dy.buf,
            &x.buf,
            &mut dw.buf,
        )?;
        let db = self.col_sum(dy, None)?;
        Ok((dx, dw, db))
    }

    /// Per column, the sum over rows of `a` (times `b` if given), in f64 rows in order.
    fn col_sum(&self, a: &DT<Self>, b: Option<&DT<Self>>) -> Result<DT<Self>, RuntimeError> {
        let (rows, cols) = (a.rows(), a.cols());
        if let Some(b) = b {
            assert_eq!(b.shape, a.shape, "col_sum: shapes differ");
        }
        let mut out = self.zeros(&[cols])?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        let b = b.map_or(Arg::Null, |b| Arg::F32(&b.buf));
        self.launch(
            "col_sum",
            elems(cols),
            &mut [
                Arg::F32(&a.buf),
                b,
                Arg::F32Mut(&mut out.buf),
                Arg::I32(r),
                Arg::I32(c),
                Arg::I32(0),
            ],
        )?;
        Ok(out)
    }

    /// `y += x`, elementwise.
    fn add_into(&self, y: &mut DT<Self>, x: &DT<Self>) -> Result<(), RuntimeError> {
        assert_eq!(y.shape, x.shape, "add_into: shapes differ");
        let n = y.numel();
        self.launch(
            "add_into",
            elems(n),
            &mut [
                Arg::F32Mut(&mut y.buf),
                Arg::F32(&x.buf),
                Arg::I64(n as i64),
            ],
        )
    }

    /// LayerNorm as [`crate::reference::layers::layer_norm`].
    fn layer_norm(
        &self,
        x: &DT<Self>,
        w: &DT<Self>,
        b: &DT<Self>,
    ) -> Result<(DT<Self>, DLayerNormCache<Self>), RuntimeError> {
        let (rows, cols) = (x.rows(), x.cols());
        assert_eq!(w.numel(), cols, "layer_norm: weight width");
        assert_eq!(b.numel(), cols, "layer_norm: bias width");
        let mut y = self.zeros(&x.shape)?;
        let mut xhat = self.zeros(&x.shape)?;
        let mut rstd = self.alloc_zeros::<f64>(rows.max(1))?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        self.launch(
            "layer_norm_fwd",
            per_row(rows, 1),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32(&w.buf),
                Arg::F32(&b.buf),
                Arg::F32Mut(&mut y.buf),
                Arg::F32Mut(&mut xhat.buf),
                Arg::F64Mut(&mut rstd),
                Arg::I32(r),
                Arg::I32(c),
                Arg::F64Val(crate::reference::layers::LN_EPS),
            ],
        )?;
        Ok((y, DLayerNormCache { xhat, rstd }))
    }

    /// LayerNorm's backward from its cache (`x̂`, each row's `1/σ`): `(dx, dw, db)`.
    fn layer_norm_backward(
        &self,
        xhat: &DT<Self>,
        rstd: &Self::Buf<f64>,
        w: &DT<Self>,
        dy: &DT<Self>,
    ) -> Result<DT3<Self>, RuntimeError> {
        let (rows, cols) = (dy.rows(), dy.cols());
        assert_eq!(xhat.shape, dy.shape, "layer_norm_backward: shapes differ");
        assert_eq!(w.numel(), cols, "layer_norm_backward: weight width");
        let mut dx = self.zeros(&dy.shape)?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        self.launch(
            "layer_norm_bwd",
            per_row(rows, 1),
            &mut [
                Arg::F32(&dy.buf),
                Arg::F32(&xhat.buf),
                Arg::F64(rstd),
                Arg::F32(&w.buf),
                Arg::F32Mut(&mut dx.buf),
                Arg::I32(r),
                Arg::I32(c),
            ],
        )?;
        let dw = self.col_sum(dy, Some(xhat))?;
        let db = self.col_sum(dy, None)?;
        Ok((dx, dw, db))
    }

    /// GELU (tanh form), elementwise.
    fn gelu(&self, x: &DT<Self>) -> Result<DT<Self>, RuntimeError> {
        let mut y = self.zeros(&x.shape)?;
        let n = x.numel();
        self.launch(
            "gelu_fwd",
            elems(n),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32Mut(&mut y.buf),
                Arg::I64(n as i64),
            ],
        )?;
        Ok(y)
    }

    fn gelu_backward(&self, x: &DT<Self>, dy: &DT<Self>) -> Result<DT<Self>, RuntimeError> {
        assert_eq!(x.shape, dy.shape, "gelu_backward: shapes");
        let mut dx = self.zeros(&x.shape)?;
        let n = x.numel();
        self.launch(
            "gelu_bwd",
            elems(n),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32(&dy.buf),
                Arg::F32Mut(&mut dx.buf),
                Arg::I64(n as i64),
            ],
        )?;
        Ok(dx)
    }

    /// Attention's core as [`crate::reference::attention::attention_core_at`]: `q` `[nq, H·d]`
    /// against `k`, `v` `[nk, H·d]`, query `i` at `positions[i]`. Returns the heads' outputs
    /// `[nq, H·d]` and probabilities `[H, nq, nk]` (zero where masked).
    fn attention_core(
        &self,
        q: &DT<Self>,
        k: &DT<Self>,
        v: &DT<Self>,
        heads: usize,
        causal: bool,
        positions: &[usize],
    ) -> Result<(DT<Self>, DT<Self>), RuntimeError> {
        let (nq, nk, hidden) = (q.rows(), k.rows(), q.cols());
        assert_eq!(positions.len(), nq, "attention_core: a position per query");
        assert!(
            heads > 0 && hidden % heads == 0,
            "attention_core: {hidden} columns in {heads} heads"
        );
        assert_eq!((k.cols(), v.cols(), v.rows()), (hidden, hidden, nk));
        let hp = HeadProducts {
            nq,
            nk,
            d: hidden / heads,
            heads,
        };
        let scale = 1.0 / (hp.d as f64).sqrt();
        let mut s = self.zeros(&[heads, nq, nk])?;
        // S_h = Q_h·K_hᵀ·scale
        product(self, hp.scores(scale as f32), &q.buf, &k.buf, &mut s.buf)?;
        let pos = self.ints(positions)?;
        let (a, b) = (i32_of(nq, "queries")?, i32_of(nk, "keys")?);
        self.launch(
            "attn_softmax",
            per_row(nq, heads),
            &mut [
                Arg::F32Mut(&mut s.buf),
                Arg::I32s(&pos),
                Arg::I32(a),
                Arg::I32(b),
                Arg::I32(i32::from(causal)),
            ],
        )?;
        // ctx_h = P_h·V_h
        let mut ctx = self.zeros(&[nq, hidden])?;
        product(self, hp.apply(), &s.buf, &v.buf, &mut ctx.buf)?;
        Ok((ctx, s))
    }

    /// The core's backward: `(dq, dk, dv)` as
    /// [`crate::reference::attention::attention_core_backward`].
    fn attention_core_backward(
        &self,
        q: &DT<Self>,
        k: &DT<Self>,
        v: &DT<Self>,
        probs: &DT<Self>,
        dctx: &DT<Self>,
    ) -> Result<DT3<Self>, RuntimeError> {
        let (nq, nk, hidden) = (q.rows(), k.rows(), q.cols());
        let heads = probs.shape[0];
        assert_eq!(
            probs.shape,
            [heads, nq, nk],
            "attention_core_backward: probs"
        );
        assert_eq!(dctx.shape, q.shape, "attention_core_backward: dctx");
        let hp = HeadProducts {
            nq,
            nk,
            d: hidden / heads,
            heads,
        };
        let scale = 1.0 / (hp.d as f64).sqrt();
        // dV_h = P_hᵀ·dctx_h
        let mut dv = self.zeros(&[nk, hidden])?;
        product(
            self,
            hp.apply_transposed(),
            &probs.buf,
            &dctx.buf,
            &mut dv.buf,
        )?;
        // dP_h = dctx_h·V_hᵀ, then dS = P·(dP - Σ P·dP)·scale in place
        let mut ds = self.zeros(&[heads, nq, nk])?;
        product(self, hp.scores(1.0), &dctx.buf, &v.buf, &mut ds.buf)?;
        let (a, b) = (i32_of(nq, "queries")?, i32_of(nk, "keys")?);
        self.launch(
            "attn_softmax_bwd",
            per_row(nq, heads),
            &mut [
                Arg::F32(&probs.buf),
                Arg::F32Mut(&mut ds.buf),
                Arg::I32(a),
                Arg::I32(b),
                Arg::F64Val(scale),
            ],
        )?;
        // dQ_h = dS_h·K_h
        let mut dq = self.zeros(&[nq, hidden])?;
        product(self, hp.apply(), &ds.buf, &k.buf, &mut dq.buf)?;
        // dK_h = dS_hᵀ·Q_h
        let mut dk = self.zeros(&[nk, hidden])?;
        product(self, hp.apply_transposed(), &ds.buf, &q.buf, &mut dk.buf)?;
        Ok((dq, dk, dv))
    }

    /// Rows `index` of `src`, in order.
    fn gather_rows(&self, src: &DT<Self>, index: &[usize]) -> Result<DT<Self>, RuntimeError> {
        let cols = src.cols();
        let mut out = self.zeros(&[index.len(), cols])?;
        if index.is_empty() {
            return Ok(out);
        }
        assert!(
            index.iter().all(|&i| i < src.rows()),
            "gather_rows: an index past {} rows",
            src.rows()
        );
        let idx = self.ints(index)?;
        let cfg = elems(index.len() * cols);
        row_kernel(
            self,
            "gather_rows",
            cfg,
            &src.buf,
            &idx,
            &mut out.buf,
            index.len(),
            cols,
        )?;
        Ok(out)
    }

    /// `dst[index[k]] = src[k]` for every row k of `src`.
    fn scatter_rows(
        &self,
        dst: &mut DT<Self>,
        src: &DT<Self>,
        index: &[usize],
    ) -> Result<(), RuntimeError> {
        let cols = dst.cols();
        assert_eq!(src.cols(), cols, "scatter_rows: widths");
        assert_eq!(src.rows(), index.len(), "scatter_rows: a row index per row");
        if index.is_empty() {
            return Ok(());
        }
        assert!(
            index.iter().all(|&i| i < dst.rows()),
            "scatter_rows: an index past {} rows",
            dst.rows()
        );
        let idx = self.ints(index)?;
        let cfg = elems(index.len() * cols);
        row_kernel(
            self,
            "scatter_rows",
            cfg,
            &src.buf,
            &idx,
            &mut dst.buf,
            index.len(),
            cols,
        )
    }

    /// `table[index[k]] += src[k]` in order of k; a negative index skips its row.
    fn scatter_add_rows(
        &self,
        table: &mut DT<Self>,
        src: &DT<Self>,
        index: &[i64],
    ) -> Result<(), RuntimeError> {
        let cols = table.cols();
        assert_eq!(src.cols(), cols, "scatter_add_rows: widths");
        assert!(
            index.len() <= src.rows(),
            "scatter_add_rows: more indices than rows"
        );
        if index.is_empty() {
            return Ok(());
        }
        assert!(
            index.iter().all(|&i| i < table.rows() as i64),
            "scatter_add_rows: an index past {} rows",
            table.rows()
        );
        let v: Vec<i32> = index.iter().map(|&i| i.max(-1) as i32).collect();
        let idx = self.htod(&v)?;
        let (n, cfg) = (index.len(), elems(cols));
        row_kernel(
            self,
            "scatter_add_rows",
            cfg,
            &src.buf,
            &idx,
            &mut table.buf,
            n,
            cols,
        )
    }

    /// Cross-entropy as [`crate::reference::llm::cross_entropy`]: the sum of the counted
    /// rows' losses (f64, rows in order) and the logits' gradient.
    fn cross_entropy(
        &self,
        logits: &DT<Self>,
        targets: &[i64],
        global_targets: usize,
    ) -> Result<(f64, DT<Self>), RuntimeError> {
        let (rows, vocab) = (logits.rows(), logits.cols());
        assert_eq!(targets.len(), rows, "cross_entropy: a target per row");
        if rows == 0 {
            return Ok((0.0, self.zeros(&logits.shape)?));
        }
        let t = self.htod(targets)?;
        let mut d = self.zeros(&logits.shape)?;
        let mut loss = self.alloc_zeros::<f64>(rows)?;
        let (r, v) = (i32_of(rows, "rows")?, i32_of(vocab, "vocabulary")?);
        self.launch(
            "cross_entropy",
            per_row(rows, 1),
            &mut [
                Arg::F32(&logits.buf),
                Arg::I64s(&t),
                Arg::F32Mut(&mut d.buf),
                Arg::F64Mut(&mut loss),
                Arg::I32(r),
                Arg::I32(v),
                Arg::F64Val(global_targets as f64),
            ],
        )?;
        let per_row = self.dtoh(&loss, rows)?;
        Ok((per_row.iter().sum(), d))
    }

    /// One Adam update of `p` and its moments in place ([`AdamStep::apply`]).
    ///
    /// [`AdamStep::apply`]: crate::reference::adam::AdamStep::apply
    fn adam_step(
        &self,
        p: &mut DT<Self>,
        g: &DT<Self>,
        m: &mut DT<Self>,
        v: &mut DT<Self>,
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
        self.launch(
            "adam",
            elems(n),
            &mut [
                Arg::F32Mut(&mut p.buf),
                Arg::F32(&g.buf),
                Arg::F32Mut(&mut m.buf),
                Arg::F32Mut(&mut v.buf),
                Arg::I64(n as i64),
                Arg::F64Val(step.lr),
                Arg::F64Val(step.beta1),
                Arg::F64Val(step.beta2),
                Arg::F64Val(step.eps),
                Arg::F64Val(step.bc1),
                Arg::F64Val(step.bc2),
            ],
        )
    }
}

impl<E: Engine + ?Sized> Ops for E {}

/// Launches one of the row kernels, which all take `(src, index, dst, rows, cols)`.
#[allow(clippy::too_many_arguments)]
fn row_kernel<E: Engine + ?Sized>(
    e: &E,
    name: &'static str,
    cfg: LaunchConfig,
    src: &E::Buf<f32>,
    index: &E::Buf<i32>,
    dst: &mut E::Buf<f32>,
    rows: usize,
    cols: usize,
) -> Result<(), RuntimeError> {
    let (n, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
    e.launch(
        name,
        cfg,
        &mut [
            Arg::F32(src),
            Arg::I32s(index),
            Arg::F32Mut(dst),
            Arg::I32(n),
            Arg::I32(c),
        ],
    )
}

/// `y = p(x, w)` in this rank's [`Precision`]: f32 throughout, or `x` and `w` rounded to
/// bf16 with f32 accumulation and output. Column-major cuBLAS computes `Yᵀ = op(W)·op(X)`,
/// which is the row-major `Y` with no copies.
fn product<E: Engine + ?Sized>(
    e: &E,
    p: Prod,
    x: &E::Buf<f32>,
    w: &E::Buf<f32>,
    y: &mut E::Buf<f32>,
) -> Result<(), RuntimeError> {
    // `y` comes zeroed: an empty sum (a rank's shard with no rows) leaves it so.
    if p.rows == 0 || p.cols == 0 || p.inner == 0 {
        return Ok(());
    }
    let g = p.gemm();
    match e.precision() {
        Precision::F32 => e.gemm(&g, Operand::F32(w), Operand::F32(x), y),
        Precision::Bf16 => {
            let (xb, wb) = (e.bf16_of(x)?, e.bf16_of(w)?);
            e.gemm(&g, Operand::Bf16(&wb), Operand::Bf16(&xb), y)
        }
    }
}
