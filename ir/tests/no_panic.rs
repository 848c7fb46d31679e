//! Property tests: no input makes hetpar's parsers and verifiers panic.
//!
//! Every example file (models, clusters, plans, Hugging Face configs) is mutated (numbers
//! replaced by integers from a wide range, keys deleted, values replaced by other JSON types,
//! array items duplicated, up to three changes at once) or truncated, and fed to every loader:
//! `load_model`, `load_cluster`, `load_plan` (against valid and mutated models and clusters) and
//! `hf::import` followed by `model::verify::build`. Generated text and JSON go to all of them.
//! Each call must return `Ok` or `Err` without panicking, and every diagnostic has a message.
//!
//! Each property runs in a child process (the test binary itself, re-run for that one test)
//! whose address space is capped: an input that makes a verifier allocate gigabytes then fails
//! that test quickly (with the input in its output) instead of exhausting the machine.

use std::fmt::Debug;

use hetpar_ir::hf::{import, ImportOptions};
use hetpar_ir::model::verify;
use hetpar_ir::{load_cluster, load_model, load_plan, Cluster, Diagnostics, ModelGraph};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value};

// ---------------------------------------------------------------------------------------------
// The example files.

macro_rules! examples {
    ($dir:literal: $($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("../../examples/", $dir, "/", $file))),)*]
    };
}

const MODELS: &[(&str, &str)] = examples!("models":
    "llama-3-8b.json",
    "llava-1.5-7b.json",
    "qwen2.5-vl-7b.json",
    "tiny-uneven.json",
    "vision-audio-7b.json",
    "vit6b-70b-32k.json",
);

const CLUSTERS: &[(&str, &str)] = examples!("clusters":
    "h100-8.json",
    "h100-64.json",
    "h100-1024.json",
);

const PLANS: &[(&str, &str)] = examples!("plans":
    "llama-3-8b-homogeneous-8.json",
    "llava-1.5-7b-colocated-8.json",
    "vision-audio-7b-colocated-64.json",
    "vit6b-70b-32k-noncolocated-1024.json",
);

/// The model and cluster (indices into `MODELS` and `CLUSTERS`) each plan of `PLANS` is for.
const PLAN_CONTEXT: [(usize, usize); 4] = [(0, 0), (1, 0), (4, 1), (5, 2)];

const HF_CONFIGS: &[(&str, &str)] = examples!("hf":
    "llama-3-70b.config.json",
    "llama-3-8b.config.json",
    "llava-1.5-7b.config.json",
    "mistral-7b-v0.1.config.json",
    "mixtral-8x7b-v0.1.config.json",
    "qwen2-7b.config.json",
    "qwen2-vl-7b.config.json",
    "qwen2.5-vl-7b.config.json",
);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Model,
    Cluster,
    Plan,
    Hf,
}

fn files(family: Family) -> &'static [(&'static str, &'static str)] {
    match family {
        Family::Model => MODELS,
        Family::Cluster => CLUSTERS,
        Family::Plan => PLANS,
        Family::Hf => HF_CONFIGS,
    }
}

fn model(i: usize) -> ModelGraph {
    let (name, text) = MODELS[i];
    match load_model(text) {
        Ok((m, _)) => m,
        Err(ds) => panic!("{name} does not load:\n{ds}"),
    }
}

fn cluster(i: usize) -> Cluster {
    let (name, text) = CLUSTERS[i];
    load_cluster(text).unwrap_or_else(|ds| panic!("{name} does not load:\n{ds}"))
}

// ---------------------------------------------------------------------------------------------
// Running every loader on an input.

/// Every diagnostic, error or warning, says something.
fn messages_are_non_empty(what: &str, ds: &Diagnostics) -> Result<(), TestCaseError> {
    for d in ds.iter() {
        prop_assert!(
            !d.message.trim().is_empty(),
            "{what}: a diagnostic without a message: {d:?}"
        );
    }
    Ok(())
}

