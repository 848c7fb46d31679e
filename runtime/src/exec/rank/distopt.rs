//! The distributed optimizer (a module's `distributed_optimizer`, over a dp × cp group of more
//! than one rank). Each tensor's flat values split into one contiguous shard per member, the
//! chunks of the ring all-reduce (`i·len/n .. (i+1)·len/n`), member `i` owning shard `i`.
//! `grad_sync` reduce-scatters the gradient: each member adds its own shard's parts in the
//! order the ring adds that chunk, so the shard has the all-reduce's bits. Adam keeps moments
//! for the shard only and updates the shard of the parameter, which is then all-gathered whole.
//!
//! The gradient buffer stays whole, as Megatron's main-gradient buffer does (the cost model's
//! `statics.rs` counts it whole): backward accumulates into all of it, and after the
//! reduce-scatter its other shards hold this rank's own partial sums, which nothing reads.
//! [`RankState::whole_grads`] all-gathers the owners' shards for the run's output, outside
//! any step. Tensors whole on every tp rank under sequence parallelism are summed over the
//! whole stage by the all-reduce as before (norms and biases: small); only their Adam state
//! and update are sharded, over dp × cp like the rest.

use std::collections::BTreeMap;
use std::ops::Range;

use super::*;
use crate::transport::Tag;

/// One tensor's shard on this rank.
#[derive(Clone, Debug)]
pub struct Shard {
    /// The module (by index in the program) and the tensor's index among its stage's names:
    /// its messages' tags.
    module: usize,
    index: usize,
    /// The dp × cp group, and this rank's place in it: the shard it owns.
    group: Vec<u32>,
    me: usize,
    /// The whole tensor's shape.
    shape: Vec<usize>,
    /// Whether `grad_sync` reduce-scatters its gradient (not for a tensor whole on every tp
    /// rank under sequence parallelism, which the stage all-reduces).
    pub scatters: bool,
}

impl Shard {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Member `i`'s values.
    fn range(&self, i: usize) -> Range<usize> {
        crate::transport::ring_chunk(self.len(), self.group.len(), i)
    }

    /// This rank's values.
    pub fn mine(&self) -> Range<usize> {
        self.range(self.me)
    }

    fn ranges(&self) -> Vec<Range<usize>> {
        (0..self.group.len()).map(|i| self.range(i)).collect()
    }
}

