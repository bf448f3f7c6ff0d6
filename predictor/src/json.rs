//! Small JSON helpers shared by shapes and provenance: the text form of a
//! scalar and a bounded walk over a document's leaves and arrays.

use serde_json::Value;

/// The text form of a JSON scalar, as it would appear in a URL or header
/// (strings unquoted); `None` for objects and arrays.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

/// A key as a JSON pointer token (RFC 6901).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// What a walk reports.
pub trait Visitor {
    /// A scalar at `pointer`.
    fn leaf(&mut self, pointer: &str, value: &Value);
    /// An array at `pointer`, after its elements were walked.
    fn array(&mut self, _pointer: &str, _items: &[Value]) {}
}

/// Walks `root` depth first, at most `max_depth` deep and `max_leaves`
/// leaves.
pub fn walk(root: &Value, max_depth: usize, max_leaves: usize, visitor: &mut dyn Visitor) {
    let mut budget = max_leaves;
    visit(root, &mut String::new(), 0, max_depth, &mut budget, visitor);
}

fn visit(
    v: &Value,
    pointer: &mut String,
    depth: usize,
    max_depth: usize,
    budget: &mut usize,
    visitor: &mut dyn Visitor,
) {
    if *budget == 0 || depth > max_depth {
        return;
    }
    let mut child = |key: &str, value: &Value, pointer: &mut String, budget: &mut usize| {
        let len = pointer.len();
        pointer.push('/');
        pointer.push_str(key);
        visit(value, pointer, depth + 1, max_depth, budget, visitor);
        pointer.truncate(len);
    };
    match v {
        Value::Object(map) => {
            for (k, value) in map {
                child(&escape(k), value, pointer, budget);
            }
        }
        Value::Array(items) => {
            for (i, value) in items.iter().enumerate() {
                child(&i.to_string(), value, pointer, budget);
            }
            visitor.array(pointer, items);
        }
        scalar => {
            *budget -= 1;
            visitor.leaf(pointer, scalar);
        }
    }
}
