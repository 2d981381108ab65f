//! Configuration: RelyAuth's `auth.yaml`, read into a checked, compiled,
//! immutable [`Config`].
//!
//! Loading never stops at the first problem: every error is collected with
//! its YAML path. Everything that can be checked at load is: JMESPath
//! expressions compile, keys parse, URLs parse, environment references
//! resolve. A `Config` that exists is one that can serve.

mod duration;
pub mod elevation;
pub mod env;
mod http_client;
pub mod import;
pub mod introspection;
mod policies;
pub mod reader;
mod upstream;
pub mod webhook;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub use env::{Env, ProcessEnv};
use env::{env_any, env_string, env_string_list};
pub use reader::{Diagnostics, Location, Problem, Severity, YamlPath};
use reader::{Obj, Tree, as_str, as_str_list, as_u64};

use crate::claims::{ClaimLocation, ClaimsConfig, ClaimsFormat, Namespace};
use crate::keys;
use crate::pipeline::{
    ApiKeyMode, JwtMode, KeySource, MODE_ORDER, Mode, ModeKind, NoAuthMode, Settings,
};
use crate::redact::Secret;
use crate::request::{Place, TokenLocation};
use crate::rules::{self, HeaderRule, IpLocation, IpRule, SecurityRules};
use crate::session::{self, Session, check_variable_name, is_header_name_byte};

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    /// Modes in evaluation order: apiKey, jwt, introspection, webhook, noAuth.
    pub modes: Vec<Mode>,
    /// `definition.elevation`, when present.
    pub elevation: Option<crate::elevation::ElevationConfig>,
    /// `definition.policies` and `definition.policyRoutes`.
    pub policies: crate::policy::Policies,
    /// `definition.upstreamToken`, when present.
    pub upstream_token: Option<crate::upstream::UpstreamTokenConfig>,
    /// `definition.dynamicMetadata`.
    pub dynamic_metadata: Vec<crate::decision::MetadataField>,
    /// Non-fatal findings (weak secrets, ignored variables), for the log.
    pub warnings: Vec<Problem>,
    /// A hash of the text this config was read from, to tell an edited
    /// file from the one running.
    pub fingerprint: u64,
}

/// A hash of a config file's text (not cryptographic: it tells edits
/// apart, it does not protect anything).
pub fn fingerprint(text: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Every problem found in a config file that has errors, warnings included,
/// in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Problem>);

impl ConfigErrors {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter().filter(|p| p.severity == Severity::Error)
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors().count();
        writeln!(
            f,
            "{n} error{} in the configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.errors() {
            match p.location {
                Some(at) => writeln!(f, "  {at}: {p}")?,
                None => writeln!(f, "  {p}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// What `authgate validate` prints for a file with errors: every
    /// problem as `FILE:LINE:COLUMN: error: PATH: message`, then the count.
    /// Hosts that load a config elsewhere (the Envoy module) report the same
    /// lines.
    pub fn report(&self, file: &str, strict: bool) -> Vec<String> {
        let mut lines: Vec<String> = self.0.iter().map(|p| p.render(file, strict)).collect();
        let n = if strict {
            self.0.len()
        } else {
            self.errors().count()
        };
        lines.push(format!(
            "{file}: invalid: {n} error{}",
            if n == 1 { "" } else { "s" }
        ));
        lines
    }
}

/// Which config file to use: flag, `AUTHGATE_CONFIG`, RelyAuth's
/// `RELY_AUTH_CONFIG_PATH`, then `./auth.yaml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("AUTHGATE_CONFIG").map(PathBuf::from))
        .or_else(|| std::env::var_os("RELY_AUTH_CONFIG_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("auth.yaml"))
}

/// How a config file is written: `.json` files are strict JSON (a trailing
/// comma or a comment is an error, as JSON tools would say), anything else
/// YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Reads and validates a config file against the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    parse_as(&read(path)?, Format::of(path), &ProcessEnv)
}

/// The text of a config file.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Problem::at_root(
            format!("cannot read {}: {e}", path.display()),
            None,
        )])
    })
}

/// Parses YAML (or JSON written as YAML's flow style) and validates it.
pub fn parse(text: &str, env: &dyn Env) -> Result<Config, ConfigErrors> {
    parse_as(text, Format::Yaml, env)
}

