//! Uneven pipeline stages: the split of a module's layers over its stages that the cost model
//! balances. A stage's time is modelled as `n_s t + e_s`: `t` per layer, `e_s` what the stage
//! carries besides its layers (the embedding on the first, the head and loss on the last, the
//! encoders nested on the first stage of a homogeneous plan). Both come from two closed-form
//! pricings of the module (`per_layer_model`).

/// Splits `layers` over `extras.len()` stages (at least one layer each) to minimize the
/// slowest stage `n_s per_layer + extras[s]`; ties give the later stage the extra layer (later
/// stages hold fewer micro-batches in flight).
/// `None` when there are fewer layers than stages.
pub fn balance(layers: u32, extras: &[f64], per_layer: f64) -> Option<Vec<u32>> {
    let pp = extras.len();
    if pp == 0 || (layers as usize) < pp {
        return None;
    }
    if !(per_layer.is_finite() && per_layer > 0.0) || extras.iter().any(|e| !e.is_finite()) {
        return Some(even(layers, pp as u32));
    }
    // Water-filling: one layer each, then each further layer to the stage that stays fastest.
    let mut n = vec![1u32; pp];
    for _ in pp as u32..layers {
        let mut best = 0;
        let mut best_t = f64::INFINITY;
        for (s, (&k, &e)) in n.iter().zip(extras).enumerate() {
            let t = f64::from(k + 1) * per_layer + e;
            if t <= best_t + 1e-15 {
                best = s;
                best_t = t;
            }
        }
        n[best] += 1;
    }
    Some(n)
}

/// The even split, the last stages taking the remainder.
pub fn even(layers: u32, pp: u32) -> Vec<u32> {
    let pp = pp.max(1);
    (0..pp)
        .map(|s| layers / pp + u32::from(s >= pp - layers % pp))
        .collect()
}

/// Per-chunk layers (`c pp + s` order) from per-stage layers: each stage's layers split
/// evenly over its `vpp` chunks, later chunks taking the remainder. `None` when a stage has
/// fewer layers than chunks.
pub fn chunked(stages: &[u32], vpp: u32) -> Option<Vec<u32>> {
    let pp = stages.len();
    let vpp = vpp.max(1);
    if stages.iter().any(|&n| n < vpp) {
        return None;
    }
    let mut out = vec![0u32; pp * vpp as usize];
    for (s, &n) in stages.iter().enumerate() {
        for (c, k) in even(n, vpp).into_iter().enumerate() {
            out[c * pp + s] = k;
        }
    }
    Some(out)
}

/// Per-layer time and per-stage extras from two pricings of the same layout: stage times
/// `a` under split `na` and `b` under split `nb`, which differ on some stage.
pub fn per_layer_model(a: &[f64], na: &[u32], b: &[f64], nb: &[u32]) -> Option<(f64, Vec<f64>)> {
    let s = (0..a.len()).find(|&s| na.get(s) != nb.get(s))?;
    let dn = f64::from(na[s]) - f64::from(nb[s]);
    let t = (a[s] - b[s]) / dn;
    if !(t.is_finite() && t > 0.0) {
        return None;
    }
    let extras = a
        .iter()
        .zip(na)
        .map(|(&x, &n)| (x - f64::from(n) * t).max(0.0))
        .collect();
    Some((t, extras))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heavy_last_stage_gives_up_layers_to_the_others() {
        // 4 layers of 1 s; the last stage carries a 2 s head.
        let n = balance(8, &[0.0, 0.0, 2.0], 1.0).unwrap();
        assert_eq!(n.iter().sum::<u32>(), 8);
        assert_eq!(n, vec![3, 3, 2], "the slowest stage is 4 s, not 5 s");
    }

    #[test]
    fn without_extras_the_split_is_even() {
        assert_eq!(balance(10, &[0.0; 4], 1.0).unwrap(), even(10, 4));
        assert_eq!(even(10, 4), vec![2, 2, 3, 3]);
        assert!(balance(3, &[0.0; 4], 1.0).is_none());
    }

    #[test]
    fn chunks_are_ordered_chunk_major() {
        assert_eq!(chunked(&[3, 2], 2).unwrap(), vec![1, 1, 2, 1]);
        assert!(chunked(&[1, 2], 2).is_none());
    }

    #[test]
    fn two_pricings_recover_the_per_layer_time_and_the_extras() {
        // Truth: t = 0.5, extras [0.2, 0, 1.0].
        let f = |n: &[u32]| -> Vec<f64> {
            let e = [0.2, 0.0, 1.0];
            n.iter()
                .zip(e)
                .map(|(&k, e)| f64::from(k) * 0.5 + e)
                .collect()
        };
        let (na, nb) = ([4, 4, 4], [5, 4, 3]);
        let (t, e) = per_layer_model(&f(&na), &na, &f(&nb), &nb).unwrap();
        assert!((t - 0.5).abs() < 1e-12);
        assert!((e[2] - 1.0).abs() < 1e-12 && (e[0] - 0.2).abs() < 1e-12);
    }
}
