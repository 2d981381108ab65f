//! The composition root: builds the engine from a config, binds the
//! listeners, runs the readiness latch, reloads, and drains on shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, Config, ConfigErrors};
use crate::conn::{HttpSettings, Limits, Listener};
use crate::elevation::Elevation;
use crate::jwks::JwksRegistry;
use crate::limits::*;
use crate::metrics::Metrics;
use crate::pipeline::{Engine, KeyFetch, Parts};
pub use crate::state::{Readiness, Shared};

/// Building and reloading: the only place where a config becomes an engine.
impl Shared {
    /// Builds the shared state from a validated config: opens the elevation
    /// store, starts JWKS fetches in the background.
    pub async fn new(config: Config, config_path: Option<PathBuf>) -> Result<Arc<Self>, String> {
        let metrics = Arc::new(Metrics::new());
        let registry = JwksRegistry::new()?;
        let elevation = open_elevation(&config, None, &metrics).await?;
        let attempted = Some((config.fingerprint, false));
        let upstream = crate::upstream::open_configured(
            config.upstream_token,
            None,
            elevation.as_ref().map(|e| e.grants.kid()),
        )?;
        let engine = Engine::build(
            config.settings,
            config.modes,
            Parts {
                registry: &registry,
                metrics: metrics.clone(),
                fetch: KeyFetch::Background,
                elevation,
            },
        )
        .with_policies(config.policies)
        .with_upstream_token(upstream)
        .with_dynamic_metadata(config.dynamic_metadata);
        // The load at start is not a reload; it sets the state gauges.
        metrics.config_last_reload_successful.set(1);
        metrics
            .config_last_reload_success
            .set(crate::clock::unix_seconds());
        Ok(Arc::new(Shared::assemble(
            engine,
            metrics,
            registry,
            config_path,
            attempted,
        )))
    }

    /// Re-reads the config file; on success swaps the engine in, keeping
    /// JWKS caches whose URL and `key.httpClient` are unchanged. On error the old config serves.
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
        let current = self.engine();
        let loaded = match loaded {
            Ok(config) => {
                match open_elevation(&config, current.elevation().map(|e| &**e), &self.metrics)
                    .await
                {
                    Ok(elevation) => crate::upstream::open_configured(
                        config.upstream_token.clone(),
                        current.upstream_tokens().map(|u| &**u),
                        elevation.as_ref().map(|e| e.grants.kid()),
                    )
                    .map(|u| (config, elevation, u))
                    .map_err(|e| {
                        ConfigErrors(vec![config::Problem::error(
                            config::YamlPath::root()
                                .key("definition")
                                .key("upstreamToken"),
                            e,
                        )])
                    }),
                    Err(e) => Err(ConfigErrors(vec![config::Problem::error(
                        config::YamlPath::root().key("definition").key("elevation"),
                        e,
                    )])),
                }
            }
            Err(e) => Err(e),
        };
        match loaded {
            Ok((config, elevation, upstream)) => {
                for w in &config.warnings {
                    tracing::warn!(path = %w.path, "{}", w.message);
                }
                let engine = Engine::build(
                    config.settings,
                    config.modes,
                    Parts {
                        registry: self.registry(),
                        metrics: self.metrics.clone(),
                        fetch: KeyFetch::Background,
                        elevation,
                    },
                )
                .with_policies(config.policies)
                .with_upstream_token(upstream)
                .with_dynamic_metadata(config.dynamic_metadata);
                self.install(engine);
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

/// Opens the elevation stage when the config asks for it
/// ([`crate::elevation::open_configured`]).
pub async fn open_elevation(
    config: &Config,
    previous: Option<&Elevation>,
    metrics: &Metrics,
) -> Result<Option<Arc<Elevation>>, String> {
    crate::elevation::open_configured(config.elevation.as_ref(), previous, metrics).await
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
        self.shared.admission.gate.start_draining();
        let _ = self.stop.send(true);
        let shared = self.shared.clone();
        let listeners = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        let idle = async {
            shared.admission.gate.idle().await;
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