/// Parses `text` as `format` and validates it. Problems come in file order,
/// each with its line and column where the parsers know them.
pub fn parse_as(text: &str, format: Format, env: &dyn Env) -> Result<Config, ConfigErrors> {
    let print = fingerprint(text.as_bytes());
    // A byte-order mark (editors on Windows write one) is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (positions, duplicates) = reader::scan(text);
    if !duplicates.is_empty() {
        return Err(ConfigErrors(duplicates));
    }
    let parsed = match format {
        Format::Yaml => serde_yaml_ng::from_str::<Tree>(text).map_err(|e| {
            let at = e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            Problem::at_root(
                format!("not valid YAML: {}", without_position(&e.to_string())),
                at,
            )
        }),
        Format::Json => serde_json::from_str::<Tree>(text).map_err(|e| {
            let at = (e.line() > 0).then(|| Location {
                line: e.line(),
                column: char_column(text, e.line(), e.column()),
            });
            Problem::at_root(
                format!("not valid JSON: {}", without_position(&e.to_string())),
                at,
            )
        }),
    };
    let root = parsed.map_err(|p| ConfigErrors(vec![p]))?.0;
    // A DDN AuthConfig is read as its import (docs/migrating-from-hasura.md);
    // what behaves differently is reported as warnings.
    if import::is_ddn(&root) {
        return match import::ddn_config(&root) {
            Ok(imported) => {
                // Problems of the imported form (a key that is not PEM, an
                // unset variable) have no place in this file: no position.
                let mut c = parse_as(&imported.yaml, Format::Yaml, env).map_err(|e| {
                    ConfigErrors(
                        e.0.into_iter()
                            .map(|p| Problem {
                                location: None,
                                message: format!(
                                    "in the imported form of this DDN AuthConfig: {}",
                                    p.message
                                ),
                                ..p
                            })
                            .collect(),
                    )
                })?;
                c.warnings.extend(imported.differences.into_iter().map(|diff| Problem {
                    severity: Severity::Warning,
                    ..Problem::error(
                        YamlPath::root(),
                        format!("read as a DDN AuthConfig (`authgate import ddn` writes the equivalent auth.yaml): {diff}"),
                    )
                }));
                c.fingerprint = print;
                Ok(c)
            }
            Err(mut problems) => {
                positions.place(&mut problems);
                Err(ConfigErrors(problems))
            }
        };
    }
    let mut d = Diagnostics::default();
    let config = compile(&mut d, env, &root);
    positions.place(&mut d.warnings);
    match config {
        Some(mut c) if d.errors.is_empty() => {
            c.warnings = d.warnings;
            c.fingerprint = print;
            Ok(c)
        }
        _ => {
            let mut all = d.errors;
            all.append(&mut d.warnings);
            positions.place(&mut all);
            Err(ConfigErrors(all))
        }
    }
}

/// A parser's message without the " at line L column C" it inserts (the
/// location is reported apart).
fn without_position(message: &str) -> String {
    static POSITION: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r" at line \d+ column \d+").expect("a valid pattern")
    });
    POSITION.replace_all(message, "").into_owned()
}

/// serde_json counts columns in bytes, from 1 (0 at the start of an empty
/// last line); editors count characters, from 1.
fn char_column(text: &str, line: usize, byte_column: usize) -> usize {
    let before = byte_column.saturating_sub(1);
    text.lines()
        .nth(line.saturating_sub(1))
        .map_or(before, |l| {
            let end = (0..=before.min(l.len()))
                .rev()
                .find(|&i| l.is_char_boundary(i))
                .unwrap_or(0);
            l[..end].chars().count()
        })
        + 1
}

