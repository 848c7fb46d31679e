//! What `hetpar run` and `hetpar launch` print as each step ends, on stderr (stdout keeps the
//! final report): a progress bar with every step's line above it on a terminal, plain lines
//! otherwise (a pipe, a file, CI).

use std::io::IsTerminal as _;

use hetpar_runtime::exec::StepReport;

/// The progress of one run.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    /// A bar of `steps` if stderr is a terminal, else plain lines.
    pub fn new(steps: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(steps as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps, {elapsed} (eta {eta})",
                )
                .expect("a valid template"),
            );
            b
        });
        Progress { bar }
    }

    /// Step `r` has ended: its line (`step 3/10  loss 3.46574  12.34 ms  20746 tokens/s`).
    pub fn step(&self, r: &StepReport) {
        match &self.bar {
            Some(b) => {
                b.println(r.line());
                b.set_position(r.step as u64);
            }
            None => eprintln!("{}", r.line()),
        }
    }

    /// The run is over, well or not: the bar is cleared (its lines stay).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