fn outcome<T>(
    what: &str,
    r: Result<(T, Diagnostics), Diagnostics>,
) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok((v, warnings)) => {
            messages_are_non_empty(what, &warnings)?;
            Ok(Some(v))
        }
        Err(ds) => {
            prop_assert!(!ds.is_empty(), "{what}: Err without diagnostics");
            messages_are_non_empty(what, &ds)?;
            Ok(None)
        }
    }
}

fn try_model(text: &str) -> Result<Option<ModelGraph>, TestCaseError> {
    outcome("load_model", load_model(text))
}

fn try_cluster(text: &str) -> Result<Option<Cluster>, TestCaseError> {
    outcome(
        "load_cluster",
        load_cluster(text).map(|c| (c, Diagnostics::new())),
    )
}

fn try_plan(text: &str, m: &ModelGraph, c: &Cluster) -> Result<(), TestCaseError> {
    outcome("load_plan", load_plan(text, m, c)).map(|_| ())
}

/// Imports a Hugging Face config and verifies the model it gives.
fn try_hf(text: &str) -> Result<Option<ModelGraph>, TestCaseError> {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Ok(None);
    };
    let file = match import(&value, &ImportOptions::default()) {
        Ok(file) => file,
        Err(ds) => {
            prop_assert!(!ds.is_empty(), "hf::import: Err without diagnostics");
            messages_are_non_empty("hf::import", &ds)?;
            return Ok(None);
        }
    };
    outcome("verify::build", verify::build(file))
}

/// Loads every example plan (on its own cluster) against a model: plans for other models still
/// run every per-module check on the modules they share with it.
fn plans_against_model(m: &ModelGraph) -> Result<(), TestCaseError> {
    for (p, &(_, ci)) in PLANS.iter().zip(PLAN_CONTEXT.iter()) {
        try_plan(p.1, m, &cluster(ci))?;
    }
    Ok(())
}

/// Feeds a text to every loader, then loads plans against whatever model or cluster it gives.
fn feed_everywhere(family: Family, index: usize, text: &str) -> Result<(), TestCaseError> {
    let m = try_model(text)?;
    let c = try_cluster(text)?;
    let imported = try_hf(text)?;
    // As a plan: against its own model and cluster, or the first ones for other files.
    let (mi, ci) = match family {
        Family::Plan => PLAN_CONTEXT[index],
        _ => (0, 0),
    };
    try_plan(text, &model(mi), &cluster(ci))?;
    if let Some(m) = m.as_ref().or(imported.as_ref()) {
        plans_against_model(m)?;
    }
    if let Some(c) = c {
        for (p, &(mi, _)) in PLANS.iter().zip(PLAN_CONTEXT.iter()) {
            try_plan(p.1, &model(mi), &c)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// One change to a JSON document, at a concrete JSON pointer (so a failing case reads as-is).
#[derive(Clone, Debug)]
enum Mutation {
    /// Replace the number at a pointer.
    SetNumber(String, Value),
    /// Delete an object member.
    DeleteKey(String),
    /// Replace a value by one of another JSON type.
    Retype(String, Value),
    /// Insert a copy of an array item right after it.
    DuplicateItem(String),
}

#[derive(Clone, Debug)]
struct Mutated {
    family: Family,
    /// The file's name, for failure reports (read through `Debug`).
    #[allow(dead_code)]
    file: &'static str,
    index: usize,
    mutations: Vec<Mutation>,
}

/// Pointers of a document's values, by what a mutation can do to them.
#[derive(Default)]
struct Pointers {
    numbers: Vec<String>,
    keys: Vec<String>,
    values: Vec<String>,
    items: Vec<String>,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn collect(v: &Value, at: String, out: &mut Pointers) {
    match v {
        Value::Number(_) => out.numbers.push(at.clone()),
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}/{}", escape(k));
                out.keys.push(p.clone());
                collect(child, p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.items.push(p.clone());
                collect(child, p, out);
            }
        }
        _ => {}
    }
    out.values.push(at);
}

fn int_value(v: i128) -> Value {
    match u64::try_from(v) {
        Ok(u) => Value::from(u),
        Err(_) => Value::from(i64::try_from(v).unwrap_or(i64::MIN)),
    }
}

/// Integers from a wide range: the edges of u32 and u64, negatives, and random ones.
fn wide_integer() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            0i128,
            1,
            2,
            3,
            7,
            1 << 16,
            (1 << 31) - 1,
            1 << 31,
            i128::from(u32::MAX) - 1,
            i128::from(u32::MAX),
            i128::from(u32::MAX) + 1,
            1 << 53,
            i128::from(u64::MAX),
            -1,
            i128::from(i32::MIN),
            i128::from(i64::MIN),
        ]),
        1 => 0i128..1024,
        1 => any::<u32>().prop_map(i128::from),
        1 => any::<i64>().prop_map(i128::from),
    ]
    .prop_map(int_value)
}

