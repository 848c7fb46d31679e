//! The format pages under `docs/` stay true to the code.
//!
//! Each of `docs/model-format.md`, `docs/cluster-format.md` and `docs/plan-format.md` has one
//! complete example (its first ```json block) and field tables: a table whose header starts with
//! `Field` documents the object named by the backticked path(s) in the heading above it
//! (`modules.<name>.transformer`; a heading without a path, "Top level", is the document root).
//! Tables whose header starts with `Rule` list rule ids.
//!
//! These tests prove that the examples load and verify (the plan against the other two), that
//! the tables document exactly the fields of the format's types, in their canonical output order
//! (read from the types' serde field lists), that every key of every example is documented, and
//! that the rule tables name exactly the rules `hetpar_ir::Rule` defines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use hetpar::ir::cluster::{ClusterFile, GpuSection, LinkSection};
use hetpar::ir::layout::{LayoutSpec, RecomputeSpec};
use hetpar::ir::model::{
    BoundarySpec, DataSpec, EmbeddingSpec, EncoderDataSpec, MlpSpec, ModelFile, ModuleSpec,
    MoeSpec, PositionsSpec, TransformerSpec,
};
use hetpar::ir::placement::{Coord, PlacementSpec, RanksSpec};
use hetpar::ir::plan::{ModulePlanSpec, PlacementKind, PlanFile, ScheduleSpec};
use hetpar::ir::{Cluster, ModelGraph, Rule};
use serde::de::{DeserializeOwned, Visitor};
use serde_json::Value;

const MODEL_PAGE: &str = "model-format.md";
const CLUSTER_PAGE: &str = "cluster-format.md";
const PLAN_PAGE: &str = "plan-format.md";

fn page(name: &str) -> String {
    let p = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The text of the first ```json fenced block of a page.
fn first_json_block(name: &str) -> String {
    let text = page(name);
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == "```json")
        .unwrap_or_else(|| panic!("{name} has no ```json block"));
    let mut block = String::new();
    for line in lines {
        if line.trim() == "```" {
            return block;
        }
        block.push_str(line);
        block.push('\n');
    }
    panic!("{name}: the first ```json block is not closed");
}

fn model_example() -> ModelGraph {
    match hetpar::ir::load_model(&first_json_block(MODEL_PAGE)) {
        Ok((graph, warnings)) => {
            assert!(
                warnings.is_empty(),
                "{MODEL_PAGE} example warns:\n{warnings}"
            );
            graph
        }
        Err(ds) => panic!("{MODEL_PAGE} example does not load:\n{ds}"),
    }
}

fn cluster_example() -> Cluster {
    hetpar::ir::load_cluster(&first_json_block(CLUSTER_PAGE))
        .unwrap_or_else(|ds| panic!("{CLUSTER_PAGE} example does not load:\n{ds}"))
}

#[test]
fn model_page_example_loads_without_errors_or_warnings() {
    let g = model_example();
    // What the page's prose says about the example.
    let lm = g.language_model();
    assert_eq!(g.module(lm).name, "llm");
    let into_lm = g
        .boundaries()
        .iter()
        .find(|b| b.to == lm)
        .expect("a boundary into the language model");
    assert_eq!(into_lm.name, "image_tokens");
    assert_eq!(into_lm.merge, 4, "the merger joins 4 encoder rows");
    assert_eq!(
        g.boundary_rows_of_sample(into_lm.id, 3),
        1024,
        "sample 3's 4096-token image becomes 1024 placeholder tokens"
    );
    assert_eq!(
        g.boundary_rows_of_sample(into_lm.id, 2),
        0,
        "sample 2 has no image"
    );
    let vision = g.module_by_name("vision").expect("a vision module");
    assert!(g.items(vision.id).expect("vision items").is_uneven());
    let landings: BTreeSet<String> = g
        .boundaries()
        .iter()
        .map(|b| format!("{:?}", b.landing))
        .collect();
    assert_eq!(landings.len(), 2, "both landing kinds appear: {landings:?}");
}

#[test]
fn cluster_page_example_loads_without_errors() {
    let c = cluster_example();
    assert_eq!(c.world_size(), 16);
    assert_eq!(
        c.gpu.network_bandwidth, 25e9,
        "the inter-node override applies"
    );
    assert_eq!(c.gpu.hbm_bytes, 76.0 * 1024.0 * 1024.0 * 1024.0);
}

#[test]
fn plan_page_example_is_valid_against_the_model_and_cluster_page_examples() {
    let model = model_example();
    let cluster = cluster_example();
    let (plan, warnings) = hetpar::ir::load_plan(&first_json_block(PLAN_PAGE), &model, &cluster)
        .unwrap_or_else(|ds| panic!("{PLAN_PAGE} example does not verify:\n{ds}"));
    assert!(
        warnings.is_empty(),
        "{PLAN_PAGE} example warns:\n{warnings}"
    );
    // What the page's prose says about the example.
    assert_eq!(plan.placement_kind, PlacementKind::Disjoint);
    let id = |name: &str| model.module_by_name(name).expect(name).id;
    let vision = &plan.module(id("vision")).layout;
    assert_eq!((vision.dp, vision.micro_batches), (4, 2), "derived dp");
    let llm = plan.module(id("llm"));
    assert_eq!((llm.layout.dp, llm.layout.micro_batches), (2, 2));
    assert_eq!(llm.layout.chunk_layers, vec![13, 15]);
    let at = |dp, pp, tp| llm.grid.rank_at(Coord { tp, cp: 0, dp, pp });
    assert_eq!([at(0, 0, 1), at(0, 1, 0), at(1, 0, 0)], [9, 10, 12]);
}

