//! Fixture-driven tests: every file under `tests/fixtures/valid` loads, and
//! every file under `tests/fixtures/invalid` fails with exactly the lines of
//! its `.expected` file; the examples in `examples/` and the compose
//! demo's configuration stay valid. `fuzz.rs` feeds the loader hostile
//! input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod fuzz;

use std::fs;
use std::path::{Path, PathBuf};

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no fixtures in {}", dir.display());
    out
}

#[test]
fn valid_fixtures_and_examples_load() {
    for path in files("tests/fixtures/valid", "toml")
        .into_iter()
        .chain(files("examples", "toml"))
        .chain(files("../compose", "toml"))
    {
        if let Err(e) = augur_config::load(&path) {
            panic!("{} should be valid:\n{e}", path.display());
        }
    }
}

#[test]
fn invalid_fixtures_give_their_exact_messages() {
    let mut failures = Vec::new();
    for path in files("tests/fixtures/invalid", "toml") {
        let expected_path = path.with_extension("expected");
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let got = match augur_config::load(&path) {
            Ok(_) => "<loaded without error>".to_string(),
            Err(e) => e.lines().join("\n"),
        };
        if got.trim() != expected.trim() {
            failures.push(format!(
                "{}\n--- expected\n{}\n--- got\n{}",
                path.display(),
                expected.trim(),
                got.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn missing_file_names_the_path() {
    let err = augur_config::load(Path::new("/nonexistent/augur.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/augur.toml:"),
        "{err}"
    );
}
