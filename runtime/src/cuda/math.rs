//! [`Math`] on a GPU: each operation copies its inputs to the rank's device memory, runs there
//! (cuBLAS and the kernels of `kernels.cu`) and copies its results back. This is the first
//! step of the CUDA backend: the interpreter, its sharding, row stores and transfers are the
//! CPU backend's, so every plan runs on the GPU's arithmetic and its numerics can be checked
//! against the CPU plan by plan. Keeping tensors resident and moving them by NCCL is next.

use super::device::Gpu;
use crate::exec::math::Math;
use crate::reference::layers::LayerNormCache;
use crate::tensor::Tensor;
use crate::RuntimeError;

/// A rank's GPU arithmetic.
pub struct GpuMath {
    gpu: Gpu,
}

impl GpuMath {
    pub fn new(gpu: Gpu) -> GpuMath {
        GpuMath { gpu }
    }
}

impl Math for GpuMath {
    fn linear(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor, RuntimeError> {
        let g = &self.gpu;
        let b = b.map(|b| g.upload(b)).transpose()?;
        let y = g.linear(&g.upload(x)?, &g.upload(w)?, b.as_ref())?;
        g.download(&y)
    }

    fn linear_backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let g = &self.gpu;
        let (dx, dw, db) = g.linear_backward(&g.upload(x)?, &g.upload(w)?, &g.upload(dy)?)?;
        Ok((g.download(&dx)?, g.download(&dw)?, g.download(&db)?))
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
    ) -> Result<(Tensor, LayerNormCache), RuntimeError> {
        let g = &self.gpu;
        let (y, c) = g.layer_norm(&g.upload(x)?, &g.upload(w)?, &g.upload(b)?)?;
        let rstd = g.download_f64(&c.rstd, x.rows())?;
        Ok((
            g.download(&y)?,
            LayerNormCache {
                xhat: g.download(&c.xhat)?,
                rstd,
            },
        ))
    }

    fn layer_norm_backward(
        &self,
        cache: &LayerNormCache,
        w: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let g = &self.gpu;
        let c = super::ops::DLayerNormCache {
            xhat: g.upload(&cache.xhat)?,
            rstd: g.upload_f64(&cache.rstd)?,
        };
        let (dx, dw, db) = g.layer_norm_backward(&c, &g.upload(w)?, &g.upload(dy)?)?;
        Ok((g.download(&dx)?, g.download(&dw)?, g.download(&db)?))
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor, RuntimeError> {
        let g = &self.gpu;
        g.download(&g.gelu(&g.upload(x)?)?)
    }

    fn gelu_backward(&self, x: &Tensor, dy: &Tensor) -> Result<Tensor, RuntimeError> {
        let g = &self.gpu;
        g.download(&g.gelu_backward(&g.upload(x)?, &g.upload(dy)?)?)
    }

    fn attention_core(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
        positions: &[usize],
    ) -> Result<(Tensor, Vec<Tensor>), RuntimeError> {
        let g = &self.gpu;
        let (ctx, probs) = g.attention_core(
            &g.upload(q)?,
            &g.upload(k)?,
            &g.upload(v)?,
            heads,
            causal,
            positions,
        )?;
        let probs = g.download(&probs)?;
        let (nq, nk) = (q.rows(), k.rows());
        let per_head = (0..heads)
            .map(|h| {
                let part = probs.data()[h * nq * nk..(h + 1) * nq * nk].to_vec();
                Tensor::from_vec(&[nq, nk], part)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((g.download(&ctx)?, per_head))
    }

    fn attention_core_backward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        probs: &[Tensor],
        dctx: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), RuntimeError> {
        let g = &self.gpu;
        let (nq, nk) = (q.rows(), k.rows());
        let mut all = Vec::with_capacity(probs.len() * nq * nk);
        for p in probs {
            all.extend_from_slice(p.data());
        }
        let p = Tensor::from_vec(&[probs.len(), nq, nk], all)?;
        let (dq, dk, dv) = g.attention_core_backward(
            &g.upload(q)?,
            &g.upload(k)?,
            &g.upload(v)?,
            &g.upload(&p)?,
            &g.upload(dctx)?,
        )?;
        Ok((g.download(&dq)?, g.download(&dk)?, g.download(&dv)?))
    }

    fn cross_entropy(
        &self,
        logits: &Tensor,
        targets: &[i64],
        global_targets: usize,
    ) -> Result<(f64, Tensor), RuntimeError> {
        let g = &self.gpu;
        let (loss, d) = g.cross_entropy(&g.upload(logits)?, targets, global_targets)?;
        Ok((loss, g.download(&d)?))
    }
}
