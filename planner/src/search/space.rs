//! The search space of one module: the layouts it may take on a given number of GPUs. Exact
//! filters only (each candidate passes the verifier's layout rules); what is left out is
//! stated on each function and in `docs/planner.md`.

use hetpar_ir::layout::{CpComm, LayoutSpec, RecomputePolicy, RecomputeSpec};
use hetpar_ir::model::{Body, ModelGraph, Module};

/// What a module may use.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// GPUs per node: tensor parallelism stays inside a node.
    pub gpus_per_node: u32,
    /// Largest pipeline depth (1: no pipeline).
    pub max_pp: u32,
    /// Largest virtual pipeline chunks per stage (1: no interleaving).
    pub max_vpp: u32,
    /// Whether context parallelism is allowed.
    pub allow_cp: bool,
    /// Largest micro-batch size tried.
    pub max_mbs: u32,
}

fn divides(a: u32, b: u32) -> bool {
    a != 0 && b.is_multiple_of(a)
}

fn powers_of_two(max: u32) -> impl Iterator<Item = u32> {
    (0..16).map(|i| 1u32 << i).take_while(move |&x| x <= max)
}

fn recomputes(module: &Module) -> Vec<RecomputePolicy> {
    match module.body {
        Body::Projector(_) => vec![RecomputePolicy::None],
        _ => vec![
            RecomputePolicy::None,
            RecomputePolicy::Selective,
            RecomputePolicy::Full,
        ],
    }
}

fn spec(tp: u32, cp: u32, pp: u32, dp: u32, mbs: u32, policy: RecomputePolicy) -> LayoutSpec {
    LayoutSpec {
        tp,
        cp,
        pp,
        dp: Some(dp),
        ep: 1,
        vpp: 1,
        sequence_parallel: tp > 1,
        tp_comm_overlap: false,
        cp_comm: CpComm::default(),
        recompute: RecomputeSpec {
            policy,
            layers: None,
        },
        distributed_optimizer: dp * cp > 1,
        micro_batch_size: mbs,
        stage_layers: None,
    }
}

/// Tensor-parallel degrees of a module on `gpus` GPUs: powers of two within a node that divide
/// what the module splits.
pub fn tps(module: &Module, gpus: u32, gpus_per_node: u32) -> Vec<u32> {
    powers_of_two(gpus_per_node.min(gpus))
        .filter(|&tp| tp_ok(module, tp))
        .collect()
}

/// Layouts of a module that runs in encoder passes (an encoder or a projector) on `gpus` GPUs:
/// every tp, cp for an encoder whose every item splits into 2 cp chunks, any dp (items are
/// dealt, so dp need not divide anything), every recompute policy. Unpipelined: an encoder
/// shares its ranks with its projector, and both run whole per pass.
pub fn item_layouts(model: &ModelGraph, module: &Module, gpus: u32, b: Bounds) -> Vec<LayoutSpec> {
    let mut out = Vec::new();
    let items = model.items(module.id);
    let cps: Vec<u32> = match items {
        Some(it) if b.allow_cp => powers_of_two(8)
            // cp 1 always; more where every item splits into 2 cp chunks.
            .filter(|&cp| {
                cp == 1
                    || it
                        .distinct_item_tokens()
                        .iter()
                        .all(|&t| divides(2 * cp, t))
            })
            .collect(),
        _ => vec![1],
    };
    for tp in tps(module, gpus, b.gpus_per_node) {
        for &cp in &cps {
            if !divides(tp * cp, gpus) {
                continue;
            }
            let dp = gpus / (tp * cp);
            for policy in recomputes(module) {
                out.push(spec(tp, cp, 1, dp, 1, policy));
            }
        }
    }
    out
}

/// Expert-parallel degrees of a layout: 1, and for a mixture of experts every power of two
/// dividing the experts and dp x cp.
fn eps(module: &Module, dp: u32, cp: u32) -> Vec<u32> {
    let experts = module
        .transformer()
        .and_then(|t| t.moe.as_ref())
        .map_or(1, |m| m.experts);
    powers_of_two(experts)
        .filter(|&ep| divides(ep, experts) && divides(ep, dp * cp))
        .collect()
}

