//! The MIMO example's heterogeneous grid (`examples/mimo/training/args.py` of Megatron-LM
//! `core_v0.19.0`): one encoder grid (the encoder and its projector) on ranks `[0, E)` and the
//! language model's on `[llm_offset, world)`, each with its own layout. Its rules are checked
//! here and a broken one is refused by name, with the plan field to change.

use hetpar_ir::model::ModelGraph;
use hetpar_ir::plan::PlacementKind;
use hetpar_ir::{Cluster, Plan, Rank};

use super::megatron::{arg, layout_args, switch, Arg};
use super::Refusal;

/// Whether `ranks` are `first..first + len` in order.
fn contiguous(ranks: &[Rank]) -> bool {
    ranks.windows(2).all(|w| w[1] == w[0] + 1)
}

/// The grid arguments of a non-colocated heterogeneous plan, the language model's other
/// layout flags (sequence parallelism, recompute, stages) kept; every broken MIMO rule in
/// `refusals`.
pub fn grid_args(
    model: &ModelGraph,
    cluster: &Cluster,
    plan: &Plan,
    refusals: &mut Vec<Refusal>,
) -> Vec<Arg> {
    let mut refuse = |feature: &str, reason: String, fix: &str| {
        refusals.push(Refusal::new(feature, reason, fix));
    };
    if plan.placement_kind != PlacementKind::Disjoint {
        refuse(
            "placement",
            "MIMO's colocated heterogeneous path is not released (core_v0.19.0)".into(),
            "give every module the language model's tp, cp and dp on its ranks, or place the \
             encoder and projector on ranks of their own",
        );
        return Vec::new();
    }
    let lm = model.language_model();
    let encoders: Vec<_> = model
        .modules()
        .iter()
        .filter(|m| m.kind.is_encoder())
        .collect();
    if encoders.len() != 1 {
        refuse(
            "model.modules",
            format!(
                "MIMO's heterogeneous example takes one encoder, the model has {}",
                encoders.len()
            ),
            "export a model with one encoder",
        );
    }
    let Some(enc) = encoders.first() else {
        return Vec::new();
    };
    let (e, l) = (plan.module(enc.id), plan.module(lm));
    for m in model
        .modules()
        .iter()
        .filter(|m| m.id != lm && m.id != enc.id)
    {
        let p = plan.module(m.id);
        if p.layout.tp != e.layout.tp
            || p.layout.dp != e.layout.dp
            || p.grid.ranks() != e.grid.ranks()
        {
            refuse(
                &format!("modules.{}.layout", m.name),
                "MIMO runs the projector on the encoder's grid".into(),
                "give it the encoder's tp, dp and ranks",
            );
        }
    }
    if e.layout.cp != 1 || e.layout.pp != 1 {
        refuse(
            &format!("modules.{}.layout", enc.name),
            format!(
                "MIMO fixes the encoder's cp and pp at 1, the plan has cp {} pp {}",
                e.layout.cp, e.layout.pp
            ),
            "set the encoder's cp and pp to 1",
        );
    }
    let (er, lr) = (e.grid.ranks(), l.grid.ranks());
    if er.first() != Some(&0) || !contiguous(er) {
        refuse(
            &format!("modules.{}.placement", enc.name),
            "MIMO's encoder span starts at rank 0 and is contiguous".into(),
            "place the encoder on ranks 0..E",
        );
    }
    let world = cluster.world_size() as usize;
    if !contiguous(lr) || er.len() + lr.len() != world || lr.first() != Some(&(er.len() as Rank)) {
        refuse(
            &format!("modules.{}.placement", model.module(lm).name),
            format!(
                "MIMO's two spans tile all {world} ranks: the encoder's then the language model's"
            ),
            "place the language model on the ranks after the encoder's, up to the last",
        );
    }
    let (mbs, llm_dp, enc_dp) = (l.layout.micro_batch_size, l.layout.dp, e.layout.dp);
    if (mbs * llm_dp) % enc_dp != 0 {
        refuse(
            "layout.micro_batch_size",
            format!(
                "MIMO needs (mbs x llm_dp) % encoder_dp == 0: ({mbs} x {llm_dp}) % {enc_dp} != 0"
            ),
            "change the language model's micro_batch_size or dp, or the encoder's dp",
        );
    }
    if l.layout.cp != 1 {
        refuse(
            &format!("modules.{}.layout.cp", model.module(lm).name),
            "MIMO's heterogeneous grid supports language-model cp 1 only in core_v0.19.0".into(),
            "set the language model's cp to 1",
        );
    }
    if plan.passes().per_pass != 1 {
        refuse(
            "schedule.encoder_chunk",
            "MIMO runs one encoder pass per language-model micro-batch".into(),
            "set schedule.encoder_chunk to 1",
        );
    }
    if !l.layout.distributed_optimizer {
        refuse(
            &format!(
                "modules.{}.layout.distributed_optimizer",
                model.module(lm).name
            ),
            "pretrain_mimo.py requires --use-distributed-optimizer".into(),
            "set distributed_optimizer to true",
        );
    }
    let moe = super::is_moe(model);
    let mut a = vec![
        arg("--encoder-tp", e.layout.tp),
        arg("--encoder-dp", e.layout.dp),
        arg("--llm-offset", lr.first().copied().unwrap_or(0)),
        arg("--llm-tp", l.layout.tp),
        arg("--llm-cp", l.layout.cp),
        arg("--llm-pp", l.layout.pp),
        arg("--llm-dp", l.layout.dp),
        arg("--llm-ep", l.layout.ep),
    ];
    if moe {
        // hetpar splits experts over the attention's tp.
        a.push(arg("--llm-expt-tp", l.layout.tp));
    }
    // The example's language model requires the per-token loss (its gradient sync sums), and
    // runs variable sequence lengths, which Megatron's TransformerConfig accepts only with the
    // alltoall token dispatcher (checked for a dense model too, where it is unused).
    a.push(switch("--calculate-per-token-loss"));
    a.push(arg("--moe-token-dispatcher-type", "alltoall"));
    // The stock parallel sizes stay 1: MIMO reads the language model's from --llm-*.
    let grid_flags = [
        "--tensor-model-parallel-size",
        "--pipeline-model-parallel-size",
        "--context-parallel-size",
        "--cp-comm-type",
        "--expert-model-parallel-size",
        "--expert-tensor-parallel-size",
    ];
    a.extend(
        layout_args(&l.layout, moe, refusals)
            .into_iter()
            .filter(|x| !grid_flags.contains(&x.flag)),
    );
    a
}
