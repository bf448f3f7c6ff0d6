//! Upstreams given by host name. Each name's addresses are resolved at
//! start-up and again while augur runs: when the answer's TTL ends (held
//! within `dns.min_ttl` and `dns.max_ttl`), and early when a connection to
//! one of them fails. Requests take the addresses in turn. A name that
//! stops resolving keeps its last good addresses and says so in the log
//! and in `augur_dns_failing`; one that never resolved makes its requests
//! fail with a 502 that names it, and augur keeps trying.
//!
//! Resolution runs on its own background service ([`Refresher`]), never on
//! the request path: a request reads the current addresses under a lock
//! held for a copy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use augur_config::Dns;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use parking_lot::{Mutex, RwLock};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use crate::ops::metrics::Metrics;

/// How long one resolution may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One host name and what it resolves to now.
pub(crate) struct Name {
    host: Arc<str>,
    state: RwLock<State>,
    /// The next address to use, modulo their number.
    next: AtomicUsize,
    /// Set when a connection failed: resolve again without waiting for
    /// the TTL (but not before `min_ttl` since the last time).
    early: Notify,
    series: Series,
}

struct State {
    /// The last good answer, sorted; empty until the first.
    addresses: Arc<[IpAddr]>,
    /// Why the last resolution failed, while it does.
    failure: Option<String>,
    /// When the last resolution ended.
    resolved: Instant,
    /// Whether any resolution ended yet.
    tried: bool,
    /// When to resolve again.
    due: Instant,
}

struct Series {
    ok: IntCounter,
    failed: IntCounter,
    failing: IntGauge,
    addresses: IntGauge,
}

/// A name with no address known yet, for the request that needed one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} does not resolve ({why}); augur keeps trying")]
pub(crate) struct Unresolved {
    host: Arc<str>,
    why: String,
}

