//! One transformer layer (dense or MoE), forward and backward, on one GPU, without recompute.

use hetpar_ir::layout::CpComm;
use hetpar_ir::model::{Body, FfnKind, MoeSpec, PositionKind, TransformerSpec};

use super::tp::LinearPair;
use super::{kernels, ChunkTime, ModuleCompute, PassTime, Work};
use crate::collective::{collective_time, p2p_time, CollectiveKind};

/// A layer's feed-forward part, forward.
struct Ffn {
    /// Its products and routing work.
    compute: f64,
    /// The products TP communication can run under.
    pair: LinearPair,
    /// Width of the activation its elementwise kernels read and write, per row.
    width: f64,
    /// Dispatch and combine all-to-alls.
    ep_comm: f64,
}

impl ModuleCompute<'_> {
    pub(super) fn layer(&self, tr: &TransformerSpec, w: Work, is_moe: bool) -> ChunkTime {
        let l = self.layout;
        let hw = &self.hw;
        let b = self.act_bytes;
        let tp = f64::from(l.tp);
        let m = self.rows_local(w);
        let h = f64::from(tr.hidden);
        let d = f64::from(tr.head_dim());
        let q = f64::from(tr.heads) * d;
        let kv = f64::from(tr.kv_heads()) * d;
        let qkv = hw.matmul(m, h, (q + 2.0 * kv) / tp, b);
        let proj = hw.matmul(m, q / tp, h, b);
        let moe = tr.moe.as_ref().filter(|_| is_moe);
        let ffn = match moe {
            Some(spec) => self.moe_ffn(tr, spec, m),
            None => self.dense_ffn(tr, m),
        };
        let attn = self.attention_core(tr, w);
        let sp = if l.sequence_parallel { tp } else { 1.0 };
        let elementwise = hw.memory(hw.c.elementwise_passes * m * h * b / sp)
            + hw.memory(3.0 * m * ffn.width / tp * b);
        let launches = self.launches(kernels::layer_forward(
            l,
            self.positions(),
            self.kernel,
            moe,
        ));
        let coll = self.tp_collectives(w.rows * h);
        let mode = self.tp_mode();
        let (attn_f, attn_b) = mode.pair(
            &coll,
            LinearPair {
                column: qkv,
                row: proj,
            },
        );
        let (ffn_f, ffn_b) = mode.pair(&coll, ffn.pair);
        let (cp_f, cp_b) = self.kv_exchange(m * kv / tp, attn);
        let work = qkv + proj + ffn.compute + elementwise;
        ChunkTime {
            forward: PassTime {
                compute: work + attn + launches,
                tp_comm: attn_f + ffn_f,
                cp_comm: cp_f,
                ep_comm: ffn.ep_comm,
                recompute: 0.0,
            },
            backward: PassTime {
                compute: 2.0 * work + 2.5 * attn + kernels::BACKWARD_PER_FORWARD * launches,
                tp_comm: attn_b + ffn_b,
                cp_comm: cp_b,
                ep_comm: ffn.ep_comm,
                recompute: 0.0,
            },
        }
    }

    fn positions(&self) -> PositionKind {
        match &self.module.body {
            Body::Encoder { positions, .. } | Body::LanguageModel { positions, .. } => {
                positions.kind
            }
            _ => PositionKind::None,
        }
    }

    /// The two FFN products of `rows` rows through width `f`.
    fn ffn_pair(&self, tr: &TransformerSpec, rows: f64, f: f64) -> LinearPair {
        let hw = &self.hw;
        let (b, tp, h) = (
            self.act_bytes,
            f64::from(self.layout.tp),
            f64::from(tr.hidden),
        );
        let up = match tr.ffn_kind {
            FfnKind::GeluMlp => f,
            // Gate and up in one product.
            FfnKind::Swiglu => 2.0 * f,
        };
        LinearPair {
            column: hw.matmul(rows, h, up / tp, b),
            row: hw.matmul(rows, f / tp, h, b),
        }
    }

    fn dense_ffn(&self, tr: &TransformerSpec, m: f64) -> Ffn {
        let f = f64::from(tr.ffn_hidden);
        let pair = self.ffn_pair(tr, m, f);
        Ffn {
            compute: pair.column + pair.row,
            pair,
            width: f,
            ep_comm: 0.0,
        }
    }

    /// Router, top-k, permutation of the routed copies to their experts and back, each local
    /// expert's products on its share of the copies (the busiest expert's, `moe_load_imbalance`
    /// times the mean, sets the pace), shared experts, and the dispatch and combine all-to-alls.
    fn moe_ffn(&self, tr: &TransformerSpec, moe: &MoeSpec, m: f64) -> Ffn {
        let l = self.layout;
        let hw = &self.hw;
        let (b, h) = (self.act_bytes, f64::from(tr.hidden));
        let e = f64::from(moe.experts);
        let k = f64::from(moe.top_k);
        let fe = f64::from(moe.expert_ffn_hidden);
        let imbalance = hw.c.moe_load_imbalance.max(1.0);
        let local_experts = (e / f64::from(l.ep)).max(1.0);
        let routed = m * k;
        let per_expert = routed / local_experts * imbalance;
        let expert = self.ffn_pair(tr, per_expert, fe);
        let shared = self.ffn_pair(tr, m, fe);
        let shared_n = f64::from(moe.shared_experts);
        let router = hw.matmul(m, h, e, b) + hw.memory(2.0 * m * e * 4.0);
        // Permute reads the rows and writes the routed copies; unpermute the reverse.
        let permute = hw.memory(2.0 * (routed + m) * h * b);
        let pair = LinearPair {
            column: local_experts * expert.column + shared_n * shared.column,
            row: local_experts * expert.row + shared_n * shared.row,
        };
        let a2a = collective_time(
            CollectiveKind::AllToAll,
            routed * h * b * imbalance,
            l.ep,
            hw.ep_link,
        );
        Ffn {
            compute: router + permute + pair.column + pair.row,
            pair,
            width: fe * k,
            ep_comm: 2.0 * a2a,
        }
    }

    /// Exposed (forward, backward) CP key/value exchange for `local` key (and as many value)
    /// elements per rank: a ring of `cp - 1` steps under the attention core (backward sends
    /// keys, values and their gradients), or Megatron's all-gather kind: keys and values
    /// gathered whole before attention and their gradients reduce-scattered after it.
    fn kv_exchange(&self, local: f64, attn: f64) -> (f64, f64) {
        let l = self.layout;
        if l.cp <= 1 {
            return (0.0, 0.0);
        }
        let bytes = 2.0 * local * self.act_bytes;
        let link = self.hw.cp_link;
        if self.cp_all_gather() {
            let whole = bytes * f64::from(l.cp);
            (
                collective_time(CollectiveKind::AllGather, whole, l.cp, link),
                collective_time(CollectiveKind::ReduceScatter, whole, l.cp, link),
            )
        } else {
            let ring = f64::from(l.cp - 1) * p2p_time(bytes, link);
            ((ring - attn).max(0.0), (2.0 * ring - 2.5 * attn).max(0.0))
        }
    }

    fn cp_all_gather(&self) -> bool {
        self.layout.cp_comm == CpComm::AllGather
    }
}
