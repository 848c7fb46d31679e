//! Imported Hugging Face configs give the parameter counts their publishers state (within 2%),
//! and import into models the verifier accepts.

use hetpar_ir::hf::{import, ImportOptions};
use hetpar_ir::model::{module_params, verify};

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
