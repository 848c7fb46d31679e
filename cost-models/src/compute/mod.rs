//! Time of one forward and one backward of a pipeline chunk of a module for one micro-batch on
//! one GPU: matrix products with a shape-dependent efficiency, the attention core, memory-bound
//! kernels by bytes over HBM bandwidth, a launch overhead per kernel (`kernels`), and the
//! collectives inside layers: TP with what Megatron overlaps of it (`tp`), CP's key/value
//! exchange (a ring overlapped with attention, or an exposed all-gather), EP's all-to-alls.
//! One layer is priced in `layer`.

mod kernels;
mod layer;
mod projector;
pub mod tp;

use hetpar_ir::layout::{Layout, RecomputePolicy};
use hetpar_ir::model::{AttentionKind, Body, EmbeddingKind, Module, TransformerSpec};
use hetpar_ir::Cluster;

use crate::collective::{collective_time, CollectiveKind, Link};
use crate::constants::Constants;
use crate::fold::Fold;
use crate::memory::AttentionKernel;

/// The work of one unit (a micro-batch, or an encoder pass) on one data-parallel replica.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Work {
    /// Rows (tokens) the replica processes.
    pub rows: f64,
    /// (query, key) pairs of attention, summed over sequences (items or samples).
    pub pairs: f64,
}

/// Time of a pass, split by what it spends it on.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PassTime {
    pub compute: f64,
    pub tp_comm: f64,
    pub cp_comm: f64,
    pub ep_comm: f64,
    /// Recomputed forward work inside backward (compute and its communication).
    pub recompute: f64,
}

impl PassTime {
    pub fn total(&self) -> f64 {
        self.compute + self.tp_comm + self.cp_comm + self.ep_comm + self.recompute
    }

    fn add(&mut self, o: &PassTime, times: f64) {
        self.compute += o.compute * times;
        self.tp_comm += o.tp_comm * times;
        self.cp_comm += o.cp_comm * times;
        self.ep_comm += o.ep_comm * times;
        self.recompute += o.recompute * times;
    }
}

/// Per-GPU hardware and links a module's layers see.
pub struct Hardware {
    pub peak: f64,
    pub hbm: f64,
    pub c: Constants,
    pub tp_link: Link,
    pub cp_link: Link,
    pub ep_link: Link,
}

impl Hardware {
    pub fn new(
        cluster: &Cluster,
        c: Constants,
        tp_link: Link,
        cp_link: Link,
        ep_link: Link,
    ) -> Self {
        Hardware {
            peak: cluster.gpu.dense_bf16_flops,
            hbm: cluster.gpu.hbm_bandwidth,
            c,
            tp_link,
            cp_link,
            ep_link,
        }
    }

    fn g(&self, x: f64) -> f64 {
        x / (x + self.c.matmul_half_dim)
    }

    /// A matrix product [m, k] x [k, n]: compute- or memory-bound (its launch is counted by
    /// the caller).
    pub fn matmul(&self, m: f64, k: f64, n: f64, bytes: f64) -> f64 {
        if m <= 0.0 || k <= 0.0 || n <= 0.0 {
            return 0.0;
        }
        let eff = self.c.matmul_max_efficiency * self.g(m) * self.g(n) * self.g(k);
        let compute = 2.0 * m * n * k / (self.peak * eff);
        let memory = bytes * (m * k + k * n + m * n) / (self.hbm * self.c.hbm_efficiency);
        compute.max(memory)
    }

    /// Memory-bound work moving `bytes` (its launches are counted by the caller).
    pub fn memory(&self, bytes: f64) -> f64 {
        if bytes <= 0.0 {
            return 0.0;
        }
        bytes / (self.hbm * self.c.hbm_efficiency)
    }
}

/// Forward and backward time of one chunk of a module for one micro-batch on one GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ChunkTime {
    pub forward: PassTime,
    pub backward: PassTime,
}

