//! TLS to an upstream, from one `tls` section: what pingora's peer needs
//! for the real calls (the name to send and verify, the CAs to trust, the
//! client certificate) and the connector the speculation client uses, so
//! that a speculative request is sent exactly as securely as its real call.
//! Everything is read and checked at start-up: a bad file is an error that
//! names it, never a panic inside pingora on the first call.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use pingora::tls::{
    ClientConfig, ClientTlsStream, RootCertStore, ServerName, TlsConnector, version,
};
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509, parse_x509};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;

use super::client::{Pooled, pooled};

/// One upstream's TLS, loaded.
#[derive(Clone)]
pub(crate) struct UpstreamTls {
    sni: String,
    /// The CAs of `ca_file`, for pingora's peer; `None`: the system's roots
    /// (pingora's connector loads them).
    ca: Option<Arc<[WrappedX509]>>,
    client_cert: Option<Arc<CertKey>>,
    /// The speculation client's pool, with the same settings.
    speculation: Pooled<Connect>,
}

impl UpstreamTls {
    /// Reads and checks the files of `tls`; errors name `label` and the file.
    pub(crate) fn load(
        label: &str,
        tls: &augur_config::Tls,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        pingora::tls::install_default_crypto_provider();
        let roots = match &tls.ca_file {
            Some(path) => certificates(path).with_context(|| format!("{label}: tls.ca_file"))?,
            None => match system_roots()? {
                [] => bail!(
                    "{label}: no system CA certificates (give tls.ca_file, or set SSL_CERT_FILE)"
                ),
                roots => roots.to_vec(),
            },
        };
        let mut store = RootCertStore::empty();
        for (i, cert) in roots.iter().enumerate() {
            store
                .add(cert.clone())
                .with_context(|| format!("{label}: CA certificate {} cannot be trusted", i + 1))?;
        }
        let ca = tls.ca_file.as_ref().map(|_| {
            roots
                .iter()
                .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                .collect::<Vec<_>>()
                .into()
        });
        let builder =
            ClientConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
                .with_root_certificates(store);
        let (config, client_cert) = match &tls.client_cert {
            None => (builder.with_no_client_auth(), None),
            Some(c) => {
                let chain = certificates(&c.cert_file)
                    .with_context(|| format!("{label}: tls.cert_file"))?;
                let key = PrivateKeyDer::from_pem_file(&c.key_file).map_err(|e| {
                    anyhow::anyhow!(
                        "{label}: tls.key_file {}: no private key read: {e}",
                        c.key_file.display()
                    )
                })?;
                let der = key.secret_der().to_vec();
                // pingora turns the key back the same way, and panics if
                // it cannot: check it here.
                PrivateKeyDer::try_from(der.clone()).map_err(|e| {
                    anyhow::anyhow!("{label}: tls.key_file {}: {e}", c.key_file.display())
                })?;
                let config = builder
                    .with_client_auth_cert(chain.clone(), key)
                    .with_context(|| {
                        format!(
                            "{label}: tls.cert_file and tls.key_file do not make a client certificate"
                        )
                    })?;
                let cert = CertKey::new(chain.iter().map(|c| c.to_vec()).collect(), der);
                (config, Some(Arc::new(cert)))
            }
        };
        let server_name = ServerName::try_from(tls.sni.clone())
            .with_context(|| format!("{label}: tls.sni {:?} is not a host name", tls.sni))?;
        let speculation = pooled(Connect {
            tls: TlsConnector::from(Arc::new(config)),
            server_name,
            connect_timeout,
        });
        Ok(Self {
            sni: tls.sni.clone(),
            ca,
            client_cert,
            speculation,
        })
    }

    /// The name sent in SNI and verified.
    pub(crate) fn sni(&self) -> &str {
        &self.sni
    }

    /// A peer to `addr` that speaks TLS with these settings.
    pub(crate) fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        peer.options.ca.clone_from(&self.ca);
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.client_cert_key.clone_from(&self.client_cert);
        peer
    }

    /// The speculation client's pool for this upstream.
    pub(crate) fn speculation_client(&self) -> &Pooled<Connect> {
        &self.speculation
    }
}

