//! What each lane runs, in order, as *steps*: the forward or backward of one unit (a
//! micro-batch or an encoder pass) and chunk, for every module of its kind on the lane. The
//! task graph's orders and the closed form's in-flight counts both read them.
//!
//! - Colocated kinds: the language model (and what follows it) runs 1F1B over its stages;
//!   upstream item modules (encoders, projectors) run the forward of pass p just before the
//!   first stage's forward of the pass's first micro-batch f, and its backward just after the
//!   first stage's backward of its last micro-batch l. Every lane keeps that order of passes
//!   (so no lane waits on itself) and merges it with its own stage's 1F1B at the same moments:
//!   a lane on stage s runs the pass's forward before its own forward of micro-batch f - s
//!   and its backward after its own backward of l + s, which in 1F1B's steady state run
//!   alongside the first stage's forward of f and backward of l. So a pass's items are ready
//!   when the first stage needs them, whichever stage's ranks hold them, and its gradients
//!   have arrived when its backward runs.
//! - Pipeline kinds: modules on identical ranks form a group; groups chain as stages. Groups
//!   of micro-batch modules run 1F1B (stage x of depth D: `D - x - 1` warm-up forwards, at
//!   least the lead an interleaved group needs) or Megatron's interleaved order. Groups of
//!   item modules run 1F1B over the P passes; the last item stage before the language
//!   model's first stage takes `w = max(1 + floor(w0 / k), lag)` warm-up passes (at most P),
//!   w0 being the language model's first stage's warm-up forwards (`D - x - 1`) and lag the
//!   most passes that stage's chunk-0 forwards run ahead of its backward of a pass's last
//!   micro-batch. Before it waits for pass i's gradients, the encoder has then produced
//!   every pass the language model's first stage forwards up to that backward (lag: no
//!   deadlock) and, under 1F1B, the forward right after it (1 + floor(w0 / k): the language
//!   model never waits for an encoder that is not its bottleneck); it holds w + 1 passes, no
//!   more. With k = 1 this is 1F1B's `D - x - 1`. Each stage further upstream takes one more,
//!   as in 1F1B. A group holding both (a projector beside a pp-1 language model) runs the
//!   micro-batch order and places the passes as the colocated kinds do.

use hetpar_ir::model::ModelGraph;
use hetpar_ir::shard::Passes;
use hetpar_ir::{ModuleId, Plan};

use super::units::UnitKind;
use super::{interleaved, one_f_one_b, pipeline_groups, Pipeline};
use crate::CostError;

/// The forward or backward of one unit and chunk, for the lane's modules of that unit kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub forward: bool,
    pub kind: UnitKind,
    pub unit: u32,
    pub chunk: u32,
}

impl Step {
    fn mb(forward: bool, unit: u32, chunk: u32) -> Self {
        Step {
            forward,
            kind: UnitKind::MicroBatch,
            unit,
            chunk,
        }
    }

    fn pass(forward: bool, unit: u32) -> Self {
        Step {
            forward,
            kind: UnitKind::Pass,
            unit,
            chunk: 0,
        }
    }
}

/// Units (chunks, when interleaved) of `kind` alive at once at the peak of `steps`.
pub fn alive(steps: &[Step], kind: UnitKind) -> u32 {
    let (mut live, mut peak) = (0i64, 0i64);
    for s in steps.iter().filter(|s| s.kind == kind) {
        live += if s.forward { 1 } else { -1 };
        peak = peak.max(live);
    }
    peak as u32
}

/// Whether micro-batch `j` is the last of its pass.
fn ends_pass(passes: Passes, j: u32) -> bool {
    j + 1 == passes.micro_batches_of(passes.pass_of(j)).end
}

/// The passes in the order the first of `p` colocated stages needs them: (forward?, pass).
pub fn colocated_passes(p: u32, passes: Passes) -> Vec<(bool, u32)> {
    let m = passes.micro_batches;
    let mut out = Vec::new();
    for (fwd, j) in one_f_one_b((p - 1).min(m), m) {
        if fwd && passes.micro_batches_of(passes.pass_of(j)).start == j {
            out.push((true, passes.pass_of(j)));
        }
        if !fwd && ends_pass(passes, j) {
            out.push((false, passes.pass_of(j)));
        }
    }
    out
}

