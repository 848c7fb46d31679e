//! The device operations of the architectures beside the reference model's
//! (`crate::reference::arch`): RMSNorm, the activations and the gated product, rotary
//! positions, and grouped-query attention's head repetition, each mirroring its CPU function
//! by the kernels of `kernels.cu`.

use cudarc::driver::LaunchConfig;

use super::engine::{Arg, Engine};
use super::ops::*;
use crate::reference::arch::Act;
use crate::RuntimeError;

/// The operations, written once against [`Engine`] like [`Ops`].
pub trait ArchOps: Ops {
    /// RMSNorm as [`crate::reference::rmsnorm::rms_norm`]: `y` and the cache (`x̂`, each
    /// row's `1/rms`) its backward reads.
    fn rms_norm(
        &self,
        x: &DT<Self>,
        w: &DT<Self>,
        eps: f64,
    ) -> Result<(DT<Self>, DLayerNormCache<Self>), RuntimeError> {
        let (rows, cols) = (x.rows(), x.cols());
        assert_eq!(w.numel(), cols, "rms_norm: weight width");
        let mut y = self.zeros(x.shape())?;
        let mut xhat = self.zeros(x.shape())?;
        let mut rstd = self.alloc_zeros::<f64>(rows.max(1))?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        self.launch(
            "rms_norm_fwd",
            per_row(rows, 1),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32(&w.buf),
                Arg::F32Mut(&mut y.buf),
                Arg::F32Mut(&mut xhat.buf),
                Arg::F64Mut(&mut rstd),
                Arg::I32(r),
                Arg::I32(c),
                Arg::F64Val(eps),
            ],
        )?;
        Ok((y, DLayerNormCache { xhat, rstd }))
    }

    /// RMSNorm's backward from its cache: `(dx, dw)` as
    /// [`crate::reference::rmsnorm::rms_norm_backward`].
    fn rms_norm_backward(
        &self,
        xhat: &DT<Self>,
        rstd: &Self::Buf<f64>,
        w: &DT<Self>,
        dy: &DT<Self>,
    ) -> Result<(DT<Self>, DT<Self>), RuntimeError> {
        let (rows, cols) = (dy.rows(), dy.cols());
        assert_eq!(xhat.shape(), dy.shape(), "rms_norm_backward: shapes differ");
        assert_eq!(w.numel(), cols, "rms_norm_backward: weight width");
        let mut dx = self.zeros(dy.shape())?;
        let (r, c) = (i32_of(rows, "rows")?, i32_of(cols, "columns")?);
        self.launch(
            "rms_norm_bwd",
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
        Ok((dx, dw))
    }

    /// `f(x)`, elementwise ([`crate::reference::act::activation`]).
    fn activation(&self, x: &DT<Self>, f: Act) -> Result<DT<Self>, RuntimeError> {
        let mut y = self.zeros(x.shape())?;
        let n = x.numel();
        self.launch(
            "act_fwd",
            elems(n),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32Mut(&mut y.buf),
                Arg::I64(n as i64),
                Arg::I32(act_code(f)),
            ],
        )?;
        Ok(y)
    }

    /// `dy · f'(x)` ([`crate::reference::act::activation_backward`]).
    fn activation_backward(
        &self,
        x: &DT<Self>,
        dy: &DT<Self>,
        f: Act,
    ) -> Result<DT<Self>, RuntimeError> {
        assert_eq!(x.shape(), dy.shape(), "activation_backward: shapes");
        let mut dx = self.zeros(x.shape())?;
        let n = x.numel();
        self.launch(
            "act_bwd",
            elems(n),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32(&dy.buf),
                Arg::F32Mut(&mut dx.buf),
                Arg::I64(n as i64),
                Arg::I32(act_code(f)),
            ],
        )?;
        Ok(dx)
    }

    /// `f(gate) · up`, elementwise ([`crate::reference::act::gated`]).
    fn gated(&self, gate: &DT<Self>, up: &DT<Self>, f: Act) -> Result<DT<Self>, RuntimeError> {
        assert_eq!(gate.shape(), up.shape(), "gated: shapes");
        let mut y = self.zeros(gate.shape())?;
        let n = gate.numel();
        self.launch(
            "gated_fwd",
            elems(n),
            &mut [
                Arg::F32(&gate.buf),
                Arg::F32(&up.buf),
                Arg::F32Mut(&mut y.buf),
                Arg::I64(n as i64),
                Arg::I32(act_code(f)),
            ],
        )?;
        Ok(y)
    }

    /// `(dgate, dup)` of [`Ops::gated`] ([`crate::reference::act::gated_backward`]).
    fn gated_backward(
        &self,
        gate: &DT<Self>,
        up: &DT<Self>,
        dy: &DT<Self>,
        f: Act,
    ) -> Result<(DT<Self>, DT<Self>), RuntimeError> {
        assert!(
            gate.shape() == up.shape() && gate.shape() == dy.shape(),
            "gated_backward: shapes"
        );
        let mut dgate = self.zeros(gate.shape())?;
        let mut dup = self.zeros(gate.shape())?;
        let n = gate.numel();
        self.launch(
            "gated_bwd",
            elems(n),
            &mut [
                Arg::F32(&gate.buf),
                Arg::F32(&up.buf),
                Arg::F32(&dy.buf),
                Arg::F32Mut(&mut dgate.buf),
                Arg::F32Mut(&mut dup.buf),
                Arg::I64(n as i64),
                Arg::I32(act_code(f)),
            ],
        )?;
        Ok((dgate, dup))
    }

    /// Rotary positions as [`crate::reference::rope::rope`]: row `k` of `x` at
    /// `positions[k]`, each head's column pairs turned by `positions[k] · inv_freq[i]` (f64,
    /// on the device), backwards when `inverse`.
    fn rope(
        &self,
        x: &DT<Self>,
        positions: &[usize],
        head_dim: usize,
        inv_freq: &[f64],
        inverse: bool,
    ) -> Result<DT<Self>, RuntimeError> {
        let (rows, cols) = (x.rows(), x.cols());
        assert_eq!(
            inv_freq.len(),
            head_dim / 2,
            "rope: one frequency per column pair"
        );
        assert_eq!(positions.len(), rows, "rope: one position per row");
        assert!(
            head_dim >= 2 && head_dim.is_multiple_of(2) && cols.is_multiple_of(head_dim),
            "rope: {cols} columns in heads of {head_dim}"
        );
        let mut y = self.zeros(x.shape())?;
        let pos = self.ints(positions)?;
        let freq = self.upload_f64(inv_freq)?;
        let (r, c, d) = (
            i32_of(rows, "rows")?,
            i32_of(cols, "columns")?,
            i32_of(head_dim, "head width")?,
        );
        self.launch(
            "rope",
            elems(rows * cols / 2),
            &mut [
                Arg::F32(&x.buf),
                Arg::F32Mut(&mut y.buf),
                Arg::I32s(&pos),
                Arg::F64(&freq),
                Arg::I32(r),
                Arg::I32(c),
                Arg::I32(d),
                Arg::I32(i32::from(inverse)),
            ],
        )?;
        Ok(y)
    }

    /// Each `head_dim`-column block of `x` repeated `groups` times in place
    /// ([`crate::reference::rope::repeat_heads`]).
    fn repeat_heads(
        &self,
        x: &DT<Self>,
        head_dim: usize,
        groups: usize,
    ) -> Result<DT<Self>, RuntimeError> {
        let (rows, cols) = (x.rows(), x.cols());
        assert!(
            head_dim > 0 && cols % head_dim == 0 && groups > 0,
            "repeat_heads: {cols} columns in heads of {head_dim}, {groups} groups"
        );
        let mut out = self.zeros(&[rows, cols * groups])?;
        heads_kernel(
            self,
            "repeat_heads",
            elems(rows * cols * groups),
            &x.buf,
            &mut out.buf,
            [rows, cols, head_dim, groups],
        )?;
        Ok(out)
    }

    /// The backward of [`Ops::repeat_heads`]: each group of `groups` blocks summed in f64
    /// ([`crate::reference::rope::sum_heads`]).
    fn sum_heads(
        &self,
        dx: &DT<Self>,
        head_dim: usize,
        groups: usize,
    ) -> Result<DT<Self>, RuntimeError> {
        let (rows, wide) = (dx.rows(), dx.cols());
        assert!(
            head_dim > 0 && groups > 0 && wide % (head_dim * groups) == 0,
            "sum_heads: {wide} columns in groups of {groups} heads of {head_dim}"
        );
        let cols = wide / groups;
        let mut out = self.zeros(&[rows, cols])?;
        heads_kernel(
            self,
            "sum_heads",
            elems(rows * cols),
            &dx.buf,
            &mut out.buf,
            [rows, cols, head_dim, groups],
        )?;
        Ok(out)
    }

    /// A mixture of experts' combination: `[n, c]` rows, each the weighted sum of its
    /// assignments' rows of `x` in assignment order ([`crate::reference::moe::combine`]).
    fn moe_combine(
        &self,
        x: &DT<Self>,
        rows: &[usize],
        weights: &[f64],
        n: usize,
    ) -> Result<DT<Self>, RuntimeError> {
        let cols = x.cols();
        assert_eq!(
            (rows.len(), weights.len()),
            (x.rows(), x.rows()),
            "moe_combine: a row and a weight per assignment"
        );
        let mut y = self.zeros(&[n, cols])?;
        if n == 0 || cols == 0 {
            return Ok(y);
        }
        // Each output row's assignments, ascending (a CSR index).
        let mut starts = vec![0usize; n + 1];
        for &r in rows {
            starts[r + 1] += 1;
        }
        for r in 0..n {
            starts[r + 1] += starts[r];
        }
        let mut next = starts.clone();
        let mut assigned = vec![0usize; rows.len()];
        for (a, &r) in rows.iter().enumerate() {
            assigned[next[r]] = a;
            next[r] += 1;
        }
        let (starts, assigned) = (self.ints(&starts)?, self.ints(&assigned)?);
        let w = self.upload_f64(weights)?;
        self.launch(
            "moe_combine",
            elems(n * cols),
            &mut [
                Arg::F32(&x.buf),
                Arg::I32s(&starts),
                Arg::I32s(&assigned),
                Arg::F64(&w),
                Arg::F32Mut(&mut y.buf),
                Arg::I32(i32_of(n, "rows")?),
                Arg::I32(i32_of(cols, "columns")?),
            ],
        )?;
        Ok(y)
    }

    /// Its backward from the output's gradient `dy`: the assignments' input gradients and
    /// their weights' (downloaded), as [`crate::reference::moe::combine_backward`].
    fn moe_combine_backward(
        &self,
        x: &DT<Self>,
        rows: &[usize],
        weights: &[f64],
        dy: &DT<Self>,
    ) -> Result<(DT<Self>, Vec<f64>), RuntimeError> {
        let (assigns, cols) = (x.rows(), x.cols());
        assert_eq!(
            (rows.len(), weights.len()),
            (assigns, assigns),
            "moe_combine_backward: a row and a weight per assignment"
        );
        assert_eq!(dy.cols(), cols, "moe_combine_backward: widths differ");
        let mut dx = self.zeros(x.shape())?;
        if assigns == 0 {
            return Ok((dx, Vec::new()));
        }
        let mut dw = self.alloc_zeros::<f64>(assigns)?;
        let (r, w) = (self.ints(rows)?, self.upload_f64(weights)?);
        self.launch(
            "moe_combine_bwd",
            elems(assigns),
            &mut [
                Arg::F32(&x.buf),
                Arg::I32s(&r),
                Arg::F64(&w),
                Arg::F32(&dy.buf),
                Arg::F32Mut(&mut dx.buf),
                Arg::F64Mut(&mut dw),
                Arg::I32(i32_of(assigns, "assignments")?),
                Arg::I32(i32_of(cols, "columns")?),
            ],
        )?;
        Ok((dx, self.dtoh(&dw, assigns)?))
    }

    /// The vocabulary-parallel cross-entropy's per-row statistics `[rows, 3]` of this slice
    /// (columns from vocabulary entry `start`): maximum, `Σ exp(l − max)`, target logit or 0.
    fn vocab_stats(
        &self,
        logits: &DT<Self>,
        targets: &[i64],
        start: usize,
    ) -> Result<DT<Self>, RuntimeError> {
        let (rows, width) = (logits.rows(), logits.cols());
        assert_eq!(targets.len(), rows, "vocab_stats: a target per row");
        let mut out = self.zeros(&[rows, 3])?;
        if rows == 0 {
            return Ok(out);
        }
        let t = self.htod(targets)?;
        let (r, w) = (i32_of(rows, "rows")?, i32_of(width, "columns")?);
        self.launch(
            "vocab_stats",
            per_row(rows, 1),
            &mut [
                Arg::F32(&logits.buf),
                Arg::I64s(&t),
                Arg::F32Mut(&mut out.buf),
                Arg::I32(r),
                Arg::I32(w),
                Arg::I64(start as i64),
            ],
        )?;
        Ok(out)
    }

    /// Its gradient on the slice, from each row's log-sum-exp `lse` over the whole vocabulary.
    fn vocab_ce_grad(
        &self,
        logits: &DT<Self>,
        targets: &[i64],
        start: usize,
        lse: &[f64],
        global_targets: usize,
    ) -> Result<DT<Self>, RuntimeError> {
        let (rows, width) = (logits.rows(), logits.cols());
        assert_eq!(
            (targets.len(), lse.len()),
            (rows, rows),
            "vocab_ce_grad: per row"
        );
        let mut d = self.zeros(logits.shape())?;
        if rows == 0 || width == 0 {
            return Ok(d);
        }
        let (t, l) = (self.htod(targets)?, self.upload_f64(lse)?);
        let (r, w) = (i32_of(rows, "rows")?, i32_of(width, "columns")?);
        self.launch(
            "vocab_ce_grad",
            elems(rows * width),
            &mut [
                Arg::F32(&logits.buf),
                Arg::I64s(&t),
                Arg::F64(&l),
                Arg::F32Mut(&mut d.buf),
                Arg::I32(r),
                Arg::I32(w),
                Arg::I64(start as i64),
                Arg::F64Val(global_targets as f64),
            ],
        )?;
        Ok(d)
    }
}

