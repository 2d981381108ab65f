//! The state the front doors share (engine, metrics, admission, readiness)
//! and the one way they decide: [`Shared::decide`] or, for the gRPC door,
//! [`Shared::decide_memo`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::admission::{Admission, Slots};
use crate::decision::{Decision, DenyReason};
use crate::jwks::JwksRegistry;
use crate::metrics::{Frontend, Metrics};
use crate::pipeline::{Answer, Engine};
use crate::request::Request;
use crate::telemetry;
use tracing::Instrument as _;

/// What every front door shares: the current engine (swapped atomically on
/// reload), metrics, admission and the readiness state. Built and reloaded
/// by the server (`crate::server`), which owns the config.
pub struct Shared {
    engine: ArcSwap<Engine>,
    pub metrics: Arc<Metrics>,
    registry: JwksRegistry,
    pub admission: Admission,
    /// Set the first time every JWKS had keys (see [`Shared::readiness`]).
    been_ready: AtomicBool,
    /// The server's reload bookkeeping: the config file, and the content
    /// last loaded or tried (its fingerprint, and whether a SIGHUP may try
    /// it again: it failed for a reason outside the file, the elevation
    /// store). Held for a whole reload, so reloads run one at a time and an
    /// edit seen by both SIGHUP and the file watcher is one attempt.
    pub(crate) config_path: Option<PathBuf>,
    pub(crate) attempted: tokio::sync::Mutex<Option<(u64, bool)>>,
}

impl Shared {
    /// Assembles the state around a first engine.
    pub(crate) fn assemble(
        engine: Engine,
        metrics: Arc<Metrics>,
        registry: JwksRegistry,
        config_path: Option<PathBuf>,
        attempted: Option<(u64, bool)>,
    ) -> Self {
        Shared {
            engine: ArcSwap::from_pointee(engine),
            metrics,
            registry,
            admission: Admission::default(),
            been_ready: AtomicBool::new(false),
            config_path,
            attempted: tokio::sync::Mutex::new(attempted),
        }
    }

    /// The JWKS caches every engine of this process draws from.
    pub(crate) fn registry(&self) -> &JwksRegistry {
        &self.registry
    }

    /// Swaps `engine` in; JWKS caches it no longer uses are dropped.
    pub(crate) fn install(&self, engine: Engine) {
        let keys: Vec<&str> = engine.jwks().iter().map(|c| c.key()).collect();
        self.registry.retain(&keys);
        self.engine.store(Arc::new(engine));
    }

    pub fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    /// Ready: not draining, and every JWKS has had keys since start.
    pub fn is_ready(&self) -> bool {
        self.readiness().missing.is_empty()
    }

    /// What keeps authgate from being ready (`missing`: draining, or, until
    /// it has first been ready, a JWKS source without keys), and key sources
    /// without keys that no longer hold readiness back (`degraded`): once an
    /// instance has been ready, a reload naming a new or broken JWKS URL
    /// leaves it ready, since every replica reads the same file and would
    /// otherwise leave the Service at once; only tokens of that source are
    /// refused (`internal_error`) until its keys load. One line each, with
    /// the reason.
    pub fn readiness(&self) -> Readiness {
        let mut waiting = Vec::new();
        for jwks in self.engine.load().jwks() {
            if jwks.is_ready() {
                continue;
            }
            let why = jwks
                .last_error()
                .map_or_else(|| "first fetch in progress".to_owned(), |e| e.to_string());
            waiting.push(format!(
                "jwks {} ({}): no keys yet: {why}",
                jwks.source(),
                jwks.shown_url()
            ));
        }
        for (mode, introspector) in self.engine.load().introspectors() {
            if introspector.is_ready() {
                continue;
            }
            let why = introspector
                .last_error()
                .unwrap_or_else(|| "first discovery in progress".to_owned());
            waiting.push(format!(
                "introspection {mode} ({}): no endpoint yet: {why}",
                introspector.shown_endpoint()
            ));
        }
        let mut r = Readiness::default();
        // A store outage degrades elevated access only: it never makes the
        // instance unready (that would stop every decision).
        if let Some(elevation) = self.engine.load().elevation()
            && let Some((ago, why)) = elevation.recent_store_error(STORE_ERROR_WINDOW)
        {
            r.degraded.push(format!(
                "elevation store: an operation failed {} s ago: {why}",
                ago.as_secs()
            ));
        }
        if self.admission.gate.is_draining() {
            r.missing.push("draining: shutting down".to_owned());
        }
        if self.been_ready.load(Ordering::Relaxed) {
            r.degraded.extend(waiting);
        } else if waiting.is_empty() {
            self.been_ready.store(true, Ordering::Relaxed);
        } else {
            r.missing.extend(waiting);
        }
        r
    }

