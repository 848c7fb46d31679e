//! Imported Hugging Face configs give the parameter counts their publishers state (within 2%),
//! and import into models the verifier accepts.

use hetpar_ir::hf::{import, import_noted, ImportOptions, Note};
use hetpar_ir::model::{module_params, verify};
use hetpar_ir::Rule;

fn examples(file: &str) -> String {
    let p = format!("{}/../examples/hf/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Imports a config and returns (total parameters, active parameters) over all modules.
fn imported_params(file: &str) -> (u64, u64) {
    let value: serde_json::Value = serde_json::from_str(&examples(file)).expect("valid JSON");
    let model = import(&value, &ImportOptions::default())
        .unwrap_or_else(|d| panic!("{file} does not import:\n{d}"));
    let (graph, warnings) = verify::build(model)
        .unwrap_or_else(|d| panic!("{file} imports into an invalid model:\n{d}"));
    assert!(warnings.is_empty(), "{file}: {warnings}");
    graph.modules().iter().fold((0, 0), |(t, a), m| {
        let p = module_params(m);
        (t + p.total, a + p.active)
    })
}

/// Published totals, from the model pages listed in examples/hf/README.md.
const PUBLISHED: &[(&str, f64)] = &[
    ("llava-1.5-7b.config.json", 7.06e9),
    ("qwen2.5-vl-7b.config.json", 8.29e9),
    ("qwen2-vl-7b.config.json", 8.29e9),
    ("llama-3-8b.config.json", 8.03e9),
    ("llama-3-70b.config.json", 70.6e9),
    ("mistral-7b-v0.1.config.json", 7.24e9),
    ("mixtral-8x7b-v0.1.config.json", 46.7e9),
    ("qwen2-7b.config.json", 7.62e9),
];

#[test]
fn imported_parameter_counts_match_published_sizes_within_two_percent() {
    let mut failures = Vec::new();
    for &(file, published) in PUBLISHED {
        let (total, _) = imported_params(file);
        let err = (total as f64 - published) / published;
        println!(
            "{file:32} imported {:>15} published {published:.3e} error {:+.3}%",
            total,
            err * 100.0
        );
        if err.abs() > 0.02 {
            failures.push(format!(
                "{file}: {total} vs {published:.3e} ({:+.2}%)",
                err * 100.0
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mixtral_active_parameters_match_the_published_twelve_point_nine_billion() {
    let (_, active) = imported_params("mixtral-8x7b-v0.1.config.json");
    let err = (active as f64 - 12.9e9) / 12.9e9;
    assert!(err.abs() < 0.02, "active {active} ({:+.2}%)", err * 100.0);
}

/// An example config with `edit` applied, imported with its notes.
fn import_edited(
    file: &str,
    edit: impl Fn(&mut serde_json::Value),
) -> Result<(hetpar_ir::model::ModelFile, Vec<Note>), hetpar_ir::Diagnostics> {
    let mut v: serde_json::Value = serde_json::from_str(&examples(file)).expect("valid JSON");
    edit(&mut v);
    import_noted(&v, &ImportOptions::default())
}

/// The object at `path` ("" the top level, else a key of it) of `v`.
fn at<'a>(
    v: &'a mut serde_json::Value,
    path: &str,
) -> &'a mut serde_json::Map<String, serde_json::Value> {
    let o = if path.is_empty() { v } else { &mut v[path] };
    o.as_object_mut().expect("an object")
}

#[test]
fn a_config_without_a_size_is_an_error_at_that_field_never_a_guess() {
    let sizes = [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
    ];
    let cases: Vec<(&str, &str, &str)> = sizes
        .iter()
        .flat_map(|&k| {
            [
                ("llama-3-8b.config.json", "", k),
                ("mixtral-8x7b-v0.1.config.json", "", k),
                ("qwen2-vl-7b.config.json", "", k),
            ]
        })
        .chain(
            [
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            ]
            .map(|k| ("llava-1.5-7b.config.json", "vision_config", k)),
        )
        .chain(
            [
                "hidden_size",
                "depth",
                "num_heads",
                "intermediate_size",
                "out_hidden_size",
            ]
            .map(|k| ("qwen2.5-vl-7b.config.json", "vision_config", k)),
        )
        .chain(
            ["embed_dim", "depth", "num_heads", "hidden_size"]
                .map(|k| ("qwen2-vl-7b.config.json", "vision_config", k)),
        )
        .collect();
    for (file, object, key) in cases {
        let path = if object.is_empty() {
            key.to_string()
        } else {
            format!("{object}.{key}")
        };
        let ds = import_edited(file, |v| {
            at(v, object)
                .remove(key)
                .expect("the example has the field");
        })
        .err()
        .unwrap_or_else(|| panic!("{file} without {path} imports"));
        assert!(
            ds.iter().any(|d| d.rule == Rule::JsonType
                && d.path == path
                && d.message.starts_with("missing")),
            "{file} without {path}:\n{ds}"
        );
    }
}

#[test]
fn a_vision_language_config_without_its_vision_config_is_one_error() {
    for file in [
        "llava-1.5-7b.config.json",
        "qwen2.5-vl-7b.config.json",
        "qwen2-vl-7b.config.json",
    ] {
        let ds = import_edited(file, |v| {
            at(v, "").remove("vision_config");
        })
        .err()
        .unwrap_or_else(|| panic!("{file} without vision_config imports"));
        let paths: Vec<&str> = ds.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["vision_config"], "{file}:\n{ds}");
    }
}

#[test]
fn a_missing_field_takes_exactly_its_transformers_class_default() {
    // num_key_value_heads: LlamaConfig takes the head count, Qwen2Config 32, MistralConfig and
    // the Qwen2-VL text config 8.
    for (file, heads_to, kv, class) in [
        ("llama-3-8b.config.json", 40, 40, "LlamaConfig"),
        ("qwen2-7b.config.json", 28, 32, "Qwen2Config"),
        ("mistral-7b-v0.1.config.json", 32, 8, "MistralConfig"),
        ("qwen2-vl-7b.config.json", 28, 8, "Qwen2VLTextConfig"),
    ] {
        let (model, notes) = import_edited(file, |v| {
            at(v, "").remove("num_key_value_heads");
            v["num_attention_heads"] = heads_to.into();
        })
        .unwrap_or_else(|d| panic!("{file}: {d}"));
        let t = model.modules["llm"].transformer.as_ref().unwrap();
        assert_eq!(t.kv_heads, Some(kv), "{file}");
        let note = notes
            .iter()
            .find(|n| n.path == "num_key_value_heads")
            .unwrap_or_else(|| panic!("{file}: no note in {notes:?}"));
        assert_eq!(note.value, kv.to_string());
        assert!(note.why.contains(class), "{file}: {note}");
    }
}

#[test]
fn every_default_taken_is_noted_and_no_field_given_is() {
    let (_, notes) = import_edited("llava-1.5-7b.config.json", |_| {}).expect("imports");
    let shown: Vec<String> = notes.iter().map(ToString::to_string).collect();
    for want in [
        "vision_config.num_channels = 3 (absent; the default of CLIPVisionConfig)",
        "text_config.num_hidden_layers = 32 (absent; LlavaConfig builds text_config as a LlamaConfig, whose default this is)",
        "text_config.num_key_value_heads = 32 (absent; LlamaConfig takes num_attention_heads when it is absent)",
        "multimodal_projector_bias = true (absent; the default of LlavaConfig)",
    ] {
        assert!(shown.iter().any(|s| s == want), "no `{want}` in\n{}", shown.join("\n"));
    }
    // Given in the config: read, not noted.
    for given in [
        "vision_config.patch_size",
        "vision_config.image_size",
        "text_config.vocab_size",
    ] {
        assert!(!notes.iter().any(|n| n.path == given), "{given} noted");
    }
}
