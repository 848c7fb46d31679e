//! Tensor-parallel communication of one layer, and how much of it stays exposed.
//!
//! Megatron's linears come in pairs: a column-parallel linear (QKV, FC1) needs the whole input
//! (an all-gather of it under sequence parallelism), a row-parallel one (output projection,
//! FC2) reduces its partial output (an all-reduce, or a reduce-scatter under SP). Backward
//! mirrors that. Megatron overlaps two backward collectives with products even without
//! `--tp-comm-overlap`: a column-parallel linear's input-gradient reduction runs under its
//! weight-gradient product, and under SP the re-gather of its input (kept sharded, needed
//! whole for the weight gradient) runs under the input-gradient product.
//! `tp_comm_overlap` (Megatron's userbuffer overlap) also pipelines the remaining gathers and
//! reduce-scatters with the product they feed or follow, in `tp` steps of which the first
//! (or last) cannot hide.

/// One collective of the layer's full activation (`rows / cp x hidden` elements) over tp.
#[derive(Clone, Copy, Debug, Default)]
pub struct TpCollectives {
    pub all_reduce: f64,
    pub all_gather: f64,
    pub reduce_scatter: f64,
}

/// Forward times of one pair of linears: the column-parallel and the row-parallel product.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinearPair {
    pub column: f64,
    pub row: f64,
}

/// How a layer's TP collectives run.
#[derive(Clone, Copy, Debug)]
pub struct TpMode {
    pub tp: u32,
    pub sequence_parallel: bool,
    pub overlap: bool,
}

impl TpMode {
    /// What is left of `comm` run under a product of `gemm` seconds.
    pub(crate) fn hidden(comm: f64, gemm: f64) -> f64 {
        (comm - gemm).max(0.0)
    }

    /// A collective the userbuffer overlap pipelines with its product (when on).
    fn pipelined(&self, comm: f64, gemm: f64) -> f64 {
        if self.overlap && self.tp > 1 {
            let steps = f64::from(self.tp);
            (comm - gemm * (steps - 1.0) / steps).max(0.0)
        } else {
            comm
        }
    }

    /// Exposed (forward, backward) TP communication of one pair of linears.
    pub fn pair(&self, c: &TpCollectives, p: LinearPair) -> (f64, f64) {
        if self.tp <= 1 {
            return (0.0, 0.0);
        }
        if self.sequence_parallel {
            let fwd =
                self.pipelined(c.all_gather, p.column) + self.pipelined(c.reduce_scatter, p.row);
            // Row-parallel backward gathers the output gradient before its input-gradient
            // product; column-parallel re-gathers its input under the input-gradient product
            // and reduce-scatters the input gradient under the weight-gradient product.
            let bwd = self.pipelined(c.all_gather, p.row)
                + Self::hidden(c.all_gather, p.column)
                + Self::hidden(c.reduce_scatter, p.column);
            (fwd, bwd)
        } else {
            (c.all_reduce, Self::hidden(c.all_reduce, p.column))
        }
    }

    /// Exposed (forward, backward) communication of the vocabulary-parallel input embedding:
    /// its partial rows are reduced forward (scattered under SP); under SP the gradient is
    /// gathered back.
    pub fn embedding(&self, c: &TpCollectives) -> (f64, f64) {
        if self.tp <= 1 {
            (0.0, 0.0)
        } else if self.sequence_parallel {
            (c.reduce_scatter, c.all_gather)
        } else {
            (c.all_reduce, 0.0)
        }
    }

    /// Exposed (forward, backward) communication of the vocabulary-parallel output layer, a
    /// column-parallel linear of forward time `head`: the input gathered under SP, the input
    /// gradient reduced under the weight-gradient product.
    pub fn output_layer(&self, c: &TpCollectives, head: f64) -> (f64, f64) {
        if self.tp <= 1 {
            (0.0, 0.0)
        } else if self.sequence_parallel {
            (
                self.pipelined(c.all_gather, head),
                Self::hidden(c.reduce_scatter, head),
            )
        } else {
            (0.0, Self::hidden(c.all_reduce, head))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: TpCollectives = TpCollectives {
        all_reduce: 2.0,
        all_gather: 1.0,
        reduce_scatter: 1.0,
    };

    fn mode(sp: bool, overlap: bool) -> TpMode {
        TpMode {
            tp: 4,
            sequence_parallel: sp,
            overlap,
        }
    }

    #[test]
    fn without_sp_backward_hides_the_input_gradient_all_reduce_under_the_weight_gradient() {
        let slow = LinearPair {
            column: 0.5,
            row: 0.5,
        };
        assert_eq!(mode(false, false).pair(&C, slow), (2.0, 1.5));
        let fast = LinearPair {
            column: 3.0,
            row: 3.0,
        };
        assert_eq!(mode(false, false).pair(&C, fast), (2.0, 0.0));
    }

    #[test]
    fn sp_backward_pays_the_row_gather_and_what_products_cannot_hide() {
        let p = LinearPair {
            column: 0.25,
            row: 0.25,
        };
        // Forward: a gather and a scatter; backward: the row gather plus the re-gather and
        // the scatter less the column products they run under.
        assert_eq!(mode(true, false).pair(&C, p), (2.0, 1.0 + 0.75 + 0.75));
    }

    #[test]
    fn tp_overlap_hides_all_but_one_step_of_a_long_product() {
        let p = LinearPair {
            column: 4.0,
            row: 4.0,
        };
        let (f, b) = mode(true, true).pair(&C, p);
        assert_eq!((f, b), (0.0, 0.0));
        let short = LinearPair {
            column: 0.8,
            row: 0.8,
        };
        let (f, _) = mode(true, true).pair(&C, short);
        assert!((f - 2.0 * (1.0 - 0.6)).abs() < 1e-12, "{f}");
    }
}
