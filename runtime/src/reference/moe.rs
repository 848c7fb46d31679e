//! A sparse mixture of experts' routing and combination (Mixtral's rule), on the host in f64:
//! the router's softmax over every expert, the `top_k` most probable, their probabilities
//! renormalised to sum to 1; each row's output the weighted sum of its experts' outputs.
//! Where the experts run (and over which ranks) is `exec/moe.rs`'s.

use crate::tensor::Tensor;

/// One row's experts, in ascending index order, and their renormalised weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub experts: Vec<usize>,
    pub weights: Vec<f64>,
}

/// The route of one row from its router logits: softmax in f64 over all experts, the `top_k`
/// largest probabilities (on equal values the lower expert index first), divided by their sum.
pub fn route(logits: &[f32], top_k: usize) -> Route {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &l| m.max(f64::from(l)));
    let exps: Vec<f64> = logits.iter().map(|&l| (f64::from(l) - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    let probs: Vec<f64> = exps.iter().map(|e| e / total).collect();
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable: equal probabilities keep ascending indices.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut experts: Vec<usize> = order.into_iter().take(top_k).collect();
    experts.sort_unstable();
    let sum: f64 = experts.iter().map(|&e| probs[e]).sum();
    let weights = experts.iter().map(|&e| probs[e] / sum).collect();
    Route { experts, weights }
}

/// The backward of [`route`]: the gradient of the row's logits (`n_experts` values) from the
/// gradients of its weights. The renormalised weights are a softmax over the chosen logits
/// alone, so `dl_a = w_a (dw_a − Σ_b w_b dw_b)` for a chosen expert and 0 for the others.
pub fn route_backward(r: &Route, dweights: &[f64], n_experts: usize) -> Vec<f64> {
    let dot: f64 = r.weights.iter().zip(dweights).map(|(w, d)| w * d).sum();
    let mut out = vec![0.0; n_experts];
    for ((&e, &w), &d) in r.experts.iter().zip(&r.weights).zip(dweights) {
        out[e] = w * (d - dot);
    }
    out
}

/// `[n, cols]`: row `rows[a]` gets `weights[a] · x[a]` for every assignment `a` in order,
/// summed in f64 and rounded once.
pub fn combine(x: &Tensor, rows: &[usize], weights: &[f64], n: usize) -> Tensor {
    let c = x.cols();
    let mut acc = vec![0.0f64; n * c];
    for (a, (&r, &w)) in rows.iter().zip(weights).enumerate() {
        for (d, &v) in acc[r * c..(r + 1) * c].iter_mut().zip(x.row(a)) {
            *d += w * f64::from(v);
        }
    }
    Tensor::from_vec(&[n, c], acc.into_iter().map(|v| v as f32).collect()).expect("n x c")
}

/// The backward of [`combine`] from the output's gradient `dy`: each assignment's input
/// gradient `weights[a] · dy[rows[a]]` and its weight's gradient `dy[rows[a]] · x[a]` (f64).
pub fn combine_backward(
    x: &Tensor,
    rows: &[usize],
    weights: &[f64],
    dy: &Tensor,
) -> (Tensor, Vec<f64>) {
    let c = x.cols();
    let mut dx = Tensor::zeros(&[rows.len(), c]);
    let mut dw = Vec::with_capacity(rows.len());
    for (a, (&r, &w)) in rows.iter().zip(weights).enumerate() {
        let g = dy.row(r);
        for (d, &v) in dx.row_mut(a).iter_mut().zip(g) {
            *d = (w * f64::from(v)) as f32;
        }
        dw.push(
            g.iter()
                .zip(x.row(a))
                .map(|(&u, &v)| f64::from(u) * f64::from(v))
                .sum(),
        );
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_two_renormalised_in_expert_order() {
        let r = route(&[0.0, 2.0, -1.0, 1.0], 2);
        assert_eq!(r.experts, vec![1, 3]);
        let (a, b) = (2f64.exp(), 1f64.exp());
        assert!((r.weights[0] - a / (a + b)).abs() < 1e-15);
        assert!((r.weights.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        // Ties: the lower index first.
        assert_eq!(route(&[1.0, 1.0, 1.0], 2).experts, vec![0, 1]);
    }

    #[test]
    fn the_routing_gradient_matches_finite_differences() {
        let logits = [0.3f32, -0.2, 0.9, 0.1];
        let r = route(&logits, 2);
        let dw = [0.7, -1.3];
        let g = route_backward(&r, &dw, 4);
        let loss = |l: &[f32]| -> f64 {
            let r2 = route(l, 2);
            assert_eq!(r2.experts, r.experts);
            r2.weights.iter().zip(&dw).map(|(w, d)| w * d).sum()
        };
        for e in 0..4 {
            let (mut up, mut down) = (logits, logits);
            up[e] += 1e-3;
            down[e] -= 1e-3;
            let fd = (loss(&up) - loss(&down)) / (f64::from(up[e]) - f64::from(down[e]));
            assert!(
                (fd - g[e]).abs() < 1e-5,
                "expert {e}: {fd} against {}",
                g[e]
            );
        }
    }

    #[test]
    fn combine_and_its_backward() {
        let x = Tensor::from_vec(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let (rows, w) = ([1usize, 1, 0], [0.25, 0.75, 1.0]);
        let y = combine(&x, &rows, &w, 2);
        assert_eq!(y.data(), &[5.0, 6.0, 2.5, 3.5]);
        let dy = Tensor::from_vec(&[2, 2], vec![1.0, 0.0, 0.0, 2.0]).unwrap();
        let (dx, dw) = combine_backward(&x, &rows, &w, &dy);
        assert_eq!(dx.data(), &[0.0, 0.5, 0.0, 1.5, 1.0, 0.0]);
        assert_eq!(dw, vec![4.0, 8.0, 5.0]);
    }
}
