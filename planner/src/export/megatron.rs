//! Megatron-LM arguments (release `core_v0.19.0`, `docs/export.md`): the language model's
//! shape and the plan's layout, one flag per field, for `pretrain_gpt.py` (a language model
//! alone), `pretrain_vlm.py` (a VLM whose every module takes the language model's layout) or
//! `examples/mimo/pretrain_mimo.py` (a non-colocated heterogeneous VLM, `mimo`).

use hetpar_ir::layout::{CpComm, Layout, RecomputePolicy};
use hetpar_ir::model::{Body, FfnKind, ModelGraph, ModuleKind, NormKind, PositionKind, Precision};
use hetpar_ir::{Cluster, Plan};

use super::Refusal;

/// One command-line argument: a flag and its value (none for a switch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arg {
    pub flag: &'static str,
    pub value: Option<String>,
}

pub(super) fn arg(flag: &'static str, value: impl ToString) -> Arg {
    Arg {
        flag,
        value: Some(value.to_string()),
    }
}

pub(super) fn switch(flag: &'static str) -> Arg {
    Arg { flag, value: None }
}

/// What to run and with which arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The training script, relative to a Megatron-LM checkout.
    pub entry: &'static str,
    /// Whether `entry` runs as a module (`python -m`).
    pub module: bool,
    pub args: Vec<Arg>,
    /// Environment variables `train.sh` exports: what Megatron checks besides the arguments.
    pub env: Vec<(&'static str, String)>,
    pub nodes: u32,
    pub gpus_per_node: u32,
}

impl Export {
    /// `args.txt`: one argument per line.
    pub fn args_text(&self) -> String {
        let mut s = String::new();
        for a in &self.args {
            s.push_str(a.flag);
            if let Some(v) = &a.value {
                s.push(' ');
                s.push_str(v);
            }
            s.push('\n');
        }
        s
    }

    /// `train.sh`: torchrun on every node with the arguments of `args.txt` beside it.
    pub fn script(&self) -> String {
        let target = if self.module {
            format!(
                "-m {}",
                self.entry.trim_end_matches(".py").replace('/', ".")
            )
        } else {
            format!("\"$MEGATRON/{}\"", self.entry)
        };
        format!(
            "#!/usr/bin/env bash\n\
             # Written by `hetpar export megatron`: the plan's arguments are in args.txt beside\n\
             # this script. Set MEGATRON to a Megatron-LM checkout of core_v0.19.0, and on more\n\
             # than one node NODE_RANK and MASTER_ADDR; add your data and tokenizer arguments\n\
             # (by default mock data).\n\
             set -euo pipefail\n\
             {exports}\
             here=\"$(cd \"$(dirname \"$0\")\" && pwd)\"\n\
             : \"${{MEGATRON:?set MEGATRON to a Megatron-LM checkout}}\"\n\
             cd \"$MEGATRON\"\n\
             mapfile -t lines < \"$here/args.txt\"\n\
             args=()\n\
             for l in \"${{lines[@]}}\"; do read -ra w <<< \"$l\"; args+=(\"${{w[@]}}\"); done\n\
             exec torchrun --nnodes {} --nproc-per-node {} --node-rank \"${{NODE_RANK:-0}}\" \\\n\
             \x20   --master-addr \"${{MASTER_ADDR:-localhost}}\" --master-port \"${{MASTER_PORT:-6000}}\" \\\n\
             \x20   {target} \"${{args[@]}}\" {data} \"$@\"\n",
            self.nodes,
            self.gpus_per_node,
            exports = self
                .env
                .iter()
                .map(|(k, v)| format!("export {k}={v}\n"))
                .collect::<String>(),
            data = if self.module {
                "--dataset-provider mock"
            } else {
                "--mock-data"
            }
        )
    }
}

/// Megatron-LM's arguments for `plan`, or every reason it cannot take them.
pub fn export(model: &ModelGraph, cluster: &Cluster, plan: &Plan) -> Result<Export, Vec<Refusal>> {
    let lm = model.language_model();
    let l = &plan.module(lm).layout;
    let others: Vec<_> = model.modules().iter().filter(|m| m.id != lm).collect();
    let homogeneous = others.iter().all(|m| {
        let o = &plan.module(m.id).layout;
        o.tp == l.tp
            && o.cp == l.cp
            && o.dp == l.dp
            && plan.module(m.id).grid.ranks()[0] == plan.module(lm).grid.ranks()[0]
    });
    let mut refusals = Vec::new();
    let mut args = model_args(model, &mut refusals);
    let moe = super::is_moe(model);
    let (entry, module) = if others.is_empty() {
        args.extend(layout_args(l, moe, &mut refusals));
        ("pretrain_gpt.py", false)
    } else if homogeneous {
        args.extend(layout_args(l, moe, &mut refusals));
        // The script's model provider asserts torch checkpoints (Megatron's default is
        // torch_dist).
        args.push(arg("--ckpt-format", "torch"));
        ("pretrain_vlm.py", false)
    } else {
        args.extend(super::mimo::grid_args(model, cluster, plan, &mut refusals));
        ("examples/mimo/pretrain_mimo.py", true)
    };
    args.push(arg("--micro-batch-size", l.micro_batch_size));
    args.push(arg("--global-batch-size", model.data().global_batch));
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(Export {
        entry,
        module,
        args,
        env: environment(model, plan),
        nodes: cluster.nodes,
        gpus_per_node: cluster.gpus_per_node,
    })
}