fn compile(d: &mut Diagnostics, env: &dyn Env, root: &Value) -> Option<Config> {
    if root.is_null() {
        d.error(&YamlPath::root(), "the file is empty");
        return None;
    }
    let mut top = Obj::open(d, YamlPath::root(), root)?;
    if let Some(v) = top.str(d, "version")
        && v != "v1"
    {
        d.error(
            &top.path.key("version"),
            format!("unsupported version `{v}`; expected `v1`"),
        );
    }
    if let Some(k) = top.str(d, "kind") {
        // RelyAuth's own test fixtures say `AuthConfig`; accept it as an alias.
        if k != "RelyAuth" && k != "AuthConfig" {
            d.error(
                &top.path.key("kind"),
                format!("unsupported kind `{k}`; expected `RelyAuth`"),
            );
        }
    }
    let definition = top.require(d, "definition");
    top.finish(d);
    let (dpath, dvalue) = definition?;
    let mut def = Obj::open(d, dpath, dvalue)?;
    let settings = match def.get("settings") {
        Some((p, v)) => settings(d, p, v),
        None => Settings::default(),
    };
    let modes = match def.require(d, "modes") {
        Some((p, v)) => modes(d, env, p, v),
        None => Vec::new(),
    };
    let elevation = def
        .get("elevation")
        .and_then(|(p, v)| elevation::elevation(d, env, p, v));
    let policies = policies::policies(d, &mut def, &modes);
    let upstream_token = def
        .get("upstreamToken")
        .and_then(|(p, v)| upstream::upstream_token(d, env, p, v));
    let dynamic_metadata = def
        .get("dynamicMetadata")
        .map(|(p, v)| upstream::dynamic_metadata(d, p, v))
        .unwrap_or_default();
    // One key for two jobs would publish one `kid` for both, and let a
    // grant verifier accept an upstream token's signature.
    let kid = |alg, pem: &crate::redact::Secret| {
        crate::signing::SigningKey::from_pem(alg, &pem.0)
            .ok()
            .map(|k| k.kid)
    };
    if let (Some(u), Some(e)) = (&upstream_token, &elevation)
        && let (Some(a), Some((b_alg, b))) = (&u.signing_key, &e.grant.signing_key)
        && kid(u.alg, a).is_some_and(|k| Some(k) == kid(*b_alg, b))
    {
        d.error(
            &def.path.key("upstreamToken").key("signingKey"),
            "use a key other than elevation.grant.signingKey",
        );
    }
    def.finish(d);
    Some(Config {
        settings,
        modes,
        elevation,
        policies,
        upstream_token,
        dynamic_metadata,
        warnings: Vec::new(),
        fingerprint: 0,
    })
}

fn settings(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Settings {
    let mut s = Settings::default();
    let Some(mut o) = Obj::open(d, path, v) else {
        return s;
    };
    if let Some(n) = o.u64(d, "reloadInterval") {
        s.reload_interval = (n > 0).then(|| Duration::from_secs(n));
    }
    if let Some(n) = o.u64(d, "unknownKidCooldown") {
        s.unknown_kid_cooldown = Duration::from_secs(n);
    }
    if let Some(n) = o.u64(d, "tokenCacheMaxEntries") {
        s.token_cache_max_entries = n;
    }
    if let Some(n) = o.u64(d, "tokenCacheTtl") {
        if n > MAX_CACHE_TTL_SECONDS {
            d.error(
                &o.path.key("tokenCacheTtl"),
                format!("at most {MAX_CACHE_TTL_SECONDS} seconds (a day)"),
            );
        }
        s.token_cache_ttl = Duration::from_secs(n.min(MAX_CACHE_TTL_SECONDS));
    }
    if let Some((p, v)) = o.get("decisionTimeout") {
        match as_u64(d, &p, v) {
            Some(0) => d.error(&p, "must be at least 1 second"),
            Some(n) => s.decision_timeout = Duration::from_secs(n),
            None => {}
        }
    }
    if let Some((p, v)) = o.get("forwardAuth")
        && let Some(mut fa) = Obj::open(d, p.clone(), v)
    {
        if let Some(name) = fa.str(d, "proxy") {
            match crate::forward_auth::ForwardAuthProxy::parse(name) {
                Some(proxy) => s.forward_auth = proxy,
                None => d.error(
                    &p.key("proxy"),
                    format!(
                        "unknown proxy `{name}`; expected one of {}",
                        crate::forward_auth::ForwardAuthProxy::NAMES.join(", ")
                    ),
                ),
            }
        }
        fa.finish(d);
    }
    o.finish(d);
    s
}

fn modes(d: &mut Diagnostics, env: &dyn Env, path: YamlPath, v: &Value) -> Vec<Mode> {
    let Value::Array(items) = v else {
        d.error(&path, "expected a list of modes");
        return Vec::new();
    };
    if items.is_empty() {
        d.error(&path, "at least one mode is required");
    }
    // Sort by RelyAuth's order first (stable), so default ids match RelyAuth's.
    let mut order: Vec<(usize, &Value)> = items.iter().enumerate().collect();
    order.sort_by_key(|(_, v)| {
        let name = v.get("mode").and_then(Value::as_str).unwrap_or("");
        MODE_ORDER
            .iter()
            .position(|m| *m == name)
            .unwrap_or(MODE_ORDER.len())
    });
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    let mut no_auth = 0;
    for (sorted_index, (file_index, item)) in order.into_iter().enumerate() {
        let p = match item.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => path.named_index(file_index, id),
            _ => path.index(file_index),
        };
        let Some(mode) = mode(d, env, p.clone(), item, sorted_index) else {
            continue;
        };
        if !ids.insert(mode.id.clone()) {
            if item.get("id").is_some() {
                d.error(&p.key("id"), format!("duplicate mode id `{}`", mode.id));
            } else {
                d.error(
                    &p,
                    format!(
                        "this mode has no `id`, and its default id `{}` (its place in RelyAuth's evaluation order) is another mode's `id`: give one of them another id",
                        mode.id
                    ),
                );
            }
        }
        // A noAuth mode that runs only when selected is no fallback.
        if matches!(mode.kind, ModeKind::NoAuth(_)) && !mode.only_when_selected {
            no_auth += 1;
            if no_auth > 1 {
                d.error(&p, "only one noAuth mode is allowed");
            }
        }
        out.push(mode);
    }
    out
}

