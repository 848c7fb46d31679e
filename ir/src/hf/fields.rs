//! Typed reads of a Hugging Face config object with defaults, recording a diagnostic (with the
//! JSON path) for every field of the wrong type. Readers share one diagnostics list.

use std::cell::RefCell;

use serde_json::Value;

use crate::diag::{join, Diagnostics};
use crate::rule::Rule;

#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    obj: Option<&'a serde_json::Map<String, Value>>,
    path: &'a str,
    ds: &'a RefCell<Diagnostics>,
}

impl<'a> Fields<'a> {
    /// Reads `v` (at JSON path `path`); a non-object records an error and reads as all-default.
    pub fn new(v: Option<&'a Value>, path: &'a str, ds: &'a RefCell<Diagnostics>) -> Self {
        let obj = match v {
            None => None,
            Some(v) => {
                if v.as_object().is_none() {
                    ds.borrow_mut()
                        .error(path, Rule::JsonType, "expected a JSON object");
                }
                v.as_object()
            }
        };
        Fields { obj, path, ds }
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj?.get(key).filter(|v| !v.is_null())
    }

    fn bad(&self, key: &str, what: &str) {
        self.ds.borrow_mut().error(
            join(self.path, key),
            Rule::JsonType,
            format!("expected {what}"),
        );
    }

    /// A non-negative integer that fits u32, or `default` when absent.
    pub fn u32_or(&self, key: &str, default: u32) -> u32 {
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

    pub fn bool_or(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
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
}
