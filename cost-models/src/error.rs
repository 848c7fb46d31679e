//! The cost model's stated error per GPU model: the band `hetpar estimate` and `hetpar plan`
//! print next to every predicted figure, and the one the plan search's gain warning uses.
//! `docs/cost-model.md` ("Stated error") says where each figure comes from.

use hetpar_ir::gpu::GpuModel;

/// A prediction's stated error as fractions: the mean absolute relative error on rows held out
/// of the fit, where there are such rows; `basis` says what the figures rest on.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct StatedError {
    /// Of an iteration time, and so of every throughput figure derived from it.
    pub time: f64,
    /// Of a rank's memory.
    pub memory: f64,
    pub basis: &'static str,
}

/// The stated error of the built-in constants of `gpu` (a calibration file keeps them: its
/// own error is not known).
pub fn stated_error(gpu: GpuModel) -> StatedError {
    let (time, memory, basis) = match gpu {
        // Time: the larger of the held-out and the leave-one-out mean absolute error that
        // `hetpar calibrate` reports (docs/cost-model.md, "Calibration"). Memory: no
        // published measurement to hold out (Korthikanti's Figure 1 is a formula), so a
        // stated assumption.
        GpuModel::A10080gb => (
            0.036,
            0.10,
            "time: Korthikanti et al. 2022 Table 5, held-out rows; memory: assumed, not measured",
        ),
        GpuModel::H100Sxm80gb | GpuModel::H200141gb => (
            0.086,
            0.10,
            "time: Megatron-Core H100 table, leave-one-out; memory: assumed, not measured",
        ),
        GpuModel::B200 => (0.25, 0.15, "not fitted"),
        GpuModel::CpuThread => (0.25, 0.25, "profile"),
    };
    StatedError {
        time,
        memory,
        basis,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_gpu_model_states_a_fraction_below_one_with_a_basis() {
        for gpu in GpuModel::ALL {
            let e = stated_error(gpu);
            for f in [e.time, e.memory] {
                assert!(f > 0.0 && f < 1.0, "{gpu:?}: {f} is not a fraction");
            }
            assert!(!e.basis.is_empty(), "{gpu:?} states no basis");
        }
    }

    #[test]
    fn an_unfitted_generation_states_a_wider_error_than_the_fitted_ones() {
        let b200 = stated_error(GpuModel::B200);
        for gpu in [
            GpuModel::A10080gb,
            GpuModel::H100Sxm80gb,
            GpuModel::H200141gb,
        ] {
            let e = stated_error(gpu);
            assert!(e.time < b200.time && e.memory < b200.memory, "{gpu:?}");
        }
    }
}
