//! From a validated config to a [`FilterConfig`]: the module's runtime, the
//! elevation store, the JWKS caches and the engine, as the server's
//! composition root builds them.

#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authgate_core::config::Config;
use authgate_core::elevation;
use authgate_core::jwks::JwksRegistry;
use authgate_core::metrics::Metrics;
use authgate_core::pipeline::{Engine, KeyFetch, Parts};
use tokio::runtime::Runtime;

use crate::filter::{DecisionStats, FilterConfig, Options};

/// Threads of the module's runtime: JWKS refreshes, webhook calls and store
/// queries are I/O waits, not work; Envoy's workers keep the CPU.
const RUNTIME_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The module's own tokio runtime, shared by every filter config of the
/// process and never shut down (Envoy unloads modules only at exit).
pub fn runtime() -> Result<&'static Runtime, String> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(RUNTIME_THREADS)
                .thread_name("authgate-io")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the module's runtime: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// How long a new filter config waits for the elevation store to open:
/// past it the config is refused, rather than Envoy's main thread held.
const STORE_OPEN_WAIT: Duration = Duration::from_secs(15);

/// How long a new filter config waits for its remote key sets' first keys.
/// The server holds readiness until they load; the module has no readiness
/// of its own, so it waits here, on Envoy's main thread, at most this long
/// (a fetch times out after 5 s unless `key.httpClient` says otherwise; an
/// `oidcIssuer` takes two: its discovery document, then its keys).
/// Requests for a key set still empty after it are answered 503 until its
/// keys arrive.
const FIRST_KEYS_WAIT: Duration = Duration::from_secs(11);

/// Builds the filter config: opens the elevation store and waits (bounded)
/// for the JWKS's first keys, on Envoy's main thread, as `authgate serve`
/// does before it reports ready; then the keys refresh in the background.
pub fn build(
    config: Config,
    stats: Box<dyn DecisionStats>,
    options: Options,
) -> Result<FilterConfig, String> {
    let rt = runtime()?;
    let _enter = rt.enter();
    let metrics = Arc::new(Metrics::without_process_metrics());
    let registry = JwksRegistry::new()?;
    let opening = elevation::open_configured(config.elevation.as_ref(), None, &metrics);
    let elevation = rt
        .block_on(tokio::time::timeout(STORE_OPEN_WAIT, opening))
        .map_err(|_| {
            format!(
                "the elevation store did not open within {} s",
                STORE_OPEN_WAIT.as_secs()
            )
        })??;
    // The module cannot publish keys: a generated one would sign tokens no
    // verifier can check. The server with the same config publishes them.
    if config
        .upstream_token
        .as_ref()
        .is_some_and(|u| u.signing_key.is_none())
    {
        return Err(
            "upstreamToken needs a signingKey in the Envoy module (the authgate server with the same key publishes its JWKS)"
                .into(),
        );
    }
    let upstream = authgate_core::upstream::open_configured(
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
    let loaded = rt.block_on(tokio::time::timeout(FIRST_KEYS_WAIT, async {
        while !engine.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }));
    if loaded.is_err() {
        for jwks in engine.jwks().iter().filter(|j| !j.is_ready()) {
            tracing::warn!(
                source = jwks.source(),
                url = %jwks.shown_url(),
                "no keys yet after {} s; its tokens are answered 503 until they load",
                FIRST_KEYS_WAIT.as_secs()
            );
        }
        for (mode, i) in engine.introspectors().filter(|(_, i)| !i.is_ready()) {
            tracing::warn!(
                mode,
                url = %i.shown_endpoint(),
                "no introspection endpoint discovered after {} s; its tokens are answered 503 until discovery succeeds",
                FIRST_KEYS_WAIT.as_secs()
            );
        }
    }
    metrics.config_last_reload_successful.set(1);
    metrics
        .config_last_reload_success
        .set(authgate_core::clock::unix_seconds());
    Ok(FilterConfig::new(
        engine,
        metrics,
        registry,
        rt.handle().clone(),
        stats,
        options,
    ))
}
