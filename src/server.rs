//! Running the server: state shared by the front doors, listeners, the
//! readiness latch, reload and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::budget::ByteBudget;
use crate::config::{self, Config, ConfigErrors};
use crate::conn::{HttpSettings, Limits, Listener};
use crate::decision::{Decision, DenyReason};
use crate::elevation::Elevation;
use crate::elevation::ElevationMode;
use crate::jwks::JwksRegistry;
use crate::metrics::{Frontend, Metrics};
use crate::pipeline::{Answer, Engine, KeyFetch, Parts};
use crate::request::Request;

/// Decisions of one front door that may be inside the pipeline at once
/// (gRPC Check; or HTTP `/check` and `/auth/*`). More wait for a slot,
/// within their decision timeout.
pub const MAX_CONCURRENT_REQUESTS: usize = 1024;
/// WebAuthn calls inside the pipeline at once: their own slots, so that
/// ceremonies can never hold the slots decisions need.
pub const MAX_CONCURRENT_CEREMONIES: usize = 64;
/// WebAuthn calls admitted at once, reading their body or waiting for or
/// holding a slot; one more is refused with 503 at once.
pub const MAX_PENDING_CEREMONIES: usize = 256;
/// Largest gRPC `CheckRequest` decoded; a larger one is refused as a call
/// (`OUT_OF_RANGE`), which Envoy turns into a denial.
pub const MAX_CHECK_REQUEST_BYTES: usize = 1024 * 1024;
/// HTTP/2 streams one gRPC connection may have open at once.
pub const GRPC_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Connections the gRPC address keeps open at once (Envoy opens one or a
/// few per worker).
pub const GRPC_MAX_CONNECTIONS: usize = 256;
/// Bytes of `CheckRequest` messages (headers included) not yet decided on,
/// per gRPC connection and in all.
pub const GRPC_CONNECTION_BYTES: usize = 8 * 1024 * 1024;
pub const GRPC_TOTAL_BYTES: usize = 64 * 1024 * 1024;
/// Time to receive the rest of a Check's message once authgate waits for it
/// (right after its headers).
pub const GRPC_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the HTTP address keeps open at once.
pub const HTTP_MAX_CONNECTIONS: usize = 2048;
/// Bytes of request bodies (webhook and WebAuthn calls) being read or
/// held, per HTTP connection and in all.
pub const HTTP_CONNECTION_BODY_BYTES: usize = 4 * 1024 * 1024;
pub const HTTP_TOTAL_BODY_BYTES: usize = 32 * 1024 * 1024;
/// Time to receive a whole request body once its head has arrived.
pub const HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/1.1: time to receive a whole request head from its first byte.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/1.1 read buffer: the header limit (`http::MAX_HEADER_BYTES`) plus
/// room for the request line and separators.
pub const HTTP_MAX_BUF_SIZE: usize = crate::http::MAX_HEADER_BYTES + 8 * 1024;
/// HTTP/2 streams one HTTP connection may have open at once, and the
/// flow-control window of a stream and of a connection: what a client may
/// send before authgate reads it (HTTP/2's default, 64 KiB).
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 128;
pub const HTTP2_WINDOW: u32 = 65_535;
/// WebAuthn calls in progress on one HTTP connection.
pub const CEREMONIES_PER_CONNECTION: usize = 16;
/// An HTTP connection without a request in progress for this long is
/// closed (HTTP/1.1 keep-alive, HTTP/2): longer than the idle time of the
/// usual client pools (90 s), so that they close first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Which slots a piece of work takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    Grpc,
    Http,
    Ceremony,
}

/// What every front door shares: the current engine (swapped atomically on
/// reload), metrics and the readiness state.
pub struct Shared {
    engine: ArcSwap<Engine>,
    pub metrics: Arc<Metrics>,
    registry: JwksRegistry,
    config_path: Option<PathBuf>,
    draining: AtomicBool,
    /// Set the first time every JWKS had keys (see [`Shared::readiness`]).
    been_ready: AtomicBool,
    inflight: AtomicUsize,
    grpc_slots: Semaphore,
    http_slots: Semaphore,
    ceremony_slots: Semaphore,
    /// WebAuthn calls admitted (see [`MAX_PENDING_CEREMONIES`]).
    pub ceremonies_pending: Arc<Semaphore>,
    /// What all gRPC messages and HTTP bodies in progress may hold.
    pub grpc_bytes: ByteBudget,
    pub http_body_bytes: ByteBudget,
    /// SIGHUP and the file watcher both reload: one at a time, so an older
    /// file read cannot be swapped in after a newer one.
    /// The file content last loaded or tried: its fingerprint, and whether
    /// a SIGHUP may try it again (it failed for a reason outside the file,
    /// the elevation store). Held for a whole reload, so reloads run one at
    /// a time and an edit seen by both SIGHUP and the file watcher is one
    /// attempt.
    attempted: tokio::sync::Mutex<Option<(u64, bool)>>,
}