/// Every certificate of a PEM file (at least one), each one that pingora
/// will parse again checked now: pingora panics on one it cannot parse.
fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let mut out = Vec::new();
    for (i, cert) in CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {shown}"))?
        .enumerate()
    {
        let cert = cert.with_context(|| format!("{shown}: PEM item {} is not readable", i + 1))?;
        if x509_parser::parse_x509_certificate(&cert).is_err() {
            bail!("{shown}: certificate {} is not valid X.509", i + 1);
        }
        out.push(cert);
    }
    if out.is_empty() {
        bail!("{shown}: no certificate in it");
    }
    Ok(out)
}

/// The system's CAs (`SSL_CERT_FILE` and `SSL_CERT_DIR` first), loaded
/// once: for the start-up check and every `tls` without a `ca_file`.
static SYSTEM_ROOTS: OnceLock<Result<Vec<CertificateDer<'static>>, String>> = OnceLock::new();

/// Loads the system's CAs as pingora's TLS connector, built with every
/// proxy, will — it panics when that fails: here it is an error that says
/// what to fix.
pub(crate) fn check_system_roots() -> anyhow::Result<()> {
    // rustls needs a process-wide crypto provider before any ClientConfig.
    pingora::tls::install_default_crypto_provider();
    system_roots().map(drop)
}

fn system_roots() -> anyhow::Result<&'static [CertificateDer<'static>]> {
    let loaded = SYSTEM_ROOTS.get_or_init(|| {
        let hint = "fix it, or point SSL_CERT_FILE at a PEM bundle";
        let roots = pingora::tls::load_native_certs()
            .map_err(|e| format!("cannot load the system's CA certificates ({hint}): {e}"))?;
        let mut store = RootCertStore::empty();
        for (i, cert) in roots.iter().enumerate() {
            store.add(cert.clone()).map_err(|e| {
                format!(
                    "the system's CA certificate {} cannot be loaded ({hint}): {e}",
                    i + 1
                )
            })?;
        }
        Ok(roots
            .into_iter()
            .filter(|c| x509_parser::parse_x509_certificate(c).is_ok())
            .collect())
    });
    loaded.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
}

/// The speculation client's TLS connector: TCP to the request's address,
/// then a handshake with the upstream's name.
#[derive(Clone)]
pub(crate) struct Connect {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    connect_timeout: Duration,
}

/// A TLS connection for hyper's pool.
pub(crate) struct Stream(TokioIo<ClientTlsStream<TcpStream>>);

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<Stream, std::io::Error>> + Send>>;

impl tower_service::Service<http::Uri> for Connect {
    type Response = Stream;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("no address in {uri}")))?;
            let tcp = tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(
                this.connect_timeout,
                this.tls.connect(this.server_name.clone(), tcp),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
            Ok(Stream(TokioIo::new(tls)))
        })
    }
}

/// The ingress listener's TLS (`service.listen_tls`): its certificate
/// chain and key read and checked now, so that pingora (which panics on a
/// file it cannot load) never reads them. ALPN offers HTTP/2 beside
/// HTTP/1.1 when the listener takes both.
pub(crate) fn listener_settings(
    files: &augur_config::ClientCert,
    h2: bool,
) -> anyhow::Result<pingora::listeners::tls::TlsSettings> {
    pingora::tls::install_default_crypto_provider();
    let chain = certificates(&files.cert_file).context("service.listen_tls.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file).map_err(|e| {
        anyhow::anyhow!(
            "service.listen_tls.key_file {}: no private key read: {e}",
            files.key_file.display()
        )
    })?;
    let config = pingora::tls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("service.listen_tls: cert_file and key_file do not make a server certificate")?;
    let mut settings = pingora::listeners::tls::TlsSettings::intermediate("", "")?;
    settings.set_cert_resolver(config.cert_resolver.clone());
    if h2 {
        settings.enable_h2();
    } else {
        settings.set_alpn(pingora::listeners::ALPN::H1);
    }
    Ok(settings)
}