fn mode(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
    sorted_index: usize,
) -> Option<Mode> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let id: Arc<str> = match o.str(d, "id") {
        Some("") => {
            d.error(&path.key("id"), "must not be empty");
            Arc::from(sorted_index.to_string())
        }
        Some(id) => Arc::from(id),
        None => Arc::from(sorted_index.to_string()),
    };
    let _ = o.str(d, "description");
    let only_when_selected = o.bool(d, "onlyWhenSelected").unwrap_or(false);
    let rules = match o.get("securityRules") {
        Some((p, v)) => security_rules(d, env, p, v),
        None => Some(SecurityRules::default()),
    };
    let name = o
        .require(d, "mode")
        .and_then(|(p, v)| as_str(d, &p, v).map(|s| (p, s)));
    let Some((mode_path, name)) = name else {
        o.read_all();
        return None;
    };
    let kind = match name {
        "apiKey" => api_key(d, env, o).map(ModeKind::ApiKey),
        "jwt" => jwt(d, env, o).map(|j| ModeKind::Jwt(Box::new(j))),
        "noAuth" => no_auth(d, env, o).map(ModeKind::NoAuth),
        "webhook" => webhook::webhook(d, env, o).map(|w| ModeKind::Webhook(Box::new(w))),
        "introspection" => {
            introspection::introspection(d, env, o).map(|i| ModeKind::Introspection(Box::new(i)))
        }
        other => {
            d.error(
                &mode_path,
                format!("unknown mode `{other}`; expected one of apiKey, jwt, introspection, webhook, noAuth"),
            );
            o.read_all();
            None
        }
    };
    Some(Mode {
        id,
        kind: kind?,
        rules: rules?,
        only_when_selected,
    })
}

