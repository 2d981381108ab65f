//! Trace export with OpenTelemetry (docs/traces.md), configured by
//! the standard `OTEL_*` variables and off unless they ask for it: then no
//! layer listens to authgate's spans and a decision costs one relaxed
//! atomic load more.
//!
//! When on, each decision is a span (`authgate.decision`) whose parent is
//! the trace context of the call (W3C `traceparent`/`tracestate`, else
//! Zipkin `b3`/`x-b3-*`): the gRPC call's own metadata first (Envoy's
//! ext_authz span), else the checked request's headers. The pipeline's
//! spans (JWKS, discovery, introspection, webhook, store) are its children,
//! and their outbound calls carry `traceparent`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::decision::{Decision, Summary};
use crate::metrics::Frontend;
use crate::request::{Headers, Request};
use authgate_core::trace::SPAN_TARGET;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The exporter's provider, to flush spans at shutdown.
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Sends what is buffered, waiting at most 5 s (the SDK's bound).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("trace export: {e}");
        }
    }
}

/// What the `OTEL_*` variables ask for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Off,
    Otlp(opentelemetry_otlp::Protocol),
}

/// Reads the variables: `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none` turn export off; `OTEL_TRACES_EXPORTER=otlp`
/// or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turn it on. A value authgate does
/// not support is an error, not silence.
fn wanted(var: &dyn Fn(&str) -> Option<String>) -> Result<Wanted, String> {
    let get = |k: &str| {
        var(k)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(Wanted::Off);
    }
    let endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .is_some();
    // A comma-separated list (the specification's syntax); authgate has
    // only otlp, and a list without it names nothing authgate can do.
    match get("OTEL_TRACES_EXPORTER").map(|v| v.to_ascii_lowercase()) {
        None if !endpoint => return Ok(Wanted::Off),
        None => {}
        Some(list) => {
            let names: Vec<&str> = list.split(',').map(str::trim).collect();
            if names == ["none"] {
                return Ok(Wanted::Off);
            }
            if !names.contains(&"otlp") {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={list} is not supported; authgate exports with otlp (or none)"
                ));
            }
        }
    }
    let protocol =
        get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match protocol.as_deref() {
        None | Some("http/protobuf") => Ok(Wanted::Otlp(opentelemetry_otlp::Protocol::HttpBinary)),
        Some("http/json") => Ok(Wanted::Otlp(opentelemetry_otlp::Protocol::HttpJson)),
        Some(other) => Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported; use http/protobuf (the default) or http/json"
        )),
    }
}

/// The export layer, when the environment asks for one; installs the
/// outbound-call injector.
pub fn layer<S>() -> Result<Option<(impl tracing_subscriber::Layer<S>, Export)>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let Wanted::Otlp(protocol) = wanted(&|k| std::env::var(k).ok())? else {
        return Ok(None);
    };
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| format!("trace exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    if !named {
        resource = resource.with_service_name("authgate");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("authgate");
    ENABLED.store(true, Ordering::Relaxed);
    authgate_core::trace::set_injector(inject);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target(SPAN_TARGET, tracing::Level::INFO),
        );
    Ok(Some((layer, Export { provider })))
}

use tracing_subscriber::Layer as _;

fn extract_propagator() -> &'static TextMapCompositePropagator {
    static P: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    // Later propagators win: W3C over B3 when a request carries both.
    P.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_propagator_b3::Propagator::new()),
            Box::new(TraceContextPropagator::new()),
        ])
    })
}

/// Writes the current span's context as `traceparent`/`tracestate`.
fn inject(headers: &mut http::header::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

struct HeaderInjector<'a>(&'a mut http::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct RequestHeaders<'a>(&'a Headers);

impl Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k).collect()
    }
}

struct CallHeaders<'a>(&'a http::HeaderMap);

impl Extractor for CallHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span of one decision: disabled (and free) without export. Its
/// parent is the context in `call` (the gRPC call's metadata) if any, else
/// in the checked request's headers.
pub fn decision_span(
    frontend: Frontend,
    call: Option<&http::HeaderMap>,
    req: &Request,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "authgate.decision",
        otel.kind = "server",
        authgate.frontend = frontend.as_str(),
        authgate.decision = tracing::field::Empty,
        authgate.reason = tracing::field::Empty,
        authgate.mode = tracing::field::Empty,
        authgate.mode_id = tracing::field::Empty,
        authgate.policy = tracing::field::Empty,
    );
    let propagator = extract_propagator();
    let from_call = call
        .map(|h| propagator.extract(&CallHeaders(h)))
        .filter(|cx| cx.span().span_context().is_valid());
    let parent = from_call.unwrap_or_else(|| propagator.extract(&RequestHeaders(&req.headers)));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    if let Some(p) = req.context.get(crate::policy::CONTEXT_KEY) {
        // As named by the route (or `?policy=`), at most 64 characters.
        let end = p.char_indices().nth(64).map_or(p.len(), |(i, _)| i);
        span.record("authgate.policy", &p[..end]);
    }
    span
}

/// Records the outcome on a decision span: never a credential, only the
/// decision, reason and mode.
pub fn record(span: &tracing::Span, summary: Summary, mode_id: Option<&str>) {
    if span.is_disabled() {
        return;
    }
    span.record(
        "authgate.decision",
        if summary.reason.is_none() {
            "allow"
        } else {
            "deny"
        },
    );
    if let Some(r) = summary.reason {
        span.record("authgate.reason", r.as_str());
    }
    span.record("authgate.mode", summary.mode);
    if let Some(id) = mode_id {
        span.record("authgate.mode_id", id);
    }
}

/// The mode id of a decision, for [`record`].
pub fn mode_id(d: &Decision) -> Option<&str> {
    match d {
        Decision::Allow(a) => Some(&a.mode.id),
        Decision::Deny(d) => d.mode.as_ref().map(|m| &*m.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_turns_export_on_and_refuses_what_it_cannot_do() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(wanted(&env(&[])), Ok(Wanted::Off));
        assert_eq!(
            wanted(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])),
            Ok(Wanted::Otlp(opentelemetry_otlp::Protocol::HttpBinary))
        );
        assert_eq!(
            wanted(&env(&[
                ("OTEL_TRACES_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            ])),
            Ok(Wanted::Otlp(opentelemetry_otlp::Protocol::HttpJson))
        );
        assert_eq!(
            wanted(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])),
            Ok(Wanted::Off)
        );
        assert_eq!(
            wanted(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])),
            Ok(Wanted::Off)
        );
        assert!(wanted(&env(&[("OTEL_TRACES_EXPORTER", "jaeger")])).is_err());
        assert_eq!(
            wanted(&env(&[("OTEL_TRACES_EXPORTER", "OTLP,console")])),
            Ok(Wanted::Otlp(opentelemetry_otlp::Protocol::HttpBinary))
        );
        assert_eq!(
            wanted(&env(&[("OTEL_TRACES_EXPORTER", "None")])),
            Ok(Wanted::Off)
        );
        assert!(
            wanted(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            ]))
            .is_err()
        );
    }
}
