//! A rank's parameter slices, and Adam's moments when a run resumes, read from a
//! [`WeightSource`]: each module stage's tensors ([`ModuleCtx::names`]) cut for the rank's tp
//! index; a tensor whose optimizer state is sharded (`distopt.rs`) keeps only its shard's
//! moments, as Adam holds them there.

use std::collections::BTreeMap;

use super::distopt::Shard;
use super::*;

/// The slices of every module stage this rank holds.
pub(super) fn local_params(
    full: &dyn WeightSource,
    modules: &[Option<ModuleCtx<'_>>],
) -> Result<Params, RuntimeError> {
    let mut params = Params::default();
    for m in modules.iter().flatten() {
        for n in &m.names {
            let t = full.slice(n, split_of(n), m.coord[0] as usize, m.prog.tp as usize)?;
            params.insert(n.clone(), t);
        }
    }
    Ok(params)
}

/// Adam's first and second moments of this rank's slices (of its shard, for a tensor sharded
/// over its dp × cp group), when `full` resumes a run.
pub(super) fn local_moments(
    full: &dyn WeightSource,
    modules: &[Option<ModuleCtx<'_>>],
    sharded: &BTreeMap<String, Shard>,
) -> Result<Option<(Params, Params)>, RuntimeError> {
    let (mut m1, mut m2) = (Params::default(), Params::default());
    for m in modules.iter().flatten() {
        for n in &m.names {
            let (t, tp) = (m.coord[0] as usize, m.prog.tp as usize);
            let Some(pair) = full.moments(n, split_of(n), t, tp) else {
                return Ok(None);
            };
            let (mut a, mut b) = pair?;
            if let Some(sh) = sharded.get(n) {
                let r = sh.mine();
                a = Tensor::from_vec(&[r.len(), 1], a.data()[r.clone()].to_vec())?;
                b = Tensor::from_vec(&[r.len(), 1], b.data()[r].to_vec())?;
            }
            m1.insert(n.clone(), a);
            m2.insert(n.clone(), b);
        }
    }
    Ok(Some((m1, m2)))
}
