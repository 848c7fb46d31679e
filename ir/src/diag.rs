//! Diagnostics: every problem found in an input, with the JSON path it sits at and the rule broken.
//!
//! Parsers and verifiers collect diagnostics instead of stopping at the first one, so that a
//! user sees every problem of a file at once.

use std::fmt;

use crate::rule::Rule;

/// How bad a diagnostic is. Errors make an input unusable; warnings describe combinations that
/// are representable but that some later stage does not support yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: where (a JSON path such as `modules.vision.layout.tp`), which rule, and what.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file the problem is in, when the caller knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// JSON path of the offending field; empty for the document root.
    pub path: String,
    pub rule: Rule,
    pub message: String,
    /// Line and column (1-based) for syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl Diagnostic {
    pub fn error(path: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            file: None,
            path: path.into(),
            rule,
            message: message.into(),
            line: None,
            column: None,
        }
    }

    pub fn warning(path: impl Into<String>, rule: Rule, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(path, rule, message)
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: ")?;
        if let Some(file) = &self.file {
            write!(f, "{file}")?;
            if let (Some(l), Some(c)) = (self.line, self.column) {
                write!(f, ":{l}:{c}")?;
            }
            write!(f, ": ")?;
        } else if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, "line {l} column {c}: ")?;
        }
        let path = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        write!(f, "{path}: {} [{}]", self.message, self.rule.id())
    }
}

/// An ordered collection of diagnostics, filled by parsers and verifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn error(&mut self, path: impl Into<String>, rule: Rule, message: impl Into<String>) {
        self.push(Diagnostic::error(path, rule, message));
    }

    pub fn warning(&mut self, path: impl Into<String>, rule: Rule, message: impl Into<String>) {
        self.push(Diagnostic::warning(path, rule, message));
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.items.extend(other.items);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }

    /// Marks every diagnostic as coming from `file`.
    pub fn with_file(mut self, file: &str) -> Self {
        for d in &mut self.items {
            d.file.get_or_insert_with(|| file.to_string());
        }
        self
    }

    /// Whether some diagnostic broke `rule` (used by tests).
    pub fn contains_rule(&self, rule: Rule) -> bool {
        self.items.iter().any(|d| d.rule == rule)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

/// Builds JSON paths (`modules.vision.layout.tp`, `boundaries[2].from`).
pub fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

pub fn index(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}