impl Name {
    fn new(host: &str, metrics: &Metrics) -> Self {
        let now = Instant::now();
        Self {
            host: host.into(),
            state: RwLock::new(State {
                addresses: Arc::new([]),
                failure: Some("not resolved yet".to_string()),
                resolved: now,
                tried: false,
                due: now,
            }),
            next: AtomicUsize::new(0),
            early: Notify::new(),
            series: Series {
                ok: metrics.dns_resolutions.with_label_values(&[host, "ok"]),
                failed: metrics.dns_resolutions.with_label_values(&[host, "failed"]),
                failing: metrics.dns_failing.with_label_values(&[host]),
                addresses: metrics.upstream_addresses.with_label_values(&[host]),
            },
        }
    }

    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// The address for the next request: each in turn.
    pub(crate) fn pick(&self) -> Result<IpAddr, Unresolved> {
        let state = self.state.read();
        if state.addresses.is_empty() {
            return Err(Unresolved {
                host: self.host.clone(),
                why: state.failure.clone().unwrap_or_default(),
            });
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % state.addresses.len();
        Ok(state.addresses[i])
    }

    /// Whether it resolves to more than one address: a request that
    /// could not connect to one may try another.
    pub(crate) fn spread(&self) -> bool {
        self.state.read().addresses.len() > 1
    }

    /// A connection to one of its addresses failed: the name may have
    /// moved, so it is resolved again soon.
    pub(crate) fn recheck(&self) {
        self.early.notify_one();
    }

    /// Takes the result of one resolution, and logs what changed.
    fn apply(&self, answer: Result<Answer, String>, dns: &Dns) {
        let now = Instant::now();
        let mut state = self.state.write();
        state.resolved = now;
        let tried = std::mem::replace(&mut state.tried, true);
        match answer {
            Ok(Answer { mut addresses, ttl }) => {
                addresses.sort_unstable();
                addresses.dedup();
                self.series.ok.inc();
                self.series.failing.set(0);
                self.series.addresses.set(addresses.len() as i64);
                state.due = now + ttl.clamp(dns.min_ttl, dns.max_ttl);
                let was_failing = state.failure.take().is_some();
                if *state.addresses != *addresses {
                    tracing::info!(
                        "{} resolves to {}{}",
                        self.host,
                        list(&addresses),
                        if state.addresses.is_empty() {
                            String::new()
                        } else {
                            format!(" (was {})", list(&state.addresses))
                        }
                    );
                    state.addresses = addresses.into();
                } else if was_failing {
                    tracing::info!("{} resolves again, to the same addresses", self.host);
                }
            }
            Err(why) => {
                self.series.failed.inc();
                self.series.failing.set(1);
                state.due = now + dns.min_ttl;
                // Said once when it starts failing (or fails at start),
                // not at every retry.
                let news = state.failure.is_none() || !tried;
                let known = state.addresses.len();
                state.failure = Some(why);
                let why = state.failure.as_deref().unwrap_or_default();
                match (news, known) {
                    (false, _) => tracing::debug!("{} still does not resolve: {why}", self.host),
                    (true, 0) => tracing::warn!(
                        "{} does not resolve ({why}): requests to it fail with 502 until it does",
                        self.host
                    ),
                    (true, n) => tracing::warn!(
                        "{} no longer resolves ({why}): keeping its last {n} address{}",
                        self.host,
                        if n == 1 { "" } else { "es" }
                    ),
                }
            }
        }
    }

    /// When to resolve next, and when it last was.
    fn schedule(&self) -> (Instant, Instant) {
        let state = self.state.read();
        (state.due, state.resolved)
    }
}

fn list(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every host name the configuration gives, one [`Name`] each however
/// many upstreams share it.
#[derive(Default)]
pub(crate) struct Names {
    by_host: Mutex<HashMap<String, Arc<Name>>>,
}

impl Names {
    /// The name for `host`, shared with every other upstream given by it.
    pub(crate) fn get(&self, host: &str, metrics: &Metrics) -> Arc<Name> {
        self.by_host
            .lock()
            .entry(host.to_ascii_lowercase())
            .or_insert_with(|| Arc::new(Name::new(host, metrics)))
            .clone()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_host.lock().is_empty()
    }

    fn all(&self) -> Vec<Arc<Name>> {
        self.by_host.lock().values().cloned().collect()
    }

    /// Resolves every name once, before the listeners start. A name that
    /// does not resolve is logged, not an error: it may come up later (a
    /// compose service starting after augur).
    pub(crate) fn resolve_now(&self, dns: &Dns) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime to resolve upstream names")?;
        runtime.block_on(async {
            let resolver = resolver(dns, true);
            let names = self.all();
            futures_util::future::join_all(names.iter().map(|name| {
                let resolver = &resolver;
                async move { name.apply(lookup(resolver, &name.host).await, dns) }
            }))
            .await;
        });
        Ok(())
    }

    /// The background service that keeps every name resolved.
    pub(crate) fn refresher(&self, dns: &Dns) -> Refresher {
        Refresher {
            names: self.all(),
            dns: dns.clone(),
        }
    }
}

struct Answer {
    addresses: Vec<IpAddr>,
    ttl: Duration,
}

/// A resolver for `dns`: `/etc/resolv.conf`'s servers, search domains and
/// options, or the servers `dns.nameservers` names; `/etc/hosts` first
/// either way. Without a usable `/etc/resolv.conf`, only `/etc/hosts`
/// (said when `say`).
fn resolver(dns: &Dns, say: bool) -> TokioResolver {
    let provider = TokioConnectionProvider::default();
    let mut builder = if dns.nameservers.is_empty() {
        match TokioResolver::builder(provider.clone()) {
            Ok(builder) => builder,
            Err(e) => {
                if say {
                    tracing::warn!(
                        "cannot use the system's DNS settings (/etc/resolv.conf: {e}): upstream names resolve from /etc/hosts only (set dns.nameservers)"
                    );
                }
                TokioResolver::builder_with_config(ResolverConfig::new(), provider)
            }
        }
    } else {
        let mut servers = NameServerConfigGroup::new();
        for addr in &dns.nameservers {
            servers.merge(NameServerConfigGroup::from_ips_clear(
                &[addr.ip()],
                addr.port(),
                true,
            ));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), servers),
            provider,
        )
    };
    let options = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Always;
    // Every IPv4 address, or the IPv6 ones when there is none: what a
    // client connecting to the name would try first.
    options.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
    options.positive_min_ttl = Some(dns.min_ttl);
    options.positive_max_ttl = Some(dns.max_ttl);
    options.negative_max_ttl = Some(dns.min_ttl);
    builder.build()
}

async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Answer, String> {
    // augur keeps its own schedule: every lookup asks the servers.
    resolver.clear_cache();
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(host)).await;
    match found {
        Err(_) => Err(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())),
        Ok(Err(e)) if e.is_nx_domain() => Err("no such name".to_string()),
        Ok(Err(e)) if e.is_no_records_found() => Err("no address for the name".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(found)) => {
            let addresses: Vec<IpAddr> = found.iter().collect();
            if addresses.is_empty() {
                return Err("no address for the name".to_string());
            }
            Ok(Answer {
                addresses,
                ttl: found
                    .valid_until()
                    .saturating_duration_since(Instant::now()),
            })
        }
    }
}

/// Resolves each name again when its answer runs out, or early after a
/// failed connection.
pub(crate) struct Refresher {
    names: Vec<Arc<Name>>,
    dns: Dns,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let resolver = resolver(&self.dns, false);
        let every = futures_util::future::join_all(
            self.names
                .iter()
                .map(|name| keep_resolving(name, &resolver, &self.dns)),
        );
        tokio::select! {
            _ = every => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn keep_resolving(name: &Name, resolver: &TokioResolver, dns: &Dns) {
    loop {
        let (due, resolved) = name.schedule();
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = name.early.notified() => {
                tokio::time::sleep_until((resolved + dns.min_ttl).into()).await;
            }
        }
        name.apply(lookup(resolver, &name.host).await, dns);
    }
}
