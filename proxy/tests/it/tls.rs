//! Dependencies behind TLS: real calls and speculative requests both go
//! over TLS with the dependency's settings (its CA, its name, its client
//! certificate); every way a handshake fails is a 502 that says why; a bad
//! certificate file stops augur at start with the file's name.
//!
//! The PKI is made for each test with rcgen: a CA, a server certificate for
//! `posts.test` (and an expired one), a client certificate, and a second CA
//! that signed none of them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pingora::tls::{
    CertificateDer, PrivateKeyDer, RootCertStore, ServerConfig, WebPkiClientVerifier,
};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::speculation::{
    Seen, ask, expected, frontend, posts_answer, recorder, sequence, users_answer,
};
use crate::support::*;

struct Pki {
    dir: PathBuf,
    /// The CA that signed the server and client certificates (PEM file).
    ca_file: PathBuf,
    /// A CA that signed nothing here.
    other_ca_file: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// The `posts.test` certificate and key as files (for augur's ingress).
    server_cert: PathBuf,
    server_key: PathBuf,
    /// A server for `posts.test`, and one whose certificate has expired.
    server: Arc<ServerConfig>,
    expired: Arc<ServerConfig>,
    /// A server that asks for a client certificate signed by the CA.
    mutual: Arc<ServerConfig>,
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    expired: bool,
    (ca, ca_key): &(Certificate, KeyPair),
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    (params.signed_by(&key, ca, ca_key).unwrap(), key)
}