/// Counts a request in flight (for the drain) until it is answered or dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shared {
    /// Builds the shared state from a validated config: opens the elevation
    /// store, starts JWKS fetches in the background.
    pub async fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Self>, String> {
        let metrics = Arc::new(Metrics::new());
        let registry = JwksRegistry::new()?;
        let elevation = open_elevation(&config, None, &metrics).await?;
        let attempted = Some((config.fingerprint, false));
        let engine = Engine::build(
            config.settings,
            config.modes,
            Parts {
                registry: &registry,
                metrics: metrics.clone(),
                fetch: KeyFetch::Background,
                elevation,
            },
        );
        // The load at start is not a reload; it sets the state gauges.
        metrics.config_last_reload_successful.set(1);
        metrics
            .config_last_reload_success
            .set(crate::clock::unix_seconds());
        Ok(Arc::new(Shared {
            engine: ArcSwap::from_pointee(engine),
            metrics,
            registry,
            config_path,
            draining: AtomicBool::new(false),
            been_ready: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            grpc_slots: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            http_slots: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            ceremony_slots: Semaphore::new(MAX_CONCURRENT_CEREMONIES),
            ceremonies_pending: Arc::new(Semaphore::new(MAX_PENDING_CEREMONIES)),
            grpc_bytes: ByteBudget::new(GRPC_TOTAL_BYTES),
            http_body_bytes: ByteBudget::new(HTTP_TOTAL_BODY_BYTES),
            attempted: tokio::sync::Mutex::new(attempted),
        }))
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
        if self.draining.load(Ordering::Relaxed) {
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

    /// Runs `work` in one of `slots`, within the decision timeout (the wait
    /// for a slot included); `None` when the time ran out.
    pub async fn bounded<T>(
        &self,
        slots: Slots,
        timeout: Duration,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let _inflight = InFlight::enter(&self.inflight);
        let slots = match slots {
            Slots::Grpc => &self.grpc_slots,
            Slots::Http => &self.http_slots,
            Slots::Ceremony => &self.ceremony_slots,
        };
        tokio::time::timeout(timeout, async {
            // The semaphores are never closed, so this waits or succeeds.
            let _slot = slots.acquire().await;
            work.await
        })
        .await
        .ok()
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
        let decided = self.bounded(Slots::Http, timeout, engine.decide(req)).await;
        let decision = decided.unwrap_or_else(|| timed_out(frontend, timeout));
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
    ) -> Answer {
        let engine = self.engine.load_full();
        let timeout = engine.settings.decision_timeout;
        let decided = self
            .bounded(Slots::Grpc, timeout, engine.decide_memo(req, encode))
            .await;
        let answer = decided.unwrap_or_else(|| Answer::Decided(timed_out(Frontend::Grpc, timeout)));
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

    /// Re-reads the config file; on success swaps the engine in, keeping
    /// JWKS caches whose URL is unchanged. On error the old config serves.
    /// A content loaded or tried already is not tried again, nor counted
    /// (SIGHUP and the file watcher both see an edit), unless it failed for
    /// a reason outside the file (the elevation store could not be opened):
    /// a SIGHUP retries that. A file with errors stays rejected until it
    /// changes.
    pub async fn reload(&self) -> Result<(), ConfigErrors> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let mut attempted = self.attempted.lock().await;
        let text = config::read(path);
        let print = text
            .as_ref()
            .ok()
            .map(|t| config::fingerprint(t.as_bytes()));
        if let (Some(now), Some((last, false))) = (print, *attempted)
            && now == last
        {
            tracing::info!(config = %path.display(), "configuration unchanged since the last reload attempt");
            return Ok(());
        }
        *attempted = print.map(|p| (p, false));
        let loaded = text.and_then(|text| {
            config::parse_as(&text, config::Format::of(path), &config::ProcessEnv)
        });
        let current = self.engine.load_full();
        let loaded = match loaded {
            Ok(config) => {
                match open_elevation(&config, current.elevation().map(|e| &**e), &self.metrics)
                    .await
                {
                    Ok(elevation) => Ok((config, elevation)),
                    Err(e) => Err(ConfigErrors(vec![config::Problem::error(
                        config::YamlPath::root().key("definition").key("elevation"),
                        e,
                    )])),
                }
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok((config, elevation)) => {
                for w in &config.warnings {
                    tracing::warn!(path = %w.path, "{}", w.message);
                }
                let engine = Engine::build(
                    config.settings,
                    config.modes,
                    Parts {
                        registry: &self.registry,
                        metrics: self.metrics.clone(),
                        fetch: KeyFetch::Background,
                        elevation,
                    },
                );
                let urls: Vec<&str> = engine.jwks().iter().map(|c| c.url()).collect();
                self.registry.retain(&urls);
                self.engine.store(Arc::new(engine));
                self.metrics.config_reload_ok.inc();
                self.metrics.config_last_reload_successful.set(1);
                self.metrics
                    .config_last_reload_success
                    .set(crate::clock::unix_seconds());
                tracing::info!(config = %path.display(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                self.metrics.config_reload_error.inc();
                self.metrics.config_last_reload_successful.set(0);
                for p in &e.0 {
                    let at = p.location.map(|l| l.to_string()).unwrap_or_default();
                    match p.severity {
                        config::Severity::Error => {
                            tracing::error!(path = %p.path, at = %at, "{}", p.message)
                        }
                        config::Severity::Warning => {
                            tracing::warn!(path = %p.path, at = %at, "{}", p.message)
                        }
                    }
                }
                tracing::error!(
                    "configuration reload rejected; the previous configuration keeps serving"
                );
                Err(e)
            }
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

/// Sets every gRPC health service name authgate answers for.
async fn set_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    let status = if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <crate::grpc::ExtAuthz as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// How often the config file is checked for changes.
pub const CONFIG_POLL: Duration = Duration::from_secs(2);
/// A changed file must read the same twice this far apart before it is
/// loaded, so that a reload does not pick up a file still being written.
pub const CONFIG_SETTLE: Duration = Duration::from_millis(200);

fn fingerprint(path: &std::path::Path) -> Option<u64> {
    std::fs::read(path).ok().map(|b| config::fingerprint(&b))
}

/// Reloads the config when the file's content differs from the content
/// last loaded or tried (an edit, or a Kubernetes ConfigMap swapping its
/// symlink), so an edit a SIGHUP already loaded is one attempt, and an edit
/// undone before this poll saw it still brings the file's content back. A
/// file that disappears or cannot be read is counted as one failed reload;
/// the running config stays.
pub fn watch_config(shared: Arc<Shared>) -> Option<tokio::task::JoinHandle<()>> {
    let path = shared.config_path.clone()?;
    Some(tokio::spawn(async move {
        let tried = |a: &Option<(u64, bool)>| a.map(|(p, _)| p);
        loop {
            tokio::time::sleep(CONFIG_POLL).await;
            let now = fingerprint(&path);
            if now == tried(&*shared.attempted.lock().await) {
                continue;
            }
            tokio::time::sleep(CONFIG_SETTLE).await;
            if fingerprint(&path) != now {
                // Still being written: look again at the next poll.
                continue;
            }
            let mut attempted = shared.attempted.lock().await;
            if now == tried(&attempted) {
                // A SIGHUP got there first.
                continue;
            }
            if now.is_none() {
                *attempted = None;
                shared.metrics.config_reload_error.inc();
                shared.metrics.config_last_reload_successful.set(0);
                tracing::error!(config = %path.display(), "configuration file unreadable; the previous configuration keeps serving");
            } else {
                drop(attempted);
                let _ = shared.reload().await;
            }
        }
    }))
}

/// Opens the elevation stage when the config asks for it (a mode other than
/// disabled, or WebAuthn settings for voluntary step-up).
pub async fn open_elevation(
    config: &Config,
    previous: Option<&Elevation>,
    metrics: &Metrics,
) -> Result<Option<Arc<Elevation>>, String> {
    match &config.elevation {
        Some(cfg) if cfg.mode != ElevationMode::Disabled || cfg.webauthn.is_some() => {
            let errors = metrics.elevation_store_errors.clone();
            Ok(Some(Arc::new(
                Elevation::open(cfg.clone(), previous, errors).await?,
            )))
        }
        _ => Ok(None),
    }
}

/// A started server: its bound addresses and a way to stop it.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting and drains: returns once the listeners have closed,
    /// or once no decision is in flight (idle keep-alive connections, such
    /// as Envoy's, are not waited for).
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let shared = self.shared.clone();
        let listeners = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        let idle = async {
            while shared.inflight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Let the last responses be written.
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tokio::select! {
            _ = listeners => {}
            _ = idle => {}
        }
    }
}

/// Deletes expired WebAuthn challenges from the store of the current
/// config: once per `challengeTtl`, at least once a minute, so abandoned
/// ceremonies do not pile up.
async fn purge_challenges(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let engine = shared.engine();
        let Some(elevation) = engine.elevation() else {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => continue,
                _ = stop.changed() => return,
            }
        };
        let every = elevation
            .cfg
            .challenge_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        match elevation
            .store
            .purge_expired(crate::clock::unix_now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(purged = n, "expired WebAuthn challenges deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete expired WebAuthn challenges"),
        }
        drop(engine);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The runtime of `authgate serve` and `authgate check` (and of the
/// benchmark baseline).
///
/// By default a task that another task wakes runs next (tokio's LIFO slot):
/// each Check's response then woke its HTTP/2 connection task at once, and
/// every response was written with a syscall of its own. Without the slot,
/// tasks run in the order they were woken, and a connection writes all the
/// responses that are ready at once (docs/benchmarks.md: one write per ~20
/// Checks instead of one per Check at 64 streams). The switch needs
/// `--cfg tokio_unstable` (.cargo/config.toml); without it, tokio's default.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build()
}

/// Binds both addresses and serves until [`Running::shutdown`].
pub async fn start(
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
) -> std::io::Result<Running> {
    let grpc_listener = Listener::new(
        TcpListener::bind(grpc_addr).await?,
        Limits {
            connections: GRPC_MAX_CONNECTIONS,
            body_bytes: GRPC_CONNECTION_BYTES,
            ceremonies: 0,
        },
    );
    let http_listener = Listener::new(
        TcpListener::bind(http_addr).await?,
        Limits {
            connections: HTTP_MAX_CONNECTIONS,
            body_bytes: HTTP_CONNECTION_BODY_BYTES,
            ceremonies: CEREMONIES_PER_CONNECTION,
        },
    );
    let grpc_addr = grpc_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    let (stop, rx) = watch::channel(false);

    // Every service name follows readiness, the server's own ("", what
    // Envoy's and Kubernetes' gRPC health checks ask) included.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, false).await;
    let reflection = crate::grpc::reflection_services();
    let ext_authz = crate::grpc::ExtAuthz::new(shared.clone(), MAX_CHECK_REQUEST_BYTES);
    let grpc_rx = rx.clone();
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(GRPC_MAX_CONCURRENT_STREAMS)
        // Envoy resets its ext_authz stream whenever the downstream request
        // goes away, often many at once; hyper's default (20 resets of
        // streams not yet accepted, then GOAWAY) failed every other check in
        // flight on the connection. Bounded by the stream limit instead, so a
        // rapid-reset flood (CVE-2023-44487) still closes its connection.
        .http2_max_pending_accept_reset_streams(Some(GRPC_MAX_CONCURRENT_STREAMS as usize));
    let mut router = builder.add_service(health_service).add_service(ext_authz);
    if let Some((v1, v1alpha)) = reflection {
        router = router.add_service(v1).add_service(v1alpha);
    }
    let incoming = grpc_listener.into_stream();
    let grpc_task = tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stopped(grpc_rx))
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    let app = crate::http::router(shared.clone());
    let settings = HttpSettings {
        header_read_timeout: HTTP_HEADER_READ_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
        max_buf_size: HTTP_MAX_BUF_SIZE,
        max_concurrent_streams: HTTP2_MAX_CONCURRENT_STREAMS,
        window: HTTP2_WINDOW,
    };
    let http_task = tokio::spawn(crate::conn::serve_http(
        http_listener,
        app,
        settings,
        rx.clone(),
    ));

    // Readiness latch for gRPC health: SERVING once every JWKS has keys,
    // NOT_SERVING again when keys are missing or the server drains. Each
    // change is logged once, with what is missing.
    let health_shared = shared.clone();
    let mut health_rx = rx.clone();
    let health_task = tokio::spawn(async move {
        let mut serving = false;
        let mut reported: Option<Readiness> = None;
        loop {
            let readiness = health_shared.readiness();
            let ready = readiness.missing.is_empty();
            if ready != serving {
                serving = ready;
                set_health(&health, ready).await;
            }
            if reported.as_ref() != Some(&readiness) {
                if !ready {
                    tracing::warn!(missing = ?readiness.missing, "not ready");
                } else if readiness.degraded.is_empty() {
                    tracing::info!("ready");
                } else {
                    tracing::warn!(degraded = ?readiness.degraded, "ready, but key sources have no keys");
                }
                reported = Some(readiness);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = health_rx.changed() => {
                    if *health_rx.borrow() {
                        set_health(&health, false).await;
                        return;
                    }
                }
            }
        }
    });

    let purge_task = tokio::spawn(purge_challenges(shared.clone(), rx.clone()));

    Ok(Running {
        grpc_addr,
        http_addr,
        shared,
        stop,
        tasks: vec![grpc_task, http_task, health_task, purge_task],
    })
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
