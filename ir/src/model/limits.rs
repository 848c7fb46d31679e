//! Upper bounds on the model sizes that drive work. Every later stage loops over layers, items
//! or samples, or multiplies widths: without a bound, a typo (10^7 layers) turns `plan` into
//! minutes and `describe` into seconds. Each bound is far above any published model; the
//! table in `docs/model-format.md` ("Limits") lists them, and the tests check it against
//! these constants.

use super::file::ModelFile;
use crate::diag::{index, join, Diagnostics};
use crate::rule::Rule;

/// Transformer layers of one module (also a conv embedding's layers).
pub const MAX_LAYERS: u32 = 1 << 10;
/// Hidden size, FFN hidden size, head size, MLP widths, input and output features.
pub const MAX_WIDTH: u32 = 1 << 20;
/// Attention heads and KV heads.
pub const MAX_HEADS: u32 = 1 << 12;
/// Routed experts, and shared experts, of a mixture of experts.
pub const MAX_EXPERTS: u32 = 1 << 12;
/// Vocabulary size.
pub const MAX_VOCAB: u32 = 1 << 24;
/// Sequence length, tokens of one item, a learned position table.
pub const MAX_TOKENS: u32 = 1 << 24;
/// Items (images, clips) of one sample for one encoder.
pub const MAX_ITEMS_PER_SAMPLE: u32 = 1 << 16;

/// Reports every size of `file` above its limit: module sizes under `arch.positive`, data
/// sizes under `data.positive` (the global batch's bound is checked with its other rules).
pub(super) fn check(file: &ModelFile, ds: &mut Diagnostics) {
    for (name, m) in &file.modules {
        let path = join("modules", name);
        let mut arch = |field: &str, v: Option<u32>, max: u32| {
            above(ds, &join(&path, field), Rule::ArchPositive, v, max);
        };
        if let Some(t) = &m.transformer {
            arch("transformer.layers", Some(t.layers), MAX_LAYERS);
            arch("transformer.hidden", Some(t.hidden), MAX_WIDTH);
            arch("transformer.ffn_hidden", Some(t.ffn_hidden), MAX_WIDTH);
            arch("transformer.head_dim", t.head_dim, MAX_WIDTH);
            arch("transformer.heads", Some(t.heads), MAX_HEADS);
            arch("transformer.kv_heads", t.kv_heads, MAX_HEADS);
            if let Some(moe) = &t.moe {
                arch("transformer.moe.experts", Some(moe.experts), MAX_EXPERTS);
                let shared = Some(moe.shared_experts);
                arch("transformer.moe.shared_experts", shared, MAX_EXPERTS);
                let ffn = Some(moe.expert_ffn_hidden);
                arch("transformer.moe.expert_ffn_hidden", ffn, MAX_WIDTH);
            }
        }
        if let Some(e) = &m.embedding {
            arch("embedding.in_features", e.in_features, MAX_WIDTH);
            arch("embedding.conv_layers", e.conv_layers, MAX_LAYERS);
        }
        if let Some(p) = &m.positions {
            arch("positions.max_positions", p.max_positions, MAX_TOKENS);
        }
        if let Some(mlp) = &m.mlp {
            for (i, &w) in mlp.widths.iter().enumerate() {
                let at = index("mlp.widths", i);
                arch(&at, Some(w), MAX_WIDTH);
            }
        }
        arch("vocab_size", m.vocab_size, MAX_VOCAB);
        arch("out_features", m.out_features, MAX_WIDTH);
        arch("tokens_per_item", m.tokens_per_item, MAX_TOKENS);
    }
    let seq = Some(file.data.sequence_length);
    above(
        ds,
        "data.sequence_length",
        Rule::DataPositive,
        seq,
        MAX_TOKENS,
    );
    for (name, d) in &file.data.encoders {
        let path = join("data.encoders", name);
        let mut data = |field: &str, v: Option<u32>, max: u32| {
            above(ds, &join(&path, field), Rule::DataPositive, v, max);
        };
        let items = MAX_ITEMS_PER_SAMPLE;
        data("items_per_sample", d.items_per_sample, items);
        data("tokens_per_item", d.tokens_per_item, MAX_TOKENS);
        for (s, sample) in d.per_sample.iter().flatten().enumerate() {
            let at = format!("per_sample[{s}]");
            let n = u32::try_from(sample.len()).unwrap_or(u32::MAX);
            data(&at, Some(n), items);
            // One message per sample at most: a list of huge items says it once.
            if let Some(&t) = sample.iter().find(|&&t| t > MAX_TOKENS) {
                data(&at, Some(t), MAX_TOKENS);
            }
        }
    }
}

/// An error at `path` when `v` is above `max`, stating the limit.
fn above(ds: &mut Diagnostics, path: &str, rule: Rule, v: Option<u32>, max: u32) {
    if let Some(v) = v.filter(|&v| v > max) {
        ds.error(
            path,
            rule,
            format!("{v} is above hetpar's limit of {max} (docs/model-format.md, \"Limits\")"),
        );
    }
}