/// A value of some JSON type; `apply` makes sure the type differs from the one replaced.
fn other_value() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        Value::Null,
        Value::Bool(true),
        Value::from("x"),
        Value::from(""),
        Value::from(0),
        Value::from(2.5),
        Value::Array(vec![]),
        serde_json::json!([1, "a"]),
        Value::Object(Map::new()),
        serde_json::json!({"kind": "model"}),
    ])
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn mutation(ptrs: &Pointers) -> BoxedStrategy<Mutation> {
    let mut options: Vec<BoxedStrategy<Mutation>> = Vec::new();
    if !ptrs.numbers.is_empty() {
        let numbers = ptrs.numbers.clone();
        options.push(
            (prop::sample::select(numbers), wide_integer())
                .prop_map(|(p, v)| Mutation::SetNumber(p, v))
                .boxed(),
        );
        // Numbers matter most: weigh them twice.
        let numbers = ptrs.numbers.clone();
        options.push(
            (prop::sample::select(numbers), wide_integer())
                .prop_map(|(p, v)| Mutation::SetNumber(p, v))
                .boxed(),
        );
    }
    if !ptrs.keys.is_empty() {
        options.push(
            prop::sample::select(ptrs.keys.clone())
                .prop_map(Mutation::DeleteKey)
                .boxed(),
        );
    }
    options.push(
        (prop::sample::select(ptrs.values.clone()), other_value())
            .prop_map(|(p, v)| Mutation::Retype(p, v))
            .boxed(),
    );
    if !ptrs.items.is_empty() {
        options.push(
            prop::sample::select(ptrs.items.clone())
                .prop_map(Mutation::DuplicateItem)
                .boxed(),
        );
    }
    Union::new(options).boxed()
}

/// Mutations of every file of the given families, one to three at a time.
fn mutated(families: &[Family]) -> impl Strategy<Value = Mutated> {
    let mut per_file: Vec<BoxedStrategy<Mutated>> = Vec::new();
    for &family in families {
        for (index, &(file, text)) in files(family).iter().enumerate() {
            let doc: Value = serde_json::from_str(text).expect("examples are JSON");
            let mut ptrs = Pointers::default();
            collect(&doc, String::new(), &mut ptrs);
            per_file.push(
                prop::collection::vec(mutation(&ptrs), 1..=3)
                    .prop_map(move |mutations| Mutated {
                        family,
                        file,
                        index,
                        mutations,
                    })
                    .boxed(),
            );
        }
    }
    Union::new(per_file)
}

fn parent_and_last(pointer: &str) -> Option<(&str, String)> {
    let i = pointer.rfind('/')?;
    let last = pointer[i + 1..].replace("~1", "/").replace("~0", "~");
    Some((&pointer[..i], last))
}

