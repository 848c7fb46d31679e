//! Typed reads of a Hugging Face config object, recording a diagnostic (with the JSON path) for
//! every field of the wrong type and every required field that is missing, and a note for
//! every field that takes its `transformers` default. Readers share one log.

use std::cell::RefCell;

use serde_json::Value;

use super::Note;
use crate::diag::{join, Diagnostics};
use crate::model::Activation;
use crate::rule::Rule;

/// What an import found: problems, and the defaults it applied.
#[derive(Default)]
pub(crate) struct Log {
    pub ds: RefCell<Diagnostics>,
    pub notes: RefCell<Vec<Note>>,
}

#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    obj: Option<&'a serde_json::Map<String, Value>>,
    path: &'a str,
    /// The `transformers` config class whose defaults apply here (`LlamaConfig`).
    class: &'a str,
    log: &'a Log,
}

impl<'a> Fields<'a> {
    /// Reads `v` (at JSON path `path`, an object of `transformers`' `class`); a non-object
    /// records an error and reads as all-absent.
    pub fn new(v: Option<&'a Value>, path: &'a str, class: &'a str, log: &'a Log) -> Self {
        let obj = match v {
            None => None,
            Some(v) => {
                if v.as_object().is_none() {
                    log.ds
                        .borrow_mut()
                        .error(path, Rule::JsonType, "expected a JSON object");
                }
                v.as_object()
            }
        };
        Fields {
            obj,
            path,
            class,
            log,
        }
    }

    /// The same object read with another class's defaults.
    pub fn as_class(self, class: &'a str) -> Self {
        Fields { class, ..self }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj?.get(key).filter(|v| !v.is_null())
    }

    /// Records an error at `key`.
    pub fn error(&self, key: &str, message: String) {
        self.log
            .ds
            .borrow_mut()
            .error(join(self.path, key), Rule::JsonType, message);
    }

    fn bad(&self, key: &str, what: &str) {
        self.error(key, format!("expected {what}"));
    }

    /// Records that `key` was absent and took `value`, and why.
    pub fn note(&self, key: &str, value: impl ToString, why: String) {
        self.log.notes.borrow_mut().push(Note {
            path: join(self.path, key),
            value: value.to_string(),
            why: format!("absent; {why}"),
        });
    }

    /// Records that an import option (not a config field) took `value`, and why.
    pub fn note_option(&self, path: &str, value: impl ToString, why: String) {
        self.log.notes.borrow_mut().push(Note {
            path: path.into(),
            value: value.to_string(),
            why,
        });
    }

    /// A size that defines the model: its absence is an error, never a guess.
    /// When the whole object is missing, its caller reports that once, not every size in it.
    pub fn u32_required(&self, key: &str) -> Option<u32> {
        self.obj?;
        if self.get(key).is_none() {
            self.error(
                key,
                format!(
                    "missing: it sets the model's size, and hetpar does not guess one ({}'s \
                     default describes some other model)",
                    self.class
                ),
            );
            return None;
        }
        self.u32_opt(key)
    }

    /// A non-negative integer that fits u32, or the class's `default` when absent (noted).
    pub fn u32_default(&self, key: &str, default: u32) -> u32 {
        self.u32_default_because(key, default, format!("the default of {}", self.class))
    }

    /// Like `u32_default`, with the reason given (a default derived from other fields).
    pub fn u32_default_because(&self, key: &str, default: u32, why: String) -> u32 {
        if self.get(key).is_none() {
            self.note(key, default, why);
            return default;
        }
        self.u32_opt(key).unwrap_or(default)
    }

    pub fn u32_opt(&self, key: &str) -> Option<u32> {
        let v = self.get(key)?;
        let r = v.as_u64().and_then(|x| u32::try_from(x).ok());
        if r.is_none() {
            self.bad(key, "a non-negative integer below 2^32");
        }
        r
    }

    /// A boolean, or the class's `default` when absent (noted).
    pub fn bool_default(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => {
                self.note(key, default, format!("the default of {}", self.class));
                default
            }
            Some(v) => v.as_bool().unwrap_or_else(|| {
                self.bad(key, "true or false");
                default
            }),
        }
    }

    pub fn string(&self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        let r = v.as_str().map(str::to_string);
        if r.is_none() {
            self.bad(key, "a string");
        }
        r
    }

    /// A finite positive number, or `default` when absent (noted).
    pub fn positive_default(&self, key: &str, default: f64) -> f64 {
        match self.get(key) {
            None => {
                self.note(key, default, format!("the default of {}", self.class));
                default
            }
            Some(v) => match v.as_f64().filter(|x| x.is_finite() && *x > 0.0) {
                Some(x) => x,
                None => {
                    self.bad(key, "a finite positive number");
                    default
                }
            },
        }
    }

    /// An activation by its `transformers` name (`ACT2FN`), or `default` when absent (noted).
    pub fn activation_default(&self, key: &str, default: Activation) -> Activation {
        let Some(name) = self.get(key).map(|_| self.string(key)) else {
            self.note(
                key,
                format!("{default:?}"),
                format!("the default of {}", self.class),
            );
            return default;
        };
        match name.as_deref() {
            Some("gelu") => Activation::Gelu,
            Some("gelu_pytorch_tanh" | "gelu_new") => Activation::GeluTanh,
            Some("quick_gelu") => Activation::QuickGelu,
            Some("silu" | "swish") => Activation::Silu,
            Some("relu") => Activation::Relu,
            Some(other) => {
                self.error(
                    key,
                    format!(
                        "activation `{other}` is not one hetpar knows (gelu, gelu_pytorch_tanh, \
                         gelu_new, quick_gelu, silu, swish, relu)"
                    ),
                );
                default
            }
            None => default,
        }
    }
}
