//! The pipeline kinds (`pipeline_1f1b`, `pipeline_interleaved`) over modules on distinct
//! ranks: modules on identical ranks form a group; groups chain as stages. Groups of
//! micro-batch modules run 1F1B (`one_f_one_b`: stage x of depth D takes `D - x - 1` warm-up
//! forwards, at least the lead an interleaved group needs) or, with virtual chunks, Megatron's
//! interleaved order (`interleaved`). Groups of item modules run 1F1B over the P passes; the
//! last item stage before the language model's first stage takes `w = max(1 + floor(w0 / k),
//! lag)` warm-up passes (at most P), w0 being the language model's first stage's warm-up
//! forwards (`D - x - 1`), k the pass size and lag the most passes that stage's chunk-0
//! forwards run ahead of its backward of a pass's last micro-batch. Before it waits for pass
//! i's gradients, the encoder has then produced every pass the language model's first stage
//! forwards up to that backward (lag: no deadlock) and, under 1F1B, the forward right after it
//! (1 + floor(w0 / k): the language model never waits for an encoder that is not its
//! bottleneck); it holds w + 1 passes, no more. With k = 1 this is 1F1B's `D - x - 1`. Each
//! stage further upstream takes one more, as in 1F1B. A group holding both (a projector beside
//! a pp-1 language model) runs the micro-batch order and places the passes as the colocated
//! kinds do.

use std::collections::BTreeSet;

use hetpar_ir::model::ModelGraph;
use hetpar_ir::shard::Passes;
use hetpar_ir::{ModuleId, Plan, Rank};

use super::interleaved::{first_chunk_lead, interleaved};
use super::one_f_one_b::{self, one_f_one_b};
use super::steps::{ends_pass, Step};
use crate::CostError;

/// Modules on identical ranks grouped, in topological order, with each group's first global
/// pipeline stage (groups chain as stages, encoders upstream) and the pipeline's depth.
pub struct Pipeline {
    pub group_of: Vec<usize>,
    pub groups: Vec<Vec<usize>>,
    pub offset: Vec<u32>,
    pub depth: u32,
}

pub fn pipeline_groups(model: &ModelGraph, plan: &Plan) -> Pipeline {
    let topo: Vec<usize> = model
        .topological_order()
        .iter()
        .map(|m| m.index())
        .collect();
    let sets: Vec<BTreeSet<Rank>> = plan
        .modules()
        .iter()
        .map(|mp| mp.grid.ranks().iter().copied().collect())
        .collect();
    let mut group_of = vec![usize::MAX; sets.len()];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for &m in &topo {
        match groups.iter().position(|g| sets[g[0]] == sets[m]) {
            Some(g) => {
                group_of[m] = g;
                groups[g].push(m);
            }
            None => {
                group_of[m] = groups.len();
                groups.push(vec![m]);
            }
        }
    }
    let mut offset = vec![0u32; groups.len()];
    for &m in &topo {
        for bid in model.outgoing(ModuleId::new(m)) {
            let t = model.boundary(bid).to.index();
            let (gf, gt) = (group_of[m], group_of[t]);
            if gf != gt {
                offset[gt] = offset[gt].max(offset[gf] + plan.modules()[m].layout.pp);
            }
        }
    }
    let depth = groups
        .iter()
        .enumerate()
        .map(|(g, ms)| offset[g] + plan.modules()[ms[0]].layout.pp)
        .max()
        .unwrap_or(1);
    Pipeline {
        group_of,
        groups,
        offset,
        depth,
    }
}

/// What a group's modules count their tasks in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupUnits {
    /// Item modules only (encoders, projectors): encoder passes.
    Passes,
    /// Micro-batch modules only (the language model and what follows it).
    MicroBatches,
    /// Both: a projector beside a pp-1 language model.
    Both,
}

/// A group's units and pipeline shape.
#[derive(Clone, Copy, Debug)]
struct Group {
    units: GroupUnits,
    pp: u32,
    vpp: u32,
}

/// The steps of every stage of every group of a pipeline schedule.
pub struct PipelineSteps {
    pub pipe: Pipeline,
    groups: Vec<Group>,
    passes: Passes,
    /// Warm-up forwards every non-interleaved micro-batch stage takes at least.
    lead: u32,
    /// The language model's group.
    lm_group: usize,
    /// Warm-up passes of the last item stage before the language model.
    item_warmup: u32,
}

