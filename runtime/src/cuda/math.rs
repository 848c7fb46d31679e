//! [`Math`] on a GPU, the interpreter's tensors kept on the device where they can be.
//!
//! A result is a tensor whose values are on the rank's GPU only ([`GpuBuf`]); the next
//! operation reads it there, and the interpreter's host code (row stores, transfers, sums of
//! gradients) copies it to the host the first time it reads it. A host tensor an operation
//! reads is uploaded once and keeps its upload until it changes, so weights cross to the
//! device once per optimizer step, not once per use. The interpreter, its sharding and its
//! transfers are the CPU backend's, so every plan runs on the GPU's arithmetic and its
//! numbers can be compared with the CPU's plan by plan; moving the transfers themselves to the
//! device (NCCL, device copies) is next.

use std::sync::Arc;

use super::device::Gpu;
use super::engine::Engine;
use super::ops::{DLayerNormCache, Ops, DT, DT3};
use super::ops_arch::ArchOps;
use crate::exec::math::Math;
use crate::reference::adam::AdamStep;
use crate::reference::arch::Act;
use crate::reference::layers::{DeviceRstd, LayerNormCache};
use crate::tensor::{DeviceBuffer, Tensor};
use crate::RuntimeError;

/// A tensor's values on one device of engine `E`.
pub struct GpuBuf<E: Engine = Gpu> {
    dev: Arc<E::Device>,
    t: DT<E>,
}

impl<E: Engine> std::fmt::Debug for GpuBuf<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuf({:?})", self.t)
    }
}

impl<E: Engine> DeviceBuffer for GpuBuf<E> {
    fn to_host(&self) -> Vec<f32> {
        let n = self.t.numel();
        if n == 0 {
            return Vec::new();
        }
        E::read_back(self.t.slice(), n)
            .unwrap_or_else(|e| panic!("CUDA backend: copying a result to the host failed: {e}"))
    }

    fn duplicate(&self) -> Result<Arc<dyn DeviceBuffer>, RuntimeError> {
        let copy = E::clone_buf(self.t.slice())?;
        Ok(Arc::new(GpuBuf::<E> {
            dev: self.dev.clone(),
            t: super::ops::DTensor::from_parts(self.t.shape().to_vec(), copy),
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A LayerNorm's rows' 1/σ on one device.
struct GpuRstd<E: Engine> {
    dev: Arc<E::Device>,
    values: E::Buf<f64>,
}

/// An operand on the device: the tensor's own device values, or a copy made for this call.
pub(crate) enum Operand<'t, E: Engine> {
    Kept(&'t DT<E>),
    Copied(DT<E>),
}

impl<E: Engine> std::ops::Deref for Operand<'_, E> {
    type Target = DT<E>;
    fn deref(&self) -> &DT<E> {
        match self {
            Operand::Kept(t) => t,
            Operand::Copied(t) => t,
        }
    }
}

/// A rank's GPU arithmetic (on `E`: the GPU, or the tests' emulated one).
pub struct GpuMath<E: Engine = Gpu> {
    gpu: E,
}

impl<E: Engine> GpuMath<E> {
    pub fn new(gpu: E) -> GpuMath<E> {
        GpuMath { gpu }
    }

    /// `t` on this rank's GPU: its device values, or an upload it then keeps.
    fn on_device<'t>(&self, t: &'t Tensor) -> Result<Operand<'t, E>, RuntimeError> {
        operand(&self.gpu, t)
    }

    /// A result left on the device.
    fn result(&self, d: DT<E>) -> Tensor {
        result(&self.gpu, d)
    }

    fn results3(&self, (a, b, c): DT3<E>) -> (Tensor, Tensor, Tensor) {
        (self.result(a), self.result(b), self.result(c))
    }

    /// A norm's cache whose rows' `1/σ` (LayerNorm) or `1/rms` (RMSNorm) stay on the device:
    /// reading them here would wait for the stream.
    fn norm_cache(&self, c: DLayerNormCache<E>) -> LayerNormCache {
        let rstd = GpuRstd::<E> {
            dev: self.gpu.device().clone(),
            values: c.rstd,
        };
        LayerNormCache {
            xhat: self.result(c.xhat),
            rstd: Vec::new(),
            device_rstd: Some(DeviceRstd(Arc::new(rstd))),
        }
    }

    /// A norm cache's rows' `1/σ` if they are on this rank's device (else the caller uploads
    /// the host's).
    fn kept_rstd<'c>(&self, cache: &'c LayerNormCache) -> Option<&'c E::Buf<f64>> {
        cache
            .device_rstd
            .as_ref()
            .and_then(|d| d.0.downcast_ref::<GpuRstd<E>>())
            .filter(|r| Arc::ptr_eq(&r.dev, self.gpu.device()))
            .map(|r| &r.values)
    }
}