/// The shards of every tensor of this rank's module stages with a distributed optimizer over
/// more than one rank, by name.
pub fn shards_of(
    modules: &[Option<ModuleCtx<'_>>],
    params: &Params,
    rank: u32,
) -> BTreeMap<String, Shard> {
    let mut out = BTreeMap::new();
    for (m, c) in modules.iter().enumerate() {
        let Some(c) = c else { continue };
        if !c.prog.distributed_optimizer {
            continue;
        }
        for (k, name) in c.names.iter().enumerate() {
            // A routed expert's state shards over the ranks holding the same experts.
            let group = if expert_of(name).is_some() {
                &c.expert_dp_group
            } else {
                &c.dp_cp_group
            };
            if group.len() <= 1 {
                continue;
            }
            let me = group
                .iter()
                .position(|&r| r == rank)
                .expect("a rank is in its own groups");
            let p = params
                .get(name)
                .expect("the rank holds its stage's parameters");
            let shard = Shard {
                module: m,
                index: k,
                group: group.clone(),
                me,
                shape: p.shape().to_vec(),
                // Reduce-scattered where the gradient sums over the shard's group exactly.
                scatters: super::sync::sync_group(c, name) == group.as_slice(),
            };
            out.insert(name.clone(), shard);
        }
    }
    out
}

/// `x`'s values under `shape`, where `mx` keeps its tensors: on a device, a copy (a device
/// tensor keeps its own shape, so a [`Tensor::reshaped`] view alone would be read under the
/// old one; `select_ranges` makes its result in the view's shape).
fn reshape(mx: &dyn Math, x: &Tensor, shape: &[usize]) -> Result<Tensor, RuntimeError> {
    let view = x.reshaped(shape)?;
    if mx.on_device() {
        mx.select_ranges(
            std::slice::from_ref(&view),
            std::slice::from_ref(&(0..x.numel())),
        )
    } else {
        Ok(view)
    }
}

/// Values `r` of `x`, flat, as a `[r.len(), 1]` tensor, where `mx` keeps its tensors.
fn flat_slice(mx: &dyn Math, x: &Tensor, r: Range<usize>) -> Result<Tensor, RuntimeError> {
    if mx.on_device() && !r.is_empty() {
        let col = reshape(mx, x, &[x.numel(), 1])?;
        mx.gather_rows(&col, &r.collect::<Vec<_>>())
    } else {
        Tensor::from_vec(&[r.len(), 1], x.data()[r].to_vec())
    }
}

/// The tensor of shape `shape` whose flat values are `parts`' in order.
fn flat_join(mx: &dyn Math, parts: &[Tensor], shape: &[usize]) -> Result<Tensor, RuntimeError> {
    if mx.on_device() {
        let (mut start, mut rows) = (0, Vec::with_capacity(parts.len()));
        for p in parts {
            rows.push((start..start + p.numel()).collect::<Vec<_>>());
            start += p.numel();
        }
        reshape(mx, &mx.scatter_rows(parts, &rows, start, 1)?, shape)
    } else {
        let values = parts
            .iter()
            .flat_map(|p| p.data().iter().copied())
            .collect();
        Tensor::from_vec(shape, values)
    }
}

impl<'a> RankState<'a> {
    /// `grad_sync` of sharded tensor `name` (under tag `t`): its gradient reduce-scattered
    /// over the dp × cp group, this rank's shard replaced by the sum.
    pub(super) fn reduce_scatter_grad(&mut self, name: &str, t: Tag) -> Result<(), RuntimeError> {
        let sh = &self.sharded[name];
        let mx = &*self.math;
        let g = self
            .grads
            .get_mut(name)
            .expect("the rank holds its stage's gradients");
        let mut pieces = sh
            .ranges()
            .into_iter()
            .map(|r| flat_slice(mx, g, r))
            .collect::<Result<Vec<_>, _>>()?;
        let sum = if let Some(gc) = self.groups.as_deref().filter(|gc| gc.covers(&sh.group)) {
            collective::reduce_scatter_parts(gc, mx, &sh.group, sh.me, pieces.clone())?
        } else if collective::on_device(mx, &self.net, &sh.group) {
            collective::reduce_scatter_ring(mx, &mut self.net, &sh.group, t, pieces.clone())?
        } else {
            let parts: Vec<Vec<f32>> = pieces.iter().map(|p| p.data().to_vec()).collect();
            let v = self.net.reduce_scatter_ring(&sh.group, t, &parts)?;
            Tensor::from_vec(&[v.len(), 1], v)?
        };
        pieces[sh.me] = sum;
        *g = flat_join(mx, &pieces, &sh.shape)?;
        Ok(())
    }

    /// `grad_sync` of the sharded tensors `names`, all of one dp × cp group, on the host
    /// transport: one reduce-scatter whose part for each member is that member's shard of
    /// every tensor in turn. The ring adds each value in the order a tensor's own
    /// reduce-scatter adds it (the same bits), in one message per ring step instead of one per
    /// tensor. Under group collectives each tensor goes on its own, as before.
    pub(super) fn reduce_scatter_bucket(
        &mut self,
        names: &[String],
        t: Tag,
    ) -> Result<(), RuntimeError> {
        let group = self.sharded[&names[0]].group.clone();
        if names.len() == 1 || self.groups.as_ref().is_some_and(|g| g.covers(&group)) {
            for n in names {
                let sh = &self.sharded[n];
                let own = tag(Kind::GradSync, sh.module, 0, sh.index, 0);
                self.reduce_scatter_grad(n, own)?;
            }
            return Ok(());
        }
        let mut parts: Vec<Vec<f32>> = vec![Vec::new(); group.len()];
        for name in names {
            let g = self.grads.t(name).data();
            for (c, r) in self.sharded[name].ranges().into_iter().enumerate() {
                parts[c].extend_from_slice(&g[r]);
            }
        }
        let sum = self.net.reduce_scatter_ring(&group, t, &parts)?;
        let me = self.sharded[&names[0]].me;
        if sum.len() != parts[me].len() {
            return Err(invalid(format!(
                "rank {}: a bucket's reduce-scatter gave {} values, expected {}",
                self.rank,
                sum.len(),
                parts[me].len()
            )));
        }
        let mut at = 0;
        for name in names {
            let r = self.sharded[name].mine();
            let k = r.len();
            let g = self.grads.get_mut(name).expect("sharded tensors are held");
            g.data_mut()[r].copy_from_slice(&sum[at..at + k]);
            at += k;
        }
        Ok(())
    }

    /// Every sharded parameter all-gathered whole from this rank's shard (held in its place):
    /// on the host transport the tensors of one group as one bucket (each member's shards of
    /// every tensor in turn, one all-gather); otherwise each on its own.
    fn gather_params(&mut self, sharded: &BTreeMap<String, Shard>) -> Result<(), RuntimeError> {
        let host = !self.math.on_device();
        let mut buckets: Vec<(&[u32], Vec<&String>)> = Vec::new();
        for (name, sh) in sharded {
            let covered = self.groups.as_ref().is_some_and(|g| g.covers(&sh.group));
            match buckets.iter_mut().find(|(g, _)| *g == sh.group.as_slice()) {
                Some((_, names)) if host && !covered => names.push(name),
                _ => buckets.push((&sh.group, vec![name])),
            }
        }
        for (group, names) in buckets {
            let first = &sharded[names[0]];
            let t = tag(Kind::GradSync, first.module, 1, first.index, 0);
            if names.len() == 1 {
                let mine = self.params.t(names[0]).clone();
                let p = self.gather_shard(first, &mine, t)?;
                *self
                    .params
                    .get_mut(names[0])
                    .expect("sharded tensors are held") = p;
                continue;
            }
            let mut mine = Vec::new();
            for n in &names {
                mine.extend_from_slice(self.params.t(n).data());
            }
            let all = self.net.all_gather(group, t, &mine)?;
            let mut at = vec![0usize; all.len()];
            for n in &names {
                let sh = &sharded[*n];
                let mut values = Vec::with_capacity(sh.len());
                for (i, part) in all.iter().enumerate() {
                    let k = sh.range(i).len();
                    let piece = part.get(at[i]..at[i] + k).ok_or_else(|| {
                        invalid(format!("rank {}: a peer's bucket is short", self.rank))
                    })?;
                    values.extend_from_slice(piece);
                    at[i] += k;
                }
                *self.params.get_mut(n).expect("sharded tensors are held") =
                    Tensor::from_vec(&sh.shape, values)?;
            }
        }
        Ok(())
    }

    /// `x`, this rank's shard of sharded tensor `sh`, all-gathered whole under tag `t`.
    fn gather_shard(&mut self, sh: &Shard, x: &Tensor, t: Tag) -> Result<Tensor, RuntimeError> {
        let mx = &*self.math;
        let parts = if let Some(gc) = self.groups.as_deref().filter(|gc| gc.covers(&sh.group)) {
            let rows: Vec<usize> = sh.ranges().iter().map(ExactSizeIterator::len).collect();
            collective::gather_parts(gc, mx, &sh.group, x, &rows)?
        } else if collective::on_device(mx, &self.net, &sh.group) {
            collective::all_gather(&mut self.net, &sh.group, t, x)?
        } else {
            let all = self.net.all_gather(&sh.group, t, x.data())?;
            all.into_iter()
                .map(|v| Tensor::from_vec(&[v.len(), 1], v))
                .collect::<Result<Vec<_>, _>>()?
        };
        for (p, r) in parts.iter().zip(sh.ranges()) {
            if p.numel() != r.len() {
                return Err(invalid(format!(
                    "rank {}: a shard of {} values of a tensor of shape {:?}, expected {}",
                    self.rank,
                    p.numel(),
                    sh.shape,
                    r.len()
                )));
            }
        }
        flat_join(mx, &parts, &sh.shape)
    }

    /// `optimizer_step` under the distributed optimizer: each sharded parameter and gradient
    /// replaced by this rank's shard for Adam (whose moments so follow the shards), then each
    /// parameter all-gathered whole and each gradient put back.
    pub(super) fn sharded_step(&mut self) -> Result<(), RuntimeError> {
        let sharded = std::mem::take(&mut self.sharded);
        let mut whole = Vec::with_capacity(sharded.len());
        for (name, sh) in &sharded {
            let mx = &*self.math;
            let p = self.params.get_mut(name).expect("sharded tensors are held");
            *p = flat_slice(mx, p, sh.mine())?;
            let g = self.grads.get_mut(name).expect("sharded tensors are held");
            whole.push(std::mem::replace(g, flat_slice(mx, g, sh.mine())?));
        }
        let mx = &*self.math;
        let updated =
            self.adam
                .update_each(&mut self.params, &self.grads, &mut |p, g, m, v, step| {
                    mx.adam(p, g, m, v, step)
                });
        let result = updated.and_then(|()| {
            for (name, g) in sharded.keys().zip(whole) {
                *self.grads.get_mut(name).expect("sharded tensors are held") = g;
            }
            self.gather_params(&sharded)
        });
        self.sharded = sharded;
        result
    }

    /// The gradients, whole: the shards each sharded tensor's owners summed, all-gathered (the
    /// last step's, for the run's output: outside any step, every rank at once).
    pub fn whole_grads(&mut self) -> Result<Grads, RuntimeError> {
        let mut out = self.grads.clone();
        let sharded = std::mem::take(&mut self.sharded);
        let result = sharded
            .iter()
            .filter(|(_, sh)| sh.scatters)
            .try_for_each(|(name, sh)| {
                let g = out.get_mut(name).expect("sharded tensors are held");
                let mine = flat_slice(&*self.math, g, sh.mine())?;
                let t = tag(Kind::GradSync, sh.module, 2, sh.index, 0);
                *g = self.gather_shard(sh, &mine, t)?;
                Ok(())
            });
        self.sharded = sharded;
        result.map(|()| out)
    }

    /// Adam's moments of this rank's slices, whole over the dp × cp group (each sharded
    /// tensor's owners' shards all-gathered; every rank of the group at once): what a checkpoint
    /// saves. Empty before the first update.
    pub fn whole_moments(&mut self) -> Result<(Params, Params), RuntimeError> {
        let mut m = self.adam.exp_avg().clone();
        let mut v = self.adam.exp_avg_sq().clone();
        if m.is_empty() {
            return Ok((m, v));
        }
        let sharded = std::mem::take(&mut self.sharded);
        let result = sharded.iter().try_for_each(|(name, sh)| {
            for (sub, x) in [(3, &mut m), (4, &mut v)] {
                let t = tag(Kind::GradSync, sh.module, sub, sh.index, 0);
                let mine = x.get(name).expect("moments follow the parameters").clone();
                *x.get_mut(name).expect("moments follow the parameters") =
                    self.gather_shard(sh, &mine, t)?;
            }
            Ok(())
        });
        self.sharded = sharded;
        result.map(|()| (m, v))
    }

    /// The bytes of this rank's weights, gradients and optimizer state (Adam's two moments,
    /// which exist from the first step on).
    pub fn static_bytes(&self) -> StaticBytes {
        StaticBytes {
            weights: tensor_bytes(self.params.iter().map(|(_, t)| t)),
            grads: tensor_bytes(self.grads.iter().map(|(_, t)| t)),
            optimizer: tensor_bytes(
                self.adam
                    .exp_avg()
                    .iter()
                    .chain(self.adam.exp_avg_sq().iter())
                    .map(|(_, t)| t),
            ),
        }
    }
}

/// A rank's static memory, bytes: f32 weights, gradients and Adam's f32 moments (the cost
/// model's terms at fp32 precision: 4, 4 and 8 bytes a parameter, the 8 over the dp × cp group
/// under a distributed optimizer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaticBytes {
    pub weights: usize,
    pub grads: usize,
    pub optimizer: usize,
}