fn security_rules(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<SecurityRules> {
    let mut o = Obj::open(d, path, v)?;
    let mut ok = true;
    let allowed_ips = match o.get("allowedIPs") {
        Some((p, v)) => {
            let r = ip_rule(d, env, p, v);
            ok &= r.is_some();
            r
        }
        None => None,
    };
    let mut headers = Vec::new();
    if let Some((p, v)) = o.get("headerRules") {
        match Obj::open(d, p.clone(), v) {
            Some(mut map) => {
                map.read_all();
                ok &= map.no_case_duplicates(d, "header");
                for (name, rule) in map.entries() {
                    let rp = p.key(name);
                    if !name.bytes().all(is_header_name_byte) || name.is_empty() {
                        d.error(&rp, format!("`{name}` is not a valid header name"));
                        ok = false;
                        continue;
                    }
                    let Some(mut ro) = Obj::open(d, rp.clone(), rule) else {
                        ok = false;
                        continue;
                    };
                    let patterns = |key: &'static str, ro: &mut Obj<'_>, d: &mut Diagnostics| {
                        let Some((kp, kv)) = ro.get(key) else {
                            return Some(Vec::new());
                        };
                        let list = env_string_list(d, env, &kp, kv)?;
                        let mut out = Vec::new();
                        for (i, pat) in list.iter().enumerate() {
                            match rules::compile_pattern(pat) {
                                Ok(r) => out.push(r),
                                Err(e) => d.error(&kp.index(i), e),
                            }
                        }
                        (out.len() == list.len()).then_some(out)
                    };
                    let include = patterns("include", &mut ro, d);
                    let exclude = patterns("exclude", &mut ro, d);
                    ro.finish(d);
                    match (include, exclude) {
                        (Some(include), Some(exclude)) => headers.push(HeaderRule {
                            name: name.to_ascii_lowercase(),
                            include,
                            exclude,
                        }),
                        _ => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }
    o.finish(d);
    ok.then_some(SecurityRules {
        allowed_ips,
        headers,
    })
}

fn ip_rule(d: &mut Diagnostics, env: &dyn Env, path: YamlPath, v: &Value) -> Option<IpRule> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
    let nets = |key: &'static str, o: &mut Obj<'_>, d: &mut Diagnostics| {
        let Some((kp, kv)) = o.get(key) else {
            return Some(Vec::new());
        };
        let list = env_string_list(d, env, &kp, kv)?;
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match rules::parse_net(s) {
                Ok(n) => {
                    if !out.contains(&n) {
                        out.push(n);
                    }
                }
                Err(e) => d.error(&kp.index(i), e),
            }
        }
        let bad = list.iter().any(|s| rules::parse_net(s).is_err());
        (!bad).then_some(out)
    };
    let include = nets("include", &mut o, d);
    let exclude = nets("exclude", &mut o, d);
    let public_only = o.bool(d, "publicOnly").unwrap_or(false);
    let location = o.str(d, "location").unwrap_or("x_forwarded_for");
    let proxies = o.u64(d, "numTrustedProxies").unwrap_or(0);
    let prefixes = match o.get("trustedProxyIpPrefixes") {
        Some((p, v)) => as_str_list(d, &p, v).map(|list| {
            list.iter()
                .filter(|s| !s.trim().is_empty())
                .filter_map(|s| match rules::parse_net(s) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        d.error(&p, e);
                        ok = false;
                        None
                    }
                })
                .collect::<Vec<_>>()
        }),
        None => Some(Vec::new()),
    };
    let headers = match o.get("headers") {
        Some((p, v)) => as_str_list(d, &p, v),
        None => Some(Vec::new()),
    };
    o.finish(d);
    let location = match location {
        "x_forwarded_for" => IpLocation::ForwardedFor {
            trusted_proxies: u32::try_from(proxies).unwrap_or(u32::MAX),
            trusted_prefixes: prefixes.clone().unwrap_or_default(),
        },
        "header" => {
            let mut names: Vec<String> = headers
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() && headers.is_some() {
                d.error(
                    &path,
                    "`headers` must name at least one header when `location: header`",
                );
                ok = false;
            }
            IpLocation::Headers(names)
        }
        "remote_addr" => IpLocation::RemoteAddr,
        other => {
            d.error(
                &path.key("location"),
                format!(
                    "unknown location `{other}`; expected x_forwarded_for, header or remote_addr"
                ),
            );
            ok = false;
            IpLocation::RemoteAddr
        }
    };
    let (include, exclude) = (include?, exclude?);
    if include.is_empty() && exclude.is_empty() && !public_only && ok {
        d.error(
            &path,
            "allowedIPs needs `include`, `exclude` or `publicOnly`",
        );
        return None;
    }
    (ok && prefixes.is_some() && headers.is_some()).then_some(IpRule {
        include,
        exclude,
        public_only,
        location,
    })
}

fn api_key(d: &mut Diagnostics, env: &dyn Env, mut o: Obj<'_>) -> Option<ApiKeyMode> {
    let location = o
        .require(d, "tokenLocation")
        .and_then(|(p, v)| token_location(d, p, v, None));
    let value = o.require(d, "value").and_then(|(p, v)| {
        let s = env_string(d, env, &p, v)?;
        if s.is_empty() {
            d.error(&p, "the API key is empty");
            return None;
        }
        Some(Secret(s))
    });
    let session = session_variables(d, env, &mut o, true);
    o.finish(d);
    Some(ApiKeyMode {
        location: location?,
        value: value?,
        session: session?,
    })
}

fn no_auth(d: &mut Diagnostics, env: &dyn Env, mut o: Obj<'_>) -> Option<NoAuthMode> {
    let session = session_variables(d, env, &mut o, true);
    o.finish(d);
    Some(NoAuthMode { session: session? })
}

fn session_variables(
    d: &mut Diagnostics,
    env: &dyn Env,
    o: &mut Obj<'_>,
    needs_role: bool,
) -> Option<Session> {
    let (p, v) = o.require(d, "sessionVariables")?;
    let mut vars = Obj::open(d, p.clone(), v)?;
    vars.read_all();
    let mut s = Session::new();
    let mut ok = vars.no_case_duplicates(d, "session variable");
    for (k, v) in vars.entries() {
        let kp = p.key(k);
        let Some(value) = env_any(d, env, &kp, v) else {
            ok = false;
            continue;
        };
        if let Err(e) = check_variable_name(k) {
            d.error(&kp, e);
            ok = false;
            continue;
        }
        s.insert(k, value);
    }
    if needs_role && ok {
        match s.get(session::ROLE) {
            Some(Value::String(r)) if !r.is_empty() => {}
            _ => d.error(&p, "must set `x-hasura-role` to a non-empty string"),
        }
    }
    ok.then_some(s)
}

fn token_location(
    d: &mut Diagnostics,
    path: YamlPath,
    v: &Value,
    default_scheme: Option<&str>,
) -> Option<TokenLocation> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let place = match o.str(d, "in") {
        None | Some("header") => Some(Place::Header),
        Some("query") => Some(Place::Query),
        Some("cookie") => Some(Place::Cookie),
        Some(other) => {
            d.error(
                &path.key("in"),
                format!("unknown location `{other}`; expected header, query or cookie"),
            );
            None
        }
    };
    let name = o.str(d, "name").map(str::trim);
    let scheme = o.str(d, "scheme").map(|s| s.trim().to_ascii_lowercase());
    o.finish(d);
    let place = place?;
    let name = match name {
        Some("") => {
            d.error(&path.key("name"), "must not be empty");
            return None;
        }
        Some(n) => n.to_owned(),
        None if place == Place::Header => "authorization".to_owned(),
        None => {
            d.error(&path, "missing required key `name`");
            return None;
        }
    };
    let name = if place == Place::Header {
        if !name.bytes().all(is_header_name_byte) {
            d.error(
                &path.key("name"),
                format!("`{name}` is not a valid header name"),
            );
        }
        name.to_ascii_lowercase()
    } else {
        name
    };
    let scheme = match scheme {
        Some(s) if s.is_empty() => None,
        Some(s) => Some(s),
        None if place == Place::Header && name == "authorization" => {
            default_scheme.map(str::to_owned)
        }
        None => None,
    };
    Some(TokenLocation {
        place,
        name,
        scheme,
    })
}