impl<E: Engine + ?Sized> ArchOps for E {}

/// An activation's code in `kernels.cu` (`ACT_*`).
fn act_code(f: Act) -> i32 {
    match f {
        Act::Gelu => 0,
        Act::GeluTanh => 1,
        Act::QuickGelu => 2,
        Act::Silu => 3,
    }
}

/// Launches `repeat_heads` or `sum_heads`, which take `(src, dst, rows, cols, head_dim,
/// groups)`, `cols` the narrow width.
fn heads_kernel<E: Engine + ?Sized>(
    e: &E,
    name: &'static str,
    cfg: LaunchConfig,
    src: &E::Buf<f32>,
    dst: &mut E::Buf<f32>,
    [rows, cols, head_dim, groups]: [usize; 4],
) -> Result<(), RuntimeError> {
    // The wide side's extent must fit the kernels' `int` columns too.
    i32_of(cols * groups, "columns")?;
    e.launch(
        name,
        cfg,
        &mut [
            Arg::F32(src),
            Arg::F32Mut(dst),
            Arg::I32(i32_of(rows, "rows")?),
            Arg::I32(i32_of(cols, "columns")?),
            Arg::I32(i32_of(head_dim, "head width")?),
            Arg::I32(i32_of(groups, "groups")?),
        ],
    )
}
