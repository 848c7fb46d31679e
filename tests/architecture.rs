//! The dependency rules of ARCHITECTURE.md hold: every crate's `[dependencies]` are listed under
//! "may depend on" and none is listed under "must never depend on". The table is read from
//! ARCHITECTURE.md itself, so the document and the check cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

struct Rules {
    allowed: BTreeSet<String>,
    forbidden: BTreeSet<String>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Parses the "Dependency rules" table: `| crate | may depend on | must never depend on |`.
fn rules_table(architecture_md: &str) -> BTreeMap<String, Rules> {
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in architecture_md.lines() {
        let line = line.trim();
        if line.starts_with("| crate | may depend on") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.starts_with('|') {
            break;
        }
        if line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let list = |s: &str| -> BTreeSet<String> {
            s.split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        out.insert(
            cells[0].to_string(),
            Rules {
                allowed: list(cells.get(1).copied().unwrap_or("")),
                forbidden: list(cells.get(2).copied().unwrap_or("")),
            },
        );
    }
    out
}

/// The package name and normal dependencies of a Cargo.toml.
fn manifest(text: &str) -> (String, BTreeSet<String>) {
    let doc: toml::Table = text.parse().expect("Cargo.toml parses");
    let name = doc["package"]["name"]
        .as_str()
        .expect("package.name")
        .to_string();
    let deps = doc
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    (name, deps)
}

/// Every violation of the rules by one manifest.
fn violations(name: &str, deps: &BTreeSet<String>, rules: &BTreeMap<String, Rules>) -> Vec<String> {
    let Some(r) = rules.get(name) else {
        return vec![format!(
            "{name}: no row in the ARCHITECTURE.md dependency table"
        )];
    };
    let mut v = Vec::new();
    for d in deps {
        if r.forbidden.contains(d) {
            v.push(format!(
                "{name} depends on {d}, which ARCHITECTURE.md forbids"
            ));
        } else if !r.allowed.contains(d) {
            v.push(format!("{name} depends on {d}, which ARCHITECTURE.md does not list under \"may depend on\""));
        }
    }
    v
}

fn manifests() -> Vec<String> {
    let ws: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let members = ws["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    let mut paths = vec![root().join("Cargo.toml")];
    paths.extend(
        members
            .iter()
            .map(|m| root().join(m.as_str().unwrap()).join("Cargo.toml")),
    );
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

#[test]
fn every_crate_depends_only_on_what_architecture_md_allows() {
    let rules = rules_table(&std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap());
    assert!(
        rules.len() >= 6,
        "the dependency table was not found in ARCHITECTURE.md"
    );
    let mut all = Vec::new();
    for text in manifests() {
        let (name, deps) = manifest(&text);
        all.extend(violations(&name, &deps, &rules));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn every_table_row_names_a_workspace_crate() {
    let rules = rules_table(&std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap());
    let names: BTreeSet<String> = manifests().iter().map(|t| manifest(t).0).collect();
    for crate_name in rules.keys() {
        assert!(
            names.contains(crate_name),
            "ARCHITECTURE.md lists {crate_name}, which is not in the workspace"
        );
    }
}

#[test]
fn the_check_rejects_a_forbidden_and_an_unlisted_dependency() {
    let rules = rules_table(&std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap());
    let toml = "[package]\nname = \"hetpar-cost\"\n[dependencies]\negg = \"0.11\"\nrand = \"0.9\"\nhetpar-ir = { path = \"../ir\" }\n";
    let (name, deps) = manifest(toml);
    let v = violations(&name, &deps, &rules);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].contains("egg") && v[0].contains("forbids"), "{v:?}");
    assert!(
        v[1].contains("rand") && v[1].contains("does not list"),
        "{v:?}"
    );
}

/// Names of the sharding arithmetic's functions, defined only in `ir/src/shard.rs`.
const SHARDING: &[&str] = &[
    "micro_batch_samples",
    "replica_samples",
    "sample_slot",
    "deal",
    "pass_deal",
    "cp_block",
    "cp_positions",
    "sp_part",
];

/// `fn NAME` definitions of the sharding arithmetic in `text`.
fn sharding_definitions(text: &str) -> Vec<&'static str> {
    SHARDING
        .iter()
        .copied()
        .filter(|name| {
            text.match_indices(&format!("fn {name}")).any(|(i, m)| {
                let next = text[i + m.len()..].chars().next();
                next.is_some_and(|c| c == '(' || c == '<')
            })
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Architecture Invariant: which samples, items, context-parallel blocks and
/// sequence-parallel parts a rank holds is computed only in `ir/src/shard.rs`.
#[test]
fn the_sharding_arithmetic_is_defined_only_in_ir_shard() {
    let home = root().join("ir/src/shard.rs");
    // This file names them in its own check's example.
    let me = root().join("tests/architecture.rs");
    let mut files = Vec::new();
    rust_files(root(), &mut files);
    let mut found = Vec::new();
    for f in files.iter().filter(|f| **f != home && **f != me) {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for name in sharding_definitions(&text) {
            found.push(format!("{}: fn {name}", f.display()));
        }
    }
    assert!(
        found.is_empty(),
        "defined outside ir/src/shard.rs:\n{}",
        found.join("\n")
    );
    let home_text = std::fs::read_to_string(&home).unwrap();
    assert_eq!(
        sharding_definitions(&home_text).len(),
        SHARDING.len(),
        "ir/src/shard.rs defines them all"
    );
}

#[test]
fn the_sharding_check_sees_a_copy() {
    let copy = "fn helper() {}\npub fn cp_positions(n: usize) -> Vec<usize> { vec![] }\n";
    assert_eq!(sharding_definitions(copy), vec!["cp_positions"]);
    assert!(sharding_definitions("fn cp_positions_of_x() {}").is_empty());
}
