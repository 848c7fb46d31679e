//! `hetpar import hf` says what it assumed (issue 20, item 5): every default taken is a note on
//! stderr, the training data the flags left to their defaults included, and a successful import
//! ends with a one-line summary; the model itself goes to stdout or -o unchanged.

mod common;
use common::{hetpar, stderr, stdout};

const LLAVA: &str = "examples/hf/llava-1.5-7b.config.json";

#[test]
fn import_notes_every_default_and_ends_with_a_summary() {
    let o = hetpar(&["import", "hf", LLAVA]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("note: ")).collect();
    for want in [
        "note: examples/hf/llava-1.5-7b.config.json: text_config.hidden_size = 4096 (absent; LlavaConfig builds text_config as a LlamaConfig",
        "note: examples/hf/llava-1.5-7b.config.json: data.global_batch = 128 (--global-batch not given;",
        "note: examples/hf/llava-1.5-7b.config.json: data.sequence_length = 4096 (--sequence-length not given)",
        "note: examples/hf/llava-1.5-7b.config.json: data.encoders.vision.items_per_sample = 1 (--items-per-sample not given)",
    ] {
        assert!(notes.iter().any(|n| n.starts_with(want)), "no `{want}` in\n{err}");
    }
    assert_eq!(
        err.lines().last(),
        Some("imported llava: 3 modules (llm, projector, vision), 7.051 G parameters"),
        "{err}"
    );
    // The model is on stdout, and nothing else is.
    let model: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("a model on stdout");
    assert_eq!(model["data"]["global_batch"], 128);
}

#[test]
fn flags_given_are_not_noted() {
    let o = hetpar(&[
        "import",
        "hf",
        LLAVA,
        "--global-batch",
        "256",
        "--sequence-length",
        "4096",
        "--items-per-sample",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(!err.contains("data."), "{err}");
    assert!(err.contains("imported llava: 3 modules"), "{err}");
}

#[test]
fn a_decoder_without_its_head_count_is_refused_naming_the_field() {
    let dir = common::scratch("import-no-heads");
    let text =
        std::fs::read_to_string(common::root().join("examples/hf/llama-3-8b.config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v.as_object_mut().unwrap().remove("num_attention_heads");
    let cfg = dir.join("config.json");
    std::fs::write(&cfg, v.to_string()).unwrap();
    let o = hetpar(&["import", "hf", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("config.json: num_attention_heads: missing: it sets the model's size"),
        "{err}"
    );
    assert!(stdout(&o).is_empty());
}
