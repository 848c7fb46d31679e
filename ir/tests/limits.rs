//! Every model size that drives work has an upper bound (issue 20, item 3): one above it is an
//! error at its JSON path that states the limit, one at it passes the bound, and
//! docs/model-format.md lists every bound.

use hetpar_ir::model::limits::*;
use hetpar_ir::model::verify::MAX_GLOBAL_BATCH;
use hetpar_ir::{load_model, Rule};
use serde_json::{json, Value};

const VA_MODEL: &str = include_str!("../../examples/models/vision-audio-7b.json");
const TINY_MODEL: &str = include_str!("../../examples/models/tiny-uneven.json");
const MODEL_FORMAT: &str = include_str!("../../docs/model-format.md");

/// vision-audio-7b with a mixture of experts in its language model.
fn va_moe() -> Value {
    let mut v: Value = serde_json::from_str(VA_MODEL).unwrap();
    v["modules"]["llm"]["transformer"]["moe"] =
        json!({"experts": 8, "top_k": 2, "expert_ffn_hidden": 14336, "shared_experts": 1});
    v
}

/// (model, JSON pointer, limit, rule, the diagnostic's path).
fn cases() -> Vec<(Value, &'static str, u32, Rule, &'static str)> {
    let va = va_moe;
    let tiny = || serde_json::from_str::<Value>(TINY_MODEL).unwrap();
    let (arch, data) = (Rule::ArchPositive, Rule::DataPositive);
    vec![
        (
            va(),
            "/modules/llm/transformer/layers",
            MAX_LAYERS,
            arch,
            "modules.llm.transformer.layers",
        ),
        (
            va(),
            "/modules/llm/transformer/hidden",
            MAX_WIDTH,
            arch,
            "modules.llm.transformer.hidden",
        ),
        (
            va(),
            "/modules/llm/transformer/ffn_hidden",
            MAX_WIDTH,
            arch,
            "modules.llm.transformer.ffn_hidden",
        ),
        (
            va(),
            "/modules/llm/transformer/heads",
            MAX_HEADS,
            arch,
            "modules.llm.transformer.heads",
        ),
        (
            va(),
            "/modules/llm/transformer/kv_heads",
            MAX_HEADS,
            arch,
            "modules.llm.transformer.kv_heads",
        ),
        (
            va(),
            "/modules/llm/transformer/moe/experts",
            MAX_EXPERTS,
            arch,
            "modules.llm.transformer.moe.experts",
        ),
        (
            va(),
            "/modules/llm/transformer/moe/shared_experts",
            MAX_EXPERTS,
            arch,
            "modules.llm.transformer.moe.shared_experts",
        ),
        (
            va(),
            "/modules/llm/transformer/moe/expert_ffn_hidden",
            MAX_WIDTH,
            arch,
            "modules.llm.transformer.moe.expert_ffn_hidden",
        ),
        (
            va(),
            "/modules/llm/vocab_size",
            MAX_VOCAB,
            arch,
            "modules.llm.vocab_size",
        ),
        (
            va(),
            "/modules/vision/transformer/layers",
            MAX_LAYERS,
            arch,
            "modules.vision.transformer.layers",
        ),
        (
            va(),
            "/modules/vision/tokens_per_item",
            MAX_TOKENS,
            arch,
            "modules.vision.tokens_per_item",
        ),
        (
            va(),
            "/modules/audio/embedding/in_features",
            MAX_WIDTH,
            arch,
            "modules.audio.embedding.in_features",
        ),
        (
            va(),
            "/modules/audio/embedding/conv_layers",
            MAX_LAYERS,
            arch,
            "modules.audio.embedding.conv_layers",
        ),
        (
            va(),
            "/modules/audio/positions/max_positions",
            MAX_TOKENS,
            arch,
            "modules.audio.positions.max_positions",
        ),
        (
            va(),
            "/modules/vision_merger/mlp/widths/1",
            MAX_WIDTH,
            arch,
            "modules.vision_merger.mlp.widths[1]",
        ),
        (
            va(),
            "/data/sequence_length",
            MAX_TOKENS,
            data,
            "data.sequence_length",
        ),
        (
            va(),
            "/data/encoders/vision/items_per_sample",
            MAX_ITEMS_PER_SAMPLE,
            data,
            "data.encoders.vision.items_per_sample",
        ),
        (
            va(),
            "/data/encoders/vision/tokens_per_item",
            MAX_TOKENS,
            data,
            "data.encoders.vision.tokens_per_item",
        ),
        (
            va(),
            "/data/global_batch",
            MAX_GLOBAL_BATCH,
            data,
            "data.global_batch",
        ),
        (
            tiny(),
            "/data/encoders/vision/per_sample/1/0",
            MAX_TOKENS,
            data,
            "data.encoders.vision.per_sample[1]",
        ),
    ]
}