/// What `train.sh` exports. With tensor or context parallelism, Megatron's `validate_args`
/// requires `CUDA_DEVICE_MAX_CONNECTIONS=1` on GPUs before Blackwell, so that communication
/// kernels are queued in order; it is set whatever the GPU (later ones allow it).
fn environment(model: &ModelGraph, plan: &Plan) -> Vec<(&'static str, String)> {
    let split = model.modules().iter().any(|m| {
        let l = &plan.module(m.id).layout;
        l.tp > 1 || l.cp > 1
    });
    match split {
        true => vec![("CUDA_DEVICE_MAX_CONNECTIONS", "1".to_string())],
        false => Vec::new(),
    }
}

/// The language model's shape.
fn model_args(model: &ModelGraph, refusals: &mut Vec<Refusal>) -> Vec<Arg> {
    let m = model.module(model.language_model());
    let Body::LanguageModel {
        transformer: t,
        vocab_size,
        tied_embeddings,
        positions,
    } = &m.body
    else {
        refusals.push(Refusal::new(
            "model",
            "no language model",
            "export a model with one",
        ));
        return Vec::new();
    };
    let data = model.data();
    let mut a = vec![
        arg("--num-layers", t.layers),
        arg("--hidden-size", t.hidden),
        arg("--num-attention-heads", t.heads),
        arg("--ffn-hidden-size", t.ffn_hidden),
    ];
    if t.kv_heads() != t.heads {
        a.push(switch("--group-query-attention"));
        a.push(arg("--num-query-groups", t.kv_heads()));
    }
    if t.head_dim() * t.heads != t.hidden {
        a.push(arg("--kv-channels", t.head_dim()));
    }
    if t.ffn_kind == FfnKind::Swiglu {
        a.push(switch("--swiglu"));
    }
    a.push(arg(
        "--normalization",
        match t.norm {
            NormKind::LayerNorm => "LayerNorm",
            NormKind::RmsNorm => "RMSNorm",
        },
    ));
    a.push(arg(
        "--position-embedding-type",
        match positions.kind {
            PositionKind::Rope => "rope",
            PositionKind::Learned => "learned_absolute",
            PositionKind::None => "none",
        },
    ));
    if let Some(base) = positions
        .rope_base
        .filter(|_| positions.kind == PositionKind::Rope)
    {
        a.push(arg("--rotary-base", base));
    }
    let max_positions = positions.max_positions.unwrap_or(data.sequence_length);
    a.push(arg(
        "--max-position-embeddings",
        max_positions.max(data.sequence_length),
    ));
    if !t.linear_bias {
        a.push(switch("--disable-bias-linear"));
        if t.qkv_bias {
            a.push(switch("--add-qkv-bias"));
        }
    }
    if !tied_embeddings {
        a.push(switch("--untie-embeddings-and-output-weights"));
    }
    if let Some(moe) = &t.moe {
        a.push(arg("--num-experts", moe.experts));
        a.push(arg("--moe-router-topk", moe.top_k));
        a.push(arg("--moe-ffn-hidden-size", moe.expert_ffn_hidden));
        if moe.shared_experts > 0 {
            let size = moe.shared_experts * moe.expert_ffn_hidden;
            a.push(arg("--moe-shared-expert-intermediate-size", size));
        }
        if moe.layer_frequency > 1 {
            a.push(arg("--moe-layer-freq", moe.layer_frequency));
        }
    }
    a.push(arg("--vocab-size", vocab_size));
    a.push(arg("--tokenizer-type", "NullTokenizer"));
    a.push(arg("--seq-length", data.sequence_length));
    match data.precision {
        Precision::Bf16 => a.push(switch("--bf16")),
        Precision::Fp16 => a.push(switch("--fp16")),
        Precision::Fp32 => {}
        Precision::Fp8 => refusals.push(Refusal::new(
            "data.precision",
            "fp8 needs Transformer Engine's recipe flags, which hetpar does not choose",
            "set data.precision to bf16",
        )),
    }
    if m.kind != ModuleKind::LanguageModel {
        refusals.push(Refusal::new(
            "model",
            "the language model is not one",
            "fix the model",
        ));
    }
    a
}

