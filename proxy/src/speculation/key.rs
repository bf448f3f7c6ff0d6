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
    /// Keyed 128-bit digest of the request; never the request itself,
    /// which may hold credentials.
    request: u128,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ContextId { trace, serial } = self.context;
        write!(f, "{trace:032x}.{serial}/{:032x}", self.request)
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
        let mut sorted: Vec<&(String, String)> = headers.iter().collect();
        sorted.sort();
        let body = body.filter(|b| !b.is_empty());
        // Each part ends in a byte no header, method or path holds (0xfd
        // to 0xff are not UTF-8), so parts cannot run into one another.
        let request = hasher.digest(|h| {
            for part in [dependency, method, path_and_query] {
                h.write(part.as_bytes());
                h.write_u8(0xff);
            }
            for (n, v) in &sorted {
                h.write(n.as_bytes());
                h.write_u8(0xfe);
                h.write(v.as_bytes());
                h.write_u8(0xff);
            }
            if let Some(b) = body {
                h.write_u8(0xfd);
                h.write(b.as_bytes());
            }
        });
        Self { context, request }
    }
}