/// Applies the mutations in order; one whose target an earlier one removed does nothing.
fn apply(text: &str, mutations: &[Mutation]) -> String {
    let mut doc: Value = serde_json::from_str(text).expect("examples are JSON");
    for m in mutations {
        match m {
            Mutation::SetNumber(p, v) => {
                if let Some(slot) = doc.pointer_mut(p) {
                    *slot = v.clone();
                }
            }
            Mutation::Retype(p, v) => {
                if let Some(slot) = doc.pointer_mut(p) {
                    *slot = if same_type(slot, v) {
                        match slot {
                            Value::Null => Value::from(1),
                            _ => Value::Null,
                        }
                    } else {
                        v.clone()
                    };
                }
            }
            Mutation::DeleteKey(p) => {
                if let Some((parent, key)) = parent_and_last(p) {
                    if let Some(Value::Object(map)) = doc.pointer_mut(parent) {
                        map.remove(&key);
                    }
                }
            }
            Mutation::DuplicateItem(p) => {
                if let Some((parent, i)) = parent_and_last(p) {
                    if let (Some(Value::Array(items)), Ok(i)) =
                        (doc.pointer_mut(parent), i.parse::<usize>())
                    {
                        if i < items.len() {
                            let copy = items[i].clone();
                            items.insert(i + 1, copy);
                        }
                    }
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
}

/// The longest prefix of `text` of at most `cut` bytes that ends on a char boundary.
fn truncate(text: &str, cut: usize) -> &str {
    let mut cut = cut.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

// ---------------------------------------------------------------------------------------------
// Generated inputs.

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        wide_integer(),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z_]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON document: any value, or an object with a valid header and arbitrary fields.
fn generated_document() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value(),
        (
            prop::sample::select(vec!["model", "cluster", "plan", "other"]),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "name",
                    "modules",
                    "boundaries",
                    "data",
                    "nodes",
                    "gpus_per_node",
                    "gpu",
                    "schedule",
                    "model",
                    "cluster",
                    "model_type",
                    "text_config",
                    "vision_config",
                    "intra_node",
                ]),
                json_value(),
                0..6,
            ),
        )
            .prop_map(|(kind, fields)| {
                let mut map: Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                map.insert("kind".into(), Value::from(kind));
                map.insert("format_version".into(), Value::from(1));
                Value::Object(map)
            }),
    ]
    .prop_map(|v| v.to_string())
}

/// Text made mostly of JSON punctuation, digits and letters.
fn generated_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(
            prop::sample::select(vec![
                '{',
                '}',
                '[',
                ']',
                '"',
                ':',
                ',',
                '0',
                '1',
                '9',
                '-',
                '+',
                'e',
                'E',
                '.',
                'a',
                'k',
                'n',
                't',
                ' ',
                '\n',
                '\\',
                'u',
                '\u{e9}',
                '\u{1f600}',
            ]),
            0..64,
        )
        .prop_map(|cs| cs.into_iter().collect()),
        "\\PC{0,64}",
    ]
}

// ---------------------------------------------------------------------------------------------
// Running properties, contained in a child process.

const CHILD_ENV: &str = "HETPAR_NO_PANIC_CHILD";

/// Address space of the child that runs a property (KiB): big allocations fail fast.
const CHILD_MEMORY_KIB: u64 = 2 * 1024 * 1024;

fn in_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs `property` in a child process (this test binary, running only `test_name`) with a
/// capped address space and CPU time; fails with the end of its output if the child fails. In
/// the child, and where no POSIX shell is available, runs it in this process.
fn contained(test_name: &str, property: impl FnOnce()) {
    if in_child() || !cfg!(unix) {
        property();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // A limit the shell cannot set (a lower hard limit) leaves that lower one in force.
    let script = format!(
        "ulimit -v {CHILD_MEMORY_KIB} 2>/dev/null; ulimit -t 300 2>/dev/null; exec \"$0\" \"$@\""
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(&exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env("RUST_BACKTRACE", "0")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("cannot start a contained child ({e}); running in this process");
            property();
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last_input = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("input: "))
        .unwrap_or("(none)");
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("input: ")).collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test_name} failed in its child process ({}).\n\
         Last input run (the culprit when the child aborted or was killed):\n{last_input}\n\
         --- stderr (end) ---\n{}\n--- stdout (end) ---\n{}",
        out.status,
        tail(&stderr),
        tail(&stdout),
    );
}

