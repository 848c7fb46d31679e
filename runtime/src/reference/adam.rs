//! Adam (Kingma & Ba 2015): β1 0.9, β2 0.999, ε 1e-8, bias correction with the step count t,
//! no weight decay. The moments are stored as f32; each element's update is computed in f64
//! from them:
//!
//! ```text
//! m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
//! p = p - lr · (m / (1-β1ᵗ)) / (√(v / (1-β2ᵗ)) + ε)
//! ```

use super::params::{Grads, Params};
use crate::error::RuntimeError;
use crate::tensor::Tensor;

/// Adam's hyperparameters and state (first and second moments, named like the parameters).
#[derive(Clone, Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    step: u64,
    m: Params,
    v: Params,
}

impl Adam {
    /// Adam with learning rate `lr` and the reference model's β1, β2, ε; moments start at zero
    /// on the first update.
    pub fn new(lr: f64) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 0,
            m: Params::default(),
            v: Params::default(),
        }
    }

    /// Updates taken so far (t of the last update).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The constants of update number `t` (from 1).
    pub fn step_at(&self, t: u64) -> AdamStep {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        AdamStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            bc1: 1.0 - self.beta1.powi(t),
            bc2: 1.0 - self.beta2.powi(t),
        }
    }

    /// Adam as it was after `step` updates with moments `m` and `v` (a resumed run's).
    pub fn restore(&mut self, step: u64, m: Params, v: Params) {
        self.step = step;
        self.m = m;
        self.v = v;
    }

    /// The first moments.
    pub fn exp_avg(&self) -> &Params {
        &self.m
    }

    /// The second moments.
    pub fn exp_avg_sq(&self) -> &Params {
        &self.v
    }

    /// One update of every parameter from its gradient (each must be present with the
    /// parameter's shape).
    pub fn update(&mut self, params: &mut Params, grads: &Grads) -> Result<(), RuntimeError> {
        self.update_each(params, grads, &mut |p, g, m, v, step| {
            step.apply(p.data_mut(), g.data(), m.data_mut(), v.data_mut());
            Ok(())
        })
    }

    /// [`Adam::update`] with each tensor's update made by `each(p, g, m, v, step)` (a
    /// backend's, on its device): the checks, the moments' start and the step count are
    /// this one's.
    pub fn update_each(
        &mut self,
        params: &mut Params,
        grads: &Grads,
        each: &mut TensorUpdate<'_>,
    ) -> Result<(), RuntimeError> {
        for (name, p) in params.iter() {
            let g = grads
                .get(name)
                .ok_or_else(|| RuntimeError::MissingParam(format!("gradient of {name}")))?;
            if g.shape() != p.shape() {
                return Err(RuntimeError::ParamShape {
                    name: format!("gradient of {name}"),
                    expected: p.shape().to_vec(),
                    got: g.shape().to_vec(),
                });
            }
        }
        if self.m.is_empty() {
            self.m = params.zeros_like();
            self.v = params.zeros_like();
        }
        self.step += 1;
        let step = self.step_at(self.step);
        for (name, p) in params.iter_mut() {
            let g = grads.get(name).expect("checked above");
            let m = self.m.get_mut(name).expect("moments follow the parameters");
            let v = self.v.get_mut(name).expect("moments follow the parameters");
            each(p, g, m, v, &step)?;
        }
        Ok(())
    }
}

/// One tensor's update: `(p, g, m, v, step)`.
pub type TensorUpdate<'a> = dyn FnMut(&mut Tensor, &Tensor, &mut Tensor, &mut Tensor, &AdamStep) -> Result<(), RuntimeError>
    + 'a;

/// One Adam update's constants: the hyperparameters and the bias corrections `1 - βᵗ`.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub bc1: f64,
    pub bc2: f64,
}

impl AdamStep {
    /// The update of one tensor's values, element by element in f64 (the formula above).
    pub fn apply(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((pv, gv), mv), vv) in p.iter_mut().zip(g).zip(m).zip(v) {
            let gd = f64::from(*gv);
            *mv = (self.beta1 * f64::from(*mv) + (1.0 - self.beta1) * gd) as f32;
            *vv = (self.beta2 * f64::from(*vv) + (1.0 - self.beta2) * gd * gd) as f32;
            let (m1, v1) = (f64::from(*mv), f64::from(*vv));
            let upd = self.lr * (m1 / self.bc1) / ((v1 / self.bc2).sqrt() + self.eps);
            *pv = (f64::from(*pv) - upd) as f32;
        }
    }
}
