//! The `webhook` mode at run time: ask an HTTP hook who the caller is
//! (RelyAuth semantics, with safe defaults where RelyAuth does nothing).
//!
//! The hook's 401/403 (any 4xx) is a refusal (`webhook_denied`); a 5xx, a
//! timeout, an unreachable hook or an unreadable answer is `internal_error`.
//!
//! With `cache`, a session the hook answered is reused for the same hook
//! request as long as its `Cache-Control: max-age` or `Expires` says: keys
//! of the answer's JSON object, where Hasura's auth hook puts them, else
//! the answer's HTTP headers. Refusals and failures are never reused.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use jmespath::Rcvar;
use serde_json::{Map, Value, json};
use tokio::sync::Mutex;

mod gotmpl;
mod spec;

pub use gotmpl::GoTemplate;

pub use spec::{
    AdditionalHeader, FieldMapping, Forward, HookAuth, HookMethod, HttpClientOptions, RetryPolicy,
    TlsOptions, Transform, WebhookMode,
};

use crate::body::BodyError;
use crate::decision::DenyReason;
use crate::request::{Place, Request};
use crate::session::{Session, check_variable_name};

/// Largest hook answer read.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Longest a hook answer is reused, whatever its headers say.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);

/// Headers never forwarded with `forward: "*"` (RelyAuth's list, plus
/// hop-by-hop headers that must not cross a proxy).
const EXCLUDED: [&str; 20] = [
    "content-length",
    "content-type",
    "content-md5",
    "user-agent",
    "host",
    "origin",
    "referer",
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-datetime",
    "cache-control",
    "connection",
    "dnt",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

pub struct WebhookAuth {
    cfg: WebhookMode,
    oauth: Mutex<Option<(String, Instant)>>,
    cache: Option<AnswerCache>,
}

/// Sessions by SHA-256 of the hook request, with when they lapse.
type AnswerCache = quick_cache::sync::Cache<[u8; 32], Arc<(Session, Instant)>>;

#[derive(Debug)]
pub enum Failure {
    Denied,
    Unavailable(&'static str),
}

impl Failure {
    fn reason(&self) -> DenyReason {
        match self {
            Failure::Denied => DenyReason::WebhookDenied,
            Failure::Unavailable(_) => DenyReason::InternalError,
        }
    }
}

/// Builds the HTTP client for a hook from RelyAuth's `httpClient` options.
pub fn build_client(o: &HttpClientOptions) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(o.timeout)
        .connect_timeout(o.connect_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("authgate/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = o.pool_idle_timeout {
        b = b.pool_idle_timeout(t);
    }
    if let Some(n) = o.pool_max_idle_per_host {
        b = b.pool_max_idle_per_host(n);
    }
    let mut roots = Vec::new();
    for pem in &o.tls.root_certs {
        roots.extend(
            reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|_| "a root CA is not a valid PEM certificate".to_string())?,
        );
    }
    if !roots.is_empty() {
        b = if o.tls.include_system_roots {
            b.tls_certs_merge(roots)
        } else {
            b.tls_certs_only(roots)
        };
    }
    if let Some(identity) = &o.tls.identity {
        let id = reqwest::Identity::from_pem(identity.as_bytes())
            .map_err(|_| "the client certificate or key is not valid PEM".to_string())?;
        b = b.identity(id);
    }
    if o.tls.insecure_skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    if let Some(p) = &o.proxy {
        let proxy = reqwest::Proxy::all(p.as_str())
            .map_err(|_| "the proxy is not a valid URL".to_string())?;
        b = b.proxy(proxy);
    }
    let version = |v: &str| match v {
        "1.0" => reqwest::tls::Version::TLS_1_0,
        "1.1" => reqwest::tls::Version::TLS_1_1,
        "1.2" => reqwest::tls::Version::TLS_1_2,
        _ => reqwest::tls::Version::TLS_1_3,
    };
    if let Some(v) = &o.tls.min_version {
        b = b.tls_version_min(version(v));
    }
    if let Some(v) = &o.tls.max_version {
        b = b.tls_version_max(version(v));
    }
    b.build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

impl WebhookAuth {
    pub fn new(cfg: WebhookMode) -> Self {
        let cache = cfg
            .cache
            .map(|n| quick_cache::sync::Cache::new(usize::try_from(n).unwrap_or(usize::MAX)));
        WebhookAuth {
            cfg,
            oauth: Mutex::new(None),
            cache,
        }
    }

    pub async fn authenticate(&self, req: &Request) -> Result<Session, DenyReason> {
        self.call(req).await.map_err(|f| {
            if let Failure::Unavailable(why) = &f {
                tracing::warn!(url = %crate::redact::url(&self.cfg.url), problem = why, "webhook unavailable");
            }
            f.reason()
        })
    }

    async fn call(&self, req: &Request) -> Result<Session, Failure> {
        let headers: Map<String, Value> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect();
        let doc = json!({
            "url": req.path,
            "headers": headers,
            "body": req.body.clone().unwrap_or(Value::Null),
        });
        let mut out: Vec<(String, String)> = Vec::new();
        let set = |out: &mut Vec<(String, String)>, k: &str, v: String| {
            out.retain(|(n, _)| n != k);
            out.push((k.to_owned(), v));
        };
        for h in &self.cfg.additional {
            let found = match &h.path {
                Some(expr) => search(expr, &doc).and_then(|v| match v {
                    Value::String(s) if !s.is_empty() => Some(s),
                    Value::Number(n) => Some(n.to_string()),
                    Value::Bool(b) => Some(b.to_string()),
                    _ => None,
                }),
                None => None,
            };
            if let Some(v) = found.or_else(|| h.default.clone()) {
                set(&mut out, &h.name, v);
            }
        }
        let forward = match (&self.cfg.forward, self.cfg.method) {
            (Some(f), _) => Some(f.clone()),
            (None, HookMethod::Get) => Some(Forward::All),
            (None, HookMethod::Post) => None,
        };
        match forward {
            Some(Forward::All) => {
                for (k, v) in req.headers.iter() {
                    if !k.starts_with(':') && !EXCLUDED.contains(&k) {
                        set(&mut out, k, v.to_owned());
                    }
                }
            }
            Some(Forward::Names(names)) => {
                for n in &names {
                    if let Some(v) = req.headers.get(n) {
                        set(&mut out, n, v.to_owned());
                    }
                }
            }
            None => {}
        }
        let body = match self.cfg.method {
            HookMethod::Get => None,
            HookMethod::Post => Some(match &self.cfg.body {
                None => {
                    let request = req.body.clone().unwrap_or(Value::Null);
                    (
                        serde_json::to_vec(&json!({"headers": doc["headers"], "request": request}))
                            .unwrap_or_default(),
                        "application/json".to_owned(),
                    )
                }
                Some(t) => render_transform(t, &doc)?,
            }),
        };
        // The key is what the hook is sent on the caller's behalf; authgate's
        // own credential for the hook (added next) is no part of it.
        let key = self.cache.as_ref().map(|_| cache_key(&out, body.as_ref()));
        if let (Some(cache), Some(key)) = (&self.cache, &key)
            && let Some(hit) = cache.get(key)
        {
            if Instant::now() < hit.1 {
                return Ok(hit.0.clone());
            }
            cache.remove(key);
        }
        if let Some(auth) = &self.cfg.client.auth {
            let (name, value) = self.auth_header(auth).await?;
            set(&mut out, &name, value);
        }
        let span = tracing::info_span!(
            target: crate::trace::SPAN_TARGET,
            "webhook",
            otel.kind = "client",
            url.full = %crate::redact::url(&self.cfg.url),
            http.response.status_code = tracing::field::Empty,
        );
        let (status, resp_headers, bytes) =
            tracing::Instrument::instrument(self.send(&out, body), span.clone()).await?;
        span.record("http.response.status_code", status);
        match status {
            200..=299 => {}
            400..=499 => return Err(Failure::Denied),
            _ => {
                return Err(Failure::Unavailable(
                    "the hook answered with an error status",
                ));
            }
        }
        let parsed: Option<Value> = serde_json::from_slice(&bytes).ok();
        let object = match &self.cfg.response {
            None => parsed,
            Some(t) => {
                let input = json!({"headers": resp_headers, "body": parsed.unwrap_or(Value::Null)});
                let (rendered, _) = render_transform(t, &input)?;
                serde_json::from_slice(&rendered).ok()
            }
        };
        let Some(Value::Object(map)) = object else {
            return Err(Failure::Unavailable(
                "the hook's answer is not a JSON object",
            ));
        };
        let mut session = Session::new();
        // With a cache, `Cache-Control` and `Expires` keys of the answer are
        // cache directives (where Hasura reads them), not session variables.
        let mut directives = Map::new();
        for (k, v) in map {
            if self.cache.is_some()
                && (k.eq_ignore_ascii_case("cache-control") || k.eq_ignore_ascii_case("expires"))
            {
                directives.insert(k.to_ascii_lowercase(), v);
                continue;
            }
            if check_variable_name(&k).is_err() {
                return Err(Failure::Unavailable(
                    "the hook's answer names an invalid session variable",
                ));
            }
            session.insert(k, v);
        }
        let now = SystemTime::now();
        let ttl = if directives.is_empty() {
            answer_ttl(&resp_headers, now)
        } else {
            answer_ttl(&directives, now)
        };
        if let (Some(cache), Some(key), Some(ttl)) = (&self.cache, key, ttl) {
            cache.insert(key, Arc::new((session.clone(), Instant::now() + ttl)));
        }
        Ok(session)
    }

    /// Sends with the configured retry policy; returns status, lower-case
    /// response headers and the (capped) body.
    async fn send(
        &self,
        headers: &[(String, String)],
        body: Option<(Vec<u8>, String)>,
    ) -> Result<(u16, Map<String, Value>, Vec<u8>), Failure> {
        let retry = &self.cfg.client.retry;
        let mut delay = retry.delay;
        let mut attempt = 1;
        loop {
            let mut rb = match self.cfg.method {
                HookMethod::Get => self.cfg.http.get(&self.cfg.url),
                HookMethod::Post => self.cfg.http.post(&self.cfg.url),
            };
            for (k, v) in headers {
                rb = rb.header(k.as_str(), v.as_str());
            }
            if let Some((b, ct)) = &body {
                rb = rb
                    .header(reqwest::header::CONTENT_TYPE, ct.as_str())
                    .body(b.clone());
            }
            rb = rb.headers(crate::trace::context_headers());
            let result = rb.send().await;
            let retryable = match &result {
                Err(e) => !e.is_builder(),
                Ok(r) => retry.statuses.contains(&r.status().as_u16()),
            };
            if !retryable || attempt >= retry.max_attempts {
                let mut resp = result.map_err(|e| {
                    Failure::Unavailable(if e.is_timeout() {
                        "the hook timed out"
                    } else {
                        "the hook is unreachable"
                    })
                })?;
                let status = resp.status().as_u16();
                // A header sent on several lines is one list (RFC 9110,
                // section 5.3): `no-store` on one line must not be lost.
                let mut resp_headers: Map<String, Value> = Map::new();
                for (k, v) in resp.headers() {
                    let Ok(v) = v.to_str() else { continue };
                    match resp_headers.get_mut(k.as_str()) {
                        Some(Value::String(joined)) => {
                            joined.push_str(", ");
                            joined.push_str(v);
                        }
                        _ => {
                            resp_headers.insert(k.as_str().to_owned(), Value::String(v.to_owned()));
                        }
                    }
                }
                let bytes = read_capped(
                    &mut resp,
                    "the hook's answer is too large",
                    "reading the hook's answer failed",
                )
                .await?;
                return Ok((status, resp_headers, bytes));
            }
            tokio::time::sleep(delay).await;
            delay = Duration::from_secs_f64(
                (delay.as_secs_f64() * retry.multiplier).min(retry.max_delay.as_secs_f64()),
            );
            attempt += 1;
        }
    }

    async fn auth_header(&self, auth: &HookAuth) -> Result<(String, String), Failure> {
        match auth {
            HookAuth::Basic { header, value } => Ok((header.clone(), value.clone())),
            HookAuth::Token { location, value } => {
                let v = match &location.scheme {
                    Some(s) => format!("{} {value}", capitalize(s)),
                    None => value.clone(),
                };
                match location.place {
                    Place::Header => Ok((location.name.clone(), v)),
                    _ => Ok(("authorization".into(), v)),
                }
            }
            HookAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scopes,
                params,
            } => {
                let mut cached = self.oauth.lock().await;
                if let Some((token, until)) = cached.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(("authorization".into(), format!("Bearer {token}")));
                }
                let mut form: Vec<(String, String)> = vec![
                    ("grant_type".into(), "client_credentials".into()),
                    ("client_id".into(), client_id.clone()),
                    ("client_secret".into(), client_secret.clone()),
                ];
                if !scopes.is_empty() {
                    form.push(("scope".into(), scopes.join(" ")));
                }
                form.extend(params.iter().cloned());
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form.iter())
                    .finish();
                let mut resp = self
                    .cfg
                    .http
                    .post(token_url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(body)
                    .send()
                    .await
                    .map_err(|_| {
                        Failure::Unavailable("the OAuth2 token endpoint is unreachable")
                    })?;
                if !resp.status().is_success() {
                    return Err(Failure::Unavailable("the OAuth2 token endpoint refused"));
                }
                let bytes = read_capped(
                    &mut resp,
                    "the OAuth2 token answer is too large",
                    "reading the OAuth2 token answer failed",
                )
                .await?;
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|_| Failure::Unavailable("the OAuth2 token answer is not JSON"))?;
                let token = v["access_token"]
                    .as_str()
                    .ok_or(Failure::Unavailable(
                        "the OAuth2 answer has no access_token",
                    ))?
                    .to_owned();
                let ttl = v["expires_in"]
                    .as_u64()
                    .unwrap_or(300)
                    .saturating_sub(30)
                    .max(1);
                *cached = Some((token.clone(), Instant::now() + Duration::from_secs(ttl)));
                Ok(("authorization".into(), format!("Bearer {token}")))
            }
        }
    }
}