    /// The proxy in front of the forward-auth door (`settings.forwardAuth`).
    pub fn forward_auth_proxy(&self) -> crate::forward_auth::ForwardAuthProxy {
        self.engine.load().settings.forward_auth
    }

    /// The current `settings.decisionTimeout`.
    pub fn decision_timeout(&self) -> Duration {
        self.engine.load().settings.decision_timeout
    }

    /// Runs the pipeline and records the decision (metrics, one log line per
    /// denial). A decision that outlasts `settings.decisionTimeout` (a hung
    /// dependency, or every slot busy) is `internal_error`.
    pub async fn decide(&self, frontend: Frontend, req: &Request, started: Instant) -> Decision {
        let engine = self.engine.load_full();
        let timeout = engine.settings.decision_timeout;
        let span = telemetry::decision_span(frontend, None, req);
        let decided = self
            .admission
            .bounded(Slots::Http, timeout, engine.decide(req))
            .instrument(span.clone())
            .await;
        let decision = decided.unwrap_or_else(|| timed_out(frontend, timeout));
        telemetry::record(&span, decision.summary(), telemetry::mode_id(&decision));
        self.recorded(frontend, req, &decision, started);
        decision
    }

    /// As [`Shared::decide`], for the gRPC door: allows it encoded earlier
    /// for a token's equivalent requests come back as bytes
    /// ([`crate::pipeline::Engine::decide_memo`]).
    pub async fn decide_memo(
        &self,
        req: &Request,
        encode: crate::pipeline::EncodeAllow,
        started: Instant,
        call: Option<&http::HeaderMap>,
    ) -> Answer {
        let engine = self.engine.load_full();
        let timeout = engine.settings.decision_timeout;
        let span = telemetry::decision_span(Frontend::Grpc, call, req);
        let decided = self
            .admission
            .bounded(Slots::Grpc, timeout, engine.decide_memo(req, encode))
            .instrument(span.clone())
            .await;
        let answer = decided.unwrap_or_else(|| Answer::Decided(timed_out(Frontend::Grpc, timeout)));
        let mode_id = match &answer {
            Answer::Decided(d) => telemetry::mode_id(d),
            Answer::Memo(m) => Some(&*m.mode.id),
        };
        telemetry::record(&span, answer.summary(), mode_id);
        match &answer {
            Answer::Decided(d) => self.recorded(Frontend::Grpc, req, d, started),
            Answer::Memo(_) => {
                self.metrics.record(
                    Frontend::Grpc,
                    answer.summary(),
                    started.elapsed().as_secs_f64(),
                );
            }
        }
        answer
    }

    /// Counts a decision, and logs it when it is a denial.
    fn recorded(&self, frontend: Frontend, req: &Request, decision: &Decision, started: Instant) {
        self.metrics.record(
            frontend,
            decision.summary(),
            started.elapsed().as_secs_f64(),
        );
        if let Decision::Deny(d) = decision {
            tracing::info!(
                frontend = frontend.as_str(),
                reason = d.reason.as_str(),
                mode = d.mode.as_ref().map(|m| m.kind).unwrap_or("none"),
                mode_id = d.mode.as_ref().map(|m| &*m.id).unwrap_or(""),
                request_id = req.headers.get("x-request-id").unwrap_or(""),
                "denied"
            );
        }
    }
}

/// How long `/readyz` reports a store failure as `degraded`.
const STORE_ERROR_WINDOW: Duration = Duration::from_secs(60);

/// Why an instance is not ready, or works with fewer key sources.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub missing: Vec<String>,
    pub degraded: Vec<String>,
}

/// The denial for a decision that ran out of time.
fn timed_out(frontend: Frontend, timeout: Duration) -> Decision {
    tracing::warn!(
        frontend = frontend.as_str(),
        timeout_s = timeout.as_secs(),
        "decision timed out"
    );
    Decision::deny(DenyReason::InternalError, None)
}
