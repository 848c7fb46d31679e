//! Every rule of `hetpar_ir::Rule` has a case that triggers it, through the public loading API.
//!
//! Each case starts from a valid document (an example file, or one of the two small plans for
//! `tiny-uneven` on `h100-8` below), applies a mutation (set or remove a value at a JSON pointer,
//! copy a value, or edit the text for syntax errors), loads the result, and asserts that a
//! diagnostic with the expected rule AND the expected JSON path is reported (and, for syntax
//! errors, the expected line and column). `every_rule_has_a_triggering_case` proves the table
//! covers `Rule::ALL`.

use hetpar_ir::hf::{import, ImportOptions};
use hetpar_ir::model::verify;
use hetpar_ir::{
    load_cluster, load_model, load_plan, Cluster, Diagnostics, ModelGraph, Rule, Severity,
};
use serde_json::Value;

const TINY_MODEL: &str = include_str!("../../examples/models/tiny-uneven.json");
const VA_MODEL: &str = include_str!("../../examples/models/vision-audio-7b.json");
const H100_8: &str = include_str!("../../examples/clusters/h100-8.json");
const H100_64: &str = include_str!("../../examples/clusters/h100-64.json");
const VA_PLAN: &str = include_str!("../../examples/plans/vision-audio-7b-colocated-64.json");
const LLAVA_HF: &str = include_str!("../../examples/hf/llava-1.5-7b.config.json");

/// tiny-uneven on h100-8, every module on all 8 ranks (colocated), one micro-batch per step.
const TINY_COLOCATED_PLAN: &str = r#"{
  "kind": "plan",
  "format_version": 1,
  "model": "tiny-uneven",
  "cluster": "h100-8",
  "schedule": { "kind": "colocated_sequential" },
  "modules": {
    "vision": {
      "layout": { "tp": 1, "micro_batch_size": 1 },
      "placement": { "ranks": { "offset": 0, "count": 8 } }
    },
    "projector": {
      "layout": { "tp": 1, "micro_batch_size": 1 },
      "placement": { "ranks": { "offset": 0, "count": 8 } }
    },
    "llm": {
      "layout": { "tp": 2, "micro_batch_size": 2 },
      "placement": { "ranks": { "offset": 0, "count": 8 } }
    }
  }
}
"#;

/// tiny-uneven on h100-8: vision + projector on ranks 0..4, the LLM (tp 2, pp 2) on 4..8; every
/// module takes 2 micro-batches of the batch of 8.
const TINY_PIPELINE_PLAN: &str = r#"{
  "kind": "plan",
  "format_version": 1,
  "model": "tiny-uneven",
  "cluster": "h100-8",
  "schedule": { "kind": "pipeline_1f1b" },
  "modules": {
    "vision": {
      "layout": { "micro_batch_size": 1 },
      "placement": { "ranks": { "offset": 0, "count": 4 } }
    },
    "projector": {
      "layout": { "micro_batch_size": 1 },
      "placement": { "ranks": { "offset": 0, "count": 4 } }
    },
    "llm": {
      "layout": { "tp": 2, "pp": 2, "micro_batch_size": 4 },
      "placement": { "ranks": { "offset": 4, "count": 4 } }
    }
  }
}
"#;

/// The valid documents the cases start from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Doc {
    /// examples/models/tiny-uneven.json (per-sample items, learned positions).
    TinyModel,
    /// examples/models/vision-audio-7b.json (two encoders, token merges, rope).
    VaModel,
    /// examples/clusters/h100-8.json.
    Cluster8,
    /// `TINY_COLOCATED_PLAN`, checked against tiny-uneven and h100-8.
    TinyColocated,
    /// `TINY_PIPELINE_PLAN`, checked against tiny-uneven and h100-8.
    TinyPipeline,
    /// examples/plans/vision-audio-7b-colocated-64.json, against vision-audio-7b and h100-64.
    VaPlan,
    /// examples/hf/llava-1.5-7b.config.json, imported with default options, then verified.
    LlavaHf,
}

const ALL_DOCS: [Doc; 7] = [
    Doc::TinyModel,
    Doc::VaModel,
    Doc::Cluster8,
    Doc::TinyColocated,
    Doc::TinyPipeline,
    Doc::VaPlan,
    Doc::LlavaHf,
];

impl Doc {
    fn text(self) -> &'static str {
        match self {
            Doc::TinyModel => TINY_MODEL,
            Doc::VaModel => VA_MODEL,
            Doc::Cluster8 => H100_8,
            Doc::TinyColocated => TINY_COLOCATED_PLAN,
            Doc::TinyPipeline => TINY_PIPELINE_PLAN,
            Doc::VaPlan => VA_PLAN,
            Doc::LlavaHf => LLAVA_HF,
        }
    }

    /// The model and cluster a plan is checked against.
    fn plan_context(self) -> Option<(&'static str, &'static str)> {
        match self {
            Doc::TinyColocated | Doc::TinyPipeline => Some((TINY_MODEL, H100_8)),
            Doc::VaPlan => Some((VA_MODEL, H100_64)),
            _ => None,
        }
    }
}

