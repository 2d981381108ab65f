//! One request through the pipeline, knowing Envoy only through [`Stream`]:
//! headers in, a [`Decision`] out, rendered as the gRPC door renders it
//! (docs/envoy-module.md). A decision that completes on its first poll (a
//! cached token, fixed keys, API keys) is applied at once on Envoy's worker;
//! one that waits (a JWKS fetch, the webhook, the elevation store) runs on
//! the module's own runtime and resumes the stream from Envoy's scheduler.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use authgate_core::decision::{Decision, DenyReason, MetaValue, Metadata, Summary};
use authgate_core::jwks::JwksRegistry;
use authgate_core::metrics::{Frontend, Metrics};
use authgate_core::pipeline::{Answer, Engine};
use authgate_core::request::{Headers, Request};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::rendered::{self, Rendered};

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
    /// Sets configured text fields (`dynamicMetadata`) in the same namespace.
    fn set_metadata_strings(&mut self, fields: &[(&str, &str)]);
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

/// What the filter config asks of the filter besides the `auth.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Whether a mode's IP rule reads the client address (Envoy's
    /// `source.address`): only then is it looked up.
    pub reads_source_address: bool,
    /// Whether an allow sets Envoy dynamic metadata.
    pub dynamic_metadata: bool,
}

/// A filter config: the engine built from one `auth.yaml`, shared by every
/// stream on every worker.
pub struct FilterConfig {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    runtime: Handle,
    stats: Box<dyn DecisionStats>,
    options: Options,
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
        options: Options,
    ) -> Self {
        FilterConfig {
            engine: Arc::new(engine),
            metrics,
            runtime,
            stats,
            options,
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
    answer: oneshot::Receiver<Answer>,
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
/// `:method`, `:path` and `:authority` (last, as the gRPC door places
/// `attributes.request.http.host`) as the gRPC door gets them, other
/// pseudo-headers left out as it leaves them out.
pub fn request_of(stream: &dyn Stream, source_address: bool) -> Request {
    let mut req = Request::default();
    let mut headers = Headers::with_capacity(16);
    let mut authority = None;
    stream.for_each_header(&mut |name, value| match name {
        b":method" => req.method = text(value).into_owned(),
        b":path" => req.path = text(value).into_owned(),
        b":authority" => authority = Some(text(value).into_owned()),
        n if n.first() == Some(&b':') => {}
        n => headers.push(&text(n), text(value)),
    });
    if let Some(a) = authority.filter(|a| !a.is_empty()) {
        headers.push(":authority", a);
    }
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
fn text(v: &[u8]) -> Cow<'_, str> {
    // Checked whole first: much faster than the lossy scan on the ASCII
    // that headers almost always are.
    match std::str::from_utf8(v) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v),
    }
}