/// The layout of the language model as Megatron's flags (expert parallelism for a mixture of
/// experts, `moe`); uneven stages only as a first and a last stage.
pub fn layout_args(l: &Layout, moe: bool, refusals: &mut Vec<Refusal>) -> Vec<Arg> {
    let mut a = vec![
        arg("--tensor-model-parallel-size", l.tp),
        arg("--pipeline-model-parallel-size", l.pp),
    ];
    if l.cp > 1 {
        a.push(arg("--context-parallel-size", l.cp));
        a.push(arg(
            "--cp-comm-type",
            match l.cp_comm {
                CpComm::AllGather => "allgather",
                CpComm::Ring => "p2p",
            },
        ));
    }
    a.extend(stage_args(l, refusals));
    if l.sequence_parallel && l.tp > 1 {
        a.push(switch("--sequence-parallel"));
    }
    if l.tp_comm_overlap {
        a.push(switch("--tp-comm-overlap"));
    }
    if l.distributed_optimizer {
        a.push(switch("--use-distributed-optimizer"));
    }
    a.extend(recompute_args(l));
    if l.ep > 1 {
        a.push(arg("--expert-model-parallel-size", l.ep));
    }
    if moe {
        // hetpar splits experts over the attention's tp: say so, as later releases default
        // expert tp to 1.
        a.push(arg("--expert-tensor-parallel-size", l.tp));
    }
    a
}

/// Pipeline stages: even, or uneven only in the first and last (Megatron's
/// `--decoder-first-pipeline-num-layers` / `--decoder-last-pipeline-num-layers`); interleaved
/// only with even chunks.
fn stage_args(l: &Layout, refusals: &mut Vec<Refusal>) -> Vec<Arg> {
    let mut a = Vec::new();
    let pp = l.pp as usize;
    let stages: Vec<u32> = (0..pp)
        .map(|s| l.chunk_layers.iter().skip(s).step_by(pp).sum())
        .collect();
    if l.vpp > 1 {
        let first = l.chunk_layers.first().copied().unwrap_or(0);
        if l.chunk_layers.iter().any(|&c| c != first) {
            refusals.push(Refusal::new(
                "layout.stage_layers",
                format!(
                    "Megatron interleaves only equal chunks, the plan has {:?}",
                    l.chunk_layers
                ),
                "give the language model equal stages or vpp 1",
            ));
        }
        a.push(arg("--num-layers-per-virtual-pipeline-stage", first));
        return a;
    }
    if pp > 1 {
        let middle = &stages[1..pp - 1];
        if middle.iter().any(|&s| s != middle[0]) {
            refusals.push(Refusal::new(
                "layout.stage_layers",
                format!(
                    "Megatron takes uneven first and last stages only, the plan has {stages:?}"
                ),
                "make the middle stages equal",
            ));
        }
        if let Some((first, last)) = uneven_ends(&stages) {
            a.push(arg("--decoder-first-pipeline-num-layers", first));
            a.push(arg("--decoder-last-pipeline-num-layers", last));
        }
    }
    a
}

/// The first and last stages' layers where they differ from the others (every stage but the
/// first and last; with two stages, each other): what Megatron takes as uneven ends.
pub fn uneven_ends(stages: &[u32]) -> Option<(u32, u32)> {
    let (&first, &last) = (stages.first()?, stages.last()?);
    let typical = stages
        .get(1..stages.len() - 1)?
        .first()
        .copied()
        .unwrap_or(first);
    (first != typical || last != typical).then_some((first, last))
}

/// Recompute: selective (the attention core), or full over all of each stage's layers
/// (uniform, one layer per unit) or its first n (block).
fn recompute_args(l: &Layout) -> Vec<Arg> {
    match l.recompute.policy {
        RecomputePolicy::None => Vec::new(),
        RecomputePolicy::Selective => vec![arg("--recompute-granularity", "selective")],
        RecomputePolicy::Full => match l.recompute.layers {
            None => vec![
                arg("--recompute-granularity", "full"),
                arg("--recompute-method", "uniform"),
                arg("--recompute-num-layers", 1),
            ],
            Some(n) => vec![
                arg("--recompute-granularity", "full"),
                arg("--recompute-method", "block"),
                arg("--recompute-num-layers", n),
            ],
        },
    }
}