// ---------------------------------------------------------------------------------------------
// The tables.

/// A field table: the object path(s) its heading names and the fields its rows name.
#[derive(Debug)]
struct FieldTable {
    paths: Vec<String>,
    fields: Vec<String>,
}

/// The backticked spans of a line.
fn backticked(line: &str) -> Vec<String> {
    line.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn first_cell(row: &str) -> &str {
    row.trim()
        .trim_start_matches('|')
        .split('|')
        .next()
        .unwrap_or("")
        .trim()
}

/// Every table of a page whose header's first cell is `header`, as (heading, first cells).
fn tables(name: &str, header: &str) -> Vec<(String, Vec<String>)> {
    let text = page(name);
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_string();
            continue;
        }
        if !(line.starts_with('|') && first_cell(line) == header) {
            continue;
        }
        lines.next(); // the |---| separator
        let mut cells = Vec::new();
        while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
            cells.push(first_cell(row).to_string());
        }
        out.push((heading.clone(), cells));
    }
    out
}

fn field_tables(name: &str) -> Vec<FieldTable> {
    tables(name, "Field")
        .into_iter()
        .map(|(heading, cells)| {
            let paths = backticked(&heading);
            let paths = if paths.is_empty() {
                vec![String::new()]
            } else {
                paths
            };
            let fields = cells
                .iter()
                .map(|c| match backticked(c).as_slice() {
                    [f] => f.clone(),
                    _ => panic!("{name}: row `{c}` under \"{heading}\" names no single `field`"),
                })
                .collect();
            FieldTable { paths, fields }
        })
        .collect()
}

