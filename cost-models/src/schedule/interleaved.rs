//! `pipeline_interleaved`: Megatron's interleaved 1F1B. Each of the `p` stages holds `v`
//! virtual model chunks (chunk c of stage s is global chunk `c p + s`); micro-batches go
//! through the chunks in groups of `p`, so the bubble shrinks by `v` at the cost of more
//! micro-batches in flight and more pipeline transfers.

use std::collections::BTreeSet;

/// Megatron's interleaved 1F1B for stage `s` of `p` with `v` chunks and `m` micro-batches:
/// (forward?, micro-batch, chunk).
pub fn interleaved(p: u32, v: u32, s: u32, m: u32) -> Vec<(bool, u32, u32)> {
    let total = v * m;
    let fwd = |k: u32| ((k / (p * v)) * p + k % p, (k / p) % v);
    let bwd = |k: u32| ((k / (p * v)) * p + k % p, v - 1 - (k / p) % v);
    let warm = ((p - s - 1) * 2 + (v - 1) * p).min(total);
    let mut out = Vec::with_capacity(2 * total as usize);
    for k in 0..warm {
        let (j, c) = fwd(k);
        out.push((true, j, c));
    }
    for i in 0..total - warm {
        let (j, c) = fwd(warm + i);
        out.push((true, j, c));
        let (j, c) = bwd(i);
        out.push((false, j, c));
    }
    for k in total - warm..total {
        let (j, c) = bwd(k);
        out.push((false, j, c));
    }
    out
}

/// Micro-batches the first stage forwards into its first chunk before its first backward of
/// micro-batch 0 there: upstream micro-batch groups must have produced them by then.
pub fn first_chunk_lead(p: u32, v: u32, m: u32) -> u32 {
    let seq = interleaved(p, v, 0, m);
    let first_b = seq
        .iter()
        .position(|&x| x == (false, 0, 0))
        .unwrap_or(seq.len());
    let fwd: BTreeSet<u32> = seq[..first_b]
        .iter()
        .filter(|x| x.0 && x.2 == 0)
        .map(|x| x.1)
        .collect();
    fwd.len() as u32
}