/// One change to a document.
#[derive(Clone, Copy, Debug)]
enum Edit {
    /// Sets the value at a JSON pointer to the given JSON text (the last token `-` appends to
    /// an array; the pointer `""` replaces the whole document).
    Set(&'static str, &'static str),
    /// Removes the value at a JSON pointer.
    Remove(&'static str),
    /// Copies the value at the first pointer to the second (`-` appends).
    CopyTo(&'static str, &'static str),
    /// Replaces the first occurrence of a text (for syntax errors).
    Text(&'static str, &'static str),
    /// Cuts the text just before the first occurrence of a text.
    CutBefore(&'static str),
}

struct Case {
    name: &'static str,
    doc: Doc,
    edits: &'static [Edit],
    /// For plans: edits to the model the plan is checked against.
    model_edits: &'static [Edit],
    rule: Rule,
    path: &'static str,
    /// Line and column (1-based) of a syntax error.
    at: Option<(usize, usize)>,
}

const fn case(
    name: &'static str,
    doc: Doc,
    edits: &'static [Edit],
    rule: Rule,
    path: &'static str,
) -> Case {
    Case {
        name,
        doc,
        edits,
        model_edits: &[],
        rule,
        path,
        at: None,
    }
}

impl Case {
    const fn with_model(self, model_edits: &'static [Edit]) -> Case {
        Case {
            model_edits,
            ..self
        }
    }

    const fn at(self, line: usize, column: usize) -> Case {
        Case {
            at: Some((line, column)),
            ..self
        }
    }
}

use Doc::*;
use Edit::*;

const MOE4: &str = r#"{"experts": 4, "top_k": 2, "expert_ffn_hidden": 128}"#;
const MOE8: &str = r#"{"experts": 8, "top_k": 2, "expert_ffn_hidden": 128}"#;

/// The table: every rule, most of them several ways.
const CASES: &[Case] = &[
    // json.syntax
    case(
        "a missing comma is a syntax error at the next key",
        TinyModel,
        &[Text(
            r#""name": "tiny-uneven","#,
            r#""name": "tiny-uneven""#,
        )],
        Rule::JsonSyntax,
        "",
    )
    .at(5, 3),
    case(
        "a trailing comma is a syntax error at the closing brace",
        Cluster8,
        &[Text(r#""latency_us": 8"#, r#""latency_us": 8,"#)],
        Rule::JsonSyntax,
        "",
    )
    .at(17, 3),
    case(
        "a truncated file is a syntax error at its end",
        TinyModel,
        &[CutBefore(r#""boundaries""#)],
        Rule::JsonSyntax,
        "",
    )
    .at(63, 2),
    case(
        "a bare word is a syntax error at its first letter",
        TinyColocated,
        &[Text(r#""colocated_sequential""#, "colocated_sequential")],
        Rule::JsonSyntax,
        "",
    )
    .at(6, 25),
    // json.type
    case(
        "a string where a count belongs is a type error at that field",
        TinyModel,
        &[Set("/data/global_batch", r#""eight""#)],
        Rule::JsonType,
        "data.global_batch",
    ),
    case(
        "a negative node count is a type error",
        Cluster8,
        &[Set("/nodes", "-1")],
        Rule::JsonType,
        "nodes",
    ),
    case(
        "a degree above u32 is a type error",
        TinyColocated,
        &[Set("/modules/llm/layout/tp", "4294967296")],
        Rule::JsonType,
        "modules.llm.layout.tp",
    ),
    case(
        "a missing required field is a type error at its parent",
        TinyModel,
        &[Remove("/data/precision")],
        Rule::JsonType,
        "data",
    ),
    case(
        "an unknown enum value is a type error at that field",
        TinyModel,
        &[Set("/modules/llm/transformer/ffn_kind", r#""relu_mlp""#)],
        Rule::JsonType,
        "modules.llm.transformer.ffn_kind",
    ),
    case(
        "a CP communication kind hetpar does not know is a type error at that field",
        TinyColocated,
        &[Set("/modules/llm/layout/cp_comm", r#""p2p""#)],
        Rule::JsonType,
        "modules.llm.layout.cp_comm",
    ),
    case(
        "a GPU model outside the built-in table is a type error at gpu.model",
        Cluster8,
        &[Set("/gpu/model", r#""h100_pcie""#)],
        Rule::JsonType,
        "gpu.model",
    ),
    case(
        "an unknown axis name is a type error inside axis_order",
        TinyColocated,
        &[Set(
            "/modules/llm/placement/axis_order",
            r#"["tp", "ep", "dp", "pp"]"#,
        )],
        Rule::JsonType,
        "modules.llm.placement.axis_order[1]",
    ),
    case(
        "a document that is not an object is a type error at the root",
        TinyColocated,
        &[Set("", "[1, 2, 3]")],
        Rule::JsonType,
        "",
    ),
    case(
        "an unsupported Hugging Face model_type is reported at model_type",
        LlavaHf,
        &[Set("/model_type", r#""gpt2""#)],
        Rule::JsonType,
        "model_type",
    ),
    case(
        "a Hugging Face size of the wrong type is reported at its path",
        LlavaHf,
        &[Set("/text_config/hidden_size", r#""4096""#)],
        Rule::JsonType,
        "text_config.hidden_size",
    ),
    // json.unknown_field
    case(
        "a misspelled transformer field is an unknown field at its path",
        TinyModel,
        &[Set("/modules/llm/transformer/layer", "4")],
        Rule::JsonUnknownField,
        "modules.llm.transformer.layer",
    ),
    case(
        "a misspelled layout field is an unknown field at its path",
        TinyColocated,
        &[Set("/modules/llm/layout/tpp", "2")],
        Rule::JsonUnknownField,
        "modules.llm.layout.tpp",
    ),
    case(
        "an extra field in a boundary is an unknown field at its index",
        TinyModel,
        &[Set("/boundaries/1/width", "64")],
        Rule::JsonUnknownField,
        "boundaries[1].width",
    ),
    case(
        "an unknown top-level cluster field is reported",
        Cluster8,
        &[Set("/gpus", "8")],
        Rule::JsonUnknownField,
        "gpus",
    ),
    // format.kind
    case(
        "a model file with kind plan is rejected at kind",
        TinyModel,
        &[Set("/kind", r#""plan""#)],
        Rule::FormatKind,
        "kind",
    ),
    case(
        "a cluster file without kind is rejected at kind",
        Cluster8,
        &[Remove("/kind")],
        Rule::FormatKind,
        "kind",
    ),
    // format.version
    case(
        "format_version 2 is not read",
        TinyColocated,
        &[Set("/format_version", "2")],
        Rule::FormatVersion,
        "format_version",
    ),
    case(
        "a string format_version is not read",
        TinyModel,
        &[Set("/format_version", r#""1""#)],
        Rule::FormatVersion,
        "format_version",
    ),
    // model.modules
    case(
        "a model without modules is rejected",
        TinyModel,
        &[Set("/modules", "{}")],
        Rule::ModelModules,
        "modules",
    ),
    case(
        "a model with two language models is rejected",
        TinyModel,
        &[CopyTo("/modules/llm", "/modules/llm2")],
        Rule::ModelModules,
        "modules",
    ),
    case(
        "a model without a language model is rejected",
        VaModel,
        &[
            Set("/modules/llm/kind", r#""generator""#),
            Remove("/modules/llm/positions"),
            Remove("/modules/llm/vocab_size"),
            Remove("/modules/llm/tied_embeddings"),
        ],
        Rule::ModelModules,
        "modules",
    ),
    // module.part
    case(
        "an encoder without an embedding is missing a part",
        TinyModel,
        &[Remove("/modules/vision/embedding")],
        Rule::ModulePart,
        "modules.vision.embedding",
    ),
    case(
        "a projector with a vocabulary has a part it must not have",
        TinyModel,
        &[Set("/modules/projector/vocab_size", "10")],
        Rule::ModulePart,
        "modules.projector.vocab_size",
    ),
    case(
        "a learned position table needs max_positions",
        TinyModel,
        &[Remove("/modules/vision/positions/max_positions")],
        Rule::ModulePart,
        "modules.vision.positions.max_positions",
    ),
    case(
        "rope positions take no max_positions",
        VaModel,
        &[Set("/modules/llm/positions/max_positions", "100")],
        Rule::ModulePart,
        "modules.llm.positions.max_positions",
    ),
    case(
        "a linear embedding needs in_features",
        TinyModel,
        &[Remove("/modules/vision/embedding/in_features")],
        Rule::ModulePart,
        "modules.vision.embedding.in_features",
    ),
    case(
        "a linear embedding has no patch_size",
        TinyModel,
        &[Set("/modules/vision/embedding/patch_size", "14")],
        Rule::ModulePart,
        "modules.vision.embedding.patch_size",
    ),
    case(
        "a projector MLP needs two widths",
        TinyModel,
        &[Set("/modules/projector/mlp/widths", "[32]")],
        Rule::ModulePart,
        "modules.projector.mlp.widths",
    ),
    // arch.positive
    case(
        "zero layers is rejected",
        TinyModel,
        &[Set("/modules/llm/transformer/layers", "0")],
        Rule::ArchPositive,
        "modules.llm.transformer.layers",
    ),
    case(
        "a zero projector width is rejected at its index",
        TinyModel,
        &[Set("/modules/projector/mlp/widths/1", "0")],
        Rule::ArchPositive,
        "modules.projector.mlp.widths[1]",
    ),
    case(
        "a zero temporal patch size is rejected",
        VaModel,
        &[Set("/modules/vision/embedding/temporal_patch_size", "0")],
        Rule::ArchPositive,
        "modules.vision.embedding.temporal_patch_size",
    ),
    case(
        "a zero conv kernel is rejected",
        VaModel,
        &[Set("/modules/audio/embedding/kernel_size", "0")],
        Rule::ArchPositive,
        "modules.audio.embedding.kernel_size",
    ),
    case(
        "an empty learned position table is rejected",
        TinyModel,
        &[Set("/modules/vision/positions/max_positions", "0")],
        Rule::ArchPositive,
        "modules.vision.positions.max_positions",
    ),
    case(
        "a zero vocabulary is rejected",
        TinyModel,
        &[Set("/modules/llm/vocab_size", "0")],
        Rule::ArchPositive,
        "modules.llm.vocab_size",
    ),
    case(
        "an encoder's zero tokens_per_item is rejected",
        VaModel,
        &[Set("/modules/vision/tokens_per_item", "0")],
        Rule::ArchPositive,
        "modules.vision.tokens_per_item",
    ),
    case(
        "a zero token merge is rejected",
        TinyModel,
        &[Set("/modules/projector/mlp/token_merge", "0")],
        Rule::ArchPositive,
        "modules.projector.mlp.token_merge",
    ),
    case(
        "a mixture of zero experts is rejected",
        TinyModel,
        &[Set(
            "/modules/llm/transformer/moe",
            r#"{"experts": 0, "top_k": 0, "expert_ffn_hidden": 128}"#,
        )],
        Rule::ArchPositive,
        "modules.llm.transformer.moe",
    ),
    // arch.heads
    case(
        "heads that do not divide hidden are rejected",
        TinyModel,
        &[Set("/modules/llm/transformer/heads", "3")],
        Rule::ArchHeads,
        "modules.llm.transformer.heads",
    ),
    case(
        "KV heads that do not divide heads are rejected",
        TinyModel,
        &[Set("/modules/llm/transformer/kv_heads", "3")],
        Rule::ArchHeads,
        "modules.llm.transformer.kv_heads",
    ),
    case(
        "an imported vision tower with 7 heads over 1024 is rejected after import",
        LlavaHf,
        &[Set("/vision_config/num_attention_heads", "7")],
        Rule::ArchHeads,
        "modules.vision.transformer.heads",
    ),
    // arch.moe
    case(
        "top_k above the expert count is rejected",
        TinyModel,
        &[Set(
            "/modules/llm/transformer/moe",
            r#"{"experts": 4, "top_k": 5, "expert_ffn_hidden": 128}"#,
        )],
        Rule::ArchMoe,
        "modules.llm.transformer.moe.top_k",
    ),
    case(
        "top_k 0 is rejected",
        TinyModel,
        &[Set(
            "/modules/llm/transformer/moe",
            r#"{"experts": 4, "top_k": 0, "expert_ffn_hidden": 128}"#,
        )],
        Rule::ArchMoe,
        "modules.llm.transformer.moe.top_k",
    ),
    case(
        "a MoE layer frequency of 0 is rejected",
        TinyModel,
        &[Set(
            "/modules/llm/transformer/moe",
            r#"{"experts": 4, "top_k": 2, "expert_ffn_hidden": 128, "layer_frequency": 0}"#,
        )],
        Rule::ArchMoe,
        "modules.llm.transformer.moe.layer_frequency",
    ),
    // arch.real
    case(
        "a negative norm epsilon is rejected",
        TinyModel,
        &[Set("/modules/llm/transformer/norm_eps", "-1e-6")],
        Rule::ArchReal,
        "modules.llm.transformer.norm_eps",
    ),
    case(
        "a Llama 3 rescaling whose high band is below its low band is rejected",
        TinyModel,
        &[
            Set("/modules/llm/positions", r#"{"kind": "rope"}"#),
            Set(
                "/modules/llm/positions/rope_scaling",
                r#"{"kind": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                    "high_freq_factor": 1.0, "original_max_positions": 8192}"#,
            ),
        ],
        Rule::ArchReal,
        "modules.llm.positions.rope_scaling.high_freq_factor",
    ),
    // boundary.modules
    case(
        "a boundary from a missing module is rejected at from",
        TinyModel,
        &[Set("/boundaries/0/from", r#""camera""#)],
        Rule::BoundaryModules,
        "boundaries[0].from",
    ),
    case(
        "a boundary to a missing module is rejected at to",
        TinyModel,
        &[Set("/boundaries/1/to", r#""decoder""#)],
        Rule::BoundaryModules,
        "boundaries[1].to",
    ),
    case(
        "a boundary from a module to itself is rejected",
        TinyModel,
        &[Set("/boundaries/1/to", r#""projector""#)],
        Rule::BoundaryModules,
        "boundaries[1].to",
    ),
    case(
        "a boundary into an encoder is rejected",
        VaModel,
        &[Set("/boundaries/0/to", r#""audio""#)],
        Rule::BoundaryModules,
        "boundaries[0].to",
    ),
    // boundary.duplicate
    case(
        "two boundaries with one name are rejected at the second name",
        TinyModel,
        &[
            Set("/boundaries/0/name", r#""b""#),
            Set("/boundaries/1/name", r#""b""#),
        ],
        Rule::BoundaryDuplicate,
        "boundaries[1].name",
    ),
    case(
        "two boundaries joining the same pair are rejected at the second",
        VaModel,
        &[
            CopyTo("/boundaries/1", "/boundaries/-"),
            Set("/boundaries/4/name", r#""again""#),
        ],
        Rule::BoundaryDuplicate,
        "boundaries[4]",
    ),
    // boundary.width
    case(
        "a projector output narrower than the LLM is rejected at the boundary",
        TinyModel,
        &[Set("/modules/projector/mlp/widths/2", "32")],
        Rule::BoundaryWidth,
        "boundaries[1]",
    ),
    case(
        "a token merge that changes the input width breaks the boundary width",
        VaModel,
        &[Set("/modules/vision_merger/mlp/token_merge", "2")],
        Rule::BoundaryWidth,
        "boundaries[0]",
    ),
    case(
        "a token merge that does not divide the merged width is rejected",
        TinyModel,
        &[Set("/modules/projector/mlp/token_merge", "3")],
        Rule::BoundaryWidth,
        "modules.projector.mlp.token_merge",
    ),
    // boundary.landing
    case(
        "rows entering the LLM must land at placeholders",
        TinyModel,
        &[Set("/boundaries/1/landing", r#""rows""#)],
        Rule::BoundaryLanding,
        "boundaries[1].landing",
    ),
    case(
        "rows entering a projector cannot land at placeholders",
        TinyModel,
        &[Set("/boundaries/0/landing", r#""placeholders""#)],
        Rule::BoundaryLanding,
        "boundaries[0].landing",
    ),
    case(
        "a projector fed by two encoders is rejected",
        VaModel,
        &[Set("/boundaries/2/to", r#""vision_merger""#)],
        Rule::BoundaryLanding,
        "modules.vision_merger",
    ),
    case(
        "placeholder rows that trace back to no encoder are rejected",
        TinyModel,
        &[Remove("/boundaries/0")],
        Rule::BoundaryLanding,
        "boundaries[0].from",
    ),
    // graph.cycle
    case(
        "a boundary back from the LLM to the projector makes a cycle",
        TinyModel,
        &[Set(
            "/boundaries/-",
            r#"{"from": "llm", "to": "projector", "landing": "rows"}"#,
        )],
        Rule::GraphCycle,
        "boundaries",
    ),
    // graph.connected
    case(
        "an encoder cut off from the LLM is rejected",
        TinyModel,
        &[Remove("/boundaries/0")],
        Rule::GraphConnected,
        "modules.vision",
    ),
    case(
        "a projector that feeds nothing does not reach the LLM",
        VaModel,
        &[Remove("/boundaries/3")],
        Rule::GraphConnected,
        "modules.audio_projector",
    ),
    // data.positive
    case(
        "a zero sequence length is rejected",
        TinyModel,
        &[Set("/data/sequence_length", "0")],
        Rule::DataPositive,
        "data.sequence_length",
    ),
    case(
        "a zero global batch is rejected",
        VaModel,
        &[Set("/data/global_batch", "0")],
        Rule::DataPositive,
        "data.global_batch",
    ),
    case(
        "an item of zero tokens is rejected at its index",
        TinyModel,
        &[Set("/data/encoders/vision/per_sample/1/1", "0")],
        Rule::DataPositive,
        "data.encoders.vision.per_sample[1][1]",
    ),
    case(
        "zero tokens per item in the data is rejected",
        VaModel,
        &[Set("/data/encoders/vision/tokens_per_item", "0")],
        Rule::DataPositive,
        "data.encoders.vision.tokens_per_item",
    ),
    // data.encoders
    case(
        "an encoder without a data entry is rejected",
        TinyModel,
        &[Remove("/data/encoders/vision")],
        Rule::DataEncoders,
        "data.encoders",
    ),
    case(
        "a data entry for the LLM is rejected",
        VaModel,
        &[Set("/data/encoders/llm", r#"{"items_per_sample": 1}"#)],
        Rule::DataEncoders,
        "data.encoders.llm",
    ),
    case(
        "a data entry for a missing module is rejected",
        VaModel,
        &[Set("/data/encoders/camera", r#"{"items_per_sample": 1}"#)],
        Rule::DataEncoders,
        "data.encoders.camera",
    ),
    // data.items
    case(
        "a per-sample list shorter than the batch is rejected",
        TinyModel,
        &[Remove("/data/encoders/vision/per_sample/7")],
        Rule::DataItems,
        "data.encoders.vision.per_sample",
    ),
    case(
        "items given both ways are rejected",
        TinyModel,
        &[Set("/data/encoders/vision/items_per_sample", "1")],
        Rule::DataItems,
        "data.encoders.vision",
    ),
    case(
        "items given neither way are rejected",
        TinyModel,
        &[Set("/data/encoders/vision", "{}")],
        Rule::DataItems,
        "data.encoders.vision",
    ),
    case(
        "tokens_per_item next to a per-sample list is rejected",
        TinyModel,
        &[Set("/data/encoders/vision/tokens_per_item", "4")],
        Rule::DataItems,
        "data.encoders.vision.tokens_per_item",
    ),
    case(
        "item counts without tokens per item anywhere are rejected",
        VaModel,
        &[Remove("/modules/audio/tokens_per_item")],
        Rule::DataItems,
        "data.encoders.audio.tokens_per_item",
    ),
    // data.token_merge
    case(
        "items that do not divide by the merger's 4 are rejected",
        VaModel,
        &[Set("/data/encoders/vision/tokens_per_item", "1022")],
        Rule::DataTokenMerge,
        "data.encoders.vision",
    ),
    // data.sequence
    case(
        "a sample whose items overflow the sequence is rejected",
        TinyModel,
        &[Set("/data/sequence_length", "16")],
        Rule::DataSequence,
        "data",
    ),
    case(
        "two encoders together overflowing the sequence are rejected",
        VaModel,
        &[Set("/data/encoders/vision/items_per_sample", "32")],
        Rule::DataSequence,
        "data",
    ),
    // data.positions
    case(
        "an item longer than a learned position table is rejected",
        TinyModel,
        &[Set("/modules/vision/positions/max_positions", "16")],
        Rule::DataPositions,
        "data.encoders.vision",
    ),
    case(
        "audio clips longer than the learned table are rejected",
        VaModel,
        &[Set("/modules/audio/positions/max_positions", "1000")],
        Rule::DataPositions,
        "data.encoders.audio",
    ),
    // cluster.positive
    case(
        "zero nodes is rejected",
        Cluster8,
        &[Set("/nodes", "0")],
        Rule::ClusterPositive,
        "nodes",
    ),
    case(
        "zero GPUs per node is rejected",
        Cluster8,
        &[Set("/gpus_per_node", "0")],
        Rule::ClusterPositive,
        "gpus_per_node",
    ),
    // cluster.gpu
    case(
        "a negative FLOP/s override is rejected",
        Cluster8,
        &[Set("/gpu/dense_bf16_tflops", "-1")],
        Rule::ClusterGpu,
        "gpu.dense_bf16_tflops",
    ),
    case(
        "a zero memory override is rejected",
        Cluster8,
        &[Set("/gpu/hbm_capacity_gib", "0")],
        Rule::ClusterGpu,
        "gpu.hbm_capacity_gib",
    ),
    case(
        "a zero NVLink latency is rejected",
        Cluster8,
        &[Set("/intra_node/latency_us", "0")],
        Rule::ClusterGpu,
        "intra_node.latency_us",
    ),
    case(
        "a negative network bandwidth is rejected",
        Cluster8,
        &[Set("/inter_node/bandwidth_gb_per_s", "-50")],
        Rule::ClusterGpu,
        "inter_node.bandwidth_gb_per_s",
    ),
    // plan.model
    case(
        "a plan for another model is rejected at model",
        TinyColocated,
        &[Set("/model", r#""llama-3-8b""#)],
        Rule::PlanModel,
        "model",
    ),
    case(
        "a plan for another cluster is rejected at cluster",
        TinyColocated,
        &[Set("/cluster", r#""h100-64""#)],
        Rule::PlanCluster,
        "cluster",
    ),
    // plan.cluster_size
    case(
        "a plan made for 16 GPUs on a cluster of 8 that kept its name is a warning",
        TinyColocated,
        &[Set("/cluster_gpus", "16")],
        Rule::PlanClusterSize,
        "cluster_gpus",
    ),
    // plan.modules
    case(
        "a plan without an entry for a module is rejected",
        TinyColocated,
        &[Remove("/modules/projector")],
        Rule::PlanModules,
        "modules",
    ),
    case(
        "a plan entry for a module the model lacks is rejected",
        TinyColocated,
        &[CopyTo("/modules/llm", "/modules/decoder")],
        Rule::PlanModules,
        "modules.decoder",
    ),
    // layout.positive
    case(
        "tp 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/tp", "0")],
        Rule::LayoutPositive,
        "modules.llm.layout.tp",
    ),
    case(
        "cp 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/cp", "0")],
        Rule::LayoutPositive,
        "modules.llm.layout.cp",
    ),
    case(
        "pp 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/pp", "0")],
        Rule::LayoutPositive,
        "modules.llm.layout.pp",
    ),
    case(
        "dp 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/dp", "0")],
        Rule::LayoutPositive,
        "modules.llm.layout.dp",
    ),
    case(
        "ep 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/ep", "0")],
        Rule::LayoutPositive,
        "modules.llm.layout.ep",
    ),
    case(
        "vpp 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/vpp", "0")],
        Rule::LayoutPositive,
        "modules.llm.layout.vpp",
    ),
    case(
        "a zero micro-batch size is rejected",
        TinyColocated,
        &[Set("/modules/vision/layout/micro_batch_size", "0")],
        Rule::LayoutPositive,
        "modules.vision.layout.micro_batch_size",
    ),
    // layout.degrees
    case(
        "an explicit dp that does not fill the ranks is rejected at dp",
        TinyColocated,
        &[Set("/modules/llm/layout/dp", "3")],
        Rule::LayoutDegrees,
        "modules.llm.layout.dp",
    ),
    case(
        "tp x cp x pp that does not divide the ranks is rejected at the layout",
        TinyColocated,
        &[Set("/modules/llm/placement/ranks/count", "7")],
        Rule::LayoutDegrees,
        "modules.llm.layout",
    ),
    // layout.tp
    case(
        "tp 8 does not divide 4 heads",
        TinyColocated,
        &[Set("/modules/llm/layout/tp", "8")],
        Rule::LayoutTp,
        "modules.llm.layout.tp",
    ),
    case(
        "tp 3 does not divide the vision encoder's 16 heads",
        VaPlan,
        &[Set("/modules/vision/layout/tp", "3")],
        Rule::LayoutTp,
        "modules.vision.layout.tp",
    ),
    case(
        "tp 2 does not divide a single KV head",
        TinyColocated,
        &[],
        Rule::LayoutTp,
        "modules.llm.layout.tp",
    )
    .with_model(&[Set("/modules/llm/transformer/kv_heads", "1")]),
    case(
        "tp 2 does not divide an odd FFN hidden size",
        TinyColocated,
        &[],
        Rule::LayoutTp,
        "modules.llm.layout.tp",
    )
    .with_model(&[Set("/modules/llm/transformer/ffn_hidden", "127")]),
    case(
        "tp 3 does not divide the projector's hidden width 64",
        TinyColocated,
        &[Set("/modules/projector/layout/tp", "3")],
        Rule::LayoutTp,
        "modules.projector.layout.tp",
    ),
    // layout.layers
    case(
        "pp 2 does not divide 5 layers without stage_layers",
        TinyPipeline,
        &[],
        Rule::LayoutLayers,
        "modules.llm.layout.pp",
    )
    .with_model(&[Set("/modules/llm/transformer/layers", "5")]),
    case(
        "4 layers cannot fill pp 2 x vpp 3 chunks",
        TinyPipeline,
        &[Set("/modules/llm/layout/vpp", "3")],
        Rule::LayoutLayers,
        "modules.llm.layout.pp",
    ),
    // layout.stage_layers
    case(
        "stage layers that do not sum to the layer count are rejected",
        TinyPipeline,
        &[Set("/modules/llm/layout/stage_layers", "[1, 2]")],
        Rule::LayoutStageLayers,
        "modules.llm.layout.stage_layers",
    ),
    case(
        "an empty pipeline stage is rejected",
        TinyPipeline,
        &[Set("/modules/llm/layout/stage_layers", "[4, 0]")],
        Rule::LayoutStageLayers,
        "modules.llm.layout.stage_layers",
    ),
    case(
        "stage layers with more entries than pp x vpp are rejected",
        TinyPipeline,
        &[Set("/modules/llm/layout/stage_layers", "[1, 1, 2]")],
        Rule::LayoutStageLayers,
        "modules.llm.layout.stage_layers",
    ),
    // layout.vpp
    case(
        "vpp 2 without pipeline stages is rejected",
        TinyColocated,
        &[Set("/modules/vision/layout/vpp", "2")],
        Rule::LayoutVpp,
        "modules.vision.layout.vpp",
    ),
    // layout.ep
    case(
        "ep 2 on a dense model is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/ep", "2")],
        Rule::LayoutEp,
        "modules.llm.layout.ep",
    ),
    case(
        "ep 8 does not divide 4 experts",
        TinyColocated,
        &[
            Set("/modules/llm/layout/tp", "1"),
            Set("/modules/llm/layout/micro_batch_size", "1"),
            Set("/modules/llm/layout/ep", "8"),
        ],
        Rule::LayoutEp,
        "modules.llm.layout.ep",
    )
    .with_model(&[Set("/modules/llm/transformer/moe", MOE4)]),
    case(
        "ep 8 does not divide dp x cp = 4",
        TinyColocated,
        &[Set("/modules/llm/layout/ep", "8")],
        Rule::LayoutEp,
        "modules.llm.layout.ep",
    )
    .with_model(&[Set("/modules/llm/transformer/moe", MOE8)]),
    // layout.sequence_parallel
    case(
        "sequence parallel with tp 1 is rejected",
        TinyColocated,
        &[Set("/modules/vision/layout/sequence_parallel", "true")],
        Rule::LayoutSequenceParallel,
        "modules.vision.layout.sequence_parallel",
    ),
    // layout.tp_comm_overlap
    case(
        "tp communication overlap without sequence parallel is rejected",
        TinyColocated,
        &[Set("/modules/llm/layout/tp_comm_overlap", "true")],
        Rule::LayoutTpCommOverlap,
        "modules.llm.layout.tp_comm_overlap",
    ),
    case(
        "tp communication overlap at tp 1 is rejected",
        TinyColocated,
        &[
            Set("/modules/vision/layout/sequence_parallel", "true"),
            Set("/modules/vision/layout/tp_comm_overlap", "true"),
        ],
        Rule::LayoutTpCommOverlap,
        "modules.vision.layout.tp_comm_overlap",
    ),
    // layout.cp
    case(
        "a projector with cp 2 is rejected",
        TinyColocated,
        &[Set("/modules/projector/layout/cp", "2")],
        Rule::LayoutCp,
        "modules.projector.layout.cp",
    ),
    case(
        "2 x cp 4 does not divide an LLM sequence of 100",
        TinyColocated,
        &[Set("/modules/llm/layout/cp", "4")],
        Rule::LayoutCp,
        "modules.llm.layout.cp",
    )
    .with_model(&[Set("/data/sequence_length", "100")]),
    case(
        "2 x cp 4 does not divide an encoder item of 4 tokens",
        TinyColocated,
        &[Set("/modules/vision/layout/cp", "4")],
        Rule::LayoutCp,
        "modules.vision.layout.cp",
    ),
    // layout.batch
    case(
        "dp 4 x micro-batch 3 does not divide the batch of 8",
        TinyColocated,
        &[Set("/modules/llm/layout/micro_batch_size", "3")],
        Rule::LayoutBatch,
        "modules.llm.layout.micro_batch_size",
    ),
    // layout.recompute
    case(
        "recompute layers without a policy are rejected",
        TinyColocated,
        &[Set(
            "/modules/llm/layout/recompute",
            r#"{"policy": "none", "layers": 1}"#,
        )],
        Rule::LayoutRecompute,
        "modules.llm.layout.recompute.layers",
    ),
    case(
        "recomputing 3 layers of a 2-layer stage is rejected",
        TinyPipeline,
        &[Set(
            "/modules/llm/layout/recompute",
            r#"{"policy": "full", "layers": 3}"#,
        )],
        Rule::LayoutRecompute,
        "modules.llm.layout.recompute.layers",
    ),
    // placement.ranks
    case(
        "an offset without a count is rejected",
        TinyColocated,
        &[Remove("/modules/llm/placement/ranks/count")],
        Rule::PlacementRanks,
        "modules.llm.placement.ranks",
    ),
    case(
        "a count of 0 is rejected",
        TinyColocated,
        &[Set("/modules/llm/placement/ranks/count", "0")],
        Rule::PlacementRanks,
        "modules.llm.placement.ranks.count",
    ),
    case(
        "an empty rank list is rejected",
        TinyColocated,
        &[Set("/modules/llm/placement/ranks", r#"{"list": []}"#)],
        Rule::PlacementRanks,
        "modules.llm.placement.ranks.list",
    ),
    case(
        "ranks given both ways are rejected",
        TinyColocated,
        &[Set("/modules/llm/placement/ranks/list", "[0, 1]")],
        Rule::PlacementRanks,
        "modules.llm.placement.ranks",
    ),
    // placement.range
    case(
        "ranks 4..12 run past an 8-GPU cluster",
        TinyColocated,
        &[Set("/modules/llm/placement/ranks/offset", "4")],
        Rule::PlacementRange,
        "modules.llm.placement.ranks",
    ),
    case(
        "rank 8 in a list runs past an 8-GPU cluster",
        TinyColocated,
        &[Set(
            "/modules/llm/placement/ranks",
            r#"{"list": [0, 1, 2, 3, 4, 5, 6, 8]}"#,
        )],
        Rule::PlacementRange,
        "modules.llm.placement.ranks",
    ),
    // placement.duplicate
    case(
        "a rank listed twice is rejected at its second position",
        TinyColocated,
        &[Set(
            "/modules/llm/placement/ranks",
            r#"{"list": [0, 1, 2, 3, 4, 5, 6, 6]}"#,
        )],
        Rule::PlacementDuplicate,
        "modules.llm.placement.ranks.list[7]",
    ),
    // placement.axis_order
    case(
        "an axis order naming tp twice is rejected",
        TinyColocated,
        &[Set(
            "/modules/llm/placement/axis_order",
            r#"["tp", "tp", "dp", "pp"]"#,
        )],
        Rule::PlacementAxisOrder,
        "modules.llm.placement.axis_order",
    ),
    case(
        "an axis order of three axes is rejected",
        TinyColocated,
        &[Set(
            "/modules/llm/placement/axis_order",
            r#"["tp", "cp", "dp"]"#,
        )],
        Rule::PlacementAxisOrder,
        "modules.llm.placement.axis_order",
    ),
    // placement.overlap (a warning)
    case(
        "an LLM on ranks 2..6 partly overlapping the encoder's 0..4 is a warning",
        TinyPipeline,
        &[Set("/modules/llm/placement/ranks/offset", "2")],
        Rule::PlacementOverlap,
        "modules",
    ),
    // placement.unused
    case(
        "a plan on 4 of the cluster's 8 GPUs is a warning",
        TinyColocated,
        &[
            Set("/modules/vision/placement/ranks/count", "4"),
            Set("/modules/projector/placement/ranks/count", "4"),
            Set("/modules/llm/placement/ranks/count", "4"),
        ],
        Rule::PlacementUnused,
        "modules",
    ),
    // schedule.kind
    case(
        "a colocated schedule over disjoint placements is rejected",
        TinyPipeline,
        &[Set("/schedule/kind", r#""colocated_three_phase""#)],
        Rule::ScheduleKind,
        "schedule.kind",
    ),
    case(
        "a pipeline schedule over colocated placements is rejected",
        TinyColocated,
        &[Set("/schedule/kind", r#""pipeline_1f1b""#)],
        Rule::ScheduleKind,
        "schedule.kind",
    ),
    // schedule.interleaved
    case(
        "vpp 2 under a plain 1F1B schedule is rejected",
        TinyPipeline,
        &[Set("/modules/llm/layout/vpp", "2")],
        Rule::ScheduleInterleaved,
        "schedule.kind",
    ),
    case(
        "an interleaved schedule without vpp is rejected",
        TinyPipeline,
        &[Set("/schedule/kind", r#""pipeline_interleaved""#)],
        Rule::ScheduleInterleaved,
        "schedule.kind",
    ),
    // schedule.chunk
    case(
        "the chunked schedule without encoder_chunk is rejected",
        TinyColocated,
        &[Set("/schedule/kind", r#""colocated_chunked""#)],
        Rule::ScheduleChunk,
        "schedule.encoder_chunk",
    ),
    case(
        "an encoder_chunk of 0 is rejected",
        TinyColocated,
        &[Set(
            "/schedule",
            r#"{"kind": "colocated_chunked", "encoder_chunk": 0}"#,
        )],
        Rule::ScheduleChunk,
        "schedule.encoder_chunk",
    ),
    case(
        "an encoder_chunk above the micro-batches of a step is rejected",
        TinyPipeline,
        &[Set("/schedule/encoder_chunk", "3")],
        Rule::ScheduleChunk,
        "schedule.encoder_chunk",
    ),
    case(
        "an encoder_chunk under colocated_three_phase is rejected",
        TinyColocated,
        &[
            Set("/schedule/kind", "\"colocated_three_phase\""),
            Set("/schedule/encoder_chunk", "1"),
        ],
        Rule::ScheduleChunk,
        "schedule.encoder_chunk",
    ),
    // schedule.colocated_pp
    case(
        "pp 2 under colocated_sequential is rejected at that module's pp",
        TinyColocated,
        &[
            Set("/modules/llm/layout/pp", "2"),
            Set("/modules/llm/layout/micro_batch_size", "4"),
        ],
        Rule::ScheduleColocatedPp,
        "modules.llm.layout.pp",
    ),
    // schedule.micro_batches
    case(
        "an encoder given a micro-batch size of 2 is rejected: passes deal its items",
        TinyColocated,
        &[Set("/modules/vision/layout/micro_batch_size", "2")],
        Rule::ScheduleMicroBatches,
        "modules.vision.layout.micro_batch_size",
    ),
    case(
        "a projector given a micro-batch size of 4 is rejected",
        TinyPipeline,
        &[Set("/modules/projector/layout/micro_batch_size", "4")],
        Rule::ScheduleMicroBatches,
        "modules.projector.layout.micro_batch_size",
    ),
    // schedule.groups
    case(
        "an encoder with pp 2 sharing ranks with a pp 1 projector is rejected",
        TinyPipeline,
        &[
            Set("/modules/vision/layout/pp", "2"),
            Set("/modules/vision/layout/micro_batch_size", "2"),
        ],
        Rule::ScheduleGroups,
        "modules.vision.layout.pp",
    ),
];

// ---------------------------------------------------------------------------------------------
// Applying edits and loading.

fn split_pointer(pointer: &str) -> (&str, &str) {
    let i = pointer
        .rfind('/')
        .unwrap_or_else(|| panic!("bad pointer {pointer:?}"));
    (&pointer[..i], &pointer[i + 1..])
}

fn set(doc: &mut Value, pointer: &str, value: Value) {
    if pointer.is_empty() {
        *doc = value;
        return;
    }
    let (parent, last) = split_pointer(pointer);
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no value at {parent:?}"));
    match parent {
        Value::Object(map) => {
            map.insert(last.to_string(), value);
        }
        Value::Array(items) if last == "-" => items.push(value),
        Value::Array(items) => {
            let i: usize = last.parse().expect("array index");
            items[i] = value;
        }
        other => panic!("cannot set {pointer:?} inside {other}"),
    }
}

fn remove(doc: &mut Value, pointer: &str) {
    let (parent, last) = split_pointer(pointer);
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no value at {parent:?}"));
    match parent {
        Value::Object(map) => {
            map.remove(last)
                .unwrap_or_else(|| panic!("no key at {pointer:?}"));
        }
        Value::Array(items) => {
            items.remove(last.parse::<usize>().expect("array index"));
        }
        other => panic!("cannot remove {pointer:?} from {other}"),
    }
}

/// Applies edits to a document's text. Value edits re-serialize the document; text edits work
/// on the current text, so a case with text edits only keeps the file's lines and columns.
fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_string();
    for edit in edits {
        match *edit {
            Text(from, to) => {
                assert!(text.contains(from), "text {from:?} not found");
                text = text.replacen(from, to, 1);
            }
            CutBefore(marker) => {
                let i = text
                    .find(marker)
                    .unwrap_or_else(|| panic!("text {marker:?} not found"));
                text.truncate(i);
            }
            Set(..) | Remove(_) | CopyTo(..) => {
                let mut doc: Value = serde_json::from_str(&text).expect("edits start from JSON");
                match *edit {
                    Set(pointer, json) => {
                        let value = serde_json::from_str(json)
                            .unwrap_or_else(|e| panic!("bad value {json:?}: {e}"));
                        set(&mut doc, pointer, value);
                    }
                    Remove(pointer) => remove(&mut doc, pointer),
                    CopyTo(from, to) => {
                        let value = doc
                            .pointer(from)
                            .unwrap_or_else(|| panic!("no value at {from:?}"))
                            .clone();
                        set(&mut doc, to, value);
                    }
                    _ => unreachable!(),
                }
                text = serde_json::to_string_pretty(&doc).expect("JSON values serialize");
            }
        }
    }
    text
}

fn model(text: &str) -> ModelGraph {
    match load_model(text) {
        Ok((m, _)) => m,
        Err(ds) => panic!("the context model does not load:\n{ds}"),
    }
}

fn cluster(text: &str) -> Cluster {
    load_cluster(text).unwrap_or_else(|ds| panic!("the context cluster does not load:\n{ds}"))
}

/// Loads a (mutated) document the way its kind is loaded; returns every diagnostic, errors
/// and warnings, and whether loading succeeded.
fn load(doc: Doc, text: &str, model_edits: &[Edit]) -> (bool, Diagnostics) {
    let result: Result<Diagnostics, Diagnostics> = match doc {
        TinyModel | VaModel => load_model(text).map(|(_, w)| w),
        Cluster8 => load_cluster(text).map(|_| Diagnostics::new()),
        TinyColocated | TinyPipeline | VaPlan => {
            let (m, c) = doc.plan_context().expect("plans have a context");
            let m = model(&apply(m, model_edits));
            let c = cluster(c);
            load_plan(text, &m, &c).map(|(_, w)| w)
        }
        LlavaHf => {
            let value: Value = serde_json::from_str(text).expect("HF edits keep valid JSON");
            import(&value, &ImportOptions::default())
                .and_then(verify::build)
                .map(|(_, w)| w)
        }
    };
    match result {
        Ok(w) => (true, w),
        Err(ds) => (false, ds),
    }
}

/// The rules that warn; every other rule's diagnostic is an error that stops loading.
const WARNINGS: [Rule; 3] = [
    Rule::PlacementOverlap,
    Rule::PlacementUnused,
    Rule::PlanClusterSize,
];

fn run(case: &Case) -> (bool, Diagnostics) {
    let text = apply(case.doc.text(), case.edits);
    load(case.doc, &text, case.model_edits)
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn base_documents_load_without_any_diagnostic() {
    for doc in ALL_DOCS {
        let (ok, ds) = load(doc, doc.text(), &[]);
        assert!(ok && ds.is_empty(), "{doc:?} does not load cleanly:\n{ds}");
    }
}

#[test]
fn every_case_reports_its_rule_at_its_path() {
    let mut failures = Vec::new();
    for case in CASES {
        let (ok, ds) = run(case);
        let hit = ds.iter().find(|d| {
            d.rule == case.rule
                && d.path == case.path
                && case
                    .at
                    .is_none_or(|(l, c)| d.line == Some(l) && d.column == Some(c))
        });
        let problem = match hit {
            None => Some(format!(
                "no [{}] at {:?}{}",
                case.rule.id(),
                case.path,
                case.at
                    .map(|(l, c)| format!(" line {l} column {c}"))
                    .unwrap_or_default()
            )),
            Some(d) if d.message.trim().is_empty() => Some("an empty message".to_string()),
            // The warnings: the plan still loads.
            Some(d) if WARNINGS.contains(&case.rule) => (d.severity != Severity::Warning || !ok)
                .then(|| {
                    format!(
                        "{} should be a warning on a plan that loads",
                        case.rule.id()
                    )
                }),
            Some(d) => (d.severity != Severity::Error || ok)
                .then(|| "expected an error that stops loading".to_string()),
        };
        if let Some(problem) = problem {
            let all = if ds.is_empty() {
                "(no diagnostics)".to_string()
            } else {
                ds.to_string()
            };
            failures.push(format!(
                "case \"{}\" ({:?}): {problem}; got:\n{all}",
                case.name, case.doc
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_rule_has_a_triggering_case() {
    // file.read is reported where files are read, which the ir never does: the CLI's
    // tests/cli_messages.rs triggers it.
    let missing: Vec<&str> = Rule::ALL
        .iter()
        .filter(|r| **r != Rule::FileRead && !CASES.iter().any(|c| c.rule == **r))
        .map(|r| r.id())
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a case in CASES: {}",
        missing.join(", ")
    );
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let dups: Vec<&&str> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    assert!(dups.is_empty(), "duplicate case names: {dups:?}");
}

#[test]
fn three_bad_fields_in_one_plan_give_three_diagnostics_at_once() {
    let text = apply(
        TINY_COLOCATED_PLAN,
        &[
            Set("/modules/vision/layout/sequence_parallel", "true"),
            Set("/modules/llm/layout/micro_batch_size", "3"),
            Set(
                "/modules/projector/placement/axis_order",
                r#"["tp", "tp", "dp", "pp"]"#,
            ),
        ],
    );
    let (ok, ds) = load(TinyColocated, &text, &[]);
    assert!(!ok);
    let mut got: Vec<(Rule, &str)> = ds.iter().map(|d| (d.rule, d.path.as_str())).collect();
    got.sort();
    let mut want = vec![
        (
            Rule::LayoutSequenceParallel,
            "modules.vision.layout.sequence_parallel",
        ),
        (Rule::LayoutBatch, "modules.llm.layout.micro_batch_size"),
        (
            Rule::PlacementAxisOrder,
            "modules.projector.placement.axis_order",
        ),
    ];
    want.sort();
    assert_eq!(got, want, "diagnostics:\n{ds}");
}

#[test]
fn three_bad_fields_in_one_model_give_three_diagnostics_at_once() {
    let text = apply(
        TINY_MODEL,
        &[
            Set("/modules/llm/transformer/heads", "3"),
            Set("/boundaries/0/from", r#""camera""#),
            Set("/data/sequence_length", "0"),
        ],
    );
    let (ok, ds) = load(TinyModel, &text, &[]);
    assert!(!ok);
    for (rule, path) in [
        (Rule::ArchHeads, "modules.llm.transformer.heads"),
        (Rule::BoundaryModules, "boundaries[0].from"),
        (Rule::DataPositive, "data.sequence_length"),
    ] {
        assert!(
            ds.iter().any(|d| d.rule == rule && d.path == path),
            "no [{}] at {path}; diagnostics:\n{ds}",
            rule.id()
        );
    }
}

#[test]
fn three_bad_cluster_values_give_three_diagnostics_at_once() {
    let text = apply(
        H100_8,
        &[
            Set("/nodes", "0"),
            Set("/gpu/dense_bf16_tflops", "0"),
            Set("/inter_node/latency_us", "-1"),
        ],
    );
    let ds = load_cluster(&text).expect_err("three bad values");
    let mut got: Vec<(Rule, &str)> = ds.iter().map(|d| (d.rule, d.path.as_str())).collect();
    got.sort();
    let mut want = vec![
        (Rule::ClusterPositive, "nodes"),
        (Rule::ClusterGpu, "gpu.dense_bf16_tflops"),
        (Rule::ClusterGpu, "inter_node.latency_us"),
    ];
    want.sort();
    assert_eq!(got, want, "diagnostics:\n{ds}");
}

#[test]
fn two_unknown_fields_in_one_file_are_both_reported_with_their_paths() {
    let text = apply(
        TINY_MODEL,
        &[
            Set("/modules/llm/transformer/layer", "4"),
            Set("/data/batch", "8"),
        ],
    );
    let ds = load_model(&text).expect_err("unknown fields are errors");
    let mut got: Vec<(Rule, &str)> = ds.iter().map(|d| (d.rule, d.path.as_str())).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (Rule::JsonUnknownField, "data.batch"),
            (Rule::JsonUnknownField, "modules.llm.transformer.layer"),
        ],
        "diagnostics:\n{ds}"
    );
}

/// The typed parse stops at the first type error, so this reports the unknown fields that come
/// before it in the document (keys are in sorted order after the edits re-serialize it).
#[test]
fn unknown_fields_before_a_type_error_are_reported_with_it() {
    let text = apply(
        TINY_COLOCATED_PLAN,
        &[
            Set("/modules/llm/layout/micro_batch", "2"),
            Set("/modules/llm/placement/rank", "0"),
            Set("/modules/vision/layout/tp", r#""two""#),
        ],
    );
    let ds = load(TinyColocated, &text, &[]).1;
    let mut got: Vec<(Rule, &str)> = ds.iter().map(|d| (d.rule, d.path.as_str())).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (Rule::JsonType, "modules.vision.layout.tp"),
            (Rule::JsonUnknownField, "modules.llm.layout.micro_batch"),
            (Rule::JsonUnknownField, "modules.llm.placement.rank"),
        ],
        "diagnostics:\n{ds}"
    );
}

#[test]
fn tp_3_on_a_16_head_module_reads_path_then_does_not_divide_heads() {
    let text = apply(VA_PLAN, &[Set("/modules/vision/layout/tp", "3")]);
    let (_, ds) = load(VaPlan, &text, &[]);
    let shown: Vec<String> = ds
        .iter()
        .filter(|d| d.rule == Rule::LayoutTp)
        .map(|d| d.to_string())
        .collect();
    assert!(
        shown.iter().any(
            |s| s.contains("modules.vision.layout.tp: 3 does not divide heads 16")
                && s.contains("[layout.tp]")
        ),
        "diagnostics:\n{ds}"
    );
}

#[test]
fn syntax_errors_show_line_and_column() {
    let text = apply(
        TINY_MODEL,
        &[Text(
            r#""name": "tiny-uneven","#,
            r#""name": "tiny-uneven""#,
        )],
    );
    let ds = load_model(&text).expect_err("syntax error");
    assert_eq!(ds.len(), 1, "{ds}");
    let d = ds.iter().next().expect("one diagnostic");
    assert_eq!((d.line, d.column), (Some(5), Some(3)));
    let shown = d.to_string();
    assert!(
        shown.starts_with("error: line 5 column 3: (root): ") && shown.ends_with("[json.syntax]"),
        "{shown}"
    );
    let shown = ds.with_file("tiny.json").to_string();
    assert!(shown.starts_with("error: tiny.json:5:3: "), "{shown}");
}

#[test]
fn a_wrong_kind_gives_one_clear_diagnostic_not_field_errors() {
    // A cluster file read as a model: only the header is reported.
    let ds = load_model(H100_8).expect_err("a cluster is not a model");
    let got: Vec<(Rule, &str)> = ds.iter().map(|d| (d.rule, d.path.as_str())).collect();
    assert_eq!(got, vec![(Rule::FormatKind, "kind")], "{ds}");
}
