//! Path templates: the segments of a path that identify one resource among
//! many (numbers, UUIDs, hex digests, opaque tokens) become `{id}` slots, so
//! that `/users/42` and `/users/7` share the template `/users/{id}`.

use std::borrow::Cow;

/// The text a varying segment is replaced with.
pub const SLOT: &str = "{id}";

/// Whether one path segment looks like an identifier rather than a name.
pub fn is_identifier(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(bytes) {
        return true;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return false;
    }
    // Hex digests and object ids: long runs of hex with at least one digit.
    if bytes.len() >= 8 && bytes.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Opaque tokens: long, mixed letters and digits (base62/base64url ids).
    bytes.len() >= 16
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The template of a path (without its query): identifier segments become
/// [`SLOT`]. Borrows when nothing changes.
pub fn path_template(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(is_identifier) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_identifier(segment) {
            SLOT
        } else {
            segment
        });
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_become_slots() {
        assert_eq!(path_template("/users/42"), "/users/{id}");
        assert_eq!(
            path_template("/hotels/550e8400-e29b-41d4-a716-446655440000/rates"),
            "/hotels/{id}/rates"
        );
        assert_eq!(path_template("/blobs/deadbeef01"), "/blobs/{id}");
        assert_eq!(path_template("/t/aB3dE5gH7jK9mN1pQ"), "/t/{id}");
    }

    #[test]
    fn names_stay() {
        assert_eq!(path_template("/"), "/");
        assert_eq!(path_template("/api/v2/users"), "/api/v2/users");
        assert_eq!(path_template("/search/nearby"), "/search/nearby");
        assert_eq!(path_template("/cafe"), "/cafe");
        assert!(matches!(path_template("/api/v1"), Cow::Borrowed(_)));
    }
}
