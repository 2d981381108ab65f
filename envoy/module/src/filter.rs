//! One request through the pipeline, knowing Envoy only through [`Stream`]:
//! headers in, a [`Decision`] out, rendered as the gRPC door renders it
//! (docs/envoy-module.md). A decision that completes on its first poll (a
//! cached token, fixed keys, API keys) is applied at once on Envoy's worker;
//! one that waits (a JWKS fetch, the webhook, the elevation store) runs on
//! the module's own runtime and resumes the stream from Envoy's scheduler.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use authgate_core::decision::{Decision, DenyReason, MetaValue};
use authgate_core::jwks::JwksRegistry;
use authgate_core::metrics::{Frontend, Metrics};
use authgate_core::pipeline::Engine;
use authgate_core::request::{Headers, Request};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// What the filter needs of an Envoy stream.
pub trait Stream {
    /// Calls `f` with every request header, pseudo-headers included, in
    /// order.
    fn for_each_header(&self, f: &mut dyn FnMut(&[u8], &[u8]));
    /// The downstream client's address (`source.address`).
    fn source_ip(&self) -> Option<IpAddr>;
    /// The route's per-filter config, as `context_extensions`.
    fn route(&self) -> Option<&HashMap<String, String>>;
    /// Sets a request header; `false` if Envoy could not (no request
    /// headers any more).
    fn set_header(&mut self, name: &str, value: &str) -> bool;
    /// Removes every value of a request header; `false` as for `set_header`.
    fn remove_header(&mut self, name: &str) -> bool;
    /// Sets the allow's dynamic metadata (absent fields skipped).
    fn set_metadata(&mut self, fields: &[(&'static str, Option<MetaValue<'_>>)]);
    fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str);
}

/// How a waiting stream is resumed: Envoy's scheduler, committed from the
/// module's runtime, calls back on the stream's worker thread.
pub trait Resume: Send + 'static {
    fn resume(self: Box<Self>);
}

/// Where the per-decision timing goes besides [`Metrics`]: Envoy's own
/// stats.
pub trait DecisionStats: Send + Sync {
    fn decided(&self, elapsed: Duration);
}

impl<T: DecisionStats> DecisionStats for Arc<T> {
    fn decided(&self, elapsed: Duration) {
        (**self).decided(elapsed);
    }
}

/// What the filter does with the request after a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Decided and allowed: the request goes on.
    Continue,
    /// Decided and denied: a local reply was sent.
    Replied,
    /// Deciding: the stream is resumed later.
    Wait,
}

/// A filter config: the engine built from one `auth.yaml`, shared by every
/// stream on every worker.
pub struct FilterConfig {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    runtime: Handle,
    stats: Box<dyn DecisionStats>,
    /// Whether a mode's IP rule reads the client address (Envoy's
    /// `source.address`): only then is it looked up.
    reads_source_address: bool,
    // The JWKS caches are owned here; the engine holds them too.
    _registry: JwksRegistry,
}