/// Reads an answer's body, at most [`MAX_RESPONSE_BYTES`] of it; the two
/// messages say what failed (too large, unreadable).
async fn read_capped(
    resp: &mut reqwest::Response,
    too_large: &'static str,
    unreadable: &'static str,
) -> Result<Vec<u8>, Failure> {
    crate::body::read_capped(resp, MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| {
            Failure::Unavailable(match e {
                BodyError::TooLarge => too_large,
                BodyError::Read(_) => unreadable,
            })
        })
}

/// SHA-256 of a hook request: its headers (in order: forwarded, then
/// additional, as sent) and its body with its content type.
fn cache_key(headers: &[(String, String)], body: Option<&(Vec<u8>, String)>) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    for (k, v) in headers {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    if let Some((b, ct)) = body {
        field(b"");
        field(ct.as_bytes());
        field(b);
    }
    h.finalize().into()
}

/// How long a hook answer may be reused, from its headers as Hasura reads
/// them: `Cache-Control: max-age` first, else `Expires`; never with
/// `no-store` or `no-cache`, at most [`MAX_CACHE_TTL`]; `None`: not at all.
pub fn answer_ttl(headers: &Map<String, Value>, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(Value::as_str);
    let mut max_age = None;
    if let Some(cc) = header("cache-control") {
        for d in cc.split(',').map(str::trim) {
            let (k, v) = d.split_once('=').unwrap_or((d, ""));
            let k = k.trim();
            if k.eq_ignore_ascii_case("no-store") || k.eq_ignore_ascii_case("no-cache") {
                return None;
            }
            if k.eq_ignore_ascii_case("max-age") {
                // An invalid or repeated max-age makes the answer stale
                // (RFC 9111, sections 4.2.1 and 5.2.2.1).
                match (max_age, v.trim().trim_matches('"').parse::<u64>()) {
                    (None, Ok(n)) => max_age = Some(n),
                    _ => return None,
                }
            }
        }
    }
    let ttl = match max_age {
        Some(s) => Duration::from_secs(s),
        None => {
            let at = httpdate::parse_http_date(header("expires")?).ok()?;
            at.duration_since(now).ok()?
        }
    };
    (!ttl.is_zero()).then(|| ttl.min(MAX_CACHE_TTL))
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The value `expr` finds in `doc`; `None` for null or an error.
fn search(expr: &jmespath::Expression<'static>, doc: &Value) -> Option<Value> {
    let data = crate::claims::jmespath_input(doc).ok()?;
    crate::claims::evaluate(expr, &data)
        .ok()
        .filter(|v| !v.is_null())
}

fn apply_mapping(m: &FieldMapping, data: &Rcvar) -> Value {
    match m {
        FieldMapping::Object(props) => Value::Object(
            props
                .iter()
                .map(|(k, m)| (k.clone(), apply_mapping(m, data)))
                .collect(),
        ),
        FieldMapping::Field { path, default } => {
            let found = path.as_ref().and_then(|e| {
                crate::claims::evaluate(e, data)
                    .ok()
                    .filter(|v| !v.is_null())
            });
            found.or_else(|| default.clone()).unwrap_or(Value::Null)
        }
    }
}

/// Applies a transformer; returns the bytes and their content type.
pub fn render_transform(t: &Transform, doc: &Value) -> Result<(Vec<u8>, String), Failure> {
    match t {
        Transform::Jmespath(m) => {
            let data = crate::claims::jmespath_input(doc)
                .map_err(|_| Failure::Unavailable("cannot evaluate the mapping"))?;
            let v = apply_mapping(m, &data);
            Ok((
                serde_json::to_vec(&v).unwrap_or_default(),
                "application/json".into(),
            ))
        }
        Transform::GoTemplate {
            template,
            content_type,
        } => {
            let Some(text) = template.render(doc) else {
                return Err(Failure::Unavailable("the Go template failed"));
            };
            Ok((
                text.into_bytes(),
                content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_ttl_reads_cache_headers_as_hasura() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ttl = |pairs: &[(&str, &str)]| {
            let m: Map<String, Value> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            answer_ttl(&m, now).map(|d| d.as_secs())
        };
        let later = httpdate::fmt_http_date(now + Duration::from_secs(120));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(120));
        assert_eq!(ttl(&[("cache-control", "max-age=30")]), Some(30));
        assert_eq!(
            ttl(&[("cache-control", "public, Max-Age=\"45\"")]),
            Some(45)
        );
        assert_eq!(ttl(&[("cache-control", "max-age=999999")]), Some(3600));
        assert_eq!(
            ttl(&[("cache-control", "max-age=30"), ("expires", &later)]),
            Some(30)
        );
        assert_eq!(ttl(&[("expires", &later)]), Some(120));
        for none in [
            vec![],
            vec![("cache-control", "max-age=0")],
            vec![("cache-control", "no-store, max-age=60")],
            vec![("cache-control", "max-age=60, no-cache")],
            vec![("cache-control", "max-age=soon")],
            vec![
                ("cache-control", "max-age=soon"),
                ("expires", later.as_str()),
            ],
            vec![("cache-control", "max-age=0, max-age=60")],
            vec![("cache-control", "max-age=-1")],
            vec![("expires", earlier.as_str())],
            vec![("expires", "0")],
        ] {
            assert_eq!(ttl(&none), None, "{none:?}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl panics while
    /// rendering a `printf` width over 65535; the format may come from the
    /// request itself. The render fails; the caller does not unwind.
    #[test]
    fn a_panicking_template_is_a_failed_render() {
        let transform = |text: &str| Transform::GoTemplate {
            template: GoTemplate::parse(text).unwrap(),
            content_type: None,
        };
        let doc = json!({"headers": {"x-fmt": "%70000d"}});
        for text in [
            r#"{{ printf "%70000d" 1 }}"#,
            r#"{{ printf (index .headers "x-fmt") 1 }}"#,
        ] {
            assert!(
                matches!(
                    render_transform(&transform(text), &doc),
                    Err(Failure::Unavailable(_))
                ),
                "{text}"
            );
        }
        let ok = render_transform(&transform(r#"{{ printf "%5d" 1 }}"#), &doc).unwrap();
        assert_eq!(ok.0, b"    1");
    }
}
