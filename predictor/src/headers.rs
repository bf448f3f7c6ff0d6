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

pub fn matters(name: &str) -> bool {
    MATTER.contains(&name)
}

pub fn is_credential(name: &str) -> bool {
    CREDENTIALS.contains(&name)
}
