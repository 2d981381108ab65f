//! Remote JWKS: one [`JwksCache`] per URL, shared by every mode that names it
//! and kept across config reloads while the URL stays.
//!
//! Reads are lock-free (an `ArcSwap` of an immutable [`KeySet`]). Fetches
//! happen at start (retried with backoff until keys load), in the background
//! (Cache-Control/Expires within bounds, or `reloadInterval`), and on the
//! request path only for an unknown `kid`: single-flight per URL and at most
//! once per cooldown. Kids that stayed unknown after a refetch are remembered
//! (moka, expiring with the cooldown) so a flood of random kids costs nothing.
//! A failed fetch keeps the last good keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::discovery;
use crate::keys::{self, KeySet};
use crate::metrics::{Metrics, SourceMetrics};

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Per-fetch timeout (connect + response).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Background refresh bounds when following Cache-Control / Expires.
pub const REFRESH_FLOOR: Duration = Duration::from_secs(60);
pub const REFRESH_CEILING: Duration = Duration::from_secs(3600);
/// Refresh period when the server sends no caching headers.
pub const REFRESH_DEFAULT: Duration = Duration::from_secs(300);
/// How long a discovered `jwks_uri` is used before the discovery document
/// is read again (OpenID Connect Discovery 1.0 gives no caching rule; an
/// issuer moves its key set rarely).
pub const DISCOVERY_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Retry backoff after a failed fetch: starts at 1 s, doubles, capped at 10 s.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("response larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Parse(String),
    #[error("discovery: {0}")]
    Discovery(String),
}

/// An `oidcIssuer` key source: the cache's URL is the issuer's discovery
/// document (OpenID Connect Discovery 1.0, section 4), whose `jwks_uri`
/// names the key set.
struct Discovery {
    issuer: String,
    /// The `jwks_uri` last read, and when; `None` as the time makes the
    /// next fetch read the document again (the key set failed).
    found: Mutex<Option<(String, Option<Instant>)>>,
}

/// How a key set is fetched when its mode says more than the URL
/// (`key.httpClient`): its own HTTP client (CA bundle, client certificate,
/// timeouts, proxy) and headers sent with every fetch. Built at config load,
/// so TLS problems are config errors.
#[derive(Clone)]
pub struct FetchOptions {
    pub client: reqwest::Client,
    pub headers: reqwest::header::HeaderMap,
    /// SHA-256 (base64url) of what built the options: modes share a cache only
    /// when they fetch the same URL the same way.
    pub fingerprint: String,
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values may be credentials.
        f.debug_struct("FetchOptions")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Keys fetched from one JWKS URL.
pub struct JwksCache {
    url: String,
    /// The registry's key: the URL, and the fetch options' fingerprint.
    key: String,
    /// Sent with every fetch (`key.httpClient.headers`).
    headers: reqwest::header::HeaderMap,
    discovery: Option<Discovery>,
    /// The URL as logs and `/readyz` show it: no credentials, query or
    /// fragment (they may carry secrets).
    shown_url: String,
    client: reqwest::Client,
    keys: ArcSwapOption<KeySet>,
    etag: Mutex<Option<String>>,
    /// Held for a whole fetch: the background refresh and an unknown-kid
    /// refetch never overlap, so an older document cannot be stored after
    /// a newer one.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Time of the last unknown-kid refetch; the async mutex makes it
    /// single-flight, and the fetch task holds it to the end.
    refetch_gate: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// SHA-256 of kids that stayed unknown: 32 bytes an entry, however
    /// long the kid (up to the 16 KiB token cap).
    unknown_kids: moka::sync::Cache<[u8; 32], ()>,
    cooldown: Duration,
    reload_interval: Option<Duration>,
    metrics: SourceMetrics,
    refresher: Mutex<Option<JoinHandle<()>>>,
    /// Why the last fetch failed (cleared by a success), for `/readyz`.
    last_error: ArcSwapOption<String>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.shown_url)
            .finish_non_exhaustive()
    }
}

impl Drop for JwksCache {
    fn drop(&mut self) {
        if let Ok(mut h) = self.refresher.lock()
            && let Some(h) = h.take()
        {
            h.abort();
        }
    }
}

/// Outcome of a fetch, for the refresh schedule.
enum Fetched {
    Updated(Duration),
    NotModified(Duration),
}

