//! The bounded JSON walk on arbitrary documents: it never panics, stays
//! within its leaf and depth bounds, and every pointer it reports is a
//! valid RFC 6901 pointer that resolves to what it visited.
//!
//! Case counts come from `PROPTEST_CASES` (a long run:
//! `PROPTEST_CASES=1000000 cargo test --release -p augur-predictor --test it json_walk`).

use augur_predictor::json::{Visitor, escape, scalar_text, walk};
use proptest::prelude::*;
use serde_json::{Map, Value};

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

/// Keys that need escaping, are empty, or look like indices.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,6}",
        "[~/0-9a-z]{0,6}",
        Just(String::new()),
        Just("~01".to_string()),
        Just("0".to_string()),
        "\\PC{0,4}",
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        "\\PC{0,8}".prop_map(Value::String),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(8, 256, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

#[derive(Default)]
struct Seen {
    leaves: Vec<(String, Value)>,
    arrays: Vec<(String, Vec<Value>)>,
}

impl Visitor for Seen {
    fn leaf(&mut self, pointer: &str, value: &Value) {
        self.leaves.push((pointer.to_string(), value.clone()));
    }

    fn array(&mut self, pointer: &str, items: &[Value]) {
        self.arrays.push((pointer.to_string(), items.to_vec()));
    }
}

/// Only where the walk went: cloning what it saw would recurse as deep as
/// the document.
#[derive(Default)]
struct Where {
    leaves: Vec<String>,
    arrays: Vec<String>,
}

impl Visitor for Where {
    fn leaf(&mut self, pointer: &str, _: &Value) {
        self.leaves.push(pointer.to_string());
    }

    fn array(&mut self, pointer: &str, _: &[Value]) {
        self.arrays.push(pointer.to_string());
    }
}

/// The tokens of an RFC 6901 pointer, unescaped; panics on a malformed one.
fn tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    let rest = pointer
        .strip_prefix('/')
        .unwrap_or_else(|| panic!("{pointer:?} does not start with /"));
    rest.split('/')
        .map(|t| {
            let mut chars = t.chars().peekable();
            while let Some(c) = chars.next() {
                if c == '~' {
                    assert!(
                        matches!(chars.next(), Some('0' | '1')),
                        "bad escape in {pointer:?}"
                    );
                }
            }
            t.replace("~1", "/").replace("~0", "~")
        })
        .collect()
}

/// Every scalar of `v` with its pointer and depth, and every array, in the
/// walk's depth-first order, with no bounds.
fn everything(
    v: &Value,
    pointer: &str,
    depth: usize,
    leaves: &mut Vec<(String, usize)>,
    arrays: &mut Vec<(String, usize)>,
) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{pointer}/{}", escape(k));
                everything(child, &p, depth + 1, leaves, arrays);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                everything(child, &format!("{pointer}/{i}"), depth + 1, leaves, arrays);
            }
            arrays.push((pointer.to_string(), depth));
        }
        _ => leaves.push((pointer.to_string(), depth)),
    }
}