fn jwt(d: &mut Diagnostics, env: &dyn Env, mut o: Obj<'_>) -> Option<JwtMode> {
    // Hasura's default location: `Authorization: Bearer <token>`.
    let default_location = TokenLocation {
        place: Place::Header,
        name: "authorization".into(),
        scheme: Some("bearer".into()),
    };
    let location = match o.get("tokenLocation") {
        Some((p, v)) => token_location(d, p, v, Some("bearer")),
        None => Some(default_location),
    };
    let keys = o
        .require(d, "key")
        .and_then(|(p, v)| key_source(d, env, p, v));
    let audience = match o.get("audience") {
        Some((p, v)) => as_str_list(d, &p, v).unwrap_or_default(),
        None => Vec::new(),
    };
    // With `oidcIssuer`, tokens must come from that issuer unless `issuer`
    // says otherwise (discovery checks that the document names it).
    let issuer = o
        .str(d, "issuer")
        .map(str::to_owned)
        .or_else(|| match &keys {
            Some(KeySource::Remote {
                issuer: Some(i), ..
            }) => Some(i.clone()),
            _ => None,
        });
    let allowed_skew = o.u64(d, "allowedSkew").unwrap_or(60);
    let require_exp = o.bool(d, "requireExp").unwrap_or(true);
    let claims = o
        .require(d, "claimsConfig")
        .and_then(|(p, v)| claims_config(d, env, p, v));
    o.finish(d);
    Some(JwtMode {
        location: location?,
        keys: keys?,
        audience,
        issuer,
        allowed_skew,
        require_exp,
        claims: claims?,
    })
}