impl JwksCache {
    fn new(
        url: String,
        issuer: Option<&str>,
        fetch: FetchOptions,
        cooldown: Duration,
        reload_interval: Option<Duration>,
        metrics: SourceMetrics,
    ) -> Self {
        JwksCache {
            shown_url: crate::redact::url(&url),
            key: cache_key(&url, &fetch.fingerprint, issuer),
            url,
            client: fetch.client,
            headers: fetch.headers,
            discovery: issuer.map(|issuer| Discovery {
                issuer: issuer.to_owned(),
                found: Mutex::new(None),
            }),
            keys: ArcSwapOption::empty(),
            etag: Mutex::new(None),
            fetch_lock: tokio::sync::Mutex::new(()),
            refetch_gate: Arc::new(tokio::sync::Mutex::new(None)),
            unknown_kids: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(cooldown.max(Duration::from_millis(1)))
                .build(),
            cooldown,
            reload_interval,
            metrics,
            refresher: Mutex::new(None),
            last_error: ArcSwapOption::empty(),
        }
    }

    /// Why the last fetch failed, when it did.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    fn set_last_error(&self, error: Option<String>) {
        self.last_error.store(error.map(Arc::new));
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What [`JwksRegistry::retain`] is given to keep this cache.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The URL without credentials, query or fragment, for logs and probes.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// The id of the first mode using this JWKS (the metrics' `source`).
    pub fn source(&self) -> &str {
        self.metrics.source()
    }

    /// The current keys, if any fetch has succeeded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.keys.load().is_some()
    }

    pub fn record_lookup(&self, hit: bool) {
        if hit {
            self.metrics.lookup_hit.inc();
        } else {
            self.metrics.lookup_miss.inc();
        }
    }

    /// Starts the background loop: fetch now, retry with backoff until keys
    /// load, then refresh on schedule. It stops when the cache is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let handle = tokio::spawn(refresh_loop(weak));
        if let Ok(mut slot) = self.refresher.lock() {
            *slot = Some(handle);
        }
    }

    /// One fetch; on success swaps the keys in. Counted in metrics.
    async fn fetch(&self) -> Result<Fetched, FetchError> {
        let serial = self.fetch_lock.lock().await;
        let span = tracing::info_span!(
            target: crate::trace::SPAN_TARGET,
            "jwks.fetch",
            otel.kind = "client",
            url.full = %self.shown_url,
            authgate.source = %self.source(),
        );
        let result = tracing::Instrument::instrument(self.fetch_inner(), span).await;
        drop(serial);
        match &result {
            Ok(Fetched::Updated(_)) => {
                self.metrics.fetch_ok.inc();
                self.metrics.succeeded(crate::clock::unix_seconds());
                self.set_last_error(None);
            }
            Ok(Fetched::NotModified(_)) => {
                self.metrics.fetch_not_modified.inc();
                self.metrics.succeeded(crate::clock::unix_seconds());
                self.set_last_error(None);
            }
            Err(e) => {
                self.metrics.fetch_error.inc();
                self.set_last_error(Some(e.to_string()));
                // A key set that fails may have moved: the next fetch reads
                // the discovery document again (its URL is kept meanwhile).
                if let Some(disc) = &self.discovery
                    && let Ok(mut f) = disc.found.lock()
                    && let Some((_, at)) = f.as_mut()
                {
                    *at = None;
                }
                if self.is_ready() {
                    tracing::warn!(url = %self.shown_url, error = %e, "JWKS fetch failed; keeping the last good keys");
                } else {
                    tracing::warn!(url = %self.shown_url, error = %e, "JWKS fetch failed; no keys yet, tokens of this source are refused until one succeeds");
                }
            }
        }
        result
    }

    /// The key set's URL: the configured one, or the issuer's `jwks_uri`
    /// (read again after [`DISCOVERY_REFRESH`]; the last one found is kept
    /// while discovery fails).
    async fn key_set_url(&self) -> Result<String, FetchError> {
        let Some(disc) = &self.discovery else {
            return Ok(self.url.clone());
        };
        let last = disc.found.lock().ok().and_then(|f| f.clone());
        if let Some((url, Some(at))) = &last
            && at.elapsed() < DISCOVERY_REFRESH
        {
            return Ok(url.clone());
        }
        match self.discover(&disc.issuer).await.map_err(|e| match e {
            FetchError::Discovery(_) => e,
            other => FetchError::Discovery(other.to_string()),
        }) {
            Ok(url) => {
                if last.as_ref().is_some_and(|(old, _)| *old != url) {
                    // Another key set: its ETag means nothing here.
                    if let Ok(mut e) = self.etag.lock() {
                        *e = None;
                    }
                }
                if let Ok(mut f) = disc.found.lock() {
                    *f = Some((url.clone(), Some(Instant::now())));
                }
                Ok(url)
            }
            Err(e) => match last {
                Some((url, _)) => {
                    tracing::warn!(url = %self.shown_url, error = %e, "OpenID discovery failed; keeping the last jwks_uri");
                    Ok(url)
                }
                None => Err(e),
            },
        }
    }

    /// The issuer's `jwks_uri`, from its discovery document
    /// ([`discovery::endpoint`] says where it may point).
    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        let doc = discovery::read(&self.client, &self.headers, &self.url, issuer)
            .await
            .map_err(|e| FetchError::Discovery(e.0))?;
        discovery::endpoint(
            &self.url,
            doc.jwks_uri,
            "jwks_uri",
            !self.headers.is_empty(),
        )
        .map_err(|e| FetchError::Discovery(e.0))
    }

    async fn fetch_inner(&self) -> Result<Fetched, FetchError> {
        let url = self.key_set_url().await?;
        let mut req = self
            .client
            .get(&url)
            .headers(self.headers.clone())
            .headers(crate::trace::context_headers())
            .header(
                reqwest::header::ACCEPT,
                "application/json, application/jwk-set+json",
            );
        let etag = self.etag.lock().ok().and_then(|e| e.clone());
        if let (Some(tag), true) = (&etag, self.is_ready()) {
            req = req.header(reqwest::header::IF_NONE_MATCH, tag.as_str());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| FetchError::Http(without_url(&e)))?;
        let status = resp.status().as_u16();
        let ttl = refresh_after(resp.headers());
        if status == 304 && self.is_ready() {
            return Ok(Fetched::NotModified(ttl));
        }
        if status != 200 {
            return Err(FetchError::Status(status));
        }
        let new_etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_capped(&mut resp).await?;
        let set = keys::parse_jwks(&body).map_err(FetchError::Parse)?;
        self.metrics.keys.set(set.len() as i64);
        self.keys.store(Some(Arc::new(set)));
        if let Ok(mut e) = self.etag.lock() {
            *e = new_etag;
        }
        Ok(Fetched::Updated(ttl))
    }

    /// Handles a token whose `kid` is not in the current keys: refetch once
    /// (single-flight, rate-limited), then answer with the new keys if they
    /// hold the kid. The fetch runs as a task of its own that holds the
    /// gate until it ends: a caller that goes away (Envoy's ext_authz
    /// timeout resetting the stream) cancels neither the fetch nor the
    /// single flight, so the keys still arrive for the next request (which
    /// the cooldown would refuse to refetch for), callers meanwhile wait for
    /// that one fetch, and at most one fetch task exists per cache.
    pub async fn refetch_for_kid(self: &Arc<Self>, kid: &str) -> Option<Arc<KeySet>> {
        let kid_hash: [u8; 32] = Sha256::digest(kid.as_bytes()).into();
        if self.unknown_kids.contains_key(&kid_hash) {
            return None;
        }
        let mut last = Arc::clone(&self.refetch_gate).lock_owned().await;
        if let Some(set) = self.current()
            && set.has_kid(kid)
        {
            return Some(set);
        }
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            self.unknown_kids.insert(kid_hash, ());
            return None;
        }
        *last = Some(Instant::now());
        let cache = Arc::clone(self);
        // In the caller's span: the fetch is part of its decision's trace.
        let _ = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let _ = cache.fetch().await;
            drop(last);
        }))
        .await;
        match self.current() {
            Some(set) if set.has_kid(kid) => Some(set),
            _ => {
                self.unknown_kids.insert(kid_hash, ());
                None
            }
        }
    }
}

