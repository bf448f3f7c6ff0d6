//! The one place that decides what a client sees when proxying fails: the
//! status, and a short plain-text body that names what failed. Errors keep
//! their type to here: a dependency that could lend no instance (a
//! [`PoolError`] under pingora's error) or a name with no address yet
//! ([`Unresolved`]) says why.

use std::net::SocketAddr;

use bytes::Bytes;
use pingora::ErrorType::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::{Error, ErrorSource};

use super::names::Unresolved;
use super::upstream::Target;
use crate::containers::pool::PoolError;
use crate::dependency::NoInstance;

/// The error for a call that got no instance, for [`respond`] to explain:
/// 503 when its containers lent none, 502 when its name has no address.
pub(crate) fn no_instance(e: NoInstance) -> Box<Error> {
    match e {
        NoInstance::Pool(e) => Error::because(HTTPStatus(503), "no instance for the call", e),
        NoInstance::Unresolved(e) => unresolved(e),
    }
}

/// The error for a request whose upstream's name has no address yet.
pub(crate) fn unresolved(e: Unresolved) -> Box<Error> {
    Error::because(HTTPStatus(502), "no address for the upstream", e)
}

/// A real write whose speculation was sent (so it may have run) but whose
/// answer augur does not have: it fails with 502 and never goes upstream,
/// where it would run a second time.
#[derive(Debug)]
pub(crate) struct SentWrite;

impl std::fmt::Display for SentWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "this write was sent ahead by speculation and its answer is lost; it is not sent twice",
        )
    }
}

impl std::error::Error for SentWrite {}

/// The error for a write [`SentWrite`] stops, for [`respond`] to explain.
pub(crate) fn sent_write(e: SentWrite) -> Box<Error> {
    Error::because(HTTPStatus(502), "a write sent ahead", e)
}

/// The status for an error, or 0 when the client is gone and nothing can
/// be sent.
pub(crate) fn status_of(e: &Error) -> u16 {
    match e.etype() {
        HTTPStatus(code) => *code,
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ConnectTimedout | ReadTimedout | WriteTimedout => 504,
                _ => 502,
            },
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => 0,
                ReadTimedout | WriteTimedout => 408,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

fn body(code: u16, e: &Error, target: &Target, addr: Option<SocketAddr>) -> String {
    if let Some(why) = e.root_cause().downcast_ref::<PoolError>() {
        return format!("augur: {}: {why}\n", target.label);
    }
    if let Some(why) = e.root_cause().downcast_ref::<Unresolved>() {
        return format!("augur: {}: {why}\n", target.label);
    }
    if let Some(why) = e.root_cause().downcast_ref::<SentWrite>() {
        return format!("augur: {}: {why}\n", target.label);
    }
    let at = target.at(addr);
    match code {
        504 if matches!(e.etype(), ConnectTimedout) => format!(
            "augur: {} at {at}: no connection within {}\n",
            target.label,
            humanize(target.connect_timeout)
        ),
        504 => format!(
            "augur: {} at {at} did not answer within {}\n",
            target.label,
            humanize(target.timeout)
        ),
        502 => format!(
            "augur: {} at {at} failed: {}\n",
            target.label,
            reason(e, target)
        ),
        400 => "augur: bad request\n".to_string(),
        _ => format!(
            "augur: {}\n",
            http::StatusCode::from_u16(code)
                .map_or("error", |s| s.canonical_reason().unwrap_or("error"))
        ),
    }
}

fn reason(e: &Error, target: &Target) -> std::borrow::Cow<'static, str> {
    if let Some(tls) = &target.tls {
        let text = e.to_string();
        // Under TLS 1.3 a server that refuses augur's certificate says so
        // in an alert after the handshake: the first read fails with it.
        let said = text.to_ascii_lowercase();
        if matches!(
            e.etype(),
            TLSHandshakeFailure | InvalidCert | HandshakeError
        ) || said.contains("alert")
            || said.contains("certificate")
        {
            return tls_reason(&text, tls.sni()).into();
        }
    }
    match e.etype() {
        ConnectRefused => "connection refused",
        ConnectError | ConnectNoRoute => "cannot connect",
        ConnectionClosed => "connection closed before a response",
        ReadError => "read error",
        WriteError => "write error",
        InvalidHTTPHeader => "invalid response",
        _ => "upstream error",
    }
    .into()
}

/// What went wrong in a TLS handshake, in the words an operator acts on.
/// pingora keeps only the text of rustls's error, so it is read from there.
fn tls_reason(text: &str, sni: &str) -> String {
    let said = text.to_ascii_lowercase();
    let says = |names: &[&str]| names.iter().any(|n| said.contains(n));
    let what = if says(&["unknownissuer", "unknown issuer"]) {
        "its certificate is not signed by a CA augur trusts (tls.ca_file)".to_string()
    } else if says(&["notvalidforname", "not valid for name"]) {
        format!("its certificate is not valid for the name {sni:?} (tls.sni)")
    } else if says(&["expired"]) {
        "its certificate has expired".to_string()
    } else if says(&["notvalidyet", "not valid yet"]) {
        "its certificate is not valid yet".to_string()
    } else if says(&["certificaterequired", "certificate required"]) {
        "it requires a client certificate (tls.cert_file, tls.key_file)".to_string()
    } else {
        // rustls's own words, between pingora's wrappers.
        let marker = "tls connect error cause: ";
        let detail = text
            .find(marker)
            .map(|i| &text[i + marker.len()..])
            .map_or(text, |rest| rest.split(", SNI:").next().unwrap_or(rest));
        format!("the TLS handshake failed: {}", detail.trim())
    };
    format!("TLS to {sni}: {what}")
}

fn humanize(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Writes the error response (when the client can still take one) and
/// reports the status for logging. `addr` is where the request went, when
/// it got that far. The connection is never reused.
pub(crate) async fn respond(
    session: &mut Session,
    e: &Error,
    target: &Target,
    addr: Option<SocketAddr>,
) -> FailToProxy {
    let code = status_of(e);
    if code > 0 && session.response_written().is_none() {
        let text = body(code, e, target, addr);
        if let Err(write) = session
            .respond_error_with_body(code, Bytes::from(text))
            .await
        {
            tracing::debug!("cannot send the error response: {write}");
        }
    }
    FailToProxy {
        error_code: code,
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::upstream::Settings;
    use augur_config::{Protocol, Upstream};
    use std::time::Duration;

    #[test]
    fn a_connection_that_never_opens_is_not_called_a_slow_answer() {
        let upstream = Upstream {
            host: "127.0.0.1".into(),
            port: 9,
        };
        let target = Target::new(
            "dependency",
            "posts",
            &upstream,
            |_| unreachable!("an IP address is not resolved"),
            Settings {
                protocol: Protocol::Http1,
                tls: None,
                connect_timeout: Duration::from_secs(5),
                timeout: Duration::from_secs(30),
            },
        )
        .unwrap();
        let connect = Error::explain(ConnectTimedout, "connecting").into_up();
        assert_eq!(status_of(&connect), 504);
        assert_eq!(
            body(504, &connect, &target, None),
            "augur: dependency \"posts\" at 127.0.0.1:9: no connection within 5s\n"
        );
        let read = Error::explain(ReadTimedout, "reading").into_up();
        assert_eq!(
            body(504, &read, &target, None),
            "augur: dependency \"posts\" at 127.0.0.1:9 did not answer within 30s\n"
        );
    }
}