fn key_source(d: &mut Diagnostics, env: &dyn Env, path: YamlPath, v: &Value) -> Option<KeySource> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let algorithm = match o.get("algorithm") {
        Some((p, v)) => match as_str(d, &p, v).map(keys::parse_algorithm) {
            Some(Ok(a)) => Some(Some(a)),
            Some(Err(e)) => {
                d.error(&p, e);
                None
            }
            None => None,
        },
        None => Some(None),
    };
    let fixed = o.get("key");
    let remote = o.get("jwkFromUrl");
    let oidc = o.get("oidcIssuer");
    let client = o.get("httpClient");
    o.finish(d);
    let algorithm = algorithm?;
    let fetch = match client {
        Some((cp, _)) if remote.is_none() && oidc.is_none() => {
            d.error(
                &cp,
                "`httpClient` is for fetching keys: it needs `jwkFromUrl` or `oidcIssuer`",
            );
            return None;
        }
        Some((cp, cv)) => Some(Box::new(http_client::key_fetch(
            d,
            env,
            cp,
            cv,
            http_client::FetchPurpose::Keys,
        )?)),
        None => None,
    };
    match (fixed, remote, oidc) {
        (None, None, None) => {
            d.error(
                &path,
                "missing `key` (a fixed key), `jwkFromUrl` (a JWKS URL) or `oidcIssuer` (an OpenID issuer)",
            );
            None
        }
        (Some((kp, kv)), None, None) => {
            let Some(alg) = algorithm else {
                d.error(
                    &path,
                    "missing required key `algorithm` (required with a fixed `key`)",
                );
                return None;
            };
            let text = env_string(d, env, &kp, kv)?;
            match keys::parse_fixed(alg, &text) {
                Ok((set, warnings)) => {
                    for w in warnings {
                        d.warn(&kp, w);
                    }
                    Some(KeySource::Fixed(Arc::new(set)))
                }
                Err(e) => {
                    d.error(&kp, e);
                    None
                }
            }
        }
        (None, Some((up, uv)), None) => {
            let url = env_string(d, env, &up, uv)?;
            let (url, _) = remote_url(d, &path, &up, url, algorithm, fetch.as_deref(), "JWKS")?;
            Some(KeySource::Remote {
                url,
                algorithm,
                fetch,
                issuer: None,
            })
        }
        (None, None, Some((ip, iv))) => {
            let issuer = env_string(d, env, &ip, iv)?;
            // OpenID Connect Discovery 1.0, section 4: the document is at
            // the issuer plus `/.well-known/openid-configuration`; an issuer
            // has no query or fragment.
            let doc = oidc_document(&issuer);
            let (url, parsed) = remote_url(
                d,
                &path,
                &ip,
                doc,
                algorithm,
                fetch.as_deref(),
                "OpenID issuer",
            )?;
            if parsed.query().is_some() || parsed.fragment().is_some() {
                d.error(&ip, "an OpenID issuer has no query or fragment");
                return None;
            }
            if !parsed.username().is_empty() || parsed.password().is_some() {
                d.error(&ip, "an OpenID issuer has no user or password (not shown)");
                return None;
            }
            Some(KeySource::Remote {
                url,
                algorithm,
                fetch,
                issuer: Some(issuer),
            })
        }
        _ => {
            d.error(
                &path,
                "set one of `key`, `jwkFromUrl` and `oidcIssuer`, not several",
            );
            None
        }
    }
}

/// `url` parsed, when it is http or https.
fn web_url(d: &mut Diagnostics, at: &YamlPath, url: &str, what: &str) -> Option<reqwest::Url> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Some(u),
        Ok(_) => {
            d.error(at, format!("the {what} URL must be http or https"));
            None
        }
        Err(e) => {
            d.error(at, format!("not a valid URL: {e}"));
            None
        }
    }
}