/// Layouts of the language model (or a module after it) with exactly `dp` replicas: every tp,
/// cp (2 cp dividing the sequence), pp up to the bound and the layers (uneven stages are set
/// by the caller), micro-batch sizes with dp x mbs dividing the global batch, vpp where the
/// interleaved order allows it (micro-batches a multiple of pp, 2 layers per chunk at least),
/// ep for a mixture of experts, every recompute policy. The GPU count is tp cp pp dp.
pub fn lm_layouts(model: &ModelGraph, module: &Module, dp: u32, b: Bounds) -> Vec<LayoutSpec> {
    let batch = model.data().global_batch;
    let seq = model.data().sequence_length;
    let layers = module.layer_count();
    let mut out = Vec::new();
    if !divides(dp, batch) {
        return out;
    }
    let cps: Vec<u32> = if b.allow_cp {
        // cp 1 always; more where 2 cp chunks split the sequence.
        powers_of_two(8)
            .filter(|&cp| cp == 1 || divides(2 * cp, seq))
            .collect()
    } else {
        vec![1]
    };
    let max_pp = b.max_pp.min(layers).max(1);
    for tp in tps(module, b.gpus_per_node, b.gpus_per_node) {
        for &cp in &cps {
            for pp in 1..=max_pp {
                for mbs in (1..=b.max_mbs).filter(|&x| divides(dp * x, batch)) {
                    let m = batch / (dp * mbs);
                    let vpps = (1..=b.max_vpp)
                        .filter(|&v| v == 1 || (pp > 1 && divides(pp, m) && pp * v * 2 <= layers));
                    for vpp in vpps {
                        for ep in eps(module, dp, cp) {
                            for policy in recomputes(module) {
                                let mut l = spec(tp, cp, pp, dp, mbs, policy);
                                l.vpp = vpp;
                                l.ep = ep;
                                out.push(l);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// A communication knob the search may set on a layout, away from what the runtime executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommKnob {
    /// `tp_comm_overlap: true`.
    TpCommOverlap,
    /// `cp_comm: "ring"`.
    CpRing,
}

impl CommKnob {
    /// The knobs that apply to `l`, each only where it could change the price: TP
    /// communication overlap where tp > 1 with sequence parallel, CP by ring where cp > 1;
    /// none when `runnable`.
    pub fn of(l: &LayoutSpec, runnable: bool) -> Vec<CommKnob> {
        let mut out = Vec::new();
        if !runnable && l.tp > 1 && l.sequence_parallel {
            out.push(CommKnob::TpCommOverlap);
        }
        if !runnable && l.cp > 1 {
            out.push(CommKnob::CpRing);
        }
        out
    }

    /// The knobs set in `l`.
    pub fn set_in(l: &LayoutSpec) -> Vec<CommKnob> {
        let mut out = Vec::new();
        if l.tp_comm_overlap {
            out.push(CommKnob::TpCommOverlap);
        }
        if l.cp_comm == CpComm::Ring {
            out.push(CommKnob::CpRing);
        }
        out
    }

    /// `l` with this knob set.
    fn set(self, l: &LayoutSpec) -> LayoutSpec {
        let mut out = l.clone();
        match self {
            CommKnob::TpCommOverlap => out.tp_comm_overlap = true,
            CommKnob::CpRing => out.cp_comm = CpComm::Ring,
        }
        out
    }
}

/// `l` (given with the defaults) with every subset of `knobs` set, the empty one first: the
/// layout hetpar's runtime executes, then each knob alone, then together.
pub fn with_knobs(l: &LayoutSpec, knobs: &[CommKnob]) -> Vec<LayoutSpec> {
    let mut out = vec![l.clone()];
    for k in knobs {
        let set: Vec<LayoutSpec> = out.iter().map(|x| k.set(x)).collect();
        out.extend(set);
    }
    out
}

/// The communication variants of a layout (given with the defaults), the one hetpar's runtime
/// executes first (`CommKnob::of`, `with_knobs`). `runnable`: that one alone.
pub fn comm_variants(l: &LayoutSpec, runnable: bool) -> Vec<LayoutSpec> {
    with_knobs(l, &CommKnob::of(l, runnable))
}

/// Whether `tp` divides what a module splits over tensor parallelism.
pub fn tp_ok(module: &Module, tp: u32) -> bool {
    match &module.body {
        Body::Projector(mlp) => mlp.widths[1..mlp.widths.len().saturating_sub(1)]
            .iter()
            .all(|&w| divides(tp, w)),
        _ => module.transformer().is_some_and(|t| {
            let ffn = t.moe.as_ref().map_or(t.ffn_hidden, |m| m.expert_ffn_hidden);
            divides(tp, t.heads)
                && divides(tp, t.kv_heads())
                && divides(tp, ffn)
                && divides(tp, t.ffn_hidden)
        }),
    }
}

/// Micro-batches per step of a language-model layout: global batch / (dp x mbs).
pub fn micro_batches(model: &ModelGraph, l: &LayoutSpec) -> u32 {
    model.data().global_batch / (l.dp.unwrap_or(1) * l.micro_batch_size).max(1)
}

/// Data-parallel degrees worth trying for the language model: divisors of the global batch.
pub fn lm_dps(batch: u32, max: u32) -> Vec<u32> {
    (1..=batch.min(max))
        .filter(|d| batch.is_multiple_of(*d))
        .collect()
}

/// Pass sizes worth trying for M micro-batches: divisors of M up to `max` (a last short
/// pass only adds imbalance), and M itself (one pass per step).
pub fn pass_sizes(m: u32, max: u32) -> Vec<u32> {
    let mut v: Vec<u32> = (1..=m.min(max)).filter(|k| m.is_multiple_of(*k)).collect();
    if !v.contains(&m) {
        v.push(m);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(v: &[LayoutSpec]) -> Vec<Vec<CommKnob>> {
        v.iter().map(CommKnob::set_in).collect()
    }

    #[test]
    fn variants_are_offered_only_where_the_knob_applies_the_runtimes_first() {
        use CommKnob::{CpRing, TpCommOverlap};
        let unsplit = spec(1, 1, 1, 8, 1, RecomputePolicy::None);
        assert_eq!(knobs(&comm_variants(&unsplit, false)), vec![vec![]]);
        let tp = spec(2, 1, 1, 4, 1, RecomputePolicy::None);
        assert_eq!(
            knobs(&comm_variants(&tp, false)),
            vec![vec![], vec![TpCommOverlap]]
        );
        let mut tp_no_sp = tp.clone();
        tp_no_sp.sequence_parallel = false;
        assert_eq!(knobs(&comm_variants(&tp_no_sp, false)), vec![vec![]]);
        let both = spec(2, 2, 1, 2, 1, RecomputePolicy::None);
        assert_eq!(
            knobs(&comm_variants(&both, false)),
            vec![
                vec![],
                vec![TpCommOverlap],
                vec![CpRing],
                vec![TpCommOverlap, CpRing]
            ]
        );
    }

    #[test]
    fn runnable_keeps_the_layout_the_runtime_executes() {
        let both = spec(2, 2, 1, 2, 1, RecomputePolicy::None);
        assert_eq!(comm_variants(&both, true), vec![both]);
    }
}
