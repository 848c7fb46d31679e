//! Gradient sums over a module stage's groups.

use super::*;

/// Where the gradient of `name` is summed: a routed expert's over the ranks holding the same
/// experts (dp x cp / ep of them); under sequence parallelism a tensor whole on every tp rank
/// over the whole stage (each computed its rows' share), except a router (each tp rank
/// computed it from every local row); everything else over dp x cp.
pub(super) fn sync_group<'c>(c: &'c ModuleCtx<'_>, name: &str) -> &'c [u32] {
    let sp = c.prog.sequence_parallel && c.prog.tp > 1;
    if expert_of(name).is_some() {
        &c.expert_dp_group
    } else if sp && split_of(name) == Split::Replicated && !name.ends_with(".moe.router.weight") {
        &c.stage_group
    } else {
        &c.dp_cp_group
    }
}

impl<'a> RankState<'a> {
    /// `grad_sync`: sums a module stage's gradients, each over its group ([`sync_group`]);
    /// under a distributed optimizer the sums over a tensor's shard group are reduce-scatters
    /// (`distopt.rs`).
    pub fn grad_sync(&mut self, m: usize, stage: u32) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        let c = self.held(m)?;
        if c.coord[3] != stage {
            return Err(invalid(format!(
                "rank {}: grad_sync of stage {stage} of `{}`, but it holds stage {}",
                self.rank, c.prog.name, c.coord[3]
            )));
        }
        let names = c.names.clone();
        let groups: Vec<Vec<u32>> = names.iter().map(|n| sync_group(c, n).to_vec()).collect();
        let pair = self.tied_pair(m);
        // Host tensors summed over one group travel as one bucket (Megatron's DDP buckets):
        // one collective per group, not one per tensor, each a wake-up of every peer.
        let bucketed = !self.math.on_device();
        let mut buckets: Vec<(Vec<u32>, usize, Vec<String>)> = Vec::new();
        let mut scattered: Vec<(Vec<u32>, usize, Vec<String>)> = Vec::new();
        for (k, (name, group)) in names.iter().zip(&groups).enumerate() {
            // A tied embedding's first and last stage sum their shares first (one fixed tag:
            // the two stages list different tensors).
            if let Some(pair) = pair.as_ref().filter(|_| name == "llm.embed.weight") {
                let t = tag(Kind::GradSync, m, 0, MAX_INDEX as usize - 1, 1);
                self.sum_over(name, pair, t)?;
            }
            if group.len() <= 1 {
                continue;
            }
            let scatters = self.sharded.get(name).is_some_and(|s| s.scatters);
            if !bucketed {
                let t = tag(Kind::GradSync, m, 0, k, 0);
                if scatters {
                    self.reduce_scatter_grad(name, t)?;
                } else {
                    self.sum_over(name, group, t)?;
                }
                continue;
            }
            let into = if scatters {
                &mut scattered
            } else {
                &mut buckets
            };
            match into.iter().position(|(g, _, _)| g == group) {
                Some(b) => into[b].2.push(name.clone()),
                // The bucket's tag is its first tensor's.
                None => into.push((group.clone(), k, vec![name.clone()])),
            }
        }
        for (group, k, members) in buckets {
            self.sum_bucket(&members, &group, tag(Kind::GradSync, m, 0, k, 0))?;
        }
        for (_, k, members) in scattered {
            self.reduce_scatter_bucket(&members, tag(Kind::GradSync, m, 0, k, 0))?;
        }
        Ok(())
    }

    /// Sums the host gradients `names` over `group` as one flat buffer, in `names`' order.
    fn sum_bucket(
        &mut self,
        names: &[String],
        group: &[u32],
        t: crate::transport::Tag,
    ) -> Result<(), RuntimeError> {
        // Group collectives (NCCL's) bucket on their own.
        if names.len() == 1 || self.groups.as_ref().is_some_and(|g| g.covers(group)) {
            for n in names {
                self.sum_over(n, group, t)?;
            }
            return Ok(());
        }
        let mut flat = Vec::new();
        let mut segments = Vec::with_capacity(names.len());
        for n in names {
            let d = self.grads.t(n).data();
            flat.extend_from_slice(d);
            segments.push(d.len());
        }
        self.net
            .all_reduce_sum_segments(group, t, &mut flat, &segments)?;
        let mut at = 0;
        for n in names {
            let g = self
                .grads
                .get_mut(n)
                .expect("the rank holds its stage's gradients");
            let k = g.numel();
            g.data_mut().copy_from_slice(&flat[at..at + k]);
            at += k;
        }
        Ok(())
    }

    /// The ranks of this rank's tp, cp and dp coordinates on the language model's first and
    /// last stage, when its head is tied to the embedding across stages.
    fn tied_pair(&self, m: usize) -> Option<Vec<u32>> {
        let c = self.ctx(m);
        let p = c.prog;
        let last = (p.pp * p.vpp - 1) % p.pp;
        let [t, cc, d, _] = c.coord;
        (self.cfg.llm.tied_embeddings && c.unit == Unit::Llm && p.pp > 1)
            .then(|| vec![p.rank_at(t, cc, d, 0), p.rank_at(t, cc, d, last)])
    }

    /// Sums the gradient `name` over `group`.
    fn sum_over(
        &mut self,
        name: &str,
        group: &[u32],
        t: crate::transport::Tag,
    ) -> Result<(), RuntimeError> {
        let g = self
            .grads
            .get_mut(name)
            .expect("the rank holds its stage's gradients");
        if let Some(gc) = self.groups.as_ref().filter(|g| g.covers(group)) {
            let mine = std::mem::replace(g, Tensor::zeros(&[0]));
            *g = gc.all_reduce(group, mine)?;
        } else if collective::on_device(&*self.math, &self.net, group) {
            let mine = std::mem::replace(g, Tensor::zeros(&[0]));
            *g = collective::all_reduce(&*self.math, &mut self.net, group, t, mine)?;
        } else {
            self.net.all_reduce_sum(group, t, g.data_mut())?;
        }
        Ok(())
    }
}
