//! Each step's outcome as it completes: every rank's share of the loss and its step time,
//! gathered by every rank after the step, so that every rank knows the step's loss, the
//! reporting rank can print it at once, and all of them stop together at a step whose loss is
//! not a finite number.

use super::comm;
use crate::transport::Endpoint;
use crate::RuntimeError;

/// One completed step, as the whole run sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The step, from 1.
    pub step: usize,
    /// The steps the run takes.
    pub steps: usize,
    /// Its loss: the ranks' cross-entropy sums added in rank order, over the batch's targets.
    pub loss: f32,
    /// Its wall time, the slowest rank's, s.
    pub seconds: f64,
    /// Tokens in its batch (samples x sequence length).
    pub tokens: usize,
}

impl StepReport {
    pub fn tokens_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// `loss 3.46574  12.34 ms  20746 tokens/s`: the step's figures without its number.
    pub fn figures(&self) -> String {
        format!(
            "loss {:<8.5}  {:.2} ms  {:.0} tokens/s",
            self.loss,
            self.seconds * 1e3,
            self.tokens_per_second()
        )
    }

    /// `step 3/10  loss 3.46574  12.34 ms  20746 tokens/s`: the line printed as the step ends.
    pub fn line(&self) -> String {
        format!("step {}/{}  {}", self.step, self.steps, self.figures())
    }

    /// The error that stops the run when its loss is not a finite number.
    pub fn check(&self) -> Result<(), RuntimeError> {
        if self.loss.is_finite() {
            return Ok(());
        }
        Err(RuntimeError::NonFinite {
            step: self.step,
            what: "the loss".into(),
            value: self.loss.to_string(),
        })
    }
}

/// What the reporting rank does with each step's report (prints it; a progress bar).
pub type OnStep<'a> = dyn Fn(&StepReport) + Sync + 'a;

/// The tag of the per-step gathers (owner 63 is the report's; micro-batch 1 keeps it apart
/// from the final gather).
fn tag() -> crate::transport::Tag {
    comm::tag(comm::Kind::GradSync, 63, 1, 0, 255)
}

/// Two f32 words holding the bits of `x`.
fn words(x: f64) -> [f32; 2] {
    let b = x.to_bits();
    [f32::from_bits((b >> 32) as u32), f32::from_bits(b as u32)]
}

fn unwords(v: &[f32], i: usize) -> Result<f64, RuntimeError> {
    match (v.get(i), v.get(i + 1)) {
        (Some(hi), Some(lo)) => Ok(f64::from_bits(
            (u64::from(hi.to_bits()) << 32) | u64::from(lo.to_bits()),
        )),
        _ => Err(RuntimeError::InvalidProgram(
            "a rank's step report is short".into(),
        )),
    }
}

/// Step `step` (from 1) of `steps` just ended on this rank with cross-entropy sum `loss` in
/// `seconds`: every rank of `ranks` (the run's ranks in rank order) learns every rank's, and
/// all compute the same report: the loss summed in rank order over `targets`, the slowest
/// time. Exact: the f64 values travel as their bits.
#[allow(clippy::too_many_arguments)]
pub(super) fn settle(
    net: &mut Endpoint,
    ranks: &[u32],
    step: usize,
    steps: usize,
    loss: f64,
    seconds: f64,
    targets: usize,
    tokens: usize,
) -> Result<StepReport, RuntimeError> {
    let [a, b] = words(loss);
    let [c, d] = words(seconds);
    let all = net.all_gather(ranks, tag(), &[a, b, c, d])?;
    let (mut sum, mut slowest) = (0.0f64, 0.0f64);
    for v in &all {
        sum += unwords(v, 0)?;
        slowest = slowest.max(unwords(v, 2)?);
    }
    Ok(StepReport {
        step,
        steps,
        loss: (sum / targets as f64) as f32,
        seconds: slowest,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(loss: f32) -> StepReport {
        StepReport {
            step: 3,
            steps: 10,
            loss,
            seconds: 0.012,
            tokens: 256,
        }
    }

    #[test]
    fn a_line_holds_the_step_loss_time_and_throughput() {
        assert_eq!(
            report(3.5).line(),
            "step 3/10  loss 3.50000   12.00 ms  21333 tokens/s"
        );
    }

    #[test]
    fn a_loss_that_is_not_finite_is_an_error_naming_the_step() {
        assert!(report(1.0).check().is_ok());
        for (l, says) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
            let e = report(l).check().unwrap_err().to_string();
            assert!(
                e.starts_with("step 3: the loss is ") && e.contains(says),
                "{e}"
            );
        }
    }
}
