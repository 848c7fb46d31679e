//! The plan search's objective: a plan's step time and peak memory from each module's own
//! closed-form terms (`ModuleQuick`, read off `estimate_quick`), in a form that adds up over
//! modules, so that the search can price each module option once and combine them.
//!
//! Per module: units per step (micro-batches, or encoder passes for encoders and projectors),
//! per pipeline stage the time of its largest unit and of the whole step (each unit on its
//! busiest replica), the most any rank holds for it alone (`memory::module_memory`: static,
//! activations alive, its transient moment, margin, its NCCL buffers), and its tail (gradient sync plus optimizer step of its slowest stage).
//!
//! The formulas are `quick.rs`'s for the three arrangements the search produces:
//! - **Colocated** (every module on every rank): the other modules' step work `W` (plus the
//!   step's boundary transfers) spread over the language model's M micro-batches adds onto
//!   each of its stages; `(M - 1) x slowest + sum of stages`; the tails add up.
//! - **Nested** (the homogeneous arrangement: the others on the first stage's ranks): as
//!   colocated with `W` on stage 0 only.
//! - **Disjoint** (the others on GPUs of their own, upstream): the others are one pipeline
//!   stage (step `W`, one unit `W / P` for P passes) ahead of the language model's; with the
//!   stage whose step is longest as the bottleneck, `its step + (one unit of every other
//!   stage) / vpp`, where a bottleneck of passes of k micro-batches counts k units of every
//!   language-model stage (its last pass brackets them); the slower group's tail counts.
//! - **Memory**: each module's most per rank, summed over the modules a rank holds (colocated:
//!   one language-model stage and every other module; nested: stage 0 holds the others;
//!   disjoint: each group its own).
//!
//! Where every replica of a module gets equal work and every pass is equal, the time equals
//! `estimate_quick`'s; the memory never falls below it (a rank's transient moment is the largest
//! of its modules' there and its communicators are counted once, both summed here). `tests/combine.rs` checks both.

/// One module's closed-form terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModuleQuick {
    /// Units per step: micro-batches, or encoder passes for encoders and projectors.
    pub units: u32,
    /// Per pipeline stage: forward + backward of its largest unit on the busiest replica, s.
    pub stage_unit: Vec<f64>,
    /// Per pipeline stage: the whole step, each unit on its busiest replica, s.
    pub stage_step: Vec<f64>,
    /// Per pipeline stage: the most a rank holds for this module (`memory::module_memory`),
    /// without the CUDA context, bytes.
    pub stage_memory: Vec<f64>,
    /// Exposed gradient sync plus optimizer step of its slowest stage, s.
    pub tail: f64,
}

impl ModuleQuick {
    /// The module's work per step over its stages, s.
    pub fn work(&self) -> f64 {
        self.stage_step.iter().sum()
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

/// The step time and peak memory per rank (without the CUDA context) of a plan: the language
/// model's terms (`lm`, with `vpp` chunks per stage), the others' sums and their passes per
/// step, in an arrangement.
pub fn combine(
    arr: Arrangement,
    lm: &ModuleQuick,
    vpp: u32,
    passes: u32,
    others: Others,
) -> (f64, f64) {
    let m = f64::from(lm.units.max(1));
    let u = others.work / m;
    let lm_peak = lm.peak_memory();
    match arr {
        Arrangement::Colocated | Arrangement::Nested => {
            let slots: Vec<f64> = lm
                .stage_unit
                .iter()
                .enumerate()
                .map(|(s, &t)| {
                    t + if arr == Arrangement::Colocated || s == 0 {
                        u
                    } else {
                        0.0
                    }
                })
                .collect();
            let slow = slots.iter().copied().fold(0.0, f64::max);
            let time = (m - 1.0) * slow + slots.iter().sum::<f64>() + lm.tail + others.tail;
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
            // Every stage, the others' first.
            let up = PipeStage {
                step: others.work,
                unit: others.work / f64::from(passes.max(1)),
                passes: true,
            };
            let stages: Vec<PipeStage> = std::iter::once(up)
                .chain(
                    lm.stage_step
                        .iter()
                        .zip(&lm.stage_unit)
                        .map(|(&step, &unit)| PipeStage {
                            step,
                            unit,
                            passes: false,
                        }),
                )
                .collect();
            let per_pass = (m / f64::from(passes.max(1))).ceil();
            let time =
                pipeline_step(&stages, per_pass, f64::from(vpp.max(1))) + lm.tail.max(others.tail);
            (time, lm_peak.max(others.memory))
        }
    }
}

/// One stage of a pipeline, for `pipeline_step`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PipeStage {
    /// The whole step's work, s.
    pub step: f64,
    /// Its largest unit, s.
    pub unit: f64,
    /// Whether its units are encoder passes (else micro-batches).
    pub passes: bool,
}

/// A pipeline's step: the stage whose step is longest, plus one unit of every other stage
/// (over `vpp`, the language model's chunks per stage). A bottleneck running passes of
/// `per_pass` micro-batches brackets the micro-batches of its last pass on every micro-batch
/// stage (the pass's forward before them, its backward after), so those count `per_pass`
/// units. `quick.rs` and `combine` both use it.
pub fn pipeline_step(stages: &[PipeStage], per_pass: f64, vpp: f64) -> f64 {
    let Some(b) = (0..stages.len()).max_by(|&x, &y| stages[x].step.total_cmp(&stages[y].step))
    else {
        return 0.0;
    };
    let k = if stages[b].passes { per_pass } else { 1.0 };
    let rest: f64 = stages
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != b)
        .map(|(_, s)| if s.passes { s.unit } else { k * s.unit })
        .sum();
    stages[b].step + rest / vpp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lm(times: &[f64], units: u32) -> ModuleQuick {
        ModuleQuick {
            units,
            stage_unit: times.to_vec(),
            stage_step: times.iter().map(|t| t * f64::from(units)).collect(),
            stage_memory: vec![10.0; times.len()],
            tail: 0.0,
        }
    }

    #[test]
    fn a_single_stage_runs_its_micro_batches_back_to_back() {
        let (t, _) = combine(
            Arrangement::Colocated,
            &lm(&[2.0], 4),
            1,
            4,
            Others::default(),
        );
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
        let (tc, mc) = combine(Arrangement::Colocated, &l, 1, 4, others);
        assert_eq!((tc, mc), (15.0, 15.0));
        // Nested: stages 3, 1 -> 3 x 3 + 4 = 13; only stage 0 holds the others.
        let (tn, mn) = combine(Arrangement::Nested, &l, 1, 4, others);
        assert_eq!((tn, mn), (13.0, 15.0));
    }

    #[test]
    fn a_disjoint_pipeline_takes_its_bottleneck_step_and_one_unit_of_every_other_stage() {
        let others = Others {
            work: 4.0,
            memory: 50.0,
            tail: 0.0,
        };
        // LM step 8 is the bottleneck; the others' unit is 4 / 4 passes = 1.
        let l = lm(&[2.0], 4);
        assert_eq!(
            combine(Arrangement::Disjoint, &l, 1, 4, others),
            (9.0, 50.0)
        );
        // One pass of everything: its unit is the whole 4.
        assert_eq!(combine(Arrangement::Disjoint, &l, 1, 1, others).0, 12.0);
    }
}