/// Runs a property over `cases` generated inputs, shrinking any failure (panics included).
/// In a child, logs every input before running it, so that an abort names its input.
fn check<T: Debug>(
    cases: u32,
    strategy: impl Strategy<Value = T>,
    test: impl Fn(&T) -> Result<(), TestCaseError>,
) {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let log = in_child();
    let mut runner = TestRunner::new(config);
    // In a child, keep shrinking quiet: remember the last panic (the minimal input's, once
    // shrinking ends) instead of printing every one.
    let previous = log.then(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
        }));
        previous
    });
    let result = runner.run(&strategy, |input| {
        if log {
            eprintln!("input: {input:?}");
        }
        test(&input)
    });
    if let Some(previous) = previous {
        std::panic::set_hook(previous);
    }
    if let Err(e) = result {
        let last = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        match last {
            Some(p) => panic!("{e}\nThe minimal input's panic: {p}"),
            None => panic!("{e}"),
        }
    }
}

static LAST_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

// ---------------------------------------------------------------------------------------------
// Properties.

#[test]
fn mutated_models_never_panic_any_loader() {
    contained("mutated_models_never_panic_any_loader", || {
        check(256, mutated(&[Family::Model]), |m| {
            feed_everywhere(m.family, m.index, &apply(MODELS[m.index].1, &m.mutations))
        });
    });
}

#[test]
fn mutated_clusters_never_panic_any_loader() {
    contained("mutated_clusters_never_panic_any_loader", || {
        check(128, mutated(&[Family::Cluster]), |m| {
            feed_everywhere(m.family, m.index, &apply(CLUSTERS[m.index].1, &m.mutations))
        });
    });
}

#[test]
fn mutated_plans_never_panic_any_loader() {
    contained("mutated_plans_never_panic_any_loader", || {
        check(256, mutated(&[Family::Plan]), |m| {
            feed_everywhere(m.family, m.index, &apply(PLANS[m.index].1, &m.mutations))
        });
    });
}

#[test]
fn mutated_hf_configs_never_panic_import_or_verify() {
    contained("mutated_hf_configs_never_panic_import_or_verify", || {
        check(256, mutated(&[Family::Hf]), |m| {
            feed_everywhere(
                m.family,
                m.index,
                &apply(HF_CONFIGS[m.index].1, &m.mutations),
            )
        });
    });
}