/// A JSON path as segments: `boundaries[].from` is `boundaries`, `[]`, `from`.
fn segments(path: &str) -> Vec<String> {
    path.replace("[]", ".[]")
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Whether a concrete path matches a documented one (`<name>` matches any map key).
fn matches(pattern: &[String], concrete: &[String]) -> bool {
    pattern.len() == concrete.len()
        && pattern
            .iter()
            .zip(concrete)
            .all(|(p, c)| p == c || (p.starts_with('<') && c != "[]"))
}

// ---------------------------------------------------------------------------------------------
// The fields of the format's types, from serde: a derived `Deserialize` for a struct hands its
// field names to `Deserializer::deserialize_struct`, which this deserializer records.

#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl serde::de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The serialized field names of a struct, in declaration (canonical output) order.
fn fields_of<T: DeserializeOwned>() -> Vec<String> {
    let mut names = None;
    let _ = T::deserialize(FieldNames(&mut names));
    names
        .unwrap_or_else(|| panic!("{} is not a plain struct", std::any::type_name::<T>()))
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Every object of a format, by documented path, with the fields of its type.
fn format_objects(name: &str) -> BTreeMap<&'static str, Vec<String>> {
    let list: Vec<(&'static str, Vec<String>)> = match name {
        MODEL_PAGE => vec![
            ("", fields_of::<ModelFile>()),
            ("modules.<name>", fields_of::<ModuleSpec>()),
            ("modules.<name>.transformer", fields_of::<TransformerSpec>()),
            ("modules.<name>.transformer.moe", fields_of::<MoeSpec>()),
            ("modules.<name>.embedding", fields_of::<EmbeddingSpec>()),
            ("modules.<name>.positions", fields_of::<PositionsSpec>()),
            ("modules.<name>.mlp", fields_of::<MlpSpec>()),
            ("boundaries[]", fields_of::<BoundarySpec>()),
            ("data", fields_of::<DataSpec>()),
            ("data.encoders.<name>", fields_of::<EncoderDataSpec>()),
        ],
        CLUSTER_PAGE => vec![
            ("", fields_of::<ClusterFile>()),
            ("gpu", fields_of::<GpuSection>()),
            ("intra_node", fields_of::<LinkSection>()),
            ("inter_node", fields_of::<LinkSection>()),
        ],
        PLAN_PAGE => vec![
            ("", fields_of::<PlanFile>()),
            ("schedule", fields_of::<ScheduleSpec>()),
            ("modules.<name>", fields_of::<ModulePlanSpec>()),
            ("modules.<name>.layout", fields_of::<LayoutSpec>()),
            (
                "modules.<name>.layout.recompute",
                fields_of::<RecomputeSpec>(),
            ),
            ("modules.<name>.placement", fields_of::<PlacementSpec>()),
            ("modules.<name>.placement.ranks", fields_of::<RanksSpec>()),
        ],
        _ => unreachable!(),
    };
    list.into_iter().collect()
}

/// Documented fields by path, failing on a path documented twice.
fn documented(name: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in field_tables(name) {
        for p in &t.paths {
            let prev = out.insert(p.clone(), t.fields.clone());
            assert!(prev.is_none(), "{name}: `{p}` has two field tables");
        }
    }
    out
}

const FORMAT_PAGES: [&str; 3] = [MODEL_PAGE, CLUSTER_PAGE, PLAN_PAGE];

#[test]
fn every_field_in_the_doc_tables_exists_in_its_format() {
    let mut problems = Vec::new();
    for name in FORMAT_PAGES {
        let objects = format_objects(name);
        for (path, fields) in documented(name) {
            let Some(real) = objects.get(path.as_str()) else {
                problems.push(format!("{name}: `{path}` is not an object of the format"));
                continue;
            };
            for f in fields.iter().filter(|f| !real.contains(f)) {
                problems.push(format!(
                    "{name}: `{path}` documents `{f}`, which the format does not have"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_field_of_each_format_is_documented_in_its_page() {
    let mut problems = Vec::new();
    for name in FORMAT_PAGES {
        let docs = documented(name);
        for (path, real) in format_objects(name) {
            let Some(fields) = docs.get(path) else {
                problems.push(format!("{name}: no field table for `{path}`"));
                continue;
            };
            for f in real.iter().filter(|f| !fields.contains(f)) {
                let shown = if path.is_empty() { "(top level)" } else { path };
                problems.push(format!(
                    "{name}: `{shown}` has field `{f}`, missing from its table"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn doc_tables_list_fields_in_canonical_output_order() {
    let mut problems = Vec::new();
    for name in FORMAT_PAGES {
        let objects = format_objects(name);
        for (path, fields) in documented(name) {
            let Some(real) = objects.get(path.as_str()) else {
                continue; // reported by every_field_in_the_doc_tables_exists_in_its_format
            };
            let doc_order: Vec<&String> = fields.iter().filter(|f| real.contains(f)).collect();
            let real_order: Vec<&String> = real.iter().filter(|f| fields.contains(f)).collect();
            if doc_order != real_order {
                problems.push(format!(
                    "{name}: `{path}` lists {doc_order:?}; canonical order is {real_order:?}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Walks an example, checking that every key of every object is in that object's table.
fn check_keys(
    value: &Value,
    path: &mut Vec<String>,
    docs: &[(Vec<String>, Vec<String>)],
    problems: &mut Vec<String>,
) {
    match value {
        Value::Object(map) => {
            let is_map = docs.iter().any(|(p, _)| {
                p.len() == path.len() + 1
                    && p.last().is_some_and(|s| s.starts_with('<'))
                    && matches(&p[..path.len()], path)
            });
            let table = docs.iter().find(|(p, _)| matches(p, path));
            if !is_map && table.is_none() {
                problems.push(format!(
                    "no field table for the object at `{}`",
                    path.join(".")
                ));
            }
            for (k, v) in map {
                if let (false, Some((_, fields))) = (is_map, table) {
                    if !fields.contains(k) {
                        problems.push(format!("`{k}` at `{}` is not documented", path.join(".")));
                    }
                }
                path.push(k.clone());
                check_keys(v, path, docs, problems);
                path.pop();
            }
        }
        Value::Array(items) => {
            for v in items {
                path.push("[]".into());
                check_keys(v, path, docs, problems);
                path.pop();
            }
        }
        _ => {}
    }
}

#[test]
fn every_key_of_each_page_example_is_documented_in_that_page() {
    let mut problems = Vec::new();
    for name in FORMAT_PAGES {
        let docs: Vec<(Vec<String>, Vec<String>)> = documented(name)
            .into_iter()
            .map(|(p, f)| (segments(&p), f))
            .collect();
        let example: Value =
            serde_json::from_str(&first_json_block(name)).expect("the example is JSON");
        let mut found = Vec::new();
        check_keys(&example, &mut Vec::new(), &docs, &mut found);
        problems.extend(found.into_iter().map(|p| format!("{name}: {p}")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rule_tables_name_existing_rules_and_every_rule_is_documented() {
    let known: BTreeSet<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    let mut named: BTreeSet<String> = BTreeSet::new();
    let mut problems = Vec::new();
    for name in FORMAT_PAGES {
        let rule_tables = tables(name, "Rule");
        assert!(!rule_tables.is_empty(), "{name} has no rule table");
        for (_, cells) in rule_tables {
            for c in cells {
                let id = match backticked(&c).as_slice() {
                    [id] => id.clone(),
                    _ => panic!("{name}: rule row `{c}` names no single `rule.id`"),
                };
                if !known.contains(id.as_str()) {
                    problems.push(format!(
                        "{name} names rule `{id}`, which hetpar does not define"
                    ));
                }
                named.insert(id);
            }
        }
    }
    for id in known {
        if !named.contains(id) {
            problems.push(format!("rule `{id}` is in no page's rule table"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn hf_import_page_names_every_supported_model_type() {
    let text = page("hf-import.md");
    for t in hetpar::ir::hf::SUPPORTED {
        assert!(
            text.contains(&format!("`{t}`")),
            "hf-import.md does not mention `{t}`"
        );
    }
}
