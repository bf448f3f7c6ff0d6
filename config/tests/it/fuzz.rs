//! The loader on hostile input: arbitrary bytes and mutations of the
//! example files load or fail with a clear error, never panic.
//!
//! Case counts come from `PROPTEST_CASES` (a long run:
//! `PROPTEST_CASES=1000000 cargo test --release -p augur-config --test it fuzz`);
//! the defaults keep each target to a few seconds in a debug build.

use std::path::Path;

use augur_config::{Error, parse};
use proptest::prelude::*;
use proptest::sample::Index;

/// `default` cases, unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What any answer of the loader must be: a configuration that loads the
/// same way again, or an error that says where and what.
fn check(text: &str) -> Result<augur_config::Config, Error> {
    let got = parse(text);
    match &got {
        Ok(config) => {
            assert!(!config.summary().is_empty());
            assert_eq!(
                parse(text).ok().as_ref(),
                Some(config),
                "parse is not deterministic"
            );
        }
        Err(Error::Syntax {
            line,
            column,
            message,
        }) => {
            let lines = text.split('\n').count();
            assert!((1..=lines).contains(line), "line {line} of {lines}");
            assert!(*column >= 1, "column {column}");
            assert!(!message.is_empty());
        }
        Err(Error::Invalid(problems)) => {
            assert!(!problems.is_empty());
            for p in problems {
                assert!(!p.message.trim().is_empty(), "{p:?}");
                assert!(!p.to_string().contains('\n'), "one line per problem: {p:?}");
            }
        }
        Err(other) => panic!("parse gave an error only load should: {other}"),
    }
    if let Err(e) = &got {
        assert_eq!(e.to_string(), e.lines().join("\n"));
    }
    got
}

/// TOML values of every kind the schema sees, and some it should not.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("TOML spells these nan and inf", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        Just("-0".to_string()),
        Just("nan".to_string()),
        Just("-inf".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[a-zA-Z0-9:./ _-]{0,24}".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,20}(ns|us|ms|s|m|h|d|parsecs|)".prop_map(|s| format!("{s:?}")),
        "[0-9]{1,20}(B|KiB|MiB|GiB|TiB|kB|EB|)".prop_map(|s| format!("{s:?}")),
        "(127\\.0\\.0\\.1|0\\.0\\.0\\.0|\\[::1\\]|localhost|x):[0-9]{0,6}"
            .prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("[1, \"a\", true]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"é😀\"".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
    ]
}

/// [`value`], or text that is not a TOML value at all.
fn value_or_junk() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => value(),
        1 => Just("18446744073709551616".to_string()),
        1 => Just("NaN".to_string()),
        1 => Just("'unterminated".to_string()),
        1 => "[^\n]{0,16}",
    ]
}

/// One edit of a file, line by line.
#[derive(Debug, Clone)]
enum Edit {
    /// A key's value replaced by another value.
    Value(Index, String),
    Delete(Index),
    Duplicate(Index),
    Swap(Index, Index),
    /// A byte replaced (in the text's bytes; made valid UTF-8 again).
    Byte(Index, u8),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<Index>(), value_or_junk()).prop_map(|(i, v)| Edit::Value(i, v)),
        1 => any::<Index>().prop_map(Edit::Delete),
        1 => any::<Index>().prop_map(Edit::Duplicate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        match e {
            Edit::Value(i, v) => {
                let at = i.index(lines.len());
                let line = &mut lines[at];
                if let Some((key, _)) = line.split_once('=') {
                    *line = format!("{key}= {v}");
                }
            }
            Edit::Delete(i) => {
                lines.remove(i.index(lines.len()));
            }
            Edit::Duplicate(i) => {
                let at = i.index(lines.len());
                lines.insert(at, lines[at].clone());
            }
            Edit::Swap(a, b) => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
            }
            Edit::Byte(i, b) => {
                let mut bytes = lines.join("\n").into_bytes();
                if !bytes.is_empty() {
                    let at = i.index(bytes.len());
                    bytes[at] = *b;
                }
                lines = String::from_utf8_lossy(&bytes)
                    .lines()
                    .map(str::to_string)
                    .collect();
            }
            Edit::Truncate(i) => lines.truncate(i.index(lines.len())),
        }
    }
    lines.join("\n")
}

