//! A projector's tensor-parallel communication: a column-parallel first linear and a
//! row-parallel last one. Forward the input is gathered under sequence parallelism and the
//! output reduced (reduce-scattered under SP); backward the output gradient is gathered under
//! SP before the last linear's input-gradient product, and the input gradient reduced under
//! the first linear's weight-gradient product. A boundary program may take over the output's
//! collectives (`crate::fold`): those are priced by `output_collectives` alone.

use hetpar_ir::model::MlpSpec;

use super::tp::{TpCollectives, TpMode};
use super::{ModuleCompute, Work};

impl ModuleCompute<'_> {
    /// The output's all-reduce, reduce-scatter and all-gather over the tp group for a unit of
    /// work `w` (its rows are the projector's output rows, the boundary's); zero at tp 1.
    pub fn output_collectives(&self, w: Work) -> TpCollectives {
        let width = match &self.module.body {
            hetpar_ir::model::Body::Projector(mlp) => mlp.widths.last().copied().unwrap_or(0),
            _ => 0,
        };
        if self.layout.tp <= 1 || w.rows <= 0.0 {
            return TpCollectives::default();
        }
        self.tp_collectives(w.rows * f64::from(width))
    }

    /// The output collectives a fold takes over, (forward, backward): the reduction, and
    /// under sequence parallelism the gradient's gather.
    pub fn foldable(&self, w: Work) -> (f64, f64) {
        let c = self.output_collectives(w);
        if self.layout.sequence_parallel {
            (c.reduce_scatter, c.all_gather)
        } else {
            (c.all_reduce, 0.0)
        }
    }

    /// Exposed (forward, backward) communication of a projector's unit, less what its fold
    /// leaves to the boundary.
    pub(super) fn projector_comm(&self, mlp: &MlpSpec, w: Work, first_product: f64) -> (f64, f64) {
        if self.layout.tp <= 1 || w.rows <= 0.0 {
            return (0.0, 0.0);
        }
        let input =
            self.tp_collectives(w.rows * f64::from(mlp.widths.first().copied().unwrap_or(0)));
        let (out_f, out_b) = self.foldable(w);
        // What a fold takes is not added at all (not added then taken away).
        let out_f = if self.fold.forward { 0.0 } else { out_f };
        let out_b = if self.fold.backward { 0.0 } else { out_b };
        if self.layout.sequence_parallel {
            (
                input.all_gather + out_f,
                out_b + TpMode::hidden(input.reduce_scatter, first_product),
            )
        } else {
            (out_f, TpMode::hidden(input.all_reduce, first_product))
        }
    }
}
