//! The closed form's combination: a plan's step time and peak memory from each module's own
//! closed-form terms. `estimate_quick` prices a whole plan through it, and the plan search
//! combines cached per-module terms through it, so both compute one formula.
//!
//! Per module (`ModuleQuick`): units per step (micro-batches, or encoder passes), each pipeline
//! stage's forward + backward time of one unit on its busiest replica, each stage's memory on
//! its busiest rank (static + activations alive), and its tail (exposed gradient sync plus
//! optimizer step of its slowest stage).
//!
//! - Upstream work: `U` = sum over the other modules of units x stage times, plus the boundary
//!   transfers of the step. Spread over the language model's M micro-batches it is `u = U / M`
//!   per micro-batch.
//! - **Colocated** (every module on every rank): every LM stage runs `t_s + u`; the step is
//!   the 1F1B formula `(M - 1) max_s + sum_s` (the bubble part divided by vpp), plus the tails
//!   of every module (they share the ranks, so they run one after another).
//! - **Nested** (the homogeneous arrangement: the others on the first stage's ranks): only
//!   stage 0 carries `u`; the tails add on stage 0, the slowest rank's tails count.
//! - **Disjoint** (the others on GPUs of their own, upstream): the others form one pipeline
//!   stage of `u` ahead of the LM's stages, and the first pass (k micro-batches of it) fills
//!   the pipeline: `(M - 1) max + k u + sum_s t_s` with the LM's bubble divided by vpp; tails
//!   are per group, the slower group's counts.
//! - Memory: colocated, a rank holds one LM stage and every other module; nested, stage 0's
//!   ranks hold the others too; disjoint, each group its own. Plus the framework reserve.

/// One module's closed-form terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModuleQuick {
    /// Units per step: micro-batches, or encoder passes for encoders and projectors.
    pub units: u32,
    /// Per pipeline stage: forward + backward of one unit on the busiest replica, s.
    pub stage_time: Vec<f64>,
    /// Per pipeline stage: bytes on the busiest rank (static + activations alive).
    pub stage_memory: Vec<f64>,
    /// Exposed gradient sync plus optimizer step of the slowest stage, s.
    pub tail: f64,
}

impl ModuleQuick {
    /// The module's work per step: units x its stage times, s.
    pub fn work(&self) -> f64 {
        f64::from(self.units) * self.stage_time.iter().sum::<f64>()
    }

    /// Its largest per-rank memory over stages, bytes.
    pub fn peak_memory(&self) -> f64 {
        self.stage_memory.iter().copied().fold(0.0, f64::max)
    }
}

/// How the other modules sit relative to the language model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Arrangement {
    Colocated,
    Nested,
    Disjoint,
}

/// What the other modules add, summed: work per step (with boundary transfers), memory per
/// rank, tails.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Others {
    pub work: f64,
    pub memory: f64,
    pub tail: f64,
}

impl Others {
    pub fn of(modules: &[&ModuleQuick], boundary_time: f64) -> Self {
        Others {
            work: modules.iter().map(|m| m.work()).sum::<f64>() + boundary_time,
            memory: modules.iter().map(|m| m.peak_memory()).sum(),
            tail: modules.iter().map(|m| m.tail).sum(),
        }
    }
}

/// The step time and peak memory per rank (without the reserve) of a plan: the language
/// model's terms (`lm`, with `vpp` chunks per stage), the others' sums, the arrangement and
/// the encoder chunk `k` (micro-batches per pass).
pub fn combine(arr: Arrangement, lm: &ModuleQuick, vpp: u32, k: u32, others: Others) -> (f64, f64) {
    let m = f64::from(lm.units.max(1));
    let u = others.work / m;
    let vpp = f64::from(vpp.max(1));
    let lm_peak = lm.peak_memory();
    match arr {
        Arrangement::Colocated | Arrangement::Nested => {
            let stages: Vec<f64> = lm
                .stage_time
                .iter()
                .enumerate()
                .map(|(s, &t)| t + if arr == Arrangement::Colocated || s == 0 { u } else { 0.0 })
                .collect();
            let slow = stages.iter().copied().fold(0.0, f64::max);
            let sum: f64 = stages.iter().sum();
            let time = (m - 1.0) * slow + slow + (sum - slow) / vpp + lm.tail + others.tail;
            let memory = match arr {
                Arrangement::Colocated => lm_peak + others.memory,
                _ => lm
                    .stage_memory
                    .iter()
                    .enumerate()
                    .map(|(s, &x)| x + if s == 0 { others.memory } else { 0.0 })
                    .fold(0.0, f64::max),
            };
            (time, memory)
        }
        Arrangement::Disjoint => {
            let slow = lm.stage_time.iter().copied().fold(u, f64::max);
            let lm_sum: f64 = lm.stage_time.iter().sum();
            let lm_slow = lm.stage_time.iter().copied().fold(0.0, f64::max);
            let fill = f64::from(k.max(1)) * u;
            let time = (m - 1.0) * slow + fill + lm_slow + (lm_sum - lm_slow) / vpp
                + lm.tail.max(others.tail);
            (time, lm_peak.max(others.memory))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lm(times: &[f64], units: u32) -> ModuleQuick {
        ModuleQuick {
            units,
            stage_time: times.to_vec(),
            stage_memory: vec![10.0; times.len()],
            tail: 0.0,
        }
    }

    #[test]
    fn a_single_stage_runs_its_micro_batches_back_to_back() {
        let (t, _) = combine(Arrangement::Colocated, &lm(&[2.0], 4), 1, 1, Others::default());
        assert_eq!(t, 8.0);
    }

    #[test]
    fn colocated_work_lands_on_every_stage_and_nested_work_on_the_first() {
        let others = Others {
            work: 8.0,
            memory: 5.0,
            tail: 0.0,
        };
        let l = lm(&[1.0, 1.0], 4);
        // u = 2 per micro-batch: colocated stages 3, 3 -> 3 x 3 + 6 = 15.
        let (tc, mc) = combine(Arrangement::Colocated, &l, 1, 1, others);
        assert_eq!((tc, mc), (15.0, 15.0));
        // Nested: stages 3, 1 -> 3 x 3 + 4 = 13; only stage 0 holds the others.
        let (tn, mn) = combine(Arrangement::Nested, &l, 1, 1, others);
        assert_eq!((tn, mn), (13.0, 15.0));
    }

    #[test]
    fn a_disjoint_upstream_stage_overlaps_and_its_first_pass_fills_the_pipeline() {
        let others = Others {
            work: 4.0,
            memory: 50.0,
            tail: 0.0,
        };
        // u = 1 per micro-batch, LM stage 2: 3 x 2 + k u + 2.
        let l = lm(&[2.0], 4);
        assert_eq!(combine(Arrangement::Disjoint, &l, 1, 1, others), (9.0, 50.0));
        assert_eq!(combine(Arrangement::Disjoint, &l, 1, 4, others).0, 12.0);
    }
}
