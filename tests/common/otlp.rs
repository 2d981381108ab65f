//! An OTLP/HTTP trace collector (protobuf, `POST /v1/traces`) on
//! 127.0.0.1, decoding with the OpenTelemetry protos, and what tests ask of
//! the spans it received.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Spans received, with the `service.name` of their resource.
pub type Spans = Arc<Mutex<Vec<(String, Span)>>>;

pub async fn collector() -> (SocketAddr, Spans) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let spans: Spans = Arc::default();
    let app =
        axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(
                    |axum::extract::State(s): axum::extract::State<Spans>,
                     body: axum::body::Bytes| async move {
                        let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        let mut s = s.lock().unwrap();
                        for rs in req.resource_spans {
                            let service = rs
                                .resource
                                .iter()
                                .flat_map(|r| &r.attributes)
                                .find(|kv| kv.key == "service.name")
                                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                    Value::StringValue(v) => Some(v.clone()),
                                    _ => None,
                                })
                                .unwrap_or_default();
                            for ss in rs.scope_spans {
                                s.extend(ss.spans.into_iter().map(|sp| (service.clone(), sp)));
                            }
                        }
                        // An empty ExportTraceServiceResponse.
                        axum::body::Bytes::new()
                    },
                ),
            )
            .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, spans)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The spans of `trace` (hex id) once `n` named `name` have arrived.
pub async fn spans_of(spans: &Spans, trace: &str, name: &str, n: usize) -> Vec<(String, Span)> {
    for _ in 0..200 {
        {
            let s = spans.lock().unwrap();
            let of: Vec<(String, Span)> = s
                .iter()
                .filter(|(_, sp)| hex(&sp.trace_id) == trace)
                .cloned()
                .collect();
            if of.iter().filter(|(_, sp)| sp.name == name).count() >= n {
                return of;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = spans.lock().unwrap();
    let names: Vec<(String, String, String)> = s
        .iter()
        .map(|(svc, sp)| (svc.clone(), hex(&sp.trace_id), sp.name.clone()))
        .collect();
    panic!("no {name} span in trace {trace} within 10 s; received {names:?}");
}

/// A string attribute of `span`.
pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}
