//! Published measurements as data (`cost-models/data/*.json`): each row a GPT-style
//! language model, a layout and what was measured, turned into hetpar's model, cluster and
//! plan.

use hetpar_ir::gpu::GpuModel;
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, ModelGraph, Plan};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::memory::AttentionKernel;

/// A file of published measurements (`"kind": "reference_measurements"`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    pub kind: String,
    pub format_version: u32,
    pub name: String,
    /// Where the figures come from.
    pub source: String,
    pub gpu_model: GpuModel,
    /// Per-GPU network bandwidth of the measured cluster, GB/s.
    pub inter_node_gb_per_s: f64,
    pub software: Software,
    pub notes: Vec<String>,
    /// Which constants the rows identify, and which rows fit them.
    pub fit: FitSpec,
    pub rows: Vec<Row>,
}

/// The training software the measurements ran.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Software {
    pub attention: AttentionKernel,
    /// `bf16` or `fp16`.
    pub precision: String,
    pub distributed_optimizer: bool,
    pub tp_comm_overlap: bool,
}

/// The constants to fit and the rows that fit them (the others are held out).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FitSpec {
    pub constants: Vec<String>,
    pub train: Vec<String>,
}

/// One measured run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub name: String,
    pub hidden: u32,
    pub heads: u32,
    pub layers: u32,
    pub vocab: u32,
    pub sequence: u32,
    pub global_batch: u32,
    pub gpus: u32,
    pub tp: u32,
    pub pp: u32,
    pub vpp: u32,
    pub micro_batch_size: u32,
    /// `none`, `selective` or `full`.
    pub recompute: String,
    pub sequence_parallel: bool,
    pub measured: Measured,
}

/// What a row measured: an iteration time, or model TFLOP/s per GPU by Megatron's count.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflops_per_gpu: Option<f64>,
}

/// A row made into hetpar's inputs.
pub struct Case {
    pub model: ModelGraph,
    pub cluster: Cluster,
    pub plan: Plan,
    /// The measured iteration time, s.
    pub measured_s: f64,
}

/// Megatron-LM's model FLOPs per step of a GPT with a GELU MLP of 4 x hidden
/// (`num_floating_point_operations`): `12 B s L h^2 (2 + s/h + 4 + V / (2 L h))`, counting
/// the whole attention square and no recompute.
pub fn megatron_gpt_flops(r: &Row) -> f64 {
    let (b, s, l, h, v) = (
        f64::from(r.global_batch),
        f64::from(r.sequence),
        f64::from(r.layers),
        f64::from(r.hidden),
        f64::from(r.vocab),
    );
    12.0 * b * s * l * h * h * (2.0 + s / h + 4.0 + v / (2.0 * l * h))
}

impl Measurements {
    /// Reads a measurements file, every problem named by its JSON path.
    pub fn parse(text: &str) -> Result<Measurements, String> {
        let m: Measurements = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        if m.kind != "reference_measurements" {
            problems.push(format!(
                "kind: expected \"reference_measurements\", found \"{}\"",
                m.kind
            ));
        }
        for (i, r) in m.rows.iter().enumerate() {
            let n = u64::from(r.measured.iteration_s.is_some())
                + u64::from(r.measured.tflops_per_gpu.is_some());
            if n != 1 {
                problems.push(format!(
                    "rows[{i}].measured: give exactly one of iteration_s and tflops_per_gpu"
                ));
            }
            let v = r
                .measured
                .iteration_s
                .or(r.measured.tflops_per_gpu)
                .unwrap_or(1.0);
            if !(v.is_finite() && v > 0.0) {
                problems.push(format!("rows[{i}].measured: must be a positive number"));
            }
        }
        for (i, t) in m.fit.train.iter().enumerate() {
            if !m.rows.iter().any(|r| &r.name == t) {
                problems.push(format!("fit.train[{i}]: no row is named \"{t}\""));
            }
        }
        for (i, c) in m.fit.constants.iter().enumerate() {
            if super::Param::parse(c).is_none() {
                problems.push(format!(
                    "fit.constants[{i}]: \"{c}\" cannot be fitted (one of {})",
                    super::Param::NAMES.join(", ")
                ));
            }
        }
        if problems.is_empty() {
            Ok(m)
        } else {
            Err(problems.join("; "))
        }
    }

    /// Row `r` as hetpar's model, cluster and plan.
    pub fn case(&self, r: &Row) -> Result<Case, String> {
        let sw = &self.software;
        let model = json!({
            "kind": "model", "format_version": 1, "name": format!("gpt-{}", r.name),
            "modules": {"llm": {
                "kind": "language_model",
                "transformer": {"layers": r.layers, "hidden": r.hidden, "heads": r.heads,
                    "ffn_hidden": 4 * r.hidden, "ffn_kind": "gelu_mlp", "norm": "layer_norm",
                    "attention": "causal", "qkv_bias": true, "linear_bias": true},
                "positions": {"kind": "learned", "max_positions": r.sequence},
                "vocab_size": r.vocab, "tied_embeddings": true}},
            "data": {"global_batch": r.global_batch, "sequence_length": r.sequence,
                "precision": sw.precision, "optimizer": "adam"}
        });
        let model = load_model(&model.to_string())
            .map_err(|d| format!("row {}: {d}", r.name))?
            .0;
        let per_node = 8.min(r.gpus);
        let cluster = json!({"kind": "cluster", "format_version": 1, "name": self.name,
            "nodes": r.gpus.div_ceil(per_node), "gpus_per_node": per_node,
            "gpu": {"model": self.gpu_model.as_str()},
            "inter_node": {"bandwidth_gb_per_s": self.inter_node_gb_per_s}});
        let cluster =
            load_cluster(&cluster.to_string()).map_err(|d| format!("row {}: {d}", r.name))?;
        let mut layout = json!({"tp": r.tp, "pp": r.pp, "vpp": r.vpp,
            "micro_batch_size": r.micro_batch_size, "sequence_parallel": r.sequence_parallel,
            "distributed_optimizer": sw.distributed_optimizer});
        if sw.tp_comm_overlap && r.sequence_parallel && r.tp > 1 {
            layout["tp_comm_overlap"] = json!(true);
        }
        if r.recompute != "none" {
            layout["recompute"] = json!({"policy": r.recompute});
        }
        let kind = if r.vpp > 1 {
            "pipeline_interleaved"
        } else {
            "pipeline_1f1b"
        };
        let plan = json!({"kind": "plan", "format_version": 1, "schedule": {"kind": kind},
            "modules": {"llm": {"layout": layout,
                "placement": {"ranks": {"offset": 0, "count": r.gpus}}}}});
        let plan = load_plan(&plan.to_string(), &model, &cluster)
            .map_err(|d| format!("row {}: {d}", r.name))?
            .0;
        let measured_s = match (r.measured.iteration_s, r.measured.tflops_per_gpu) {
            (Some(t), _) => t,
            (None, Some(tf)) => megatron_gpt_flops(r) / (tf * 1e12 * f64::from(r.gpus)),
            (None, None) => return Err(format!("row {}: nothing measured", r.name)),
        };
        Ok(Case {
            model,
            cluster,
            plan,
            measured_s,
        })
    }
}