type Deciding = Pin<Box<dyn Future<Output = Answer> + Send>>;

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
        let req = request_of(stream, self.options.reads_source_address);
        #[cfg(debug_assertions)]
        injected_panic(&req);
        let engine = self.engine.clone();
        let timeout = engine.settings.decision_timeout;
        // JWKS refetches and webhook calls spawn on, and time out with, the
        // module's runtime, also while polled here on Envoy's worker.
        let _runtime = self.runtime.enter();
        // A cached token's repeat that asks for nothing more comes back as
        // the allow rendered for its first repeat (`rendered`).
        let mut deciding: Deciding =
            Box::pin(async move { engine.decide_memo(&req, rendered::encode).await });
        if let Poll::Ready(answer) = deciding
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            return (self.answer(&answer, stream, started), None);
        }
        let Some(slot) = WaitSlot::take() else {
            tracing::warn!(
                frontend = Frontend::EnvoyModule.as_str(),
                limit = MAX_WAITING,
                "too many decisions waiting; denied"
            );
            return (self.apply(&internal_error(), stream, started), None);
        };
        let Some(resume) = resume() else {
            return (self.apply(&internal_error(), stream, started), None);
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
                    Answer::Decided(internal_error())
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
        match waiting.answer.try_recv() {
            Ok(answer) => self.answer(&answer, stream, waiting.started),
            Err(_) => self.apply(&internal_error(), stream, waiting.started),
        }
    }

    fn answer(&self, answer: &Answer, stream: &mut dyn Stream, started: Instant) -> Step {
        match answer {
            Answer::Decided(d) => self.apply(d, stream, started),
            Answer::Memo(m) => match Rendered::read(m.bytes()) {
                Some(r) => {
                    self.record(answer.summary(), started);
                    let metadata = self.options.dynamic_metadata.then(|| r.metadata(&m.mode));
                    allow(
                        stream,
                        r.headers(),
                        r.headers_to_remove(),
                        metadata.as_ref(),
                        r.extra_metadata(),
                    )
                }
                // Written by `rendered::encode`, so unreadable bytes are a
                // bug: fail closed.
                None => self.apply(
                    &Decision::deny(DenyReason::InternalError, Some(m.mode.clone())),
                    stream,
                    started,
                ),
            },
        }
    }

    fn record(&self, summary: Summary, started: Instant) {
        let elapsed = started.elapsed();
        self.metrics
            .record(Frontend::EnvoyModule, summary, elapsed.as_secs_f64());
        self.stats.decided(elapsed);
    }

    /// Renders `d` on the stream as the gRPC door's `CheckResponse` would
    /// be applied by Envoy's ext_authz filter, and records it.
    pub fn apply(&self, d: &Decision, stream: &mut dyn Stream, started: Instant) -> Step {
        self.record(d.summary(), started);
        match d {
            Decision::Allow(a) => allow(
                stream,
                a.headers_to_set(),
                a.headers_to_remove.iter().map(String::as_str),
                self.options.dynamic_metadata.then(|| a.metadata()).as_ref(),
                a.extra_metadata.iter().map(|f| (&*f.key, f.value.as_str())),
            ),
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

fn internal_error() -> Decision {
    Decision::deny(DenyReason::InternalError, None)
}

/// An allow on the stream: headers set (overwriting), client headers
/// removed, then the metadata (unless turned off); a refused header write
/// fails closed.
fn allow<'a>(
    stream: &mut dyn Stream,
    set: impl Iterator<Item = (&'a str, &'a str)>,
    remove: impl Iterator<Item = &'a str>,
    metadata: Option<&Metadata<'_>>,
    extra: impl Iterator<Item = (&'a str, &'a str)>,
) -> Step {
    let mut applied = true;
    for (k, v) in set {
        applied &= stream.set_header(k, v);
    }
    for h in remove {
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
    if let Some(m) = metadata {
        stream.set_metadata(m);
        // Empty (and not allocated) without `dynamicMetadata`.
        let extra: Vec<(&str, &str)> = extra.collect();
        if !extra.is_empty() {
            stream.set_metadata_strings(&extra);
        }
    }
    Step::Continue
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!!";

    /// A stream that records what the filter did to it.
    #[derive(Default, Debug, PartialEq)]
    struct Recorded {
        input: Vec<(String, String)>,
        route: Option<HashMap<String, String>>,
        set: Vec<(String, String)>,
        removed: Vec<String>,
        metadata: Vec<(String, String)>,
        response: Option<(u16, String, String)>,
    }

    impl Stream for Recorded {
        fn for_each_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
            for (k, v) in &self.input {
                f(k.as_bytes(), v.as_bytes());
            }
        }
        fn source_ip(&self) -> Option<IpAddr> {
            None
        }
        fn route(&self) -> Option<&HashMap<String, String>> {
            self.route.as_ref()
        }
        fn set_header(&mut self, name: &str, value: &str) -> bool {
            self.set.push((name.into(), value.into()));
            true
        }
        fn remove_header(&mut self, name: &str) -> bool {
            self.removed.push(name.into());
            true
        }
        fn set_metadata(&mut self, fields: &[(&'static str, Option<MetaValue<'_>>)]) {
            for (k, v) in fields {
                let v = match v {
                    Some(MetaValue::Text(s)) => s.to_string(),
                    Some(MetaValue::Bool(b)) => b.to_string(),
                    None => continue,
                };
                self.metadata.push((k.to_string(), v));
            }
        }
        fn set_metadata_strings(&mut self, fields: &[(&str, &str)]) {
            for (k, v) in fields {
                self.metadata.push((k.to_string(), v.to_string()));
            }
        }
        fn send_response(&mut self, status: u16, headers: &[(&str, &str)], body: &str) {
            self.response = Some((status, format!("{headers:?}"), body.into()));
        }
    }

    const OPTIONS: Options = Options {
        reads_source_address: false,
        dynamic_metadata: true,
    };

    struct NoStats;
    impl DecisionStats for NoStats {
        fn decided(&self, _: Duration) {}
    }

    fn config(options: Options) -> FilterConfig {
        let yaml = format!(
            r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: '"https://hasura.io/jwt/claims"'}}}}
  dynamicMetadata: {{org: x-hasura-org}}
