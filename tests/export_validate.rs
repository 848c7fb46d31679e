//! The exported arguments as Megatron-LM core_v0.19.0's own code took them: the goldens
//! `tests/oracle/megatron_validate.py` records by running Megatron's parser, `validate_args`,
//! its configs' `__post_init__` and the MIMO example's grid rules on each example's export.
//! Here: the exporter still writes exactly the recorded arguments (a changed exporter needs the
//! oracle rerun), Megatron accepted every export and refused every edited one for the edit's
//! reason, and what Megatron derived (data parallelism, micro-batches, layers per chunk, ...)
//! is what the plan says.

use std::collections::BTreeMap;

use hetpar::ir::layout::{CpComm, RecomputePolicy};
use hetpar::ir::model::{FfnKind, NormKind};
use hetpar::ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph, Plan};
use hetpar::planner::export::megatron::export;
use serde_json::Value;

const GOLDEN: &str = "tests/oracle/golden/megatron-validate";

fn root() -> &'static str {
    env!("CARGO_MANIFEST_DIR")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", root())).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every recorded case, by name.
fn goldens() -> BTreeMap<String, Value> {
    let dir = format!("{}/{GOLDEN}", root());
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        out.insert(v["case"].as_str().unwrap().to_string(), v);
    }
    out
}

fn inputs(g: &Value) -> (ModelGraph, Cluster, Plan) {
    let model = load_model(&read(g["model"].as_str().unwrap())).unwrap().0;
    let cluster = load_cluster(&read(g["cluster"].as_str().unwrap())).unwrap();
    let plan = load_plan(&read(g["plan"].as_str().unwrap()), &model, &cluster)
        .unwrap_or_else(|d| panic!("{d:?}"))
        .0;
    (model, cluster, plan)
}

