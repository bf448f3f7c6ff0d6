//! What identifies a request to the speculation table: the context (augur's
//! own id for the inbound request) and a keyed hash of the request as sent
//! — dependency, method, path and query, every header that is part of its
//! identity, the body as sent. Never the request itself, which may hold
//! credentials.

use augur_predictor::secret::SecretHasher;

use crate::context::ContextId;

/// A request as the table knows it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The inbound request it belongs to.
    pub(crate) context: ContextId,
    /// Keyed hash of the request; never the request itself, which may hold
    /// credentials.
    request: String,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ContextId { trace, serial } = self.context;
        write!(f, "{trace:032x}.{serial}/{}", self.request)
    }
}

impl Key {
    /// The key of a request: `headers` are the ones that matter, with their
    /// real values; `body` is the body exactly as sent.
    pub(crate) fn new(
        hasher: &SecretHasher,
        context: ContextId,
        dependency: &str,
        method: &str,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Option<&str>,
    ) -> Self {
        let mut canonical = format!("{dependency}\n{method}\n{path_and_query}\n");
        let mut sorted: Vec<&(String, String)> = headers.iter().collect();
        sorted.sort();
        for (n, v) in sorted {
            canonical.push_str(n);
            canonical.push_str(": ");
            canonical.push_str(v);
            canonical.push('\n');
        }
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            canonical.push('\n');
            canonical.push_str(b);
        }
        Self {
            context,
            request: hasher.hash(&canonical),
        }
    }
}