/// Plain http to a host other than the loopback: what crosses it can be
/// read and changed on the way.
fn clear_text_off_loopback(url: &reqwest::Url) -> bool {
    url.scheme() == "http" && !matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

/// Longest any cache keeps a verified credential (`tokenCacheTtl`,
/// `cacheTtl`).
pub const MAX_CACHE_TTL_SECONDS: u64 = 86_400;

/// An issuer's discovery document (OpenID Connect Discovery 1.0, section
/// 4): the issuer plus `/.well-known/openid-configuration`.
fn oidc_document(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Checks a URL keys are fetched from (a JWKS, or an issuer's discovery
/// document): http or https, no HMAC algorithm, a warning for plain http
/// off the loopback, and no `key.httpClient.headers` there.
fn remote_url(
    d: &mut Diagnostics,
    path: &YamlPath,
    at: &YamlPath,
    url: String,
    algorithm: Option<jsonwebtoken::Algorithm>,
    fetch: Option<&crate::jwks::FetchOptions>,
    what: &str,
) -> Option<(String, reqwest::Url)> {
    if let Some(a) = algorithm
        && a.family() == jsonwebtoken::AlgorithmFamily::Hmac
    {
        d.error(
            &path.key("algorithm"),
            "HMAC algorithms cannot be used with a remote JWKS or an OpenID issuer (anyone could read the secret)",
        );
        return None;
    }
    let parsed = web_url(d, at, &url, what)?;
    if clear_text_off_loopback(&parsed) {
        if fetch.is_some_and(|f| !f.headers.is_empty()) {
            d.error(
                at,
                "key.httpClient.headers would cross the network in clear text over http; use https",
            );
            return None;
        }
        let warning = if what == "JWKS" {
            "JWKS fetched over plain http can be tampered with; use https"
        } else {
            "an http issuer's discovery document and keys can be tampered with; use https"
        };
        d.warn(at, warning);
    }
    Some((url, parsed))
}

fn compile_jmespath(
    d: &mut Diagnostics,
    path: &YamlPath,
    expr: &str,
) -> Option<jmespath::Expression<'static>> {
    let expr = if expr.trim().is_empty() { "@" } else { expr };
    match jmespath::compile(expr) {
        Ok(e) => Some(e),
        Err(e) => {
            d.error(path, format!("invalid JMESPath expression: {}", e.reason));
            None
        }
    }
}

fn claims_config(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    v: &Value,
) -> Option<ClaimsConfig> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
    let namespace = match o.get("namespace") {
        Some((p, v)) => {
            let ns = namespace(d, p, v);
            ok &= ns.is_some();
            ns
        }
        None => None,
    };
    let mut locations = Vec::new();
    if let Some((p, v)) = o.get("locations") {
        if let Some(mut lo) = Obj::open(d, p.clone(), v) {
            lo.read_all();
            lo.no_case_duplicates(d, "session variable");
            for (k, v) in lo.entries() {
                let kp = p.key(k);
                if let Err(e) = check_variable_name(k) {
                    d.error(&kp, e);
                    ok = false;
                    continue;
                }
                match location(d, env, kp, k, v) {
                    Some(l) => locations.push(l),
                    None => ok = false,
                }
            }
        } else {
            ok = false;
        }
    }
    o.finish(d);
    if namespace.is_none() && locations.is_empty() && ok {
        d.error(
            &path,
            "set `namespace` or at least one entry in `locations`",
        );
        return None;
    }
    ok.then_some(ClaimsConfig {
        namespace,
        locations,
    })
}

fn namespace(d: &mut Diagnostics, path: YamlPath, v: &Value) -> Option<Namespace> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let expr = o.require(d, "location").and_then(|(p, v)| {
        let s = as_str(d, &p, v)?;
        compile_jmespath(d, &p, s)
    });
    let format = match o.str(d, "claimsFormat") {
        None | Some("Json") => Some(ClaimsFormat::Json),
        Some("StringifiedJson") => Some(ClaimsFormat::StringifiedJson),
        Some(other) => {
            d.error(
                &path.key("claimsFormat"),
                format!("unknown claimsFormat `{other}`; expected Json or StringifiedJson"),
            );
            None
        }
    };
    o.finish(d);
    Some(Namespace {
        expression: crate::claims::ClaimPath::new(expr?),
        format: format?,
    })
}

fn location(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: YamlPath,
    key: &str,
    v: &Value,
) -> Option<ClaimLocation> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let mut ok = true;
    let expr = match o.get("path") {
        Some((p, v)) => match as_str(d, &p, v).and_then(|s| compile_jmespath(d, &p, s)) {
            Some(e) => Some(e),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let default = match o.get("default") {
        Some((p, v)) => match env_any(d, env, &p, v) {
            Some(v) => Some(v),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    if let Some(t) = o.str(d, "type")
        && t != "field"
    {
        d.error(
            &path.key("type"),
            format!("unknown type `{t}`; expected `field`"),
        );
        ok = false;
    }
    o.finish(d);
    if expr.is_none() && default.is_none() && ok {
        d.error(&path, "set `path`, `default` or both");
        return None;
    }
    ok.then(|| ClaimLocation {
        key: key.to_ascii_lowercase(),
        path: expr.map(crate::claims::ClaimPath::new),
        default,
    })
}

/// A one-line description for `validate` and the start-up log.
pub fn summary(c: &Config) -> String {
    let modes: Vec<String> = c
        .modes
        .iter()
        .map(|m| format!("{} ({})", m.kind.name(), m.id))
        .collect();
    let remote: HashSet<&str> = c
        .modes
        .iter()
        .filter_map(|m| match &m.kind {
            ModeKind::Jwt(j) => match &j.keys {
                KeySource::Remote { url, .. } => Some(url.as_str()),
                KeySource::Fixed(_) => None,
            },
            _ => None,
        })
        .collect();
    let elevation = match &c.elevation {
        Some(e) => format!(
            "; elevation {:?} ({} route{})",
            e.mode,
            e.routes.len(),
            if e.routes.len() == 1 { "" } else { "s" }
        )
        .to_ascii_lowercase(),
        None => String::new(),
    };
    format!(
        "configuration OK: {} mode{}: {}; {} JWKS URL{}{elevation}; {} warning{}",
        c.modes.len(),
        if c.modes.len() == 1 { "" } else { "s" },
        modes.join(", "),
        remote.len(),
        if remote.len() == 1 { "" } else { "s" },
        c.warnings.len(),
        if c.warnings.len() == 1 { "" } else { "s" },
    )
}

#[cfg(test)]
mod tests;
