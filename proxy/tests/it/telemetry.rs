//! OTLP spans reach a real OTLP/gRPC receiver, with the right links.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::Mutex;

use crate::support::*;

#[derive(Clone, Default)]
pub struct Receiver(pub Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().await;
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

pub async fn start_receiver() -> (SocketAddr, Receiver) {
    let receiver = Receiver::default();
    let addr = local(free_port());
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr),
    );
    (addr, receiver)
}

pub fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            Value::BoolValue(b) => Some(b.to_string()),
            _ => None,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_parent_child_links() {
    let (collector, receiver) = start_receiver().await;
    let ports = Ports::new(1);
    let users = echo_server().await;
    let users_egress = local(ports.deps[0]);
    // The service passes the traceparent it received on to its call.
    let service = serve(
        move |req: hyper::Request<hyper::body::Incoming>| async move {
            let tp = req.headers()["traceparent"].clone();
            let call = Request::get(format!("http://{users_egress}/users/1"))
                .header("traceparent", tp)
                .body(Body::default())
                .unwrap();
            let resp = client().request(call).await.unwrap();
            hyper::Response::builder()
                .status(resp.status())
                .body(Body::from("ok"))
                .unwrap()
        },
    )
    .await;
    let extra = format!("[telemetry]\notlp_endpoint = \"http://{collector}\"");
    let mut augur = Augur::start(&ports, service, &[Dep::new("users", users)], &extra).await;

    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let req = Request::get(augur.url("/orders/42"))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .body(Body::default())
        .unwrap();
    assert_eq!(send(req).await.status, 200);
    // Shutdown flushes what the batch processor still holds.
    augur.signal("TERM");
    tokio::task::block_in_place(|| augur.wait(Duration::from_secs(5))).expect("augur exited");

    let spans = eventually(Duration::from_secs(5), "two spans", || {
        let receiver = receiver.clone();
        async move {
            let spans = receiver.0.lock().await.clone();
            (spans.len() >= 2).then_some(spans)
        }
    })
    .await;
    let inbound = spans.iter().find(|s| s.kind == 2).expect("a server span");
    let call = spans.iter().find(|s| s.kind == 3).expect("a client span");
    assert_eq!(hex::encode(&inbound.trace_id), client_trace);
    assert_eq!(hex::encode(&inbound.parent_span_id), client_span);
    assert_eq!(inbound.name, "GET /orders/{id}");
    assert_eq!(
        attr(inbound, "http.route").as_deref(),
        Some("GET /orders/{id}")
    );
    assert_eq!(
        attr(inbound, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(call.trace_id, inbound.trace_id);
    assert_eq!(
        call.parent_span_id, inbound.span_id,
        "the call is the inbound span's child"
    );
    assert_eq!(attr(call, "augur.dependency").as_deref(), Some("users"));
    assert_eq!(attr(call, "augur.outcome").as_deref(), Some("miss"));
    assert_eq!(
        attr(call, "http.response.status_code").as_deref(),
        Some("200")
    );
}

mod hex {
    pub fn encode(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