/// Prices chunks of one module under one layout.
pub struct ModuleCompute<'a> {
    pub module: &'a Module,
    pub layout: &'a Layout,
    pub hw: Hardware,
    /// Bytes of one activation element.
    pub act_bytes: f64,
    pub kernel: AttentionKernel,
    /// The last collectives a boundary program takes over from this module (`crate::fold`).
    pub fold: Fold,
}

impl ModuleCompute<'_> {
    /// Time of chunk `chunk` (index `c * pp + stage`) for a micro-batch of work `w`.
    pub fn chunk(&self, chunk: usize, w: Work) -> ChunkTime {
        // A replica dealt no items in a pass launches nothing.
        if w.rows <= 0.0 {
            return ChunkTime::default();
        }
        let l = self.layout;
        let layers = l.chunk_layers.get(chunk).copied().unwrap_or(0);
        let first_layer: u32 = l.chunk_layers.iter().take(chunk).sum();
        let chunks = l.chunk_layers.len();
        let is_first = first_layer == 0;
        let is_last = chunk + 1 == chunks || first_layer + layers == self.module.layer_count();
        let recompute_layers = match l.recompute.policy {
            RecomputePolicy::None => 0,
            _ => l.recompute.layers.unwrap_or(layers).min(layers),
        };
        let mut t = ChunkTime::default();
        match &self.module.body {
            Body::Projector(mlp) => {
                let tp = f64::from(l.tp);
                let mut first_product = 0.0;
                // `w.rows` are the output rows: a token merge happens before the first
                // linear, whose input width is the merged one.
                for (i, wd) in mlp.widths.windows(2).enumerate() {
                    let i = i as u32;
                    if i < first_layer || i >= first_layer + layers {
                        continue;
                    }
                    let product = self.hw.matmul(
                        w.rows,
                        f64::from(wd[0]),
                        f64::from(wd[1]) / tp,
                        self.act_bytes,
                    );
                    if first_product == 0.0 {
                        first_product = product;
                    }
                    // The product, its bias and activation.
                    let f = product
                        + self
                            .hw
                            .memory(2.0 * w.rows * f64::from(wd[1]) / tp * self.act_bytes)
                        + self.launches(2.0);
                    t.forward.compute += f;
                    t.backward.compute += 2.0 * f;
                }
                let (f, b) = self.projector_comm(mlp, w, first_product);
                t.forward.tp_comm += f;
                t.backward.tp_comm += b;
            }
            _ => {
                let Some(tr) = self.module.transformer() else {
                    return t;
                };
                let (dense, moe) =
                    (first_layer..first_layer + layers).fold((0u32, 0u32), |(d, m), i| {
                        if tr.is_moe_layer(i) {
                            (d, m + 1)
                        } else {
                            (d + 1, m)
                        }
                    });
                let rc_moe = recompute_layers.min(moe);
                let rc_dense = recompute_layers - rc_moe;
                for (count, rc, is_moe) in [(dense, rc_dense, false), (moe, rc_moe, true)] {
                    if count == 0 {
                        continue;
                    }
                    let one = self.layer(tr, w, is_moe);
                    t.forward.add(&one.forward, f64::from(count));
                    t.backward.add(&one.backward, f64::from(count));
                    let redo = match l.recompute.policy {
                        RecomputePolicy::Full => one.forward.total(),
                        RecomputePolicy::Selective => self.attention_core(tr, w),
                        RecomputePolicy::None => 0.0,
                    };
                    t.backward.recompute += redo * f64::from(rc);
                }
                let ends = self.ends(tr, w, is_first, is_last);
                t.forward.add(&ends.forward, 1.0);
                t.backward.add(&ends.backward, 1.0);
            }
        }
        t
    }

    fn rows_local(&self, w: Work) -> f64 {
        w.rows / f64::from(self.layout.cp)
    }

    /// The launch overhead of `n` kernels.
    fn launches(&self, n: f64) -> f64 {
        n * self.hw.c.kernel_launch_s
    }

    /// One all-reduce, all-gather and reduce-scatter of `elements` (summed over the whole
    /// sequence; a rank holds `1 / cp` of it) over the tp group.
    fn tp_collectives(&self, elements: f64) -> tp::TpCollectives {
        let l = self.layout;
        let bytes = elements / f64::from(l.cp) * self.act_bytes;
        let t = |kind| collective_time(kind, bytes, l.tp, self.hw.tp_link);
        tp::TpCollectives {
            all_reduce: t(CollectiveKind::AllReduce),
            all_gather: t(CollectiveKind::AllGather),
            reduce_scatter: t(CollectiveKind::ReduceScatter),
        }
    }

    fn tp_mode(&self) -> tp::TpMode {
        let l = self.layout;
        tp::TpMode {
            tp: l.tp,
            sequence_parallel: l.sequence_parallel,
            overlap: l.tp_comm_overlap,
        }
    }

    /// The attention core: score and context products, and for a materialized kernel the
    /// elementwise passes over the score matrix (which it computes whole, masked or not).
    fn attention_core(&self, tr: &TransformerSpec, w: Work) -> f64 {
        let l = self.layout;
        let heads = f64::from(tr.heads) / f64::from(l.tp);
        let materialized = self.kernel == AttentionKernel::Materialized;
        let pairs = if materialized && tr.attention == AttentionKind::Causal {
            2.0 * w.pairs
        } else {
            w.pairs
        } / f64::from(l.cp);
        let flops = 4.0 * heads * f64::from(tr.head_dim()) * pairs;
        if flops <= 0.0 {
            return 0.0;
        }
        // Scale and mask, softmax, dropout: each reads and writes the 16-bit scores.
        let scores = if materialized {
            self.hw.memory(3.0 * 2.0 * 2.0 * heads * pairs)
        } else {
            0.0
        };
        flops / (self.hw.peak * self.hw.c.attention_efficiency) + scores
    }

    /// Embeddings on the first chunk, heads and the loss on the last, with the
    /// vocabulary-parallel layers' TP communication in the pass that pays it.
    fn ends(&self, tr: &TransformerSpec, w: Work, first: bool, last: bool) -> ChunkTime {
        let hw = &self.hw;
        let b = self.act_bytes;
        let tp = f64::from(self.layout.tp);
        let m = self.rows_local(w);
        let h = f64::from(tr.hidden);
        let mut t = ChunkTime::default();
        let coll = self.tp_collectives(w.rows * h);
        let mode = self.tp_mode();
        let mut compute = 0.0;
        match &self.module.body {
            Body::Encoder { embedding, .. } if first => {
                let input = embedding.row_input_len() as f64;
                let k = match embedding.kind {
                    EmbeddingKind::Conv1d => f64::from(embedding.kernel_size.unwrap_or(1)),
                    _ => 1.0,
                };
                compute +=
                    hw.matmul(m, input * k, h, b) + hw.memory(2.0 * m * h * b) + self.launches(2.0);
            }
            Body::LanguageModel { vocab_size, .. } => {
                if first {
                    compute += hw.memory(2.0 * m * h * b) + self.launches(1.0);
                    let (f, bw) = mode.embedding(&coll);
                    t.forward.tp_comm += f;
                    t.backward.tp_comm += bw;
                }
                if last {
                    let v = f64::from(*vocab_size);
                    // Head product and an fp32 cross-entropy over the vocabulary shard (max,
                    // exponent sum, loss: three kernels, each reducing a float per row over tp).
                    let head = hw.matmul(m, h, v / tp, b);
                    compute += head + hw.memory(3.0 * m * v / tp * 4.0) + self.launches(4.0);
                    let (f, bw) = mode.output_layer(&coll, head);
                    let loss = 3.0
                        * collective_time(
                            CollectiveKind::AllReduce,
                            m * 4.0,
                            self.layout.tp,
                            hw.tp_link,
                        );
                    t.forward.tp_comm += f + loss;
                    t.backward.tp_comm += bw;
                }
            }
            Body::Generator {
                out_features: Some(o),
                ..
            } if last => {
                compute += hw.matmul(m, h, f64::from(*o) / tp, b) + self.launches(1.0);
            }
            _ => {}
        }
        t.forward.compute += compute;
        t.backward.compute += 2.0 * compute;
        t
    }
}
