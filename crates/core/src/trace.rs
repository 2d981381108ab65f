//! Traces across authgate's outbound calls (docs/traces.md). The
//! pipeline opens `tracing` spans for the calls it makes (JWKS, discovery,
//! introspection, webhook, store) with [`SPAN_TARGET`], which no log
//! prints; a host that exports traces (OpenTelemetry) turns them into
//! spans and installs an [`Injector`] that writes the current trace context
//! into outbound requests. Without one, these spans have no subscriber and
//! cost a relaxed atomic load each.

use std::sync::OnceLock;

use reqwest::header::HeaderMap;

/// The `tracing` target of spans meant only for trace export.
pub const SPAN_TARGET: &str = "authgate::span";

/// Writes the current span's trace context (W3C `traceparent`) into
/// outbound request headers.
pub type Injector = fn(&mut HeaderMap);

static INJECTOR: OnceLock<Injector> = OnceLock::new();

/// Installs the injector, once per process (later calls are ignored).
pub fn set_injector(f: Injector) {
    let _ = INJECTOR.set(f);
}

/// The trace context headers for an outbound call made now: empty (and
/// not allocated) when no host exports traces.
pub(crate) fn context_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(inject) = INJECTOR.get() {
        inject(&mut headers);
    }
    headers
}
