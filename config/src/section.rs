//! A walker over one TOML table that takes keys out one by one, converts
//! them, and records every problem with its key path instead of stopping at
//! the first. Whatever is left when the walker finishes is an unknown key.

use std::cell::RefCell;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use toml::{Table, Value};

use crate::Problem;

/// Every problem found in one file, in the order they were found.
#[derive(Debug, Default)]
pub(crate) struct Problems(RefCell<Vec<Problem>>);

impl Problems {
    pub(crate) fn push(&self, path: impl Into<String>, message: impl Into<String>) {
        self.0.borrow_mut().push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn into_vec(self) -> Vec<Problem> {
        self.0.into_inner()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.borrow().is_empty()
    }
}

/// One table of the file, with the key path that leads to it.
pub(crate) struct Section<'p> {
    path: String,
    table: Table,
    /// Keys already taken out of `table`, so a bad value is not also missing.
    taken: HashSet<String>,
    problems: &'p Problems,
}

impl<'p> Section<'p> {
    pub(crate) fn root(table: Table, problems: &'p Problems) -> Self {
        Self {
            path: String::new(),
            table,
            taken: HashSet::new(),
            problems,
        }
    }

    /// The key path of `key` in this section, as problems name it.
    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub(crate) fn problem(&self, key: &str, message: impl Into<String>) {
        self.problems.push(self.key_path(key), message);
    }

    /// Records a problem about the section itself (no key).
    pub(crate) fn section_problem(&self, message: impl Into<String>) {
        self.problems.push(self.path.clone(), message);
    }

    /// Whether the file gives `key` (taken already or not).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key) || self.taken.contains(key)
    }

    /// Reports a missing required value.
    pub(crate) fn required<T>(&self, key: &str, value: Option<T>) -> Option<T> {
        if value.is_none() && !self.has(key) {
            self.problem(key, "missing");
        }
        value
    }

    fn take_typed<T>(
        &mut self,
        key: &str,
        what: &str,
        get: impl Fn(Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.table.remove(key)?;
        self.taken.insert(key.to_string());
        let found = value.type_str();
        match get(value) {
            Some(v) => Some(v),
            None => {
                self.problem(key, format!("expected {what}, found {found}"));
                None
            }
        }
    }

    /// The TOML type of a key's value (`"boolean"`, `"table"`, …), if set.
    pub(crate) fn kind(&self, key: &str) -> Option<&'static str> {
        self.table.get(key).map(Value::type_str)
    }

    pub(crate) fn string(&mut self, key: &str) -> Option<String> {
        self.take_typed(key, "a string", |v| match v {
            Value::String(s) => Some(s),
            _ => None,
        })
    }

    pub(crate) fn boolean(&mut self, key: &str) -> Option<bool> {
        self.take_typed(key, "a boolean", |v| v.as_bool())
    }

    /// An integer within `min..=max`.
    pub(crate) fn integer(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        let n = self.take_typed(key, "an integer", |v| v.as_integer())?;
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.problem(key, format!("{n} is out of range {min}..={max}"));
            None
        }
    }

    /// A count (non-negative integer) within `min..=max`.
    pub(crate) fn count(&mut self, key: &str, min: u32, max: u32) -> Option<u32> {
        self.integer(key, i64::from(min), i64::from(max))
            .and_then(|n| u32::try_from(n).ok())
    }

    /// A number (integer or float) within `min..=max`.
    pub(crate) fn number(&mut self, key: &str, min: f64, max: f64) -> Option<f64> {
        let n = self.take_typed(key, "a number", |v| match v {
            Value::Float(f) => Some(f),
            Value::Integer(i) => Some(i as f64),
            _ => None,
        })?;
        if n.is_finite() && n >= min && n <= max {
            Some(n)
        } else {
            self.problem(key, format!("{n} is out of range {min}..={max}"));
            None
        }
    }

    /// A string turned into `T` by `parse`; a failure is reported as
    /// `invalid {what} "{value}"`.
    pub(crate) fn parsed<T>(
        &mut self,
        key: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let raw = self.string(key)?;
        let parsed = parse(&raw);
        if parsed.is_none() {
            self.problem(key, format!("invalid {what} {raw:?}"));
        }
        parsed
    }

    /// [`parsed`](Self::parsed), or `default` when the key is absent.
    pub(crate) fn parsed_or<T>(
        &mut self,
        key: &str,
        what: &str,
        default: T,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        if self.has(key) {
            self.parsed(key, what, parse)
        } else {
            Some(default)
        }
    }

    pub(crate) fn duration(&mut self, key: &str) -> Option<Duration> {
        self.parsed(key, "duration", |s| humantime::parse_duration(s).ok())
    }

    /// A size in bytes such as `"64MiB"`; a bare integer counts bytes.
    pub(crate) fn size(&mut self, key: &str) -> Option<u64> {
        if let Some(Value::Integer(n)) = self.table.get(key) {
            let n = *n;
            self.table.remove(key);
            self.taken.insert(key.to_string());
            return match u64::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.problem(key, format!("invalid size {n}"));
                    None
                }
            };
        }
        self.parsed(key, "size", |s| {
            bytesize::ByteSize::from_str(s).ok().map(|b| b.as_u64())
        })
    }

    pub(crate) fn socket_addr(&mut self, key: &str) -> Option<SocketAddr> {
        self.parsed(key, "socket address", |s| s.parse().ok())
    }

    pub(crate) fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        let items = self.take_typed(key, "an array of strings", |v| match v {
            Value::Array(items) => Some(items),
            _ => None,
        })?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            match item {
                Value::String(s) => out.push(s),
                other => self.problem(
                    &format!("{key}[{i}]"),
                    format!("expected a string, found {}", other.type_str()),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table; `None` when absent (or not a table, which is reported).
    pub(crate) fn table(&mut self, key: &str) -> Option<Section<'p>> {
        let path = self.key_path(key);
        let table = self.take_typed(key, "a table", |v| match v {
            Value::Table(t) => Some(t),
            _ => None,
        })?;
        Some(Section {
            path,
            table,
            taken: HashSet::new(),
            problems: self.problems,
        })
    }

    /// A sub-table that may be absent: an absent one walks as empty, so its
    /// defaults apply.
    pub(crate) fn table_or_empty(&mut self, key: &str) -> Section<'p> {
        let path = self.key_path(key);
        self.table(key).unwrap_or(Section {
            path,
            table: Table::new(),
            taken: HashSet::new(),
            problems: self.problems,
        })
    }

    /// An array of tables (`[[key]]`), each with its index in its path.
    pub(crate) fn tables(&mut self, key: &str) -> Vec<Section<'p>> {
        let Some(items) = self.take_typed(key, "an array of tables", |v| match v {
            Value::Array(items) => Some(items),
            _ => None,
        }) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(key));
            match item {
                Value::Table(table) => out.push(Section {
                    path,
                    table,
                    taken: HashSet::new(),
                    problems: self.problems,
                }),
                other => self.problems.push(
                    path,
                    format!("expected a table, found {}", other.type_str()),
                ),
            }
        }
        out
    }

    /// Reports every key nobody took as unknown.
    pub(crate) fn finish(self) {
        for key in self.table.keys() {
            self.problem(key, "unknown key");
        }
    }
}
