//! Gradient sums over a module stage's groups.

use super::*;

impl<'a> RankState<'a> {
    /// `grad_sync`: sums a module stage's gradients: over dp x cp, and for tensors whole on every tp rank
    /// under sequence parallelism (each computed its rows' share) over the whole stage. Under a
    /// distributed optimizer the dp x cp sums are reduce-scatters (`distopt.rs`).
    pub fn grad_sync(&mut self, m: usize, stage: u32) -> Result<(), RuntimeError> {
        self.flush_sends()?;
        let c = self.held(m)?;
        if c.coord[3] != stage {
            return Err(invalid(format!(
                "rank {}: grad_sync of stage {stage} of `{}`, but it holds stage {}",
                self.rank, c.prog.name, c.coord[3]
            )));
        }
        let sp = c.prog.sequence_parallel && c.prog.tp > 1;
        let names = c.names.clone();
        let (dpcp, all) = (c.dp_cp_group.clone(), c.stage_group.clone());
        for (k, name) in names.iter().enumerate() {
            let group = if sp && split_of(name) == Split::Replicated {
                &all
            } else {
                &dpcp
            };
            if group.len() <= 1 {
                continue;
            }
            if self.sharded.get(name).is_some_and(|s| s.scatters) {
                self.reduce_scatter_grad(name, tag(Kind::GradSync, m, 0, k, 0))?;
                continue;
            }
            let g = self
                .grads
                .get_mut(name)
                .expect("the rank holds its stage's gradients");
            let t = tag(Kind::GradSync, m, 0, k, 0);
            if let Some(gc) = self.groups.as_ref().filter(|g| g.covers(group)) {
                let mine = std::mem::replace(g, Tensor::zeros(&[0]));
                *g = gc.all_reduce(group, mine)?;
            } else if collective::on_device(&*self.math, &self.ep, group) {
                let mine = std::mem::replace(g, Tensor::zeros(&[0]));
                *g = collective::all_reduce(&*self.math, &mut self.ep, group, t, mine)?;
            } else {
                self.ep.all_reduce_sum(group, t, g.data_mut())?;
            }
        }
        Ok(())
    }
}
