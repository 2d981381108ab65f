//! From a validated config to a [`FilterConfig`]: the module's runtime, the
//! elevation store, the JWKS caches and the engine, as the server's
//! composition root builds them.

#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};

use authgate_core::config::Config;
use authgate_core::elevation;
use authgate_core::jwks::JwksRegistry;
use authgate_core::metrics::Metrics;
use authgate_core::pipeline::{Engine, KeyFetch, Parts};
use tokio::runtime::Runtime;

use crate::filter::{DecisionStats, FilterConfig};

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

/// Builds the filter config: opens the elevation store (waiting for it, on
/// Envoy's main thread, as `authgate serve` does at start) and starts the
/// JWKS fetches in the background.
pub fn build(config: Config, stats: Box<dyn DecisionStats>) -> Result<FilterConfig, String> {
    let rt = runtime()?;
    let _enter = rt.enter();
    let metrics = Arc::new(Metrics::new());
    let registry = JwksRegistry::new()?;
    let elevation = rt.block_on(elevation::open_configured(
        config.elevation.as_ref(),
        None,
        &metrics,
    ))?;
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
    metrics.config_last_reload_successful.set(1);
    Ok(FilterConfig::new(
        engine,
        metrics,
        registry,
        rt.handle().clone(),
        stats,
    ))
}