/// `t`'s device values if they are on `gpu`'s device.
fn mine<'t, E: Engine>(gpu: &E, t: &'t Tensor) -> Option<&'t DT<E>> {
    let b = t.device()?.as_any().downcast_ref::<GpuBuf<E>>()?;
    Arc::ptr_eq(&b.dev, gpu.device()).then_some(&b.t)
}

/// `t` on `gpu`'s device: its device values, or an upload it then keeps.
pub(crate) fn operand<'t, E: Engine>(
    gpu: &E,
    t: &'t Tensor,
) -> Result<Operand<'t, E>, RuntimeError> {
    if let Some(d) = mine(gpu, t) {
        return Ok(Operand::Kept(d));
    }
    let up = gpu.upload(t)?;
    if t.device().is_some() {
        // Values on another device stay there; this call uses a copy.
        return Ok(Operand::Copied(up));
    }
    t.keep_device_copy(Arc::new(GpuBuf::<E> {
        dev: gpu.device().clone(),
        t: up,
    }));
    Ok(Operand::Kept(mine(gpu, t).expect("just kept")))
}

/// A tensor whose values are `d`, on `gpu`'s device.
pub(crate) fn result<E: Engine>(gpu: &E, d: DT<E>) -> Tensor {
    let shape = d.shape().to_vec();
    Tensor::from_device(
        &shape,
        Arc::new(GpuBuf::<E> {
            dev: gpu.device().clone(),
            t: d,
        }),
    )
}

impl<E: Engine> Math for GpuMath<E> {
    fn scatter_add_rows(
        &self,
        n: usize,
        src: &Tensor,
        index: &[usize],
    ) -> Result<Tensor, RuntimeError> {
        let mut out = self.gpu.zeros(&[n, src.cols()])?;
        let index: Vec<i64> = index.iter().map(|&i| i as i64).collect();
        self.gpu
            .scatter_add_rows(&mut out, &*self.on_device(src)?, &index)?;
        Ok(self.result(out))
    }

    fn adam(
        &self,
        p: &mut Tensor,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamStep,
    ) -> Result<(), RuntimeError> {
        // Device values are never changed in place (clones share them): update copies.
        let gpu = &self.gpu;
        let mut p2 = gpu.copy(&*self.on_device(p)?)?;
        let mut m2 = gpu.copy(&*self.on_device(m)?)?;
        let mut v2 = gpu.copy(&*self.on_device(v)?)?;
        gpu.adam_step(&mut p2, &*self.on_device(g)?, &mut m2, &mut v2, step)?;
        *p = self.result(p2);
        *m = self.result(m2);
        *v = self.result(v2);
        Ok(())
    }

    fn col_sums(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
        let r = self.gpu.col_sum(&*self.on_device(x)?, None)?;
        Ok(self.result(r))
    }

    fn on_device(&self) -> bool {
        true
    }

    fn select_ranges(
        &self,
        parts: &[Tensor],
        ranges: &[std::ops::Range<usize>],
    ) -> Result<Tensor, RuntimeError> {
        let mut out = self.gpu.zeros(parts[0].shape())?;
        for (p, r) in parts.iter().zip(ranges) {
            self.gpu
                .copy_range(&mut out, &*self.on_device(p)?, r.clone())?;
        }
        Ok(self.result(out))
    }

    fn gather_rows(&self, x: &Tensor, index: &[usize]) -> Result<Tensor, RuntimeError> {
        let r = self.gpu.gather_rows(&*self.on_device(x)?, index)?;
        Ok(self.result(r))
    }

