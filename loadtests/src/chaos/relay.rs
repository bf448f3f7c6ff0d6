//! A relay that can be cut: what the chaos soak puts between augur and
//! each thing it kills. Cut, it stops listening (connections are refused)
//! and drops every connection it carried (in-flight requests see a reset);
//! restored, it listens on the same address again. From augur's side that
//! is a dependency process killed and restarted, or the Docker daemon's
//! socket gone and back.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where a relay listens and where it forwards.
#[derive(Debug, Clone)]
pub enum Ends {
    /// A TCP port on 127.0.0.1 in front of a TCP server.
    Tcp {
        listen: SocketAddr,
        target: SocketAddr,
    },
    /// A Unix socket in front of another (the Docker daemon's).
    Unix { listen: PathBuf, target: PathBuf },
}

pub struct Relay {
    ends: Ends,
    accept: Option<JoinHandle<()>>,
    /// Bumped on every cut: each carried connection watches it.
    cuts: watch::Sender<u64>,
}

impl Relay {
    /// Starts relaying.
    pub async fn start(ends: Ends) -> anyhow::Result<Self> {
        let (cuts, _) = watch::channel(0);
        let mut relay = Self {
            ends,
            accept: None,
            cuts,
        };
        relay.restore().await?;
        Ok(relay)
    }

    /// Stops listening and drops every carried connection.
    pub fn cut(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
        }
        if let Ends::Unix { listen, .. } = &self.ends {
            let _ = std::fs::remove_file(listen);
        }
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Listens again on the same address (a no-op when listening).
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let cuts = self.cuts.subscribe();
        self.accept = Some(match self.ends.clone() {
            Ends::Tcp { listen, target } => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket
                    .bind(listen)
                    .with_context(|| format!("relay: bind {listen}"))?;
                let listener = socket.listen(1024)?;
                tokio::spawn(async move {
                    loop {
                        let Ok((inbound, _)) = listener.accept().await else {
                            continue;
                        };
                        let cuts = cuts.clone();
                        tokio::spawn(async move {
                            let _ = inbound.set_nodelay(true);
                            if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                                let _ = outbound.set_nodelay(true);
                                carry(inbound, outbound, cuts).await;
                            }
                        });
                    }
                })
            }
            Ends::Unix { listen, target } => {
                let _ = std::fs::remove_file(&listen);
                let listener = tokio::net::UnixListener::bind(&listen)
                    .with_context(|| format!("relay: bind {}", listen.display()))?;
                tokio::spawn(async move {
                    loop {
                        let Ok((inbound, _)) = listener.accept().await else {
                            continue;
                        };
                        let (cuts, target) = (cuts.clone(), target.clone());
                        tokio::spawn(async move {
                            if let Ok(outbound) = tokio::net::UnixStream::connect(&target).await {
                                carry(inbound, outbound, cuts).await;
                            }
                        });
                    }
                })
            }
        });
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies both ways until either side closes or the relay is cut.
async fn carry<A, B>(mut a: A, mut b: B, mut cuts: watch::Receiver<u64>)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    cuts.mark_unchanged();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
        _ = cuts.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn a_cut_relay_refuses_and_resets_then_relays_again_on_the_same_port() {
        let target = echo().await;
        let listen = SocketAddr::from(([127, 0, 0, 1], crate::procs::free_port().unwrap()));
        let mut relay = Relay::start(Ends::Tcp { listen, target }).await.unwrap();
        assert_eq!(round_trip(listen).await.unwrap(), b"ping");

        let mut carried = tokio::net::TcpStream::connect(listen).await.unwrap();
        carried.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        carried.read_exact(&mut one).await.unwrap();
        relay.cut();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            carried.read_to_end(&mut rest),
        )
        .await
        .expect("a cut connection is closed, not left hanging");
        assert!(read.is_err() || rest.is_empty(), "{read:?} {rest:?}");
        assert!(round_trip(listen).await.is_err(), "a cut relay refuses");

        relay.restore().await.unwrap();
        assert_eq!(round_trip(listen).await.unwrap(), b"ping");
    }
}