impl FilterConfig {
    pub fn new(
        engine: Engine,
        metrics: Arc<Metrics>,
        registry: JwksRegistry,
        runtime: Handle,
        stats: Box<dyn DecisionStats>,
        reads_source_address: bool,
    ) -> Self {
        FilterConfig {
            engine: Arc::new(engine),
            metrics,
            runtime,
            stats,
            reads_source_address,
            _registry: registry,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// A decision still running on the module's runtime. Dropping it (the
/// stream ended first) stops the work.
pub struct Waiting {
    answer: oneshot::Receiver<Decision>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

/// Decisions waiting on the module's runtime at once, in the whole process
/// (the server bounds its decisions in flight the same way): past it a
/// decision that would wait is answered 503 at once, so that a burst cannot
/// open unbounded webhook calls or store queries from inside Envoy.
pub const MAX_WAITING: usize = 4096;

static WAITING: AtomicUsize = AtomicUsize::new(0);

/// One slot of [`MAX_WAITING`], given back when the decision's task ends.
struct WaitSlot;

impl WaitSlot {
    fn take() -> Option<WaitSlot> {
        let taken = WAITING.fetch_add(1, Ordering::AcqRel);
        if taken >= MAX_WAITING {
            WAITING.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(WaitSlot)
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        WAITING.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The request as the pipeline sees it, read from Envoy's header map:
/// `:method` and `:path` as the gRPC door gets them in `attributes.request.
/// http`, other pseudo-headers left out as it leaves them out.
pub fn request_of(stream: &dyn Stream, source_address: bool) -> Request {
    let mut req = Request::default();
    let mut headers = Headers::with_capacity(16);
    stream.for_each_header(&mut |name, value| {
        let value = text(value);
        match name {
            b":method" => req.method = value,
            b":path" => req.path = value,
            n if n.first() == Some(&b':') => {}
            n => headers.push(&String::from_utf8_lossy(n), value),
        }
    });
    req.headers = headers;
    if source_address {
        req.source_ip = stream.source_ip();
    }
    if let Some(route) = stream.route() {
        req.context = route.clone();
    }
    req
}

/// Header bytes as text; bytes that are not UTF-8 become U+FFFD (as in the
/// gRPC door), so such a credential cannot verify.
fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

type Deciding = Pin<Box<dyn Future<Output = Decision> + Send>>;

impl FilterConfig {
    /// Decides the request on `stream`. When the decision must wait,
    /// `resume` is asked for the way back and [`Step::Wait`] returned with
    /// the [`Waiting`] to keep until [`FilterConfig::resumed`].
    pub fn on_request_headers(
        &self,
        stream: &mut dyn Stream,
        resume: impl FnOnce() -> Option<Box<dyn Resume>>,
    ) -> (Step, Option<Waiting>) {
        let started = Instant::now();
        let req = request_of(stream, self.reads_source_address);
        #[cfg(debug_assertions)]
        injected_panic(&req);
        let engine = self.engine.clone();
        let timeout = engine.settings.decision_timeout;
        // JWKS refetches and webhook calls spawn on, and time out with, the
        // module's runtime, also while polled here on Envoy's worker.
        let _runtime = self.runtime.enter();
        let mut deciding: Deciding = Box::pin(async move { engine.decide(&req).await });
        if let Poll::Ready(d) = deciding
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            return (self.apply(&d, stream, started), None);
        }
        let Some(slot) = WaitSlot::take() else {
            tracing::warn!(
                frontend = Frontend::EnvoyModule.as_str(),
                limit = MAX_WAITING,
                "too many decisions waiting; denied"
            );
            let d = Decision::deny(DenyReason::InternalError, None);
            return (self.apply(&d, stream, started), None);
        };
        let Some(resume) = resume() else {
            let d = Decision::deny(DenyReason::InternalError, None);
            return (self.apply(&d, stream, started), None);
        };
        let (tx, answer) = oneshot::channel();
        let task = self.runtime.spawn(async move {
            let _slot = slot;
            let d = match tokio::time::timeout(timeout, deciding).await {
                Ok(d) => d,
                Err(_) => {
                    tracing::warn!(
                        frontend = Frontend::EnvoyModule.as_str(),
                        timeout_s = timeout.as_secs(),
                        "decision timed out"
                    );
                    Decision::deny(DenyReason::InternalError, None)
                }
            };
            if tx.send(d).is_ok() {
                resume.resume();
            }
        });
        (
            Step::Wait,
            Some(Waiting {
                answer,
                task,
                started,
            }),
        )
    }
}

impl FilterConfig {
    /// Applies the decision a [`Waiting`] produced (a denial if there is
    /// none: the task ended without one).
    pub fn resumed(&self, mut waiting: Waiting, stream: &mut dyn Stream) -> Step {
        let d = waiting
            .answer
            .try_recv()
            .unwrap_or_else(|_| Decision::deny(DenyReason::InternalError, None));
        self.apply(&d, stream, waiting.started)
    }

    /// Renders `d` on the stream as the gRPC door's `CheckResponse` would
    /// be applied by Envoy's ext_authz filter, and records it.
    pub fn apply(&self, d: &Decision, stream: &mut dyn Stream, started: Instant) -> Step {
        let elapsed = started.elapsed();
        self.metrics
            .record(Frontend::EnvoyModule, d.summary(), elapsed.as_secs_f64());
        self.stats.decided(elapsed);
        match d {
            Decision::Allow(a) => {
                let mut applied = true;
                for (k, v) in &a.headers {
                    applied &= stream.set_header(k, v);
                }
                for h in &a.headers_to_remove {
                    applied &= stream.remove_header(h);
                }
                if !applied {
                    // The client's headers might still be there: fail closed.
                    let r = DenyReason::InternalError;
                    stream.send_response(
                        r.http_status(),
                        &[("content-type", "application/json")],
                        r.body(),
                    );
                    return Step::Replied;
                }
                stream.set_metadata(&a.metadata());
                Step::Continue
            }
            Decision::Deny(deny) => {
                let r = deny.reason;
                tracing::info!(
                    frontend = Frontend::EnvoyModule.as_str(),
                    reason = r.as_str(),
                    mode = deny.mode.as_ref().map(|m| m.kind).unwrap_or("none"),
                    mode_id = deny.mode.as_ref().map(|m| &*m.id).unwrap_or(""),
                    "denied"
                );
                let json = ("content-type", "application/json");
                match r.www_authenticate() {
                    Some(c) => stream.send_response(
                        r.http_status(),
                        &[json, ("www-authenticate", c)],
                        r.body(),
                    ),
                    None => stream.send_response(r.http_status(), &[json], r.body()),
                }
                Step::Replied
            }
        }
    }
}

/// Debug builds only: a request carrying the header named by the
/// environment variable `AUTHGATE_ENVOY_PANIC_HEADER` panics while it is
/// decided, so that the end-to-end tests can show that a panic in the module
/// becomes a denial and leaves Envoy serving. Release builds have no such
/// code.
#[cfg(debug_assertions)]
fn injected_panic(req: &Request) {
    static HEADER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let name = HEADER.get_or_init(|| std::env::var("AUTHGATE_ENVOY_PANIC_HEADER").ok());
    if let Some(name) = name
        && req.headers.get(name).is_some()
    {
        panic!("injected panic ({name})");
    }
}