/// Whether a message is a bound's (the global batch's predates the others' wording).
fn is_bound(message: &str) -> bool {
    message.contains("above hetpar's limit of") || message.contains("are supported")
}

fn with(mut model: Value, pointer: &str, v: u32) -> String {
    *model
        .pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = v.into();
    model.to_string()
}

#[test]
fn every_size_above_its_limit_is_an_error_at_its_path_stating_the_limit() {
    for (model, pointer, limit, rule, path) in cases() {
        let ds = load_model(&with(model, pointer, limit + 1)).expect_err(pointer);
        assert!(
            ds.iter().any(|d| d.rule == rule
                && d.path == path
                && is_bound(&d.message)
                && d.message.contains(&limit.to_string())),
            "{pointer} = {}:\n{ds}",
            limit + 1
        );
    }
}

#[test]
fn a_size_at_its_limit_passes_the_bound() {
    for (model, pointer, limit, _, path) in cases() {
        let ds = match load_model(&with(model, pointer, limit)) {
            Ok((_, w)) => w,
            Err(ds) => ds,
        };
        // Other rules may object to so large a size; the bound does not.
        assert!(
            !ds.iter().any(|d| d.path == path && is_bound(&d.message)),
            "{pointer} = {limit}:\n{ds}"
        );
    }
}

#[test]
fn the_items_of_one_per_sample_entry_are_bounded() {
    let mut v: Value = serde_json::from_str(TINY_MODEL).unwrap();
    v["data"]["encoders"]["vision"]["per_sample"][2] =
        json!(vec![1; MAX_ITEMS_PER_SAMPLE as usize + 1]);
    let ds = load_model(&v.to_string()).expect_err("too many items");
    assert!(
        ds.iter()
            .any(|d| d.path == "data.encoders.vision.per_sample[2]"
                && d.rule == Rule::DataPositive
                && d.message.contains(&MAX_ITEMS_PER_SAMPLE.to_string())),
        "{ds}"
    );
}

#[test]
fn model_format_md_lists_every_limit() {
    let section = MODEL_FORMAT
        .split("\n## Limits\n")
        .nth(1)
        .expect("a Limits section");
    let section = section.split("\n## ").next().unwrap();
    for (name, limit, fields) in [
        ("MAX_LAYERS", MAX_LAYERS, "`layers`"),
        ("MAX_WIDTH", MAX_WIDTH, "`hidden`"),
        ("MAX_HEADS", MAX_HEADS, "`heads`"),
        ("MAX_EXPERTS", MAX_EXPERTS, "`experts`"),
        ("MAX_VOCAB", MAX_VOCAB, "`vocab_size`"),
        ("MAX_TOKENS", MAX_TOKENS, "`sequence_length`"),
        (
            "MAX_ITEMS_PER_SAMPLE",
            MAX_ITEMS_PER_SAMPLE,
            "`items_per_sample`",
        ),
        ("MAX_GLOBAL_BATCH", MAX_GLOBAL_BATCH, "`global_batch`"),
    ] {
        let row = section
            .lines()
            .find(|l| l.starts_with(&format!("| {fields}")))
            .unwrap_or_else(|| panic!("no row for {fields} ({name})"));
        assert!(
            row.contains(&format!("| {limit} (2^{}) |", limit.trailing_zeros())),
            "{name} is {limit}: {row}"
        );
    }
}
