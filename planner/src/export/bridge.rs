//! A Megatron-Bridge (v0.6.0) override file for the same plan: the layout as `ConfigContainer`
//! fields (`model`, `train`, `optimizer`, `ddp`) over the recipe of the model's family, which
//! keeps the model's shape. Bridge has recipes for Llama, Qwen2 and Qwen2.5-VL among the
//! families hetpar imports, and no heterogeneous grid.

use hetpar_ir::layout::{CpComm, RecomputePolicy};
use hetpar_ir::model::{Body, ModelGraph, ModuleKind, PositionKind};
use hetpar_ir::Plan;

use super::megatron::uneven_ends;

/// The Bridge recipe family of `model`, or why it has none.
pub fn family(model: &ModelGraph) -> Result<&'static str, String> {
    let lm = model.module(model.language_model());
    let t = lm.transformer().ok_or("no transformer language model")?;
    let encoders: Vec<_> = model
        .modules()
        .iter()
        .filter(|m| m.kind.is_encoder())
        .collect();
    if let Some(e) = encoders.first() {
        let rope = matches!(&e.body, Body::Encoder { positions, .. } if positions.kind == PositionKind::Rope);
        let merged = model
            .modules()
            .iter()
            .any(|m| matches!(&m.body, Body::Projector(p) if p.token_merge > 1));
        return if encoders.len() == 1 && e.kind == ModuleKind::VisionEncoder && rope && merged {
            Ok("qwen25_vl")
        } else {
            Err("Bridge v0.6.0 has a Qwen2.5-VL recipe among vision-language models, and this is not one".into())
        };
    }
    if t.moe.is_some() {
        return Err("Bridge v0.6.0 has no Mixtral recipe".into());
    }
    match (t.qkv_bias, t.linear_bias) {
        (true, false) => Ok("qwen2"),
        (false, false) => Ok("llama3"),
        _ => {
            Err("Bridge v0.6.0 has no recipe for a model with biases on every linear layer".into())
        }
    }
}

/// The override file of a plan without heterogeneity (Bridge runs one layout for every
/// module).
pub fn overrides(model: &ModelGraph, plan: &Plan, family: &str) -> String {
    let lm = model.language_model();
    let l = &plan.module(lm).layout;
    let moe = super::is_moe(model);
    let mut m: Vec<(&str, String)> = vec![
        ("tensor_model_parallel_size", l.tp.to_string()),
        ("pipeline_model_parallel_size", l.pp.to_string()),
        (
            "virtual_pipeline_model_parallel_size",
            if l.vpp > 1 {
                l.vpp.to_string()
            } else {
                "null".into()
            },
        ),
        ("context_parallel_size", l.cp.to_string()),
    ];
    if l.cp > 1 {
        let kind = match l.cp_comm {
            CpComm::AllGather => "allgather",
            CpComm::Ring => "p2p",
        };
        m.push(("cp_comm_type", kind.into()));
    }
    m.push((
        "sequence_parallel",
        (l.sequence_parallel && l.tp > 1).to_string(),
    ));
    m.push(("tp_comm_overlap", l.tp_comm_overlap.to_string()));
    if moe {
        m.push(("expert_model_parallel_size", l.ep.to_string()));
        m.push(("expert_tensor_parallel_size", l.tp.to_string()));
    }
    let stages = &l.chunk_layers[..l.pp as usize];
    if let Some((first, last)) = uneven_ends(stages).filter(|_| l.vpp == 1) {
        m.push(("num_layers_in_first_pipeline_stage", first.to_string()));
        m.push(("num_layers_in_last_pipeline_stage", last.to_string()));
    }
    let (granularity, method, layers) = match (l.recompute.policy, l.recompute.layers) {
        (RecomputePolicy::None, _) => ("null", "null", "null".to_string()),
        (RecomputePolicy::Selective, _) => ("selective", "null", "null".to_string()),
        (RecomputePolicy::Full, None) => ("full", "uniform", "1".to_string()),
        (RecomputePolicy::Full, Some(n)) => ("full", "block", n.to_string()),
    };
    m.push(("recompute_granularity", granularity.into()));
    m.push(("recompute_method", method.into()));
    m.push(("recompute_num_layers", layers));
    let mut s = format!(
        "# Megatron-Bridge v0.6.0 overrides of a {family} recipe (for instance\n\
         # {family}_..._pretrain_config), written by `hetpar export megatron`: the plan's layout\n\
         # and batch; the recipe keeps the model's shape. Give it as the recipe's config file, or\n\
         # each field as a dotted override (model.tensor_model_parallel_size=2) to\n\
         # scripts/training/run_recipe.py.\nmodel:\n"
    );
    for (k, v) in m {
        s.push_str(&format!("  {k}: {v}\n"));
    }
    s.push_str(&format!(
        "dataset:\n  seq_length: {}\n",
        model.data().sequence_length
    ));
    s.push_str(&format!(
        "train:\n  global_batch_size: {}\n  micro_batch_size: {}\n",
        model.data().global_batch,
        l.micro_batch_size
    ));
    let dist = l.distributed_optimizer;
    s.push_str(&format!(
        "optimizer:\n  use_distributed_optimizer: {dist}\nddp:\n  use_distributed_optimizer: {dist}\n"
    ));
    s
}
