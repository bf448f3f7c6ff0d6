//! Which request headers are part of a call's identity: the ones that can
//! change the answer. Others (tracing, user agents, request ids) are neither
//! learned nor predicted nor compared.

/// Headers that can change a response, compared when matching a prediction
/// to a real call. The proxy may add more (a dependency's `vary`).
pub const MATTER: [&str; 6] = [
    "authorization",
    "cookie",
    "accept",
    "accept-language",
    "accept-encoding",
    "content-type",
];

/// Headers whose values are credentials: hashed before the predictor sees
/// them, never learned as constants.
pub const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

static ALSO: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Adds headers that can change a response (a deployment's `vary`
/// headers, say) to [`MATTER`] for this process; the first call wins.
pub fn also_matter(names: &[String]) {
    let _ = ALSO.set(names.iter().map(|n| n.to_ascii_lowercase()).collect());
}

pub fn matters(name: &str) -> bool {
    MATTER.contains(&name)
        || ALSO
            .get()
            .is_some_and(|also| also.iter().any(|h| h == name))
}

pub fn is_credential(name: &str) -> bool {
    CREDENTIALS.contains(&name)
}