/// The steps of a colocated lane on stage `sl` of the language model's `p` stages.
pub fn colocated_steps(p: u32, sl: u32, passes: Passes) -> Vec<Step> {
    let m = passes.micro_batches;
    let upstream = colocated_passes(p, passes);
    let mut out = Vec::with_capacity(2 * m as usize + upstream.len());
    let mut u = 0usize;
    let (mut forwards_done, mut backwards_done) = (0u32, 0u32);
    for (fwd, j) in one_f_one_b((p - sl - 1).min(m), m) {
        loop {
            match upstream.get(u) {
                Some(&(true, c))
                    if passes.micro_batches_of(c).start.saturating_sub(sl) <= forwards_done => {}
                Some(&(false, c))
                    if backwards_done >= (passes.micro_batches_of(c).end + sl).min(m) => {}
                _ => break,
            }
            let (f, c) = upstream[u];
            out.push(Step::pass(f, c));
            u += 1;
        }
        out.push(Step::mb(fwd, j, 0));
        if fwd {
            forwards_done += 1;
        } else {
            backwards_done += 1;
        }
    }
    out.extend(upstream[u..].iter().map(|&(f, c)| Step::pass(f, c)));
    out
}

/// The steps of every stage of every group of a pipeline schedule.
pub struct PipelineSteps {
    pub pipe: Pipeline,
    /// Per group: whether it holds item modules, micro-batch modules.
    holds: Vec<(bool, bool)>,
    vpp: Vec<(u32, u32)>,
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
        let holds: Vec<(bool, bool)> = pipe
            .groups
            .iter()
            .map(|ms| {
                let item = |&m: &usize| model.item_origin(ModuleId::new(m)).is_some();
                (ms.iter().any(item), !ms.iter().all(item))
            })
            .collect();
        let vpp: Vec<(u32, u32)> = pipe
            .groups
            .iter()
            .map(|ms| {
                let l = &plan.modules()[ms[0]].layout;
                (l.pp, l.vpp)
            })
            .collect();
        if let Some(g) = (0..holds.len()).find(|&g| holds[g].0 && vpp[g].1 > 1) {
            let name = &model.module(ModuleId::new(pipe.groups[g][0])).name;
            return Err(CostError::Unsupported(format!(
                "{name}: virtual pipeline chunks on an encoder or projector are not priced yet"
            )));
        }
        let m = plan.micro_batches();
        // An interleaved group's first stage forwards several micro-batches into its first
        // chunk before its first backward of micro-batch 0 there; upstream micro-batch groups
        // must have produced them by then.
        let lead = (0..holds.len())
            .filter(|&g| vpp[g].1 > 1)
            .map(|g| {
                let seq = interleaved(vpp[g].0, vpp[g].1, 0, m);
                let first_b = seq
                    .iter()
                    .position(|&x| x == (false, 0, 0))
                    .unwrap_or(seq.len());
                let fwd: std::collections::BTreeSet<u32> = seq[..first_b]
                    .iter()
                    .filter(|x| x.0 && x.2 == 0)
                    .map(|x| x.1)
                    .collect();
                fwd.len() as u32
            })
            .max()
            .unwrap_or(0);
        let lm_group = pipe.group_of[model.language_model().index()];
        let mut out = PipelineSteps {
            pipe,
            holds,
            vpp,
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
        let (pp, vpp) = self.vpp[g];
        if vpp > 1 {
            return interleaved(pp, vpp, s, m);
        }
        let w = self
            .pipe
            .depth
            .saturating_sub(self.pipe.offset[g] + s + 1)
            .max(self.lead.saturating_sub(1))
            .min(m);
        one_f_one_b(w, m)
            .into_iter()
            .map(|(f, j)| (f, j, 0))
            .collect()
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
        (1 + w0 / p.chunk).max(lag)
    }

    /// The steps of stage `s` of group `g`.
    pub fn steps(&self, g: usize, s: u32) -> Vec<Step> {
        let p = self.passes;
        match self.holds[g] {
            (true, false) => {
                let l0 = self.pipe.offset[self.lm_group];
                let x = self.pipe.offset[g] + s;
                let w = (self.item_warmup + l0.saturating_sub(x + 1)).min(p.count());
                one_f_one_b(w, p.count())
                    .into_iter()
                    .map(|(f, u)| Step::pass(f, u))
                    .collect()
            }
            (false, _) => self
                .micro_batch_slots(g, s)
                .into_iter()
                .map(|(f, j, c)| Step::mb(f, j, c))
                .collect(),
            (true, true) => {
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
