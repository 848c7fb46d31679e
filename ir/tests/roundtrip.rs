//! Every example file survives parse -> canonical JSON -> parse unchanged, and canonical JSON is
//! deterministic: serializing twice gives the same bytes, and canonical text re-serializes to
//! itself. The same holds for the model files imported from `examples/hf/*.config.json`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use hetpar_ir::hf::{import, ImportOptions};
use hetpar_ir::json::{parse_file, to_canonical_json};
use hetpar_ir::{ClusterFile, FileKind, ModelFile, PlanFile};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn examples_dir(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(sub)
}

/// The files of `examples/<sub>` whose names end in `suffix`, sorted.
fn example_files(sub: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = examples_dir(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *{suffix} files in {}", dir.display());
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that `value` round-trips through canonical JSON and that the text is deterministic.
fn assert_round_trips<T>(what: &str, value: &T, kind: FileKind)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let text = to_canonical_json(value);
    assert_eq!(
        text,
        to_canonical_json(value),
        "{what}: two serializations differ"
    );
    let again: T = parse_file(&text, kind)
        .unwrap_or_else(|ds| panic!("{what}: canonical text does not parse:\n{ds}\n{text}"));
    assert_eq!(
        &again, value,
        "{what}: changed by a round trip through\n{text}"
    );
    assert_eq!(
        to_canonical_json(&again),
        text,
        "{what}: canonical text does not re-serialize to itself"
    );
}

/// Parses every example of a kind and round-trips it.
fn round_trip_examples<T>(sub: &str, kind: FileKind)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let files = example_files(sub, ".json");
    for path in &files {
        let what = path.display().to_string();
        let value: T = parse_file(&read(path), kind)
            .unwrap_or_else(|ds| panic!("{what} does not parse:\n{ds}"));
        assert_round_trips(&what, &value, kind);
    }
}

#[test]
fn example_models_round_trip_through_canonical_json() {
    round_trip_examples::<ModelFile>("models", FileKind::Model);
}

#[test]
fn example_clusters_round_trip_through_canonical_json() {
    round_trip_examples::<ClusterFile>("clusters", FileKind::Cluster);
}

#[test]
fn example_plans_round_trip_through_canonical_json() {
    round_trip_examples::<PlanFile>("plans", FileKind::Plan);
}

#[test]
fn models_imported_from_hf_configs_round_trip_through_canonical_json() {
    for path in example_files("hf", ".config.json") {
        let what = format!("{} (imported)", path.display());
        let config: serde_json::Value =
            serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let model = import(&config, &ImportOptions::default())
            .unwrap_or_else(|ds| panic!("{what} does not import:\n{ds}"));
        assert_round_trips(&what, &model, FileKind::Model);
    }
}

/// Cluster overrides are `f64`: a computed figure (17 significant digits, as a tool measuring a
/// bandwidth would write it) must survive a round trip too. serde_json without its
/// `float_roundtrip` feature parses some such numbers to a neighbouring `f64`.
#[test]
fn computed_cluster_figures_round_trip_bit_exactly() {
    let path = examples_dir("clusters").join("h100-8.json");
    let base: ClusterFile = parse_file(&read(&path), FileKind::Cluster)
        .unwrap_or_else(|ds| panic!("{}:\n{ds}", path.display()));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in 0..1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // A value in [1, 2) with random low bits, scaled to 1e-3 .. 1e6.
        let v = f64::from_bits((x >> 12) | 0x3FF0_0000_0000_0000) * 10f64.powi(i % 10 - 3);
        let mut c = base.clone();
        c.gpu.dense_bf16_tflops = Some(v);
        assert_round_trips(&format!("dense_bf16_tflops {v:?}"), &c, FileKind::Cluster);
    }
}

/// The communication fields are written only when they differ from what the runtime executes,
/// so plans written before them keep their bytes; set, they survive a round trip.
#[test]
fn communication_fields_are_written_only_when_set_and_round_trip() {
    let path = examples_dir("plans").join("reference-tiny-noncolocated-8.json");
    let mut plan: PlanFile = parse_file(&read(&path), FileKind::Plan)
        .unwrap_or_else(|ds| panic!("{}:\n{ds}", path.display()));
    let text = to_canonical_json(&plan);
    assert!(
        !text.contains("tp_comm_overlap") && !text.contains("cp_comm"),
        "{text}"
    );
    let llm = &mut plan.modules.get_mut("llm").expect("an llm").layout;
    llm.tp_comm_overlap = true;
    llm.cp_comm = hetpar_ir::layout::CpComm::Ring;
    let text = to_canonical_json(&plan);
    assert!(
        text.contains(r#""tp_comm_overlap": true"#) && text.contains(r#""cp_comm": "ring""#),
        "{text}"
    );
    assert_round_trips("llm with both fields set", &plan, FileKind::Plan);
    let explicit = read(&path).replace(
        r#""sequence_parallel": true,
        "micro_batch_size": 2"#,
        r#""sequence_parallel": true,
        "cp_comm": "all_gather",
        "micro_batch_size": 2"#,
    );
    assert!(explicit.contains("all_gather"), "the edit applies");
    let parsed: PlanFile = parse_file(&explicit, FileKind::Plan)
        .unwrap_or_else(|ds| panic!("an explicit default parses:\n{ds}"));
    assert!(!to_canonical_json(&parsed).contains("cp_comm"));
}
