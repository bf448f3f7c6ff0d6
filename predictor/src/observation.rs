//! What the predictor learns from: closed execution contexts, as the proxy
//! records them and as trace files store them. Credentials arrive already
//! replaced by a keyed hash (see [`crate::secret`]); the predictor compares
//! them, never reads them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A JSON document, shared: a live context hands its bodies to the
/// predictor without copying them.
pub type Json = Arc<Value>;

/// One HTTP request: the inbound one, or a dependency call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`; `None` when there is none.
    #[serde(default)]
    pub query: Option<String>,
    /// Header names (lowercase) and values. Only headers that are part of
    /// a call's identity are kept (all but those
    /// [`crate::headers::KeyHeaders`] ignores); credentials are keyed
    /// hashes.
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// The JSON body, when there was one and it parsed.
    #[serde(default)]
    pub body: Option<Json>,
}

impl Request {
    /// A request for `target` (a path with an optional `?query`), with no
    /// body.
    pub fn to(method: &str, target: &str, headers: &[(&str, &str)]) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        Request {
            method: method.to_string(),
            path,
            query,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: None,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Query pairs in order, percent-decoding left to the caller: values are
    /// compared as they were sent.
    pub fn query_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
    }

    /// The path's segments after the leading `/`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.strip_prefix('/').unwrap_or(&self.path).split('/')
    }
}

/// One dependency call within a context.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub dependency: String,
    pub request: Request,
    /// 0 when no response came.
    pub status: u16,
    /// Microseconds from the inbound request's arrival to this call's.
    pub start_us: u64,
    pub duration_us: u64,
    /// The JSON response body, when it was captured and parsed.
    #[serde(default)]
    pub response: Option<Json>,
}

impl Call {
    pub fn end_us(&self) -> u64 {
        self.start_us.saturating_add(self.duration_us)
    }
}

/// A closed execution context: an inbound request and the calls made for it,
/// in the order they started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// `METHOD /path/{id}` of the inbound request.
    pub route: String,
    pub inbound: Request,
    pub calls: Vec<Call>,
}
