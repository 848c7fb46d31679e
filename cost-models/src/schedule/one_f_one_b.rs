//! `pipeline_1f1b`: one forward, one backward. A stage runs `w` warm-up forwards, then
//! alternates a forward with the backward of its oldest micro-batch, then drains the
//! backwards. Stage x of a pipeline of depth D takes `D - x - 1` warm-ups, so it holds at most
//! `D - x` micro-batches. Item groups (encoders, projectors) run the same order over their
//! passes (`pipeline`).

/// The 1F1B sequence of `m` units with `w` warm-up forwards: (forward?, unit).
pub fn one_f_one_b(w: u32, m: u32) -> Vec<(bool, u32)> {
    let mut v = Vec::with_capacity(2 * m as usize);
    for j in 0..w {
        v.push((true, j));
    }
    for i in 0..m - w {
        v.push((true, w + i));
        v.push((false, i));
    }
    for j in m - w..m {
        v.push((false, j));
    }
    v
}

/// Warm-up forwards of pipeline stage `x` of `depth` over `m` micro-batches: `depth - x - 1`,
/// at least `lead - 1` (an interleaved group downstream forwards `lead` micro-batches into
/// its first chunk before its first backward), at most `m`.
pub fn warmup(depth: u32, x: u32, lead: u32, m: u32) -> u32 {
    depth
        .saturating_sub(x + 1)
        .max(lead.saturating_sub(1))
        .min(m)
}

/// Stage `x` of a 1F1B pipeline of `depth` over `m` micro-batches: (forward?, micro-batch,
/// chunk), the chunk always 0.
pub fn stage_order(depth: u32, x: u32, lead: u32, m: u32) -> Vec<(bool, u32, u32)> {
    one_f_one_b(warmup(depth, x, lead, m), m)
        .into_iter()
        .map(|(f, j)| (f, j, 0))
        .collect()
}