impl PipelineSteps {
    pub fn new(model: &ModelGraph, plan: &Plan) -> Result<Self, CostError> {
        let pipe = pipeline_groups(model, plan);
        let groups: Vec<Group> = pipe
            .groups
            .iter()
            .map(|ms| {
                let item = |&m: &usize| model.item_origin(ModuleId::new(m)).is_some();
                let units = match (ms.iter().any(item), ms.iter().all(item)) {
                    (true, true) => GroupUnits::Passes,
                    (false, _) => GroupUnits::MicroBatches,
                    (true, false) => GroupUnits::Both,
                };
                let l = &plan.modules()[ms[0]].layout;
                Group {
                    units,
                    pp: l.pp,
                    vpp: l.vpp,
                }
            })
            .collect();
        if let Some(g) = (0..groups.len())
            .find(|&g| groups[g].units != GroupUnits::MicroBatches && groups[g].vpp > 1)
        {
            let name = &model.module(ModuleId::new(pipe.groups[g][0])).name;
            return Err(CostError::Unsupported(format!(
                "{name}: virtual pipeline chunks on an encoder or projector are not priced yet"
            )));
        }
        let m = plan.micro_batches();
        let lead = groups
            .iter()
            .filter(|g| g.vpp > 1)
            .map(|g| first_chunk_lead(g.pp, g.vpp, m))
            .max()
            .unwrap_or(0);
        let lm_group = pipe.group_of[model.language_model().index()];
        let mut out = PipelineSteps {
            pipe,
            groups,
            passes: plan.passes(),
            lead,
            lm_group,
            item_warmup: 0,
        };
        out.item_warmup = out.last_item_warmup();
        Ok(out)
    }

    /// Micro-batch slots of stage `s` of group `g`: (forward?, micro-batch, chunk).
    fn micro_batch_slots(&self, g: usize, s: u32) -> Vec<(bool, u32, u32)> {
        let m = self.passes.micro_batches;
        let Group { pp, vpp, .. } = self.groups[g];
        if vpp > 1 {
            return interleaved(pp, vpp, s, m);
        }
        one_f_one_b::stage_order(self.pipe.depth, self.pipe.offset[g] + s, self.lead, m)
    }

    /// See the module comment: `max(1 + floor(w0 / k), lag)`.
    fn last_item_warmup(&self) -> u32 {
        let p = self.passes;
        let l0 = self.pipe.offset[self.lm_group];
        let w0 = self.pipe.depth.saturating_sub(l0 + 1);
        let mut lag = 0u32;
        let mut ahead: Option<u32> = None;
        for (fwd, j, c) in self.micro_batch_slots(self.lm_group, 0) {
            if c != 0 {
                continue;
            }
            if fwd {
                ahead = ahead.max(Some(p.pass_of(j)));
            } else if ends_pass(p, j) {
                lag = lag.max(ahead.unwrap_or(0).saturating_sub(p.pass_of(j)));
            }
        }
        (1 + w0 / p.per_pass).max(lag)
    }

    /// The steps of stage `s` of group `g`.
    pub fn steps(&self, g: usize, s: u32) -> Vec<Step> {
        let p = self.passes;
        match self.groups[g].units {
            GroupUnits::Passes => {
                let l0 = self.pipe.offset[self.lm_group];
                let x = self.pipe.offset[g] + s;
                let w = (self.item_warmup + l0.saturating_sub(x + 1)).min(p.count());
                one_f_one_b(w, p.count())
                    .into_iter()
                    .map(|(f, u)| Step::pass(f, u))
                    .collect()
            }
            GroupUnits::MicroBatches => self
                .micro_batch_slots(g, s)
                .into_iter()
                .map(|(f, j, c)| Step::mb(f, j, c))
                .collect(),
            GroupUnits::Both => {
                let mut out = Vec::new();
                for (f, j, c) in self.micro_batch_slots(g, s) {
                    let first = p.micro_batches_of(p.pass_of(j)).start == j;
                    if f && c == 0 && first {
                        out.push(Step::pass(true, p.pass_of(j)));
                    }
                    out.push(Step::mb(f, j, c));
                    if !f && c == 0 && ends_pass(p, j) {
                        out.push(Step::pass(false, p.pass_of(j)));
                    }
                }
                out
            }
        }
    }
}
