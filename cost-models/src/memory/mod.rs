//! Memory per rank, and `rank_memory`, the one sum of it that the simulation and the closed
//! form share:
//!
//! - static: weights, gradients and optimizer state (`statics.rs`);
//! - activations alive for backward (`activations.rs`); how many units are alive at once
//!   follows from the schedule (`simulate` along each lane's order; `schedule::steps` for the
//!   closed form);
//! - transient terms at the rank's largest moment (`transient.rs`);
//! - NCCL's buffers per communicator (`overhead.rs`), the allocator margin (a fraction of
//!   everything the caching allocator holds: static, activations, transient) and the CUDA
//!   context (`Constants`).

mod activations;
mod overhead;
mod statics;
mod transient;

pub use activations::{
    chunk_activations, layer_activations, recomputed_layers, AttentionKernel, LayerActivations,
};
pub use overhead::{add_communicators, nccl_bytes, Communicators};
pub use statics::{stage_parameters, static_memory, StageParameters, StaticMemory};
pub use transient::{stage_transient, Moment, Transient};

use hetpar_ir::plan::ModulePlan;
use hetpar_ir::{ModelGraph, ModuleId, Plan, Rank};

use crate::constants::Constants;
use crate::schedule::units::ModuleUnits;

/// Memory of one rank, bytes. The terms add up to `total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct MemoryBreakdown {
    pub weights: f64,
    pub gradients: f64,
    pub optimizer: f64,
    /// Peak activations alive for backward under the schedule.
    pub activations: f64,
    /// The moment of the transient terms below: the rank's largest.
    pub peak_moment: Moment,
    /// The layer a backward rebuilds by recompute.
    pub recompute: f64,
    /// The gathered input of a linear under sequence parallelism.
    pub sp_gather: f64,
    /// The language model's fp32 logits of one unit and their gradient.
    pub logits: f64,
    /// A boundary's receive and send buffers for one unit.
    pub boundary: f64,
    /// NCCL's buffers over the rank's communicators.
    pub nccl: f64,
    /// The caching allocator's fragmentation: `allocator_margin` x (static + activations +
    /// transient).
    pub allocator_margin: f64,
    /// The CUDA context.
    pub cuda_context: f64,
    pub total: f64,
}

impl MemoryBreakdown {
    /// Its transient terms as one moment.
    pub fn transient(&self) -> Transient {
        Transient {
            moment: self.peak_moment,
            recompute: self.recompute,
            sp_gather: self.sp_gather,
            logits: self.logits,
            boundary: self.boundary,
        }
    }

    /// What the caching allocator holds: static, activations and transient terms.
    pub fn allocated(&self) -> f64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.transient().total()
    }
}

/// The activations a rank holds at its peak.
#[derive(Clone, Debug, PartialEq)]
pub enum InFlight {
    /// Found by the simulation along the rank's order.
    Simulated(f64),
    /// The closed form's: per module stage on the rank, (activation bytes of its largest
    /// unit, units alive at once).
    Counted(Vec<(f64, f64)>),
}

/// What `rank_memory` and `module_memory` read besides the rank, its units and activations.
pub struct RankInputs<'a> {
    pub model: &'a ModelGraph,
    pub plan: &'a Plan,
    /// Per module and stage.
    pub statics: &'a [Vec<StaticMemory>],
    pub constants: Constants,
    pub kernel: AttentionKernel,
}

/// One rank's memory: the static memory of every module stage it holds, its activations in
/// flight, the largest transient moment of any of its modules (each at its replica's largest
/// unit; a rank runs one module's task at a time), NCCL's buffers of every communicator of its
/// modules, the allocator margin and the CUDA context. The simulation and the closed form both
/// call it, so they differ only in the activations. `units`: every module's.
pub fn rank_memory(
    inp: &RankInputs<'_>,
    units: &[ModuleUnits],
    rank: Rank,
    in_flight: &InFlight,
) -> MemoryBreakdown {
    let act_bytes = inp.model.data().precision.activation_bytes() as f64;
    let mut mem = MemoryBreakdown::default();
    let mut peak = Transient::default();
    let mut comms = Communicators::new();
    for (m, mp) in inp.plan.modules().iter().enumerate() {
        let Some(c) = mp.grid.coord_of(rank) else {
            continue;
        };
        let sm = &inp.statics[m][c.pp as usize];
        mem.weights += sm.weights;
        mem.gradients += sm.gradients;
        mem.optimizer += sm.optimizer;
        let module = inp.model.module(ModuleId::new(m));
        let w = units[m].peak(c.dp);
        let t = stage_transient(module, &mp.layout, c.pp, w, act_bytes, inp.kernel);
        peak = peak.max(t);
        add_communicators(mp, rank, &mut comms);
    }
    mem.activations = match in_flight {
        InFlight::Simulated(peak) => *peak,
        InFlight::Counted(terms) => terms.iter().map(|(unit, alive)| unit * alive).sum(),
    };
    mem.peak_moment = peak.moment;
    mem.recompute = peak.recompute;
    mem.sp_gather = peak.sp_gather;
    mem.logits = peak.logits;
    mem.boundary = peak.boundary;
    let c = &inp.constants;
    mem.nccl = nccl_bytes(&comms, c);
    mem.allocator_margin = c.allocator_margin * mem.allocated();
    mem.cuda_context = c.cuda_context_bytes;
    mem.total = mem.allocated() + mem.nccl + mem.allocator_margin + mem.cuda_context;
    mem
}

/// What module `m` alone needs on `rank`, without the CUDA context: its static memory,
/// `activations`, its largest transient moment (at `u`'s largest unit of the rank's replica),
/// with the allocator margin, and `nccl`, its own communicators' buffers (`module_nccl`).
/// Summed over a rank's modules it is at least `rank_memory`'s total less the CUDA context
/// (transient moments and communicators are each counted per module there), which keeps the
/// plan search's memory (`crate::combine`) from falling below the closed form's.
pub fn module_memory(
    inp: &RankInputs<'_>,
    m: usize,
    u: &ModuleUnits,
    rank: Rank,
    activations: f64,
    nccl: f64,
) -> f64 {
    let mp = &inp.plan.modules()[m];
    let Some(c) = mp.grid.coord_of(rank) else {
        return 0.0;
    };
    let act_bytes = inp.model.data().precision.activation_bytes() as f64;
    let module = inp.model.module(ModuleId::new(m));
    let t = stage_transient(
        module,
        &mp.layout,
        c.pp,
        u.peak(c.dp),
        act_bytes,
        inp.kernel,
    );
    let allocated = inp.statics[m][c.pp as usize].total() + activations + t.total();
    allocated * (1.0 + inp.constants.allocator_margin) + nccl
}

/// NCCL's buffers of the communicators module plan `mp` alone puts `rank` in. Every rank of a
/// pipeline stage has the same (the groups differ only in their members), so callers may
/// price one rank per stage.
pub fn module_nccl(mp: &ModulePlan, rank: Rank, c: &Constants) -> f64 {
    let mut comms = Communicators::new();
    add_communicators(mp, rank, &mut comms);
    nccl_bytes(&comms, c)
}