proptest! {
    #![proptest_config(cases(1024))]

    #[test]
    fn walk_stays_in_bounds_and_every_pointer_resolves(
        doc in document(),
        max_depth in 0usize..10,
        max_leaves in 0usize..64,
    ) {
        let mut seen = Seen::default();
        walk(&doc, max_depth, max_leaves, &mut seen);
        prop_assert!(seen.leaves.len() <= max_leaves);
        for (pointer, value) in &seen.leaves {
            prop_assert!(tokens(pointer).len() <= max_depth, "{} deeper than {}", pointer, max_depth);
            prop_assert!(!value.is_array() && !value.is_object());
            prop_assert_eq!(doc.pointer(pointer), Some(value), "{}", pointer);
        }
        for (pointer, items) in &seen.arrays {
            prop_assert!(tokens(pointer).len() <= max_depth, "{} deeper than {}", pointer, max_depth);
            prop_assert_eq!(doc.pointer(pointer).and_then(Value::as_array), Some(items), "{}", pointer);
        }
        let mut pointers: Vec<&String> = seen.leaves.iter().map(|(p, _)| p).collect();
        pointers.sort();
        pointers.dedup();
        prop_assert_eq!(pointers.len(), seen.leaves.len(), "a leaf visited twice");
    }

    /// Within its bounds the walk misses nothing: it visits exactly the
    /// first `max_leaves` scalars no deeper than `max_depth`, in document
    /// order, and every array no deeper than `max_depth` it reached.
    #[test]
    fn walk_visits_the_first_leaves_within_its_depth(
        doc in document(),
        max_depth in 0usize..10,
        max_leaves in 0usize..64,
    ) {
        let (mut all_leaves, mut all_arrays) = (Vec::new(), Vec::new());
        everything(&doc, "", 0, &mut all_leaves, &mut all_arrays);
        let expected: Vec<&String> = all_leaves
            .iter()
            .filter(|(_, d)| *d <= max_depth)
            .map(|(p, _)| p)
            .take(max_leaves)
            .collect();
        let mut seen = Seen::default();
        walk(&doc, max_depth, max_leaves, &mut seen);
        let got: Vec<&String> = seen.leaves.iter().map(|(p, _)| p).collect();
        prop_assert_eq!(got, expected);
        if max_leaves > all_leaves.len() {
            let expected: Vec<&String> = all_arrays
                .iter()
                .filter(|(_, d)| *d <= max_depth)
                .map(|(p, _)| p)
                .collect();
            let got: Vec<&String> = seen.arrays.iter().map(|(p, _)| p).collect();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn escape_makes_one_pointer_token(k in "\\PC{0,12}", v in scalar()) {
        let token = escape(&k);
        prop_assert!(!token.contains('/'));
        prop_assert_eq!(tokens(&format!("/{token}")), vec![k.clone()]);
        let mut map = Map::new();
        map.insert(k, v.clone());
        let doc = Value::Object(map);
        prop_assert_eq!(doc.pointer(&format!("/{token}")), Some(&v));
    }

    /// The text of a scalar reads back as the scalar (a string as itself,
    /// a number exactly: Rust's float parsing, not serde_json's default,
    /// which may be one ulp off); containers have none.
    #[test]
    fn scalar_text_reads_back(v in document()) {
        let text = scalar_text(&v);
        match &v {
            Value::Array(_) | Value::Object(_) => prop_assert_eq!(text, None),
            Value::String(s) => prop_assert_eq!(text.as_ref(), Some(s)),
            Value::Number(n) => {
                let text = text.unwrap_or_default();
                let exact = match (n.as_u64(), n.as_i64(), n.as_f64()) {
                    (Some(u), _, _) => text.parse::<u64>().ok() == Some(u),
                    (_, Some(i), _) => text.parse::<i64>().ok() == Some(i),
                    (_, _, f) => text.parse::<f64>().ok() == f,
                };
                prop_assert!(exact, "{} read back from {:?}", n, text);
            }
            Value::Bool(_) | Value::Null => {
                prop_assert_eq!(text.and_then(|t| serde_json::from_str::<Value>(&t).ok()), Some(v));
            }
        }
    }
}

/// A document nested far deeper than the walk goes: the walk stops at its
/// depth instead of recursing to the bottom.
#[test]
fn deep_nesting_is_cut_at_max_depth() {
    let mut doc = Value::from(1);
    for i in 0..5_000 {
        doc = if i % 2 == 1 {
            Value::Array(vec![doc])
        } else {
            let mut map = Map::new();
            map.insert("k".into(), doc);
            Value::Object(map)
        };
    }
    let mut seen = Where::default();
    walk(&doc, 32, 1_000, &mut seen);
    assert!(seen.leaves.is_empty());
    assert!(seen.arrays.iter().all(|p| tokens(p).len() <= 32));
    assert_eq!(seen.arrays.len(), 17, "arrays at even depths 0..=32");
    // serde_json drops nested values recursively: take it apart by hand.
    let mut stack = vec![doc];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}
