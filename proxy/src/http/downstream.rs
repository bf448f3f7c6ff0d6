//! Client connections: how many a listener holds, and how long a client may
//! take. pingora times each read (60 s), not a whole request header, so a
//! client that sends one byte a minute — or opens connections and sends
//! nothing — would hold a task and a socket for ever (slowloris). Every
//! proxy listener is wrapped in a [`Guarded`] app that:
//!
//! * closes a new connection at once when the listener holds
//!   `proxy.max_connections` already;
//! * gives a new connection `proxy.header_timeout` from its accept to the
//!   end of its request header, and a kept-alive one `proxy.idle_timeout`
//!   to start its next request, then `proxy.header_timeout` to finish the
//!   header;
//! * leaves the body to pingora's per-read timeout, set to
//!   `proxy.body_timeout` once the header is in ([`header_read`]).
//!
//! A listener that takes HTTP/2 (`listen_protocol = "auto"` or `"h2c"`)
//! tells a connection's protocol from its first bytes: the HTTP/2 preface
//! (24 bytes) or anything else. An HTTP/1 request differs from the preface
//! in its first or second byte, so no HTTP/1 client waits for bytes it will
//! never send (pingora's own detection reads 24 first); those bytes are
//! handed to pingora as if unread ([`Watched::sniff`]). An HTTP/2
//! connection carries many requests at once: past its handshake (due
//! within the header timeout) it has no header or idle timer of ours, and
//! pingora closes it after `proxy.idle_timeout` idle.
//!
//! A connection cut for time is closed without an answer (as nginx does
//! for `client_header_timeout`) and counted in
//! `augur_downstream_closed_total`. The timers live in the connection's
//! own stream ([`Watched`]): a read that waits past its deadline fails,
//! which pingora treats as a client gone — no other connection waits on it.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::ops::metrics::Metrics;

/// How long clients may take, and how many a listener holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) body_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
}

/// What one listener's connections share: its count and its counters,
/// resolved once.
struct Listener {
    limits: Limits,
    open: AtomicUsize,
    gauge: IntGauge,
    refused: IntCounter,
    header_timeouts: IntCounter,
    idle_timeouts: IntCounter,
    wrong_protocol: IntCounter,
}

/// A listener's pingora apps (`HttpProxy`s of the same proxy) behind the
/// connection limits: one for HTTP/1 connections, one for HTTP/2, as the
/// listener takes them.
pub(crate) struct Guarded<A> {
    h1: Option<Arc<A>>,
    h2: Option<Lazy<A>>,
    listener: Arc<Listener>,
}

/// An app made when first needed: the HTTP/2 one, which most listeners
/// never use, costs half a MiB made (pingora's connector with its pool
/// and the system's CA store).
pub(crate) struct Lazy<A> {
    make: Box<dyn Fn() -> A + Send + Sync>,
    app: OnceLock<Arc<A>>,
}

impl<A> Lazy<A> {
    pub(crate) fn new(make: impl Fn() -> A + Send + Sync + 'static) -> Self {
        Self {
            make: Box::new(make),
            app: OnceLock::new(),
        }
    }