fn server_config(
    (cert, key): &(Certificate, KeyPair),
    clients_from: Option<&Certificate>,
) -> Arc<ServerConfig> {
    pingora::tls::install_default_crypto_provider();
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let builder = ServerConfig::builder();
    let config = match clients_from {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
            let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(config.with_single_cert(chain, key).unwrap())
}

fn pki() -> Pki {
    let dir = std::env::temp_dir().join(format!(
        "augur-tls-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let authority = ca("augur test CA");
    let other = ca("a CA augur does not trust");
    let server = leaf(
        "posts.test",
        ExtendedKeyUsagePurpose::ServerAuth,
        false,
        &authority,
    );
    let expired = leaf(
        "posts.test",
        ExtendedKeyUsagePurpose::ServerAuth,
        true,
        &authority,
    );
    let client = leaf(
        "frontend.test",
        ExtendedKeyUsagePurpose::ClientAuth,
        false,
        &authority,
    );
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    Pki {
        ca_file: write("ca.pem", authority.0.pem()),
        other_ca_file: write("other-ca.pem", other.0.pem()),
        client_cert: write("client.pem", client.0.pem()),
        client_key: write("client.key", client.1.serialize_pem()),
        server_cert: write("server.pem", server.0.pem()),
        server_key: write("server.key", server.1.serialize_pem()),
        server: server_config(&server, None),
        expired: server_config(&expired, None),
        mutual: server_config(&server, Some(&authority.0)),
        dir,
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A dependency section's `tls` line (tests keep their `Dep`s static).
fn tls_line(sni: &str, ca: &Path, client: Option<(&Path, &Path)>) -> &'static str {
    let client = client.map_or(String::new(), |(cert, key)| {
        format!(", cert_file = {cert:?}, key_file = {key:?}")
    });
    Box::leak(
        format!("timeout = \"2s\"\ntls = {{ sni = \"{sni}\", ca_file = {ca:?}{client} }}")
            .into_boxed_str(),
    )
}

/// posts behind TLS (and asking for augur's client certificate): every
/// answer is what the service would have got, posts is sent speculative
/// requests over TLS, and they answer real calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_behind_tls_is_called_and_speculated_over_tls() {
    let pki = pki();
    let ports = Ports::new(2);
    let (users_handler, _) = recorder(users_answer);
    let users = serve(users_handler).await;
    let (posts_handler, posts_log) = recorder(posts_answer);
    let posts = serve_tls(pki.mutual.clone(), posts_handler).await;
    let service = frontend(local(ports.deps[0]), local(ports.deps[1]), None).await;
    let deps = [
        Dep {
            extra: "timeout = \"2s\"",
            ..Dep::new("users", users)
        },
        Dep {
            extra: tls_line(
                "posts.test",
                &pki.ca_file,
                Some((&pki.client_cert, &pki.client_key)),
            ),
            ..Dep::new("posts", posts)
        },
    ];
    let augur = Augur::start(&ports, service, &deps, "").await;
    for (id, who) in sequence() {
        let got = ask(&augur, id, who).await;
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.text(), expected(id, who));
    }
    let prefetches = posts_log
        .lock()
        .unwrap()
        .iter()
        .filter(|s: &&Seen| s.prefetch)
        .count();
    assert!(
        prefetches > 0,
        "no speculative request reached posts over TLS"
    );
    let served = augur.answered_ahead("posts").await;
    assert!(served > 0.0, "no call to posts answered from speculation");
}

/// Each way a handshake fails is a 502 that names the dependency and says
/// what to fix; a correct one answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_502s_that_say_why() {
    let pki = pki();
    let ports = Ports::new(5);
    let (handler, _) = recorder(posts_answer);
    let good = serve_tls(pki.server.clone(), handler.clone()).await;
    let expired = serve_tls(pki.expired.clone(), handler.clone()).await;
    let mutual = serve_tls(pki.mutual.clone(), handler).await;
    let service = echo_server().await;
    let deps = [
        Dep {
            extra: tls_line("posts.test", &pki.ca_file, None),
            ..Dep::new("trusted", good)
        },
        Dep {
            extra: tls_line("posts.test", &pki.other_ca_file, None),
            ..Dep::new("unknown-ca", good)
        },
        Dep {
            extra: tls_line("other.test", &pki.ca_file, None),
            ..Dep::new("wrong-name", good)
        },
        Dep {
            extra: tls_line("posts.test", &pki.ca_file, None),
            ..Dep::new("expired", expired)
        },
        Dep {
            extra: tls_line("posts.test", &pki.ca_file, None),
            ..Dep::new("no-client-cert", mutual)
        },
    ];
    let augur = Augur::start(&ports, service, &deps, "").await;
    let ok = get(&augur.dep_url(0, "/posts?user=u-1")).await;
    assert_eq!(
        (ok.status, ok.text().contains("/posts?user=u-1")),
        (200, true)
    );
    for (i, name, why) in [
        (
            1,
            "unknown-ca",
            "its certificate is not signed by a CA augur trusts (tls.ca_file)",
        ),
        (
            2,
            "wrong-name",
            "its certificate is not valid for the name \"other.test\" (tls.sni)",
        ),
        (3, "expired", "its certificate has expired"),
        (
            4,
            "no-client-cert",
            "TLS to posts.test: it requires a client certificate (tls.cert_file, tls.key_file)",
        ),
    ] {
        let got = tokio::time::timeout(Duration::from_secs(5), get(&augur.dep_url(i, "/x")))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer within 5 s"));
        let text = got.text();
        assert_eq!(got.status, 502, "{name}: {text}");
        assert!(
            text.starts_with(&format!("augur: dependency \"{name}\" at ")) && text.contains(why),
            "{name}: {text:?} does not say {why:?}"
        );
    }
}

/// A CA file that holds no certificate stops augur at start, naming the
/// dependency and the file: never a panic on the first call.
#[tokio::test]
async fn a_bad_certificate_file_is_an_error_at_start() {
    let pki = pki();
    let junk = pki.dir.join("junk.pem");
    std::fs::write(&junk, "this is not a certificate\n").unwrap();
    let ports = Ports::new(1);
    let deps = [Dep {
        extra: tls_line("posts.test", &junk, None),
        ..Dep::new("posts", local(9))
    }];
    let path = write_config(&config_text(&ports, local(9), &deps, ""));
    let out = augur_command()
        .args(["run", "--config"])
        .arg(&path)
        .env("ORT_DYLIB_PATH", ort_dylib())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "augur started: {stderr}");
    assert!(
        stderr.contains("dependency \"posts\": tls.ca_file")
            && stderr.contains(&format!("{}: no certificate in it", junk.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// pingora loads the system's CAs for every proxy, and a version of its
/// stack panicked when `SSL_CERT_FILE` named no file: augur starts and
/// proxies all the same (no dependency here uses the system's CAs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ssl_cert_file_does_not_stop_plain_proxying() {
    let ports = Ports::new(0);
    let service = echo_server().await;
    let env = [("SSL_CERT_FILE", "/nonexistent/bundle.pem")];
    let augur = Augur::start_with_env(&ports, service, &[], "", &env).await;
    let got = get(&augur.url("/hello")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-echo-uri"), Some("/hello"));
    assert!(!augur.log_text().contains("panicked"));
}

/// A TLS client trusting `ca`, offering `alpn`, connected to `addr` for
/// the name `posts.test`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    alpn: &[&[u8]],
) -> pingora::tls::ClientTlsStream<tokio::net::TcpStream> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_file_iter(ca).unwrap() {
        let cert: CertificateDer<'static> = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let mut config = pingora::tls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = pingora::tls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = pingora::tls::ServerName::try_from("posts.test").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// The ingress behind TLS (`service.listen_tls`): HTTP/2 or HTTP/1.1 as
/// ALPN decides, the service told `x-forwarded-proto: https`; plain HTTP
/// on the port gets no answer; a bad key stops augur at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_takes_tls_with_http2_or_http1_by_alpn() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let pki = pki();
    let upstream = echo_server().await;
    let ports = Ports::new(0);
    let listen_tls = format!(
        "[service.listen_tls]\ncert_file = {:?}\nkey_file = {:?}\n\n[admin]",
        pki.server_cert, pki.server_key
    );
    let text = config_text(&ports, upstream, &[], "").replacen("[admin]", &listen_tls, 1);
    let augur = Augur::start_from_text(&ports, &text, &[]).await;

    // HTTP/2, chosen by ALPN.
    let tls = tls_connect(augur.ingress, &pki.ca_file, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = h2
        .send_request(
            hyper::Request::get("https://posts.test/over-h2")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.headers()["x-echo-h-x-forwarded-proto"], "https");
    assert!(
        resp.headers()["x-echo-h-forwarded"]
            .to_str()
            .unwrap()
            .ends_with("proto=https")
    );

    // HTTP/1.1 when the client offers only that.
    let tls = tls_connect(augur.ingress, &pki.ca_file, &[b"http/1.1"]).await;
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = h1
        .send_request(
            hyper::Request::get("/over-h1")
                .header("host", "posts.test")
                .body(Body::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-uri"], "/over-h1");
    assert_eq!(resp.headers()["x-echo-h-x-forwarded-proto"], "https");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let resp = raw_exchange(
        augur.ingress,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(!resp.starts_with(b"HTTP/1.1 200"), "{resp:?}");

    // A key that is not a key: a clear error at start, no panic.
    drop(augur);
    let junk = pki.dir.join("junk.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    let bad = text.replace(&format!("{:?}", pki.server_key), &format!("{junk:?}"));
    let out = augur_command()
        .args(["run", "--config"])
        .arg(write_config(&bad))
        .env("ORT_DYLIB_PATH", ort_dylib())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "augur started: {stderr}");
    assert!(
        stderr.contains(&format!("service.listen_tls.key_file {}", junk.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
