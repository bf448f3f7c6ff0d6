//! augur's configuration: the TOML schema of the README's Configuration
//! section, loaded and validated into typed [`Config`] settings.
//!
//! ```no_run
//! let config = augur_config::load(std::path::Path::new("augur.toml"))?;
//! println!("{} fronts {}", config.service.listen, config.service.upstream);
//! # Ok::<(), augur_config::Error>(())
//! ```
//!
//! Loading never stops at the first mistake: every problem in a file is
//! collected with its key path (`dependency[2].upstream: invalid socket
//! address "x:y"`) and returned at once in [`Error::Invalid`]. Read
//! `schema.rs` for the keys, their defaults and their checks, and
//! `settings.rs` for what they turn into. `augur check-config` is a thin
//! wrapper over [`load`].

mod overrides;
mod schema;
mod section;
mod settings;

use std::fmt;
use std::path::{Path, PathBuf};

pub use overrides::Override;
pub use settings::*;

/// One thing wrong in a file, at a key path such as `dependency[0].listen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("syntax error at line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// Each problem on its own line, as `check-config` prints them.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Error::Invalid(problems) => problems.iter().map(Problem::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Reads the file at `path`, applies the `AUGUR_SECTION__KEY` variables
/// of the environment over it, and validates the result.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    validate(&text, &overrides::from_process())
}

/// Validates TOML text.
pub fn parse(text: &str) -> Result<Config, Error> {
    validate(text, &[])
}

/// Validates TOML text with `env`'s `AUGUR_SECTION__KEY` variables applied
/// over it, as [`load`] does with the process's environment.
pub fn parse_with_env(text: &str, env: &[(&str, &str)]) -> Result<Config, Error> {
    let vars: Vec<_> = env
        .iter()
        .filter(|(name, _)| overrides::is_override(name))
        .map(|(name, value)| (name.to_string(), Ok(value.to_string())))
        .collect();
    validate(text, &vars)
}

fn validate(text: &str, env: &[(String, Result<String, ()>)]) -> Result<Config, Error> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_and_column(text, offset);
        Error::Syntax {
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    let mut table = table;
    let problems = section::Problems::default();
    let applied = overrides::apply(&mut table, env, &problems);
    let config = schema::config(section::Section::root(table, &problems));
    match config {
        Some(config) if problems.is_empty() => Ok(Config {
            overrides: applied,
            ..config
        }),
        _ => {
            let mut problems = problems.into_vec();
            for problem in &mut problems {
                let path = &problem.path;
                let by = |o: &&Override| {
                    within(path, &o.key) || (!path.is_empty() && within(&o.key, path))
                };
                if let Some(o) = applied.iter().find(by) {
                    problem
                        .message
                        .push_str(&format!(" (set by {})", o.variable));
                }
            }
            if problems.is_empty() {
                problems.push(Problem {
                    path: String::new(),
                    message: "invalid configuration".into(),
                });
            }
            Err(Error::Invalid(problems))
        }
    }
}

fn redact_args(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut value_is_secret = false;
    for arg in args {
        if std::mem::take(&mut value_is_secret) && !arg.starts_with('-') {
            out.push(REDACTED.to_string());
            continue;
        }
        match arg.split_once('=') {
            Some((name, _)) if secret_like(name) => out.push(format!("{name}={REDACTED}")),
            None if arg.starts_with('-') && secret_like(arg) => {
                value_is_secret = true;
                out.push(arg.clone());
            }
            _ => out.push(arg.clone()),
        }
    }
    out
}

fn secret_like(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "credential",
        "auth",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Whether the key path `path` is `key` or inside it.
fn within(path: &str, key: &str) -> bool {
    path.strip_prefix(key)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// What stands for a value that is not shown.
pub const REDACTED: &str = "[redacted]";

impl Config {
    /// This configuration with what may be a credential replaced by
    /// [`REDACTED`]: the values of container arguments named like a secret
    /// (`--password=…`, `--api-key …`, `TOKEN=…`). Nothing else in the
    /// schema holds one: certificates and keys are given as file paths.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        for d in &mut config.dependencies {
            if let Target::Container(c) = &mut d.target {
                c.args = redact_args(&c.args);
            }
        }
        config
    }

    /// A one-line description, as `check-config` prints for a valid file.
    pub fn summary(&self) -> String {
        let containers = self
            .dependencies
            .iter()
            .filter(|d| matches!(d.target, Target::Container(_)))
            .count();
        format!(
            "service {:?} on {} -> {}, {} dependencies ({} container-managed), admin on {}, speculation {}",
            self.service.name,
            self.service.listen,
            self.service.upstream,
            self.dependencies.len(),
            containers,
            self.admin.listen,
            if self.speculation.enabled {
                "on"
            } else {
                "off"
            },
        )
    }
}

#[cfg(test)]
mod tests;