"#
        );
        let cfg = authgate_core::config::parse(&yaml, &|_: &str| None).expect("config");
        crate::load::build(cfg, Box::new(NoStats), options).expect("filter config")
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("token")
    }

    fn stream(headers: &[(&str, &str)], route: Option<&str>) -> Recorded {
        let mut input = vec![
            (":method".to_owned(), "POST".to_owned()),
            (":path".to_owned(), "/v1/graphql".to_owned()),
            (":authority".to_owned(), "api".to_owned()),
        ];
        input.extend(headers.iter().map(|(k, v)| ((*k).into(), (*v).into())));
        Recorded {
            input,
            route: route.map(|e| HashMap::from([("elevation".to_owned(), e.to_owned())])),
            ..Default::default()
        }
    }

    fn decide(config: &FilterConfig, s: &mut Recorded) -> Step {
        let (step, waiting) = config.on_request_headers(s, || None);
        assert!(waiting.is_none(), "fixed keys never wait");
        step
    }

    /// `:authority` reaches the pipeline (for policy routes with a host), as
    /// the gRPC door passes Envoy's `host`; other pseudo-headers do not.
    #[test]
    fn the_authority_is_read_as_the_grpc_door_reads_it() {
        let req = request_of(&stream(&[("x-a", "1")], None), false);
        assert_eq!(req.headers.get(":authority"), Some("api"));
        assert_eq!(req.headers.get(":method"), None);
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/graphql");
        let names: Vec<&str> = req.headers.iter().map(|(k, _)| k).collect();
        assert_eq!(
            names,
            vec!["x-a", ":authority"],
            "last, as the gRPC door puts it"
        );
    }

    /// The rendered allow of a repeat does to the stream exactly what the
    /// full decision did, for every request that may take it; requests
    /// that ask for more are decided in full every time.
    #[test]
    fn a_repeat_renders_as_the_full_decision_did() {
        let loud = config(OPTIONS);
        let quiet = config(Options {
            dynamic_metadata: false,
            ..OPTIONS
        });
        let exp = authgate_core::clock::unix_now() + 600;
        let claims = |user: serde_json::Value, extra: serde_json::Value| {
            let mut c = json!({
                "sub": "s", "exp": exp,
                "https://hasura.io/jwt/claims": {
                    "x-hasura-user-id": user,
                    "x-hasura-default-role": "user",
                    "x-hasura-allowed-roles": ["user", "editor"],
                    "x-hasura-org": "o-1",
                },
            });
            if let Some(extra) = extra.as_object() {
                for (k, v) in extra {
                    c["https://hasura.io/jwt/claims"][k] = v.clone();
                }
            }
            c
        };
        let tokens = [
            token(claims(json!("u-1"), json!({}))),
            token(claims(json!(42), json!({"x-hasura-team-ids": "{1,2}"}))),
            token(claims(
                json!("u-3"),
                json!({"x-hasura-auth-elevated": "u-3"}),
            )),
            token(json!({"sub": "s", "exp": exp})),
            // No user id: no `user_id` metadata.
            token(
                json!({"sub": "s", "exp": exp, "https://hasura.io/jwt/claims": {
                    "x-hasura-default-role": "anonymous",
                    "x-hasura-allowed-roles": ["anonymous"],
                }}),
            ),
        ];
        for t in &tokens {
            let bearer = format!("Bearer {t}");
            let cases: [Case<'_>; 6] = [
                (vec![("authorization", &bearer)], None),
                (
                    vec![("authorization", &bearer), ("x-hasura-role", "editor")],
                    None,
                ),
                (
                    vec![("authorization", &bearer), ("X-Hasura_Org", "spoof")],
                    None,
                ),
                (
                    vec![("authorization", &bearer), ("x-hasura-role", "admin")],
                    None,
                ),
                (vec![("authorization", &bearer)], Some("required")),
                (vec![("authorization", &bearer)], Some("optional")),
            ];
            for (headers, route) in cases {
                let mut first = stream(&headers, route);
                let step = decide(&loud, &mut first);
                for _ in 0..3 {
                    let mut again = stream(&headers, route);
                    assert_eq!(decide(&loud, &mut again), step);
                    assert_eq!(again, first, "{headers:?} {route:?}");
                    // Without metadata: the same but for the metadata.
                    let mut plain = stream(&headers, route);
                    assert_eq!(decide(&quiet, &mut plain), step);
                    assert!(plain.metadata.is_empty());
                    plain.metadata = first.metadata.clone();
                    assert_eq!(plain, first, "{headers:?} {route:?}");
                }
                assert_eq!(first.metadata.is_empty(), step != Step::Continue);
                // `dynamicMetadata` on the tokens that carry the variable.
                let org = first.metadata.iter().any(|(k, v)| k == "org" && v == "o-1");
                assert_eq!(
                    org,
                    step == Step::Continue && t != &tokens[3] && t != &tokens[4]
                );
            }
            // The plain repeat (an optional route asks nothing more) is
            // answered by the rendered allow.
            for route in [None, Some("optional")] {
                let req = request_of(&stream(&[("authorization", &bearer)], route), false);
                let answer = futures_ready(loud.engine.decide_memo(&req, rendered::encode));
                let allowed = matches!(
                    loud.engine.decide(&req).now_or_never(),
                    Some(Decision::Allow(_))
                );
                assert_eq!(matches!(answer, Answer::Memo(_)), allowed, "{answer:?}");
            }
        }
    }

    /// Request headers and the route's elevation setting.
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>);

    fn futures_ready<F: Future>(f: F) -> F::Output {
        f.now_or_never().expect("decided at once")
    }

    trait NowOrNever: Future + Sized {
        fn now_or_never(self) -> Option<Self::Output> {
            let mut f = std::pin::pin!(self);
            match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            }
        }
    }
    impl<F: Future> NowOrNever for F {}
}