#[test]
fn truncated_example_files_never_panic_any_loader() {
    contained("truncated_example_files_never_panic_any_loader", || {
        let all: Vec<(Family, usize, &'static str, usize)> =
            [Family::Model, Family::Cluster, Family::Plan, Family::Hf]
                .into_iter()
                .flat_map(|f| {
                    files(f)
                        .iter()
                        .enumerate()
                        .map(move |(i, &(name, text))| (f, i, name, text.len()))
                })
                .collect();
        let strategy = prop::sample::select(all)
            .prop_flat_map(|(f, i, name, len)| (Just(f), Just(i), Just(name), 0..=len));
        check(256, strategy, |&(family, index, _, cut)| {
            let text = truncate(files(family)[index].1, cut);
            feed_everywhere(family, index, text)
        });
    });
}

#[test]
fn generated_json_documents_never_panic_any_loader() {
    contained("generated_json_documents_never_panic_any_loader", || {
        check(256, generated_document(), |text| {
            feed_everywhere(Family::Model, 0, text)
        });
    });
}

#[test]
fn generated_text_never_panics_any_loader() {
    contained("generated_text_never_panics_any_loader", || {
        check(256, generated_text(), |text| {
            feed_everywhere(Family::Model, 0, text)
        });
    });
}

#[test]
fn unmutated_examples_load_and_all_their_mutation_targets_exist() {
    for family in [Family::Model, Family::Cluster, Family::Plan, Family::Hf] {
        for (index, &(file, text)) in files(family).iter().enumerate() {
            feed_everywhere(family, index, text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let doc: Value = serde_json::from_str(text).expect("examples are JSON");
            let mut ptrs = Pointers::default();
            collect(&doc, String::new(), &mut ptrs);
            assert!(!ptrs.numbers.is_empty(), "{file} has no numbers to mutate");
            for p in ptrs.values.iter().chain(&ptrs.keys) {
                assert!(doc.pointer(p).is_some(), "{file}: bad pointer {p}");
            }
            // Applying no mutation gives the same document back.
            let same: Value = serde_json::from_str(&apply(text, &[])).expect("JSON");
            assert_eq!(same, doc);
        }
    }
    for (p, &(mi, ci)) in PLANS.iter().zip(PLAN_CONTEXT.iter()) {
        match load_plan(p.1, &model(mi), &cluster(ci)) {
            // The ViT-6B + 70B plan leaves 208 of its 1,024 GPUs idle, and says so (issue 20).
            Ok((_, w)) if p.0.starts_with("vit6b-70b") => assert!(
                w.iter().all(|d| d.rule == hetpar_ir::Rule::PlacementUnused),
                "{}: {w}",
                p.0
            ),
            Ok((_, w)) => assert!(w.is_empty(), "{}: {w}", p.0),
            Err(ds) => panic!("{} does not load against its model and cluster:\n{ds}", p.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal inputs that once broke a loader (found by the properties above or by reading the
// verifiers). Each runs contained, like the properties: some used to abort on allocation.

/// Sets values at JSON pointers of an example.
fn edited(text: &str, edits: &[(&str, Value)]) -> String {
    let mut doc: Value = serde_json::from_str(text).expect("examples are JSON");
    for (pointer, value) in edits {
        *doc.pointer_mut(pointer)
            .unwrap_or_else(|| panic!("no value at {pointer}")) = value.clone();
    }
    serde_json::to_string_pretty(&doc).expect("JSON values serialize")
}

fn diagnostics_of<T>(r: Result<(T, Diagnostics), Diagnostics>) -> Diagnostics {
    match r {
        Ok((_, w)) => w,
        Err(ds) => ds,
    }
}

const U32_MAX: u32 = u32::MAX;

#[test]
fn model_with_global_batch_u32_max_is_verified_without_a_table_per_sample() {
    contained(
        "model_with_global_batch_u32_max_is_verified_without_a_table_per_sample",
        || {
            // vision-audio-7b gives item counts, so the batch size is the only size here.
            let text = edited(MODELS[4].1, &[("/data/global_batch", U32_MAX.into())]);
            let ds = diagnostics_of(load_model(&text));
            assert!(ds.iter().all(|d| !d.message.is_empty()), "{ds}");
        },
    );
}

#[test]
fn model_whose_encoders_place_more_than_u64_max_rows_is_rejected_without_overflow() {
    contained(
        "model_whose_encoders_place_more_than_u64_max_rows_is_rejected_without_overflow",
        || {
            // Audio without a token merge and without a learned table: each sample places
            // (2^32 - 1)^2 audio rows plus (2^32 - 1) x (2^32 - 4) / 4 vision rows.
            let mut doc: Value = serde_json::from_str(MODELS[4].1).expect("JSON");
            doc["modules"]["audio_projector"]["mlp"] = serde_json::json!({
                "widths": [1280, 3584], "activation": "gelu"
            });
            doc["modules"]["audio"]["positions"] = serde_json::json!({"kind": "rope"});
            doc["data"]["encoders"] = serde_json::json!({
                "vision": {"items_per_sample": U32_MAX, "tokens_per_item": U32_MAX - 3},
                "audio": {"items_per_sample": U32_MAX, "tokens_per_item": U32_MAX},
            });
            let ds = load_model(&doc.to_string()).expect_err("rows overflow the sequence");
            assert!(
                ds.contains_rule(hetpar_ir::Rule::DataSequence),
                "expected data.sequence:\n{ds}"
            );
        },
    );
}

#[test]
fn plan_with_rank_count_u32_max_is_rejected_without_listing_every_rank() {
    contained(
        "plan_with_rank_count_u32_max_is_rejected_without_listing_every_rank",
        || {
            let text = edited(
                PLANS[0].1,
                &[("/modules/llm/placement/ranks/count", U32_MAX.into())],
            );
            let ds = load_plan(&text, &model(0), &cluster(0)).expect_err("outside the cluster");
            assert!(ds.contains_rule(hetpar_ir::Rule::PlacementRange), "{ds}");
        },
    );
}

#[test]
fn plan_with_cp_2_pow_31_is_rejected_without_overflowing_2_x_cp() {
    contained(
        "plan_with_cp_2_pow_31_is_rejected_without_overflowing_2_x_cp",
        || {
            let text = edited(
                PLANS[3].1,
                &[("/modules/llm/layout/cp", (1u32 << 31).into())],
            );
            let ds = load_plan(&text, &model(5), &cluster(2)).expect_err("cp does not fit");
            assert!(ds.contains_rule(hetpar_ir::Rule::LayoutDegrees), "{ds}");
        },
    );
}

#[test]
fn plan_with_tp_and_dp_u32_max_is_rejected_without_overflowing_the_degree_product() {
    contained(
        "plan_with_tp_and_dp_u32_max_is_rejected_without_overflowing_the_degree_product",
        || {
            let text = edited(
                PLANS[0].1,
                &[
                    ("/modules/llm/layout/tp", U32_MAX.into()),
                    ("/modules/llm/layout/dp", U32_MAX.into()),
                ],
            );
            let ds = load_plan(&text, &model(0), &cluster(0)).expect_err("degrees do not fit");
            assert!(ds.contains_rule(hetpar_ir::Rule::LayoutDegrees), "{ds}");
        },
    );
}

#[test]
fn plan_with_tp_cp_pp_2_pow_31_is_rejected_without_overflowing_tp_x_cp_x_pp() {
    contained(
        "plan_with_tp_cp_pp_2_pow_31_is_rejected_without_overflowing_tp_x_cp_x_pp",
        || {
            let big = Value::from(1u32 << 31);
            let text = edited(
                PLANS[3].1,
                &[
                    ("/modules/llm/layout/tp", big.clone()),
                    ("/modules/llm/layout/cp", big.clone()),
                    ("/modules/llm/layout/pp", big),
                ],
            );
            let ds = load_plan(&text, &model(5), &cluster(2)).expect_err("degrees do not fit");
            assert!(ds.contains_rule(hetpar_ir::Rule::LayoutDegrees), "{ds}");
        },
    );
}

#[test]
fn plan_with_pp_u32_max_over_the_deepest_model_is_rejected_without_a_vec_per_chunk() {
    contained(
        "plan_with_pp_u32_max_over_the_deepest_model_is_rejected_without_a_vec_per_chunk",
        || {
            // The most layers a model may have (u32::MAX layers is a model error now).
            let layers = hetpar_ir::model::limits::MAX_LAYERS;
            let m = edited(
                MODELS[0].1,
                &[("/modules/llm/transformer/layers", layers.into())],
            );
            let m = load_model(&m).expect("the deepest model is valid").0;
            let text = edited(PLANS[0].1, &[("/modules/llm/layout/pp", U32_MAX.into())]);
            let ds = load_plan(&text, &m, &cluster(0)).expect_err("pp does not fit the ranks");
            assert!(ds.contains_rule(hetpar_ir::Rule::LayoutDegrees), "{ds}");
        },
    );
}

#[test]
fn llava_config_with_image_size_u32_max_imports_without_overflowing_the_patch_count() {
    contained(
        "llava_config_with_image_size_u32_max_imports_without_overflowing_the_patch_count",
        || {
            let text = edited(
                HF_CONFIGS[2].1,
                &[("/vision_config/image_size", U32_MAX.into())],
            );
            let value: Value = serde_json::from_str(&text).expect("JSON");
            if let Ok(file) = import(&value, &ImportOptions::default()) {
                let _ = verify::build(file);
            }
        },
    );
}
