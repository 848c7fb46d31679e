//! A floor under a micro-batch module's closed-form work: its per-micro-batch stage times
//! (`combine::ModuleQuick::stage_unit`) summed over its pipeline stages, in any placement and
//! any split of its layers. Every layer's work with communication free, in one chunk: the
//! closed form's per-stage times add communication (never negative: exposed parts are
//! clamped at zero), pipeline transfers and per-chunk work on top. The plan search orders
//! and prunes layouts by it before it builds and prices their plans.

use hetpar_ir::layout::{Layout, LayoutSpec};
use hetpar_ir::{Cluster, ModelGraph, ModuleId};

use crate::collective::Link;
use crate::compute::{Hardware, ModuleCompute, Work};
use crate::estimate::Options;
use crate::Constants;

/// A link that moves any data in no time.
fn free() -> Link {
    Link {
        bandwidth: f64::INFINITY,
        latency: 0.0,
        spans_nodes: false,
    }
}

/// The floor of module `m`'s per-micro-batch work (forward and backward, every stage) at
/// `spec`, whatever its pipeline depth, interleaving, layer split and ranks, s.
pub fn unit_floor(
    model: &ModelGraph,
    cluster: &Cluster,
    m: ModuleId,
    spec: &LayoutSpec,
    opts: &Options,
) -> f64 {
    let module = model.module(m);
    let c = opts
        .constants
        .unwrap_or_else(|| Constants::for_gpu(cluster.gpu_model));
    let layout = Layout {
        tp: spec.tp,
        cp: spec.cp,
        pp: 1,
        dp: spec.dp.unwrap_or(1),
        ep: spec.ep,
        vpp: 1,
        sequence_parallel: spec.sequence_parallel,
        tp_comm_overlap: spec.tp_comm_overlap,
        cp_comm: spec.cp_comm,
        recompute: spec.recompute.clone(),
        distributed_optimizer: spec.distributed_optimizer,
        micro_batch_size: spec.micro_batch_size,
        chunk_layers: vec![module.layer_count()],
        micro_batches: 1,
    };
    let compute = ModuleCompute {
        module,
        layout: &layout,
        hw: Hardware::new(cluster, c, free(), free(), free()),
        act_bytes: model.data().precision.activation_bytes() as f64,
        kernel: opts.attention,
        fold: crate::fold::Fold::NONE,
    };
    let mbs = f64::from(spec.micro_batch_size);
    let w = Work {
        rows: model.mean_rows_per_sample(m) * mbs,
        pairs: model.mean_pairs_per_sample(m) * mbs,
    };
    let t = compute.chunk(0, w);
    t.forward.total() + t.backward.total()
}
