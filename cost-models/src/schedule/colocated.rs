//! The colocated kinds, every module on the language model's ranks: the language model (and
//! what follows it) runs 1F1B over its stages; upstream item modules (encoders, projectors)
//! run the forward of pass p just before the first stage's forward of the pass's first
//! micro-batch f, and its backward just after the first stage's backward of its last
//! micro-batch l. The three kinds are this one order with different pass sizes k
//! (`Plan::passes`): `colocated_sequential` k = 1 (and pp = 1), `colocated_three_phase`
//! k = M (one pass over the whole step), `colocated_chunked` k given by `encoder_chunk`.
//!
//! Every lane keeps that order of passes (so no lane waits on itself) and merges it with its
//! own stage's 1F1B at the same moments: a lane on stage s runs the pass's forward before its
//! own forward of micro-batch f - s and its backward after its own backward of l + s, which in
//! 1F1B's steady state run alongside the first stage's forward of f and backward of l. So a
//! pass's items are ready when the first stage needs them, whichever stage's ranks hold them,
//! and its gradients have arrived when its backward runs.

use hetpar_ir::shard::Passes;

use super::one_f_one_b::one_f_one_b;
use super::steps::{ends_pass, Step};

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
                Some(&(true, pass))
                    if passes.micro_batches_of(pass).start.saturating_sub(sl) <= forwards_done => {}
                Some(&(false, pass))
                    if backwards_done >= (passes.micro_batches_of(pass).end + sl).min(m) => {}
                _ => break,
            }
            let (f, pass) = upstream[u];
            out.push(Step::pass(f, pass));
            u += 1;
        }
        out.push(Step::mb(fwd, j, 0));
        if fwd {
            forwards_done += 1;
        } else {
            backwards_done += 1;
        }
    }
    out.extend(upstream[u..].iter().map(|&(f, pass)| Step::pass(f, pass)));
    out
}
