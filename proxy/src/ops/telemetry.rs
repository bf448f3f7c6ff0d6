//! Logs through `tracing` (filtered by `RUST_LOG`) and, when
//! `telemetry.otlp_endpoint` is set, OpenTelemetry spans exported over
//! OTLP/gRPC: a server span per inbound request and a client span per
//! dependency call.
//!
//! pingora's main thread is synchronous and the tonic exporter needs a Tokio
//! reactor, so the exporter lives on a small runtime of its own; spans are
//! handed to it by the SDK's batch processor and flushed on shutdown.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

use crate::http::traceparent::{TraceParent, fresh_id64};

/// Installs the log subscriber: `RUST_LOG` if set, else info for augur and
/// warnings for pingora.
pub fn init_logs(format: augur_config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,pingora_core=warn,pingora_proxy=warn,pingora=warn")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        augur_config::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // One object per line: time, level, target, and the event's
        // fields with its message under `fields`.
        augur_config::LogFormat::Json => logs.json().with_current_span(false).try_init(),
    };
}

/// The span exporter, if one is configured.
pub(crate) struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<SdkTracerProvider>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A span in progress, or nothing when no exporter is configured.
pub(crate) type MaybeSpan = Option<Span>;

impl Telemetry {
    /// No exporter: ids are still made and propagated, nothing is sent.
    pub(crate) fn disabled() -> Self {
        Self {
            tracer: None,
            provider: None,
            runtime: None,
        }
    }

    /// An OTLP/gRPC exporter to `endpoint`, naming spans' resource
    /// `service_name`.
    pub(crate) fn otlp(endpoint: &str, service_name: &str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("augur-otlp")
            .enable_all()
            .build()
            .context("cannot start the telemetry runtime")?;
        let _entered = runtime.enter();
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(2))
            .build()
            .with_context(|| format!("cannot build the OTLP exporter for {endpoint}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(format!("augur-{service_name}"))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("augur");
        Ok(Self {
            tracer: Some(tracer),
            provider: Some(provider),
            runtime: Some(runtime),
        })
    }

    /// Starts a span of `kind` as the child of `parent` (a remote span), or
    /// as a root when there is none; `describe` gives its name and
    /// attributes and runs only when spans are exported. Returns the span
    /// and the `traceparent` that names it, to pass on downstream.
    pub(crate) fn start(
        &self,
        kind: SpanKind,
        parent: Option<TraceParent>,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> (MaybeSpan, TraceParent) {
        self.start_linked(kind, parent, None, describe)
    }

    /// [`start`](Self::start), with a link to another span.
    pub(crate) fn start_linked(
        &self,
        kind: SpanKind,
        parent: Option<TraceParent>,
        link: Option<TraceParent>,
        describe: impl FnOnce() -> (String, Vec<KeyValue>),
    ) -> (MaybeSpan, TraceParent) {
        let Some(tracer) = &self.tracer else {
            let tp = match parent {
                Some(p) => p.with_parent(fresh_id64()),
                None => TraceParent::fresh(),
            };
            return (None, tp);
        };
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(p.trace_id),
                SpanId::from(p.parent_id),
                TraceFlags::new(p.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let (name, attributes) = describe();
        let links = link
            .map(|l| {
                vec![opentelemetry::trace::Link::with_context(SpanContext::new(
                    TraceId::from(l.trace_id),
                    SpanId::from(l.parent_id),
                    TraceFlags::new(l.flags),
                    true,
                    TraceState::default(),
                ))]
            })
            .unwrap_or_default();
        let span = tracer
            .span_builder(name)
            .with_links(links)
            .with_kind(kind)
            .with_start_time(SystemTime::now())
            .with_attributes(attributes)
            .start_with_context(tracer, &cx);
        let sc = span.span_context();
        let tp = if sc.is_valid() {
            TraceParent {
                trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
                parent_id: u64::from_be_bytes(sc.span_id().to_bytes()),
                flags: sc.trace_flags().to_u8(),
            }
        } else {
            parent.map_or_else(TraceParent::fresh, |p| p.with_parent(fresh_id64()))
        };
        (Some(span), tp)
    }

    /// Flushes and stops the exporter, waiting at most `timeout`.
    pub(crate) fn shutdown(&self, timeout: Duration) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.shutdown_with_timeout(timeout) {
                tracing::warn!("telemetry shutdown: {e}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Ends a span with the final attributes and an error status for 5xx or a
/// transport failure.
pub(crate) fn finish(
    span: &mut MaybeSpan,
    status: u16,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) {
    if let Some(span) = span.as_mut() {
        span.set_attributes(attributes());
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status == 0 || status >= 500 {
            span.set_status(Status::error(format!("status {status}")));
        }
        span.end();
    }
}
