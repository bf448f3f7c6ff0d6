//! Which request headers are part of a call's identity: the ones that can
//! change the answer. Others (tracing, user agents, request ids) are neither
//! learned nor predicted nor compared.

/// Headers that can change a response, compared when matching a prediction
/// to a real call. A deployment may add more (see [`KeyHeaders`]).
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

/// The headers that are part of a call's identity in one deployment:
/// [`MATTER`] and the deployment's own (a dependency's `vary` headers,
/// say). Passed in by whoever builds the learner; nothing is global.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyHeaders {
    also: Vec<String>,
}

impl KeyHeaders {
    /// [`MATTER`] and `also` (any case).
    pub fn new(also: &[String]) -> Self {
        Self {
            also: also.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether the lowercase header `name` can change the answer.
    pub fn matters(&self, name: &str) -> bool {
        MATTER.contains(&name) || self.also.iter().any(|h| h == name)
    }

    /// The headers that matter, sorted by name.
    pub fn select(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| self.matters(n))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

pub fn is_credential(name: &str) -> bool {
    CREDENTIALS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_adds_its_own_headers() {
        let plain = KeyHeaders::default();
        let tenant = KeyHeaders::new(&["X-Tenant".to_string()]);
        assert!(plain.matters("accept") && tenant.matters("accept"));
        assert!(!plain.matters("x-tenant"));
        assert!(tenant.matters("x-tenant"));
        let pairs = vec![
            ("x-tenant".to_string(), "a".to_string()),
            ("accept".to_string(), "*/*".to_string()),
            ("user-agent".to_string(), "t".to_string()),
        ];
        assert_eq!(
            tenant.select(&pairs),
            [
                ("accept".to_string(), "*/*".to_string()),
                ("x-tenant".to_string(), "a".to_string())
            ]
        );
    }
}