    fn scatter_rows(
        &self,
        parts: &[Tensor],
        rows: &[Vec<usize>],
        n: usize,
        cols: usize,
    ) -> Result<Tensor, RuntimeError> {
        let mut out = self.gpu.zeros(&[n, cols])?;
        for (t, idx) in parts.iter().zip(rows) {
            self.gpu.scatter_rows(&mut out, &*self.on_device(t)?, idx)?;
        }
        Ok(self.result(out))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor, RuntimeError> {
        let mut y = self.gpu.copy(&*self.on_device(a)?)?;
        self.gpu.add_into(&mut y, &*self.on_device(b)?)?;
        Ok(self.result(y))
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, RuntimeError> {
        let b = b.map(|b| self.on_device(b)).transpose()?;
        let y = self
            .gpu
            .linear(&*self.on_device(x)?, &*self.on_device(w)?, b.as_deref())?;
        Ok(self.result(y))
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let r = self.gpu.linear_backward(
            &*self.on_device(x)?,
            &*self.on_device(w)?,
            &*self.on_device(dy)?,
        )?;
        Ok(self.results3(r))
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<(Tensor, LayerNormCache), RuntimeError> {
        let (y, c) = self.gpu.layer_norm(
            &*self.on_device(x)?,
            &*self.on_device(w)?,
            &*self.on_device(b)?,
        )?;
        Ok((self.result(y), self.norm_cache(c)))
    }

    fn layer_norm_backward(
        &self,
        cache: &LayerNormCache,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let uploaded;
        let rstd = match self.kept_rstd(cache) {
            Some(r) => r,
            None => {
                uploaded = self.gpu.upload_f64(&cache.rstd)?;
                &uploaded
            }
        };
        let r = self.gpu.layer_norm_backward(
            &*self.on_device(&cache.xhat)?,
            rstd,
            &*self.on_device(w)?,
            &*self.on_device(dy)?,
        )?;
        Ok(self.results3(r))
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
        Ok(self.result(self.gpu.gelu(&*self.on_device(x)?)?))
    }

    fn gelu_backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor, RuntimeError> {
        let dx = self
            .gpu
            .gelu_backward(&*self.on_device(x)?, &*self.on_device(dy)?)?;
        Ok(self.result(dx))
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
        let (ctx, probs) = self.gpu.attention_core(
            &*self.on_device(q)?,
            &*self.on_device(k)?,
            &*self.on_device(v)?,
            heads,
            causal,
            positions,
        )?;
        Ok((self.result(ctx), self.result(probs)))
    }

    fn attention_core_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &Tensor,
        dctx: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let r = self.gpu.attention_core_backward(
            &*self.on_device(q)?,
            &*self.on_device(k)?,
            &*self.on_device(v)?,
            &*self.on_device(probs)?,
            &*self.on_device(dctx)?,
        )?;
        Ok(self.results3(r))
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &[i64],
        global_targets: usize,
    ) -> Result<(f64, Tensor), RuntimeError> {
        let (loss, d) =
            self.gpu
                .cross_entropy(&*self.on_device(logits)?, targets, global_targets)?;
        Ok((loss, self.result(d)))
    }

    fn vocab_stats(
        &self,
        logits: &Tensor,
        targets: &[i64],
        start: usize,
    ) -> Result<Tensor, RuntimeError> {
        let s = self
            .gpu
            .vocab_stats(&*self.on_device(logits)?, targets, start)?;
        Ok(self.result(s))
    }

    fn vocab_ce_grad(
        &self,
        logits: &Tensor,
        targets: &[i64],
        start: usize,
        lse: &[f64],
        global_targets: usize,
    ) -> Result<Tensor, RuntimeError> {
        let x = self.on_device(logits)?;
        let d = self
            .gpu
            .vocab_ce_grad(&x, targets, start, lse, global_targets)?;
        Ok(self.result(d))
    }

    fn rms_norm(
        &self,
        x: &Tensor,
        w: &Tensor,
        eps: f64,
    ) -> Result<(Tensor, LayerNormCache), RuntimeError> {
        let (y, c) = self
            .gpu
            .rms_norm(&*self.on_device(x)?, &*self.on_device(w)?, eps)?;
        Ok((self.result(y), self.norm_cache(c)))
    }

    fn rms_norm_backward(
        &self,
        cache: &LayerNormCache,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor), RuntimeError> {
        let uploaded;
        let rstd = match self.kept_rstd(cache) {
            Some(r) => r,
            None => {
                uploaded = self.gpu.upload_f64(&cache.rstd)?;
                &uploaded
            }
        };
        let (dx, dw) = self.gpu.rms_norm_backward(
            &*self.on_device(&cache.xhat)?,
            rstd,
            &*self.on_device(w)?,
            &*self.on_device(dy)?,
        )?;
        Ok((self.result(dx), self.result(dw)))
    }

    fn activation(&self, x: &Tensor, f: Act) -> Result<Tensor, RuntimeError> {
        let x = self.on_device(x)?;
        // The tanh GELU keeps its own kernel (the reference model's).
        let y = match f {
            Act::GeluTanh => self.gpu.gelu(&x)?,
            _ => self.gpu.activation(&x, f)?,
        };
        Ok(self.result(y))
    }

    fn activation_backward(&self, x: &Tensor, dy: &Tensor, f: Act) -> Result<Tensor, RuntimeError> {
        let (x, dy) = (self.on_device(x)?, self.on_device(dy)?);
        let dx = match f {
            Act::GeluTanh => self.gpu.gelu_backward(&x, &dy)?,
            _ => self.gpu.activation_backward(&x, &dy, f)?,
        };
        Ok(self.result(dx))
    }

    fn gated(&self, gate: &Tensor, up: &Tensor, f: Act) -> Result<Tensor, RuntimeError> {
        let y = self
            .gpu
            .gated(&*self.on_device(gate)?, &*self.on_device(up)?, f)?;
        Ok(self.result(y))
    }

    fn gated_backward(
        &self,
        gate: &Tensor,
        up: &Tensor,
        dy: &Tensor,
        f: Act,
    ) -> Result<(Tensor, Tensor), RuntimeError> {
        let (dgate, dup) = self.gpu.gated_backward(
            &*self.on_device(gate)?,
            &*self.on_device(up)?,
            &*self.on_device(dy)?,
            f,
        )?;
        Ok((self.result(dgate), self.result(dup)))
    }

    fn rope(
        &self,
        x: &Tensor,
        positions: &[usize],
        head_dim: usize,
        inv_freq: &[f64],
        inverse: bool,
    ) -> Result<Tensor, RuntimeError> {
        let y = self
            .gpu
            .rope(&*self.on_device(x)?, positions, head_dim, inv_freq, inverse)?;
        Ok(self.result(y))
    }

    fn repeat_heads(
        &self,
        x: &Tensor,
        head_dim: usize,
        groups: usize,
    ) -> Result<Tensor, RuntimeError> {
        let y = self
            .gpu
            .repeat_heads(&*self.on_device(x)?, head_dim, groups)?;
        Ok(self.result(y))
    }

    fn sum_heads(
        &self,
        dx: &Tensor,
        head_dim: usize,
        groups: usize,
    ) -> Result<Tensor, RuntimeError> {
        let y = self
            .gpu
            .sum_heads(&*self.on_device(dx)?, head_dim, groups)?;
        Ok(self.result(y))
    }

    fn moe_combine(
        &self,
        x: &Tensor,
        rows: &[usize],
        weights: &[f64],
        n: usize,
    ) -> Result<Tensor, RuntimeError> {
        let y = self
            .gpu
            .moe_combine(&*self.on_device(x)?, rows, weights, n)?;
        Ok(self.result(y))
    }

    fn moe_combine_backward(
        &self,
        x: &Tensor,
        rows: &[usize],
        weights: &[f64],
        dy: &Tensor,
    ) -> Result<(Tensor, Vec<f64>), RuntimeError> {
        let (dx, dw) = self.gpu.moe_combine_backward(
            &*self.on_device(x)?,
            rows,
            weights,
            &*self.on_device(dy)?,
        )?;
        Ok((self.result(dx), dw))
    }
}
