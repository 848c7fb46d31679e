//! The cluster file (`"kind": "cluster"`) and its resolved form: nodes of GPUs, the GPU model
//! with overrides, and the two link classes (within a node, across nodes).
//!
//! Units in the file carry their name: `dense_bf16_tflops`, `hbm_capacity_gib`,
//! `hbm_bandwidth_tb_per_s` (TB = 1e12 bytes), `bandwidth_gb_per_s` (GB = 1e9 bytes, per GPU and
//! direction), `latency_us`.
//!
//! Invariants: nodes and GPUs per node are at least 1 [cluster.positive]; overrides are finite
//! and above 0 [cluster.gpu].

use serde::{Deserialize, Serialize};

use crate::diag::{join, Diagnostics};
use crate::gpu::{GpuModel, GpuSpec};
use crate::ids::Rank;
use crate::rule::Rule;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuSection {
    pub model: GpuModel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_bf16_tflops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbm_capacity_gib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hbm_bandwidth_tb_per_s: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_gb_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<f64>,
}

/// A whole cluster file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub kind: String,
    pub format_version: u32,
    pub name: String,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub gpu: GpuSection,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intra_node: Option<LinkSection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inter_node: Option<LinkSection>,
}

/// GPUs a cluster may have (ranks are u32 and plans list them).
pub const MAX_GPUS: u64 = 1 << 24;

/// A verified cluster with every figure resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    file: ClusterFile,
    pub name: String,
    pub nodes: u32,
    pub gpus_per_node: u32,
    pub gpu_model: GpuModel,
    pub gpu: GpuSpec,
}

impl Cluster {
    /// Verifies a cluster file and resolves the GPU figures.
    pub fn from_file(file: ClusterFile) -> Result<Cluster, Diagnostics> {
        let mut ds = Diagnostics::new();
        if file.nodes == 0 {
            ds.error("nodes", Rule::ClusterPositive, "must be at least 1");
        }
        if file.gpus_per_node == 0 {
            ds.error("gpus_per_node", Rule::ClusterPositive, "must be at least 1");
        }
        let world = u64::from(file.nodes) * u64::from(file.gpus_per_node);
        if world > MAX_GPUS {
            ds.error(
                "nodes",
                Rule::ClusterPositive,
                format!("nodes x gpus_per_node = {world} GPUs; at most {MAX_GPUS} are supported"),
            );
        }
        let mut gpu = file.gpu.model.spec();
        let mut apply = |path: &str, v: Option<f64>, scale: f64, slot: &mut f64| {
            if let Some(v) = v {
                if v.is_finite() && v > 0.0 {
                    *slot = v * scale;
                } else {
                    ds.error(
                        path,
                        Rule::ClusterGpu,
                        format!("{v} is not a finite number above 0"),
                    );
                }
            }
        };
        let g = &file.gpu;
        apply(
            "gpu.dense_bf16_tflops",
            g.dense_bf16_tflops,
            1e12,
            &mut gpu.dense_bf16_flops,
        );
        apply(
            "gpu.hbm_capacity_gib",
            g.hbm_capacity_gib,
            1024.0 * 1024.0 * 1024.0,
            &mut gpu.hbm_bytes,
        );
        apply(
            "gpu.hbm_bandwidth_tb_per_s",
            g.hbm_bandwidth_tb_per_s,
            1e12,
            &mut gpu.hbm_bandwidth,
        );
        for (section, link, bw, lat) in [
            (
                "intra_node",
                &file.intra_node,
                &mut gpu.nvlink_bandwidth,
                &mut gpu.nvlink_latency,
            ),
            (
                "inter_node",
                &file.inter_node,
                &mut gpu.network_bandwidth,
                &mut gpu.network_latency,
            ),
        ] {
            if let Some(l) = link {
                apply(
                    &join(section, "bandwidth_gb_per_s"),
                    l.bandwidth_gb_per_s,
                    1e9,
                    bw,
                );
                apply(&join(section, "latency_us"), l.latency_us, 1e-6, lat);
            }
        }
        if ds.has_errors() {
            return Err(ds);
        }
        Ok(Cluster {
            name: file.name.clone(),
            nodes: file.nodes,
            gpus_per_node: file.gpus_per_node,
            gpu_model: file.gpu.model,
            gpu,
            file,
        })
    }

    pub fn file(&self) -> &ClusterFile {
        &self.file
    }

    /// Total GPUs (ranks).
    pub fn world_size(&self) -> u64 {
        u64::from(self.nodes) * u64::from(self.gpus_per_node)
    }

    /// The node a rank sits on.
    pub fn node_of(&self, rank: Rank) -> u32 {
        rank / self.gpus_per_node.max(1)
    }
}