/// The line numbers (0-based) of the section headers of a file, and the
/// key path each section's keys get in a problem.
fn sections(text: &str) -> Vec<(usize, String)> {
    let mut counts = std::collections::HashMap::<String, usize>::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            let i = counts.entry(name.to_string()).or_default();
            out.push((n, format!("{name}[{i}]")));
            *i += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // A sub-table of the latest array element: dependency[1].container.
            let path = match name.rsplit_once('.') {
                Some((parent, child)) => match counts.get(parent) {
                    Some(i) => format!("{parent}[{}].{child}", i - 1),
                    None => name.to_string(),
                },
                None => name.to_string(),
            };
            out.push((n, path));
        }
    }
    out
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn arbitrary_bytes_load_or_fail_clearly(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn toml_shaped_noise_loads_or_fails_clearly(
        text in "(\\[{1,2}[a-z._]{0,12}\\]{1,2}\n|[a-z_.\"]{0,12} ?= ?[^\n]{0,20}\n|#[^\n]{0,10}\n|\n){0,24}"
    ) {
        let _ = check(&text);
    }

    #[test]
    fn mutated_examples_load_or_fail_clearly(
        design in any::<bool>(),
        edits in proptest::collection::vec(edit(), 1..8),
    ) {
        let text = example(if design { "design.toml" } else { "passthrough.toml" });
        let _ = check(&apply(&text, &edits));
    }

    /// A key no schema has, in any section of a valid file, is named with
    /// its full key path in the error, whatever else is wrong.
    #[test]
    fn an_unknown_key_is_reported_at_its_path(
        design in any::<bool>(),
        section in any::<Index>(),
        value in value(),
    ) {
        let text = example(if design { "design.toml" } else { "passthrough.toml" });
        let sections = sections(&text);
        let (line, path) = &sections[section.index(sections.len())];
        let mut lines: Vec<&str> = text.lines().collect();
        let inserted = format!("zz_fuzz = {value}");
        lines.insert(line + 1, &inserted);
        let err = check(&lines.join("\n")).expect_err("an unknown key must not load");
        let wanted = format!("{path}.zz_fuzz: unknown key");
        prop_assert!(err.lines().contains(&wanted), "{wanted:?} not in {:?}", err.lines());
    }

    /// Overrides from the environment, named from the schema's own words
    /// and junk, over the examples: they load or fail clearly, and a
    /// failure that is theirs names the variable.
    #[test]
    fn environment_overrides_load_or_fail_clearly(
        design in any::<bool>(),
        vars in proptest::collection::vec((
            "AUGUR_(SERVICE|PROXY|SPECULATION|DEPENDENCY|ROUTE|CONTAINERS|X)(__(0|1|9|USERS|RATES|CONTAINER|TLS|NAME|UPSTREAM|THREADS|CONFIDENCE|IMAGE|SNI|[A-Z_]{0,6})){1,3}",
            value_or_junk(),
        ), 1..4),
    ) {
        let text = example(if design { "design.toml" } else { "passthrough.toml" });
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match augur_config::parse_with_env(&text, &env) {
            Ok(config) => prop_assert!(config.overrides.len() <= env.len()),
            Err(Error::Invalid(problems)) => {
                for p in &problems {
                    prop_assert!(!p.message.trim().is_empty(), "{p:?}");
                    prop_assert!(!p.to_string().contains('\n'), "one line per problem: {p:?}");
                }
                if check(&text).is_ok() {
                    prop_assert!(
                        problems.iter().any(|p| p.to_string().contains("AUGUR_")),
                        "a valid file failed without naming a variable: {problems:?}"
                    );
                }
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}

#[test]
fn unreadable_bytes_in_a_file_are_a_read_error() {
    let path = std::env::temp_dir().join(format!("augur-config-fuzz-{}.toml", std::process::id()));
    std::fs::write(&path, b"[service]\nname = \"\xff\xfe\"\n").unwrap();
    let got = augur_config::load(&path);
    let _ = std::fs::remove_file(&path);
    match got {
        Err(Error::Read { .. }) => {}
        other => panic!("expected a read error for invalid UTF-8, got {other:?}"),
    }
}
