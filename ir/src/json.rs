//! Reading hetpar's JSON files: syntax errors with line and column, type errors with their JSON
//! path, and every unknown field with its path, all as diagnostics.
//!
//! Unknown fields are collected (not denied) so that a file with several misspelled keys reports
//! all of them at once. The formats avoid internally tagged enums and `flatten` on purpose: both
//! buffer their input and would hide unknown fields and paths below them.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::diag::{Diagnostic, Diagnostics};
use crate::rule::Rule;

/// The kinds of hetpar file, as written in their top-level `kind` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Model,
    Cluster,
    Plan,
    Program,
}

impl FileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Model => "model",
            FileKind::Cluster => "cluster",
            FileKind::Plan => "plan",
            FileKind::Program => "program",
        }
    }
}

/// The one format version this hetpar reads and writes for every file kind.
pub const FORMAT_VERSION: u32 = 1;

/// Parses text into a JSON value, or a syntax diagnostic with line and column.
pub fn parse_value(text: &str) -> Result<Value, Diagnostics> {
    serde_json::from_str::<Value>(text).map_err(|e| {
        let mut d = Diagnostic::error("", Rule::JsonSyntax, syntax_message(&e));
        d.line = Some(e.line());
        d.column = Some(e.column());
        let mut ds = Diagnostics::new();
        ds.push(d);
        ds
    })
}

fn syntax_message(e: &serde_json::Error) -> String {
    // serde_json appends " at line L column C"; the diagnostic carries those separately.
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Which kind of hetpar file a parsed JSON value claims to be, if any.
pub fn detect_kind(value: &Value) -> Option<FileKind> {
    match value.get("kind")?.as_str()? {
        "model" => Some(FileKind::Model),
        "cluster" => Some(FileKind::Cluster),
        "plan" => Some(FileKind::Plan),
        "program" => Some(FileKind::Program),
        _ => None,
    }
}

/// Checks `kind` and `format_version` before the typed parse, so that a wrong file gets one
/// clear message rather than a list of unrelated field errors.
pub fn check_header(value: &Value, expected: FileKind) -> Result<(), Diagnostics> {
    let mut ds = Diagnostics::new();
    let Some(obj) = value.as_object() else {
        ds.error(
            "",
            Rule::JsonType,
            format!(
                "expected a JSON object (a hetpar {} file)",
                expected.as_str()
            ),
        );
        return Err(ds);
    };
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k == expected.as_str() => {}
        Some(k) => ds.error(
            "kind",
            Rule::FormatKind,
            format!("expected \"{}\", found \"{k}\"", expected.as_str()),
        ),
        None => ds.error(
            "kind",
            Rule::FormatKind,
            format!(
                "missing; a {0} file starts with \"kind\": \"{0}\"",
                expected.as_str()
            ),
        ),
    }
    match obj.get("format_version").and_then(Value::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => ds.error(
            "format_version",
            Rule::FormatVersion,
            format!("version {v} is not supported; this hetpar reads version {FORMAT_VERSION}"),
        ),
        None => ds.error(
            "format_version",
            Rule::FormatVersion,
            format!("missing or not an integer; expected {FORMAT_VERSION}"),
        ),
    }
    if ds.is_empty() {
        Ok(())
    } else {
        Err(ds)
    }
}

/// Deserializes a typed value, reporting the first type error with its path and every unknown
/// field with its path.
pub fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, Diagnostics> {
    let (v, unknown) = from_value_lenient(value)?;
    if unknown.is_empty() {
        Ok(v)
    } else {
        Err(unknown)
    }
}

/// Like `from_value`, but a value whose only problems are unknown fields still comes back, with
/// those fields as error diagnostics, so that the verifier can report its findings too.
pub fn from_value_lenient<T: DeserializeOwned>(
    value: &Value,
) -> Result<(T, Diagnostics), Diagnostics> {
    let mut unknown: Vec<String> = Vec::new();
    let result: Result<T, _> = {
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
        let ignored = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize(ignored)
    };
    let mut ds = Diagnostics::new();
    for path in unknown {
        ds.error(path, Rule::JsonUnknownField, "unknown field");
    }
    match result {
        Ok(v) => Ok((v, ds)),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            ds.error(
                path,
                Rule::JsonType,
                json_terms(&e.into_inner().to_string()),
            );
            Err(ds)
        }
    }
}

/// serde names the Rust type it wanted ("expected u32"); a reader of the file knows JSON:
/// say the JSON type and the allowed range instead.
fn json_terms(message: &str) -> String {
    let terms = [
        ("u8", format!("a JSON integer from 0 to {}", u8::MAX)),
        ("u16", format!("a JSON integer from 0 to {}", u16::MAX)),
        ("u32", format!("a JSON integer from 0 to {}", u32::MAX)),
        ("u64", format!("a JSON integer from 0 to {}", u64::MAX)),
        ("usize", format!("a JSON integer from 0 to {}", usize::MAX)),
        (
            "i32",
            format!("a JSON integer from {} to {}", i32::MIN, i32::MAX),
        ),
        (
            "i64",
            format!("a JSON integer from {} to {}", i64::MIN, i64::MAX),
        ),
        ("f32", "a JSON number".to_string()),
        ("f64", "a JSON number".to_string()),
    ];
    let mut out = message.to_string();
    for (rust, json) in &terms {
        let from = format!("expected {rust}");
        let mut at = 0;
        while let Some(i) = out[at..].find(&from).map(|i| i + at) {
            let end = i + from.len();
            // Only the whole word: "expected u32", not "expected u32s".
            if out[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                at = end;
                continue;
            }
            let to = format!("expected {json}");
            out.replace_range(i..end, &to);
            at = i + to.len();
        }
    }
    out
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => crate::diag::join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Parses a whole hetpar file of the given kind.
pub fn parse_file<T: DeserializeOwned>(text: &str, kind: FileKind) -> Result<T, Diagnostics> {
    let value = parse_value(text)?;
    check_header(&value, kind)?;
    from_value(&value)
}

/// Canonical JSON text: two-space indent, fields in declaration order, maps sorted, final newline.
pub fn to_canonical_json<T: Serialize>(value: &T) -> String {
    // Serializing plain data structs to a String cannot fail (no non-string map keys, no IO).
    let mut s = serde_json::to_string_pretty(value).unwrap_or_else(|e| {
        unreachable!("hetpar's IR types always serialize: {e}");
    });
    s.push('\n');
    s
}