/// Removes the metric series of a cache that left the registry, unless a
/// cache still in it reports under the same source.
fn forget_if_unused(caches: &HashMap<String, Arc<JwksCache>>, gone: &JwksCache) {
    if !caches.values().any(|c| c.source() == gone.source()) {
        gone.metrics.forget();
    }
}

async fn refresh_loop(weak: Weak<JwksCache>) {
    let mut backoff = BACKOFF_START;
    loop {
        let Some(cache) = weak.upgrade() else { return };
        let wait = match cache.fetch().await {
            Ok(Fetched::Updated(ttl) | Fetched::NotModified(ttl)) => {
                backoff = BACKOFF_START;
                cache.reload_interval.unwrap_or(ttl)
            }
            Err(_) => {
                let wait = backoff;
                backoff = (backoff * 2).min(BACKOFF_CAP);
                wait
            }
        };
        drop(cache);
        tokio::time::sleep(wait).await;
    }
}

/// When to refresh, from `Cache-Control: max-age` or `Expires`, bounded.
fn refresh_after(headers: &reqwest::header::HeaderMap) -> Duration {
    let from_cache_control = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| {
            let d = d.trim();
            let (k, v) = d.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| v.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .map(Duration::from_secs);
    let from_expires = || {
        let expires = headers.get(reqwest::header::EXPIRES)?.to_str().ok()?;
        let at = httpdate::parse_http_date(expires).ok()?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    };
    match from_cache_control.or_else(from_expires) {
        Some(d) => d.clamp(REFRESH_FLOOR, REFRESH_CEILING),
        None => REFRESH_DEFAULT,
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "reading the body failed"
    } else {
        "failed"
    };
    kind.to_owned()
}

/// A response body of at most [`MAX_JWKS_BYTES`].
async fn read_capped(resp: &mut reqwest::Response) -> Result<Vec<u8>, FetchError> {
    crate::body::read_capped(resp, MAX_JWKS_BYTES)
        .await
        .map_err(|e| match e {
            crate::body::BodyError::TooLarge => FetchError::TooLarge,
            crate::body::BodyError::Read(e) => FetchError::Http(without_url(&e)),
        })
}

fn cache_key(url: &str, fingerprint: &str, issuer: Option<&str>) -> String {
    match (fingerprint, issuer) {
        ("", None) => url.to_owned(),
        (f, None) => format!("{url} {f}"),
        (f, Some(i)) => format!("{url} {f} issuer={i}"),
    }
}

/// All JWKS caches of the process, by URL and fetch options. Reloads reuse
/// a cache whose URL and options are unchanged, so keys and schedules
/// survive.
pub struct JwksRegistry {
    client: reqwest::Client,
    caches: Mutex<HashMap<String, Arc<JwksCache>>>,
}

impl JwksRegistry {
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(JwksRegistry {
            client,
            caches: Mutex::new(HashMap::new()),
        })
    }

    /// The cache for `url` fetched with `fetch` (the registry's plain client
    /// when `None`), created (and started, if `start`) when new.
    #[allow(clippy::too_many_arguments)]
    pub fn get_or_create(
        &self,
        url: &str,
        issuer: Option<&str>,
        fetch: Option<&FetchOptions>,
        source: &str,
        cooldown: Duration,
        reload_interval: Option<Duration>,
        metrics: &Metrics,
        start: bool,
    ) -> Arc<JwksCache> {
        let mut caches = match self.caches.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fetch = fetch.cloned().unwrap_or_else(|| FetchOptions {
            client: self.client.clone(),
            headers: reqwest::header::HeaderMap::new(),
            fingerprint: String::new(),
        });
        let key = cache_key(url, &fetch.fingerprint, issuer);
        if let Some(c) = caches.get(&key)
            && c.cooldown == cooldown
            && c.reload_interval == reload_interval
        {
            return c.clone();
        }
        let cache = Arc::new(JwksCache::new(
            url.to_owned(),
            issuer,
            fetch,
            cooldown,
            reload_interval,
            metrics.source(source),
        ));
        // Carry keys over when only the schedule changed.
        let replaced = caches.get(&key).cloned();
        if let Some(old) = &replaced {
            cache.keys.store(old.current());
        }
        if start {
            cache.start();
        }
        caches.insert(key, cache.clone());
        if let Some(old) = replaced {
            forget_if_unused(&caches, &old);
        }
        cache
    }

    /// Drops caches no longer used by the active config ([`JwksCache::key`]s
    /// to keep), and the metric series of sources no remaining cache
    /// reports under.
    pub fn retain(&self, keys: &[&str]) {
        if let Ok(mut caches) = self.caches.lock() {
            let mut dropped = Vec::new();
            caches.retain(|k, cache| {
                let keep = keys.contains(&k.as_str());
                if !keep {
                    dropped.push(cache.clone());
                }
                keep
            });
            for cache in dropped {
                forget_if_unused(&caches, &cache);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn refresh_schedule_follows_cache_headers_within_bounds() {
        let mut h = HeaderMap::new();
        assert_eq!(refresh_after(&h), REFRESH_DEFAULT);
        h.insert(
            "cache-control",
            HeaderValue::from_static("public, max-age=600"),
        );
        assert_eq!(refresh_after(&h), Duration::from_secs(600));
        h.insert("cache-control", HeaderValue::from_static("max-age=5"));
        assert_eq!(refresh_after(&h), REFRESH_FLOOR);
        h.insert("cache-control", HeaderValue::from_static("max-age=999999"));
        assert_eq!(refresh_after(&h), REFRESH_CEILING);
        let mut h = HeaderMap::new();
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(1200));
        h.insert("expires", HeaderValue::from_str(&later).unwrap());
        let d = refresh_after(&h);
        assert!(d > Duration::from_secs(1100) && d <= Duration::from_secs(1200));
    }
}
