//! The activations of [`Act`] and the gated FFN's product `act(gate) · up`, each with its
//! backward; elementwise, in f64, rounded once.

use super::arch::Act;
use crate::tensor::Tensor;

/// `√(2/π)` and the cubic coefficient of GELU's tanh form.
const GELU_C: f64 = 0.797_884_560_802_865_4;
const GELU_A: f64 = 0.044_715;
/// `1/√2` and `1/√(2π)`, for the exact GELU.
const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The error function (Abramowitz–Stegun 7.1.26 is too coarse here): by its Taylor series
/// near 0 and its continued fraction beyond, to about 1e-15.
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.5 {
        // Σ (-1)^n x^(2n+1) / (n! (2n+1)), times 2/√π.
        let (mut term, mut sum, x2) = (a, a, a * a);
        for n in 1..80 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...)))).
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / (std::f64::consts::PI.sqrt() * f)
    };
    r.copysign(x)
}

/// `act(x)` and `act'(x)`.
fn value_and_slope(act: Act, x: f64) -> (f64, f64) {
    match act {
        Act::Gelu => {
            let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * (-0.5 * x * x).exp();
            (x * cdf, cdf + x * pdf)
        }
        Act::GeluTanh => {
            let t = (GELU_C * (x + GELU_A * x * x * x)).tanh();
            let slope =
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x);
            (0.5 * x * (1.0 + t), slope)
        }
        Act::QuickGelu => {
            let s = sigmoid(1.702 * x);
            (x * s, s + 1.702 * x * s * (1.0 - s))
        }
        Act::Silu => {
            let s = sigmoid(x);
            (x * s, s + x * s * (1.0 - s))
        }
    }
}

/// `act(x)`, elementwise.
pub fn activation(x: &Tensor, act: Act) -> Tensor {
    let mut y = x.clone();
    for v in y.data_mut() {
        *v = value_and_slope(act, f64::from(*v)).0 as f32;
    }
    y
}

/// `dy · act'(x)`.
pub fn activation_backward(x: &Tensor, dy: &Tensor, act: Act) -> Tensor {
    assert_eq!(x.shape(), dy.shape(), "activation_backward: shapes");
    let mut dx = dy.clone();
    for (d, xv) in dx.data_mut().iter_mut().zip(x.data()) {
        *d = (f64::from(*d) * value_and_slope(act, f64::from(*xv)).1) as f32;
    }
    dx
}

/// `act(gate) · up`, elementwise.
pub fn gated(gate: &Tensor, up: &Tensor, act: Act) -> Tensor {
    assert_eq!(gate.shape(), up.shape(), "gated: shapes");
    let mut y = up.clone();
    for (v, g) in y.data_mut().iter_mut().zip(gate.data()) {
        *v = (value_and_slope(act, f64::from(*g)).0 * f64::from(*v)) as f32;
    }
    y
}

/// `(dgate, dup)` of [`gated`]: `dy · up · act'(gate)` and `dy · act(gate)`.
pub fn gated_backward(gate: &Tensor, up: &Tensor, dy: &Tensor, act: Act) -> (Tensor, Tensor) {
    let mut dgate = dy.clone();
    let mut dup = dy.clone();
    let it = dgate.data_mut().iter_mut().zip(dup.data_mut());
    for ((dg, du), (g, u)) in it.zip(gate.data().iter().zip(up.data())) {
        let (a, slope) = value_and_slope(act, f64::from(*g));
        let d = f64::from(*dg);
        *dg = (d * f64::from(*u) * slope) as f32;
        *du = (d * a) as f32;
    }
    (dgate, dup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // erf(0.5), erf(1), erf(2), erf(3) to 15 digits.
        for (x, want) in [
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
        ] {
            assert!((erf(x) - want).abs() < 1e-14, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + want).abs() < 1e-14);
        }
    }

    #[test]
    fn slopes_match_central_differences() {
        for act in [Act::Gelu, Act::GeluTanh, Act::QuickGelu, Act::Silu] {
            for x in [-3.0, -0.7, 0.0, 0.4, 2.2] {
                let h = 1e-6;
                let num =
                    (value_and_slope(act, x + h).0 - value_and_slope(act, x - h).0) / (2.0 * h);
                let got = value_and_slope(act, x).1;
                assert!((num - got).abs() < 1e-7, "{act:?} at {x}: {got} vs {num}");
            }
        }
    }
}