    fn get(&self) -> &Arc<A> {
        self.app.get_or_init(|| Arc::new((self.make)()))
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Http1,
    H2,
}

impl<A> Guarded<A> {
    /// `name` labels the listener's counters (`ingress`, `egress users`);
    /// at least one of `h1` and `h2` is given.
    pub(crate) fn new(
        (h1, h2): (Option<A>, Option<Lazy<A>>),
        name: &str,
        limits: Limits,
        metrics: &Metrics,
    ) -> Self {
        let closed = |reason: &str| metrics.downstream_closed.with_label_values(&[name, reason]);
        Self {
            h1: h1.map(Arc::new),
            h2,
            listener: Arc::new(Listener {
                limits,
                open: AtomicUsize::new(0),
                gauge: metrics.downstream_connections.with_label_values(&[name]),
                refused: closed("limit"),
                header_timeouts: closed("header_timeout"),
                idle_timeouts: closed("idle"),
                wrong_protocol: closed("protocol"),
            }),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // pingora keeps an HTTP/1 connection inside `process_new` between
        // its requests; what comes back is handed to pingora again as is.
        if stream.as_any().is::<Watched>() {
            let h1 = self.h1.as_ref()?;
            return h1.process_new(stream, shutdown).await;
        }
        let listener = &self.listener;
        if listener.open.fetch_add(1, Ordering::AcqRel) >= listener.limits.max_connections {
            listener.open.fetch_sub(1, Ordering::AcqRel);
            listener.refused.inc();
            return None;
        }
        listener.gauge.inc();
        let mut watched = Watched::new(stream, listener.clone());
        let app = match (&self.h1, &self.h2) {
            (Some(h1), None) => h1,
            (h1, Some(h2)) => match watched.sniff().await {
                // Closed, or timed out (counted), before saying anything.
                Ok(None) | Err(_) => return None,
                Ok(Some(Sniffed::H2)) => {
                    watched.multiplexed();
                    h2.get()
                }
                Ok(Some(Sniffed::Http1)) => match h1 {
                    Some(h1) => h1,
                    None => {
                        listener.wrong_protocol.inc();
                        return None;
                    }
                },
            },
            (None, None) => return None,
        };
        app.process_new(Box::new(watched), shutdown).await
    }

    async fn cleanup(&self) {
        let h2 = self.h2.as_ref().and_then(|l| l.app.get());
        for app in self.h1.iter().chain(h2) {
            app.cleanup().await;
        }
    }
}

/// What the request path tells a connection's timers (through a shared
/// reference: pingora owns the stream).
const NOTHING: u8 = 0;
/// The request header is in: no timer of ours until the request ends.
const HEADER_IN: u8 = 1;
/// The request was answered: the connection is idle until its next byte.
const ANSWERED: u8 = 2;

fn watched(session: &Session) -> Option<&Watched> {
    session
        .downstream_session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<Watched>())
}

/// The request header is in (the first phase of both listeners calls
/// this): its connection's header timer stops, the body's reads get
/// `body_timeout` each, and pingora's own keep-alive wait is the idle
/// timeout.
pub(crate) fn header_read(session: &mut Session, limits: &Limits) {
    if let Some(w) = watched(session) {
        w.signal.store(HEADER_IN, Ordering::Release);
    }
    let downstream = &mut session.downstream_session;
    downstream.set_read_timeout(Some(limits.body_timeout));
    // Pipelined requests are answered in order, one after another (pingora
    // closes after the first otherwise, losing what the client sent).
    downstream.set_pipelining_enabled(true);
    // The wait between requests is ours to bound ([`Watched`]): pingora's
    // own would put a timer on the wheel for every request. `Some(0)` is
    // keep-alive without pingora's timeout; `None` (shutting down, or
    // `connection: close`) stays `None`.
    if downstream.get_keepalive().is_some() {
        downstream.set_keepalive(Some(0));
    }
}

/// The request was answered (the last phase of both listeners calls
/// this): the connection's idle timer starts with its next read.
pub(crate) fn answered(session: &Session) {
    if let Some(w) = watched(session) {
        w.signal.store(ANSWERED, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of a request on a kept-alive connection.
    Idle,
    /// Reading a request header.
    Header,
    /// The header is in: no timer of ours.
    Request,
}

/// A client connection as the listener sees it: the stream, its place in
/// the listener's count (given back when dropped), and the timer of the
/// request it is waiting for.
pub(crate) struct Watched {
    inner: Stream,
    listener: Arc<Listener>,
    phase: Phase,
    /// Set by [`header_read`] and [`answered`], read (and cleared) by
    /// the next read.
    signal: AtomicU8,
    /// When the phase's time runs out.
    deadline: Instant,
    /// The first bytes, read to tell the protocol ([`Watched::sniff`]),
    /// given to the next reads before anything else.
    head: [u8; H2_PREFACE.len()],
    head_len: u8,
    head_taken: u8,
    /// An HTTP/2 connection: many requests at once, no timer of ours past
    /// its handshake.
    multiplexed: bool,
    /// Armed at or before `deadline`: moving a deadline later (what each
    /// request does) leaves the timer alone, and a timer that fires early
    /// is re-armed then, so a busy connection touches the timer wheel
    /// about once per header timeout, not twice per request.
    timer: Pin<Box<Sleep>>,
}

impl Watched {
    /// A new connection: its request header is due within the header
    /// timeout from now.
    fn new(inner: Stream, listener: Arc<Listener>) -> Self {
        let deadline = Instant::now() + listener.limits.header_timeout;
        Self {
            inner,
            listener,
            phase: Phase::Header,
            signal: AtomicU8::new(NOTHING),
            deadline,
            head: [0; H2_PREFACE.len()],
            head_len: 0,
            head_taken: 0,
            multiplexed: false,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Reads until the first bytes differ from the HTTP/2 preface or match
    /// all of it (within the header timeout), and keeps them for pingora.
    /// `None` when the client closed first.
    async fn sniff(&mut self) -> io::Result<Option<Sniffed>> {
        use tokio::io::AsyncReadExt;
        let mut head = [0u8; H2_PREFACE.len()];
        let mut n = 0;
        while n < head.len() {
            let got = self.read(&mut head[n..]).await?;
            if got == 0 {
                return Ok(None);
            }
            n += got;
            if head[..n] != H2_PREFACE[..n] {
                break;
            }
        }
        self.head = head;
        self.head_len = n as u8;
        Ok(Some(if head[..n] == H2_PREFACE[..] {
            Sniffed::H2
        } else {
            Sniffed::Http1
        }))
    }

    /// The connection is HTTP/2: its requests overlap, so no header or
    /// idle timer of ours applies once the client has said more than the
    /// preface (its SETTINGS, which the handshake waits for, are due
    /// within the header timeout); pingora's `h2_idle_timeout` closes it
    /// when idle.
    fn multiplexed(&mut self) {
        self.multiplexed = true;
    }

    /// The sniffed bytes not yet read.
    fn unread_head(&self) -> &[u8] {
        &self.head[self.head_taken as usize..self.head_len as usize]
    }

    fn enter(&mut self, phase: Phase) {
        let limits = &self.listener.limits;
        let wait = match phase {
            Phase::Idle => limits.idle_timeout,
            Phase::Header => limits.header_timeout,
            Phase::Request => {
                self.phase = phase;
                return;
            }
        };
        self.phase = phase;
        self.deadline = Instant::now() + wait;
        if self.deadline < self.timer.deadline() {
            self.timer.as_mut().reset(self.deadline);
        }
    }

    /// Takes what the request path said since the last read.
    fn follow_signal(&mut self) {
        if self.multiplexed {
            return;
        }
        match self.signal.swap(NOTHING, Ordering::AcqRel) {
            HEADER_IN => self.enter(Phase::Request),
            ANSWERED => self.enter(Phase::Idle),
            _ => {}
        }
    }

    /// Fails the read when the timer of its phase ran out.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.phase == Phase::Request {
            return None;
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if Instant::now() >= self.deadline {
                break;
            }
            // Armed for an earlier deadline, since moved: wait on.
            let deadline = self.deadline;
            self.timer.as_mut().reset(deadline);
        }
        let (counter, what) = match self.phase {
            Phase::Idle => (&self.listener.idle_timeouts, "idle"),
            _ => (&self.listener.header_timeouts, "request header"),
        };
        counter.inc();
        // Once: the connection is closing.
        self.phase = Phase::Request;
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("client connection {what} timeout"),
        ))
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.listener.open.fetch_sub(1, Ordering::AcqRel);
        self.listener.gauge.dec();
    }
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let head = this.unread_head();
        if !head.is_empty() {
            let n = head.len().min(buf.remaining());
            buf.put_slice(&head[..n]);
            this.head_taken += n as u8;
            return Poll::Ready(Ok(()));
        }
        this.follow_signal();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() > before;
                if this.multiplexed && read {
                    // Past the preface: HTTP/2 keeps its own time.
                    this.enter(Phase::Request);
                } else if this.phase == Phase::Idle && read {
                    // The next request began: its header has its own time.
                    this.enter(Phase::Header);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            ready => ready,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Watched {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for Watched {
    /// pingora peeks for the HTTP/2 preface, which [`Watched::sniff`] read
    /// already.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let head = self.unread_head();
        if head.is_empty() {
            return self.inner.try_peek(buf).await;
        }
        if head.len() < buf.len() {
            return Ok(false);
        }
        buf.copy_from_slice(&head[..buf.len()]);
        Ok(true)
    }
}