/// What the exporter gives Megatron now: args.txt's lines, train.sh's exports and the
/// arguments train.sh adds, with the case's edit applied as the oracle applies it.
fn exported_now(g: &Value) -> (Vec<String>, BTreeMap<String, String>, Vec<String>) {
    let (model, cluster, plan) = inputs(g);
    let e = export(&model, &cluster, &plan).unwrap_or_else(|r| panic!("{r:?}"));
    let mut lines: Vec<String> = e.args_text().lines().map(String::from).collect();
    let script = e.script();
    let mut env: BTreeMap<String, String> = script
        .lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let tail = script.split("\"${args[@]}\" ").nth(1).unwrap();
    let script_args = tail.split(" \"$@\"").next().unwrap();
    for (flag, value) in g["edit"]["args"].as_object().into_iter().flatten() {
        let line = format!("{flag} {}", value.as_str().unwrap());
        match lines.iter_mut().find(|l| l.split(' ').next() == Some(flag)) {
            Some(l) => *l = line,
            None => lines.push(line),
        }
    }
    for (name, value) in g["edit"]["env"].as_object().into_iter().flatten() {
        match value.as_str() {
            Some(v) => env.insert(name.clone(), v.to_string()),
            None => env.remove(name),
        };
    }
    let script_args = script_args.split(' ').map(String::from).collect();
    (lines, env, script_args)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_case_records_the_arguments_the_exporter_writes_now() {
    let all = goldens();
    for required in [
        "llama-3-8b",
        "llava-1.5-7b-noncolocated",
        "llava-1.5-7b-homogeneous",
        "mixtral-8x7b-ep4",
        "llama-3-8b-cp-vpp",
        "llama-3-8b-uneven-cp",
    ] {
        assert!(all.contains_key(required), "no golden for {required}");
    }
    for (name, g) in &all {
        let (lines, env, script_args) = exported_now(g);
        assert_eq!(
            lines,
            strings(&g["args"]),
            "{name}: the exporter changed; rerun tests/oracle/megatron_validate.py"
        );
        let recorded: BTreeMap<String, String> = serde_json::from_value(g["env"].clone()).unwrap();
        assert_eq!(env, recorded, "{name}: train.sh's environment changed");
        assert_eq!(script_args, strings(&g["script_args"]), "{name}");
        let (_, cluster, _) = inputs(g);
        assert_eq!(g["world_size"], cluster.world_size(), "{name}");
        assert_eq!(g["commit"], "5be9626709af2722333bf54797c954c09edeada3");
    }
}

#[test]
fn megatron_accepted_every_export_and_refused_each_edit_for_its_reason() {
    let all = goldens();
    let reasons = [
        (
            "rejected-tp-not-dividing-world",
            "world size (8) is not divisible",
        ),
        (
            "rejected-query-groups-not-dividing-heads",
            "num_query_groups (3) must be",
        ),
        (
            "rejected-mimo-fan-out",
            "--micro-batch-size * --llm-dp must be divisible by --encoder-dp",
        ),
        (
            "rejected-unknown-flag",
            "unrecognized arguments: --no-such-flag",
        ),
        (
            "rejected-without-cuda-device-max-connections",
            "CUDA_DEVICE_MAX_CONNECTIONS to 1",
        ),
    ];
    for (name, g) in &all {
        if g["edit"].is_null() {
            assert_eq!(
                g["accepted"], true,
                "{name}: Megatron refused: {}",
                g["error"]
            );
            assert!(g["error"].is_null() && g["derived"].is_object(), "{name}");
        } else {
            let (_, why) = reasons
                .iter()
                .find(|(case, _)| case == name)
                .unwrap_or_else(|| panic!("{name}: an edited case without its reason here"));
            assert_eq!(g["accepted"], false, "{name}: Megatron accepted the edit");
            let error = g["error"].as_str().unwrap();
            assert!(
                error.contains(why),
                "{name}: refused for another reason: {error}"
            );
        }
    }
    for (case, _) in reasons {
        assert!(all.contains_key(case), "no golden for {case}");
    }
}

/// `derived[key]` against the plan's value, naming both.
fn same(name: &str, d: &Value, key: &str, want: impl Into<Value>) {
    let want = want.into();
    assert_eq!(d[key], want, "{name}: Megatron derived {key} = {}", d[key]);
}

fn recompute(l: &hetpar::ir::layout::Layout) -> (Value, Value, Value) {
    match (l.recompute.policy, l.recompute.layers) {
        (RecomputePolicy::None, _) => (Value::Null, Value::Null, Value::Null),
        (RecomputePolicy::Selective, _) => ("selective".into(), Value::Null, Value::Null),
        (RecomputePolicy::Full, None) => ("full".into(), "uniform".into(), 1.into()),
        (RecomputePolicy::Full, Some(n)) => ("full".into(), "block".into(), n.into()),
    }
}

#[test]
fn the_values_megatron_derived_are_the_plans() {
    for (name, g) in goldens().iter().filter(|(_, g)| g["edit"].is_null()) {
        let (model, cluster, plan) = inputs(g);
        let d = &g["derived"];
        let lm = model.language_model();
        let l = &plan.module(lm).layout;
        let t = model.module(lm).transformer().unwrap();
        let s = |key: &str, want: Value| same(name, d, key, want);
        s("world_size", cluster.world_size().into());
        s("data_parallel_size", l.dp.into());
        s("num_micro_batches", l.micro_batches.into());
        s("micro_batch_size", l.micro_batch_size.into());
        s("global_batch_size", model.data().global_batch.into());
        s("seq_length", model.data().sequence_length.into());
        s("tensor_model_parallel_size", l.tp.into());
        s("pipeline_model_parallel_size", l.pp.into());
        s("context_parallel_size", l.cp.into());
        let vpp = (l.vpp > 1).then_some(l.vpp);
        s("virtual_pipeline_model_parallel_size", vpp.into());
        s("layers_per_chunk", l.chunk_layers.clone().into());
        s(
            "sequence_parallel",
            (l.sequence_parallel && l.tp > 1).into(),
        );
        s("use_distributed_optimizer", l.distributed_optimizer.into());
        if l.cp > 1 {
            let kind = match l.cp_comm {
                CpComm::Ring => "p2p",
                CpComm::AllGather => "allgather",
            };
            s("cp_comm_type", kind.into());
        }
        let (granularity, method, layers) = recompute(l);
        s("recompute_granularity", granularity);
        s("recompute_method", method);
        s("recompute_num_layers", layers);
        s("num_layers", t.layers.into());
        s("hidden_size", t.hidden.into());
        s("num_attention_heads", t.heads.into());
        s("num_query_groups", t.kv_heads().into());
        s("kv_channels", t.head_dim().into());
        s("ffn_hidden_size", t.ffn_hidden.into());
        s("gated_linear_unit", (t.ffn_kind == FfnKind::Swiglu).into());
        s("add_bias_linear", t.linear_bias.into());
        let norm = match t.norm {
            NormKind::RmsNorm => "RMSNorm",
            NormKind::LayerNorm => "LayerNorm",
        };
        s("normalization", norm.into());
        match &t.moe {
            Some(moe) => {
                s("num_moe_experts", moe.experts.into());
                s("moe_router_topk", moe.top_k.into());
                s("moe_ffn_hidden_size", moe.expert_ffn_hidden.into());
                s("expert_model_parallel_size", l.ep.into());
                s("expert_tensor_parallel_size", l.tp.into());
            }
            None => s("num_moe_experts", Value::Null),
        }
        if g["entry"] == "examples/mimo/pretrain_mimo.py" {
            mimo_grids_are_the_plans(name, &d["grids"], &model, &plan);
        }
    }
}

/// The MIMO example's two grids: the encoder's and the language model's ranks and sizes.
fn mimo_grids_are_the_plans(name: &str, grids: &Value, model: &ModelGraph, plan: &Plan) {
    let lm = plan.module(model.language_model());
    let encoder = model
        .modules()
        .iter()
        .find(|m| m.kind.is_encoder())
        .unwrap();
    let enc = plan.module(encoder.id);
    for (grid, p) in [("language", lm), ("encoder", enc)] {
        let d = &grids[grid];
        let name = format!("{name}: grids.{grid}");
        let s = |key: &str, want: u32| same(&name, d, key, want);
        s("rank_offset", p.grid.ranks()[0]);
        s("num_ranks", p.grid.ranks().len() as u32);
        s("tp", p.layout.tp);
        s("cp", p.layout.cp);
        s("pp", p.layout.pp);
        s("dp", p.layout.dp);
        s("ep", p.layout.ep);
    }
}
