//! Keys set from the environment, applied to the file's table before it is
//! validated, so an override is checked exactly like the file.
//!
//! `AUGUR_SPECULATION__CONFIDENCE=0.9` sets `speculation.confidence`: after
//! the `AUGUR_` prefix, `__` separates the parts of the key path and each
//! part is lowercased. An array of tables is entered by index or by name:
//! `AUGUR_DEPENDENCY__0__UPSTREAM` or `AUGUR_DEPENDENCY__USERS__UPSTREAM`
//! (a name matches with `-` and `.` read as `_`). A value is read as a TOML
//! value (`0.9`, `true`, `["GET", "HEAD"]`, `"text"`); anything else, or
//! any value for a key the file gives as a string, is the text itself.
//! Variables without `__` (such as `AUGUR_LOG`) are not overrides.

use toml::{Table, Value};

use crate::section::Problems;

const PREFIX: &str = "AUGUR_";

/// One key the environment set: the variable and the key path it set
/// (`dependency[0].upstream`), as `check-config` and `/debug/config` list
/// them. The value is not kept here: it may be a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Override {
    pub variable: String,
    pub key: String,
}

/// The overrides in the process's environment, sorted by name.
pub(crate) fn from_process() -> Vec<(String, Result<String, ()>)> {
    let mut vars: Vec<_> = std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            is_override(&name).then(|| (name, value.into_string().map_err(drop)))
        })
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

pub(crate) fn is_override(name: &str) -> bool {
    name.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.contains("__"))
}

/// Applies `vars` to `root`, recording a problem for each that names no
/// key; returns the ones applied.
pub(crate) fn apply(
    root: &mut Table,
    vars: &[(String, Result<String, ()>)],
    problems: &Problems,
) -> Vec<Override> {
    let mut applied = Vec::new();
    for (variable, value) in vars {
        let Some(parts) = parts(variable) else {
            problems.push(
                variable.clone(),
                "expected AUGUR_SECTION__KEY (parts separated by __, none empty)",
            );
            continue;
        };
        let Ok(value) = value else {
            problems.push(variable.clone(), "the value is not valid UTF-8");
            continue;
        };
        match set(root, &parts, value) {
            Ok(key) => applied.push(Override {
                variable: variable.clone(),
                key,
            }),
            Err(message) => problems.push(variable.clone(), message),
        }
    }
    applied
}

/// The lowercased key path of a variable, `None` if a part is empty.
fn parts(variable: &str) -> Option<Vec<String>> {
    let rest = variable.strip_prefix(PREFIX)?;
    let parts: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
    (parts.len() >= 2 && parts.iter().all(|p| !p.is_empty())).then_some(parts)
}

/// Sets the key at `parts` (two or more) to `raw`, creating tables on the
/// way; returns its key path as problems name it.
fn set(root: &mut Table, parts: &[String], raw: &str) -> Result<String, String> {
    let last = parts.len() - 1;
    let mut table = root;
    let mut path = String::new();
    let mut i = 0;
    while i < last {
        let part = &parts[i];
        i += 1;
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(part);
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            Value::Array(items) => {
                if i == last {
                    return Err(format!(
                        "{path} is a list: name an element (index or name) before the key"
                    ));
                }
                let which = &parts[i];
                i += 1;
                let index = element(items, which)
                    .ok_or_else(|| format!("{path} has no element {which:?} (by index or name)"))?;
                path.push_str(&format!("[{index}]"));
                match &mut items[index] {
                    Value::Table(t) => t,
                    other => return Err(format!("{path} is {}, not a table", other.type_str())),
                }
            }
            other => return Err(format!("{path} is {}, not a table", other.type_str())),
        };
    }
    let key = &parts[last];
    let value = value(raw, table.get(key.as_str()));
    table.insert(key.clone(), value);
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    Ok(path)
}

/// The index of the element named by `which`: its index, or the table
/// whose `name` matches.
fn element(items: &[Value], which: &str) -> Option<usize> {
    if let Ok(i) = which.parse::<usize>() {
        return (i < items.len()).then_some(i);
    }
    items.iter().position(|item| {
        item.get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| {
                name.len() == which.len()
                    && name.bytes().zip(which.bytes()).all(|(n, w)| match n {
                        b'-' | b'.' => w == b'_',
                        n => n.to_ascii_lowercase() == w,
                    })
            })
    })
}

/// `raw` as a TOML value, or as text where it is not one or where the
/// file gives a string.
fn value(raw: &str, existing: Option<&Value>) -> Value {
    let text = || Value::String(raw.to_string());
    if matches!(existing, Some(Value::String(_))) && !raw.starts_with('"') {
        return text();
    }
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(text),
        Err(_) => text(),
    }
}
