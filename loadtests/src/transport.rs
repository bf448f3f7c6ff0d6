//! How augur reaches a demo's dependencies: plain HTTP/1 (the default),
//! HTTP/2 with prior knowledge (the demo's servers speak both), or TLS —
//! a terminator in front of the dependency, with a certificate signed by a
//! CA made for the run, which augur is told to trust. The frontend calls
//! augur (or, direct, the dependencies) in plain HTTP/1 either way.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use pingora::tls::{CertificateDer, PrivateKeyDer, ServerConfig, TlsAcceptor};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject as _;

use crate::app::{App, Transport};
use crate::procs::local;

/// Where augur sends each dependency's requests (in
/// [`App::DEPENDENCIES`] order), and the TOML lines of each
/// `[[dependency]]` beyond its upstream. TLS terminators are started here
/// and run until the process ends; the CA is written into `dir`.
pub async fn reach<A: App>(
    dir: &Path,
    deps: &[SocketAddr],
) -> anyhow::Result<(Vec<SocketAddr>, Vec<String>)> {
    let mut upstreams = deps.to_vec();
    let mut extras = vec![String::new(); deps.len()];
    let mut ca = None;
    for (name, transport) in A::TRANSPORTS {
        let i = A::DEPENDENCIES
            .iter()
            .position(|d| d == name)
            .with_context(|| format!("{}: no dependency {name:?}", A::NAME))?;
        match transport {
            Transport::H2c => extras[i].push_str("protocol = \"h2c\"\n"),
            Transport::Tls => {
                if ca.is_none() {
                    ca = Some(Ca::new(dir)?);
                }
                let ca = ca.as_ref().context("the CA")?;
                let sni = format!("{name}.demo.test");
                upstreams[i] = terminate(ca.server_config(&sni)?, deps[i]).await?;
                let _ = write!(
                    extras[i],
                    "[dependency.tls]\nsni = \"{sni}\"\nca_file = {:?}\n",
                    ca.file.display().to_string()
                );
            }
        }
    }
    Ok((upstreams, extras))
}

/// A CA for the run: its certificate in `ca.pem`, its key in memory.
pub(crate) struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub(crate) file: std::path::PathBuf,
}

impl Ca {
    pub(crate) fn new(dir: &Path) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "augur demo CA");
        let cert = params.self_signed(&key)?;
        let file = dir.join("ca.pem");
        std::fs::write(&file, cert.pem()).with_context(|| format!("write {}", file.display()))?;
        Ok(Self { cert, key, file })
    }

    /// A server's TLS settings, with a certificate for `name`.
    fn server_config(&self, name: &str) -> anyhow::Result<Arc<ServerConfig>> {
        let (cert, key) = self.leaf(name)?;
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(anyhow::Error::msg)?;
        server_config(cert.der().clone(), key)
    }

    fn leaf(&self, name: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert, key))
    }

    /// A certificate for `name` and its key, as PEM files in the CA's
    /// directory (for another process to serve).
    pub(crate) fn leaf_files(
        &self,
        name: &str,
    ) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let (cert, key) = self.leaf(name)?;
        let dir = self.file.parent().context("the CA's directory")?;
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok((cert_file, key_file))
    }
}

/// TLS settings serving one certificate and its key.
fn server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    pingora::tls::install_default_crypto_provider();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    Ok(Arc::new(config))
}

/// TLS settings from a certificate and key in PEM files (as the
/// benchmark writes them for its upstream).
pub fn server_config_from(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let cert = CertificateDer::from_pem_file(cert)
        .with_context(|| format!("read a certificate from {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("read a key from {}", key.display()))?;
    server_config(cert, key)
}

/// Accepts TLS on a new loopback port and relays each connection, in the
/// clear, to `to`. Returns the port's address.
async fn terminate(config: Arc<ServerConfig>, to: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(local(0)).await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = plain.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    Ok(addr)
}
