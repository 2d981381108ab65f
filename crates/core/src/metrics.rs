//! Every metric authgate exports, and nothing else defines one.
//!
//! Label values are bounded (front door, reason, mode type, config id), and
//! every series that can be known in advance is created at start, so
//! dashboards see zeros rather than gaps. Hot-path counters are resolved once
//! into plain handles: recording a decision is a few atomic adds, no map
//! lookup and no lock.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::decision::{DenyReason, Summary};

/// Front doors, the `frontend` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend {
    Grpc = 0,
    Http = 1,
    Webhook = 2,
    /// The Envoy dynamic module (`libauthgate_envoy.so`), deciding inside
    /// Envoy.
    EnvoyModule = 3,
}

impl Frontend {
    pub const ALL: [Frontend; 4] = [
        Frontend::Grpc,
        Frontend::Http,
        Frontend::Webhook,
        Frontend::EnvoyModule,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Grpc => "grpc",
            Frontend::Http => "http",
            Frontend::Webhook => "webhook",
            Frontend::EnvoyModule => "envoy_module",
        }
    }
}

/// Mode label values, `none` when no mode was involved.
pub const MODE_LABELS: [&str; 6] = [
    "apiKey",
    "jwt",
    "introspection",
    "webhook",
    "noAuth",
    "none",
];

fn mode_index(label: &str) -> usize {
    MODE_LABELS
        .iter()
        .position(|m| *m == label)
        .unwrap_or(MODE_LABELS.len() - 1)
}

/// Latency buckets (seconds): fine below a millisecond, where decisions
/// are, and up to the longest `decisionTimeout` allows (60 s), so that slow
/// decisions and timeouts land in a bucket rather than only in `+Inf`.
pub const DURATION_BUCKETS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Outcome slots: 0 = allow, 1.. = deny reasons in `DenyReason::ALL` order.
const OUTCOMES: usize = 1 + DenyReason::ALL.len();

fn outcome_index(reason: Option<DenyReason>) -> usize {
    match reason {
        None => 0,
        Some(reason) => {
            1 + DenyReason::ALL
                .iter()
                .position(|r| *r == reason)
                .unwrap_or(0)
        }
    }
}

/// `authgate_elevation_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElevationFailure {
    /// No grant, or no elevation where it was needed.
    Missing,
    /// A grant for another user or access token.
    Mismatch,
    Expired,
    InvalidGrant,
    /// A WebAuthn ceremony step failed.
    CeremonyFailed,
}

impl ElevationFailure {
    pub const ALL: [ElevationFailure; 5] = [
        ElevationFailure::Missing,
        ElevationFailure::Mismatch,
        ElevationFailure::Expired,
        ElevationFailure::InvalidGrant,
        ElevationFailure::CeremonyFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ElevationFailure::Missing => "missing",
            ElevationFailure::Mismatch => "mismatch",
            ElevationFailure::Expired => "expired",
            ElevationFailure::InvalidGrant => "invalid_grant",
            ElevationFailure::CeremonyFailed => "ceremony_failed",
        }
    }
}

/// `authgate_elevation_ceremonies_total{step}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyStep {
    /// Options handed out (registration or authentication).
    Begin,
    /// An assertion checked (elevation).
    Verify,
    /// A registration checked.
    Register,
}

impl CeremonyStep {
    pub const ALL: [CeremonyStep; 3] = [
        CeremonyStep::Begin,
        CeremonyStep::Verify,
        CeremonyStep::Register,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CeremonyStep::Begin => "begin",
            CeremonyStep::Verify => "verify",
            CeremonyStep::Register => "register",
        }
    }
}

const JWK_LOOKUPS_HELP: &str = "Key lookups for a token's kid in a JWKS, by key source and result.";
const JWKS_FETCHES_HELP: &str = "JWKS fetches, by key source and result.";
const JWKS_KEYS_HELP: &str = "Keys currently loaded, by key source.";
const JWKS_LAST_SUCCESS_HELP: &str = "Unix time of the last successful JWKS fetch, by key source.";

const POLICY_DECISIONS_HELP: &str =
    "Policies checked on decisions (definition.policies), by policy and decision.";

/// Families whose series only exist per configured key source or policy.
const SOURCE_FAMILIES: [(&str, &str, &str); 5] = [
    (
        "authgate_policy_decisions_total",
        "counter",
        POLICY_DECISIONS_HELP,
    ),
    (
        "authgate_jwk_cache_lookups_total",
        "counter",
        JWK_LOOKUPS_HELP,
    ),
    ("authgate_jwks_fetches_total", "counter", JWKS_FETCHES_HELP),
    ("authgate_jwks_keys", "gauge", JWKS_KEYS_HELP),
    (
        "authgate_jwks_last_success_timestamp_seconds",
        "gauge",
        JWKS_LAST_SUCCESS_HELP,
    ),
];

pub struct Metrics {
    registry: Registry,
    checks: Vec<IntCounter>, // [frontend][outcome][mode]
    durations: Vec<Histogram>,
    jwk_lookups: IntCounterVec,
    jwks_fetches: IntCounterVec,
    jwks_keys: IntGaugeVec,
    jwks_last_success: GaugeVec,
    policy_decisions: IntCounterVec,
    pub token_cache_hit: IntCounter,
    pub token_cache_miss: IntCounter,
    /// By [`ElevationFailure`], in `ALL` order.
    elevation_failures: Vec<IntCounter>,
    /// By [`CeremonyStep`] in `ALL` order, then ok, error.
    elevation_ceremonies: Vec<[IntCounter; 2]>,
    /// Failed operations on the security-key store.
    pub elevation_store_errors: IntCounter,
    pub config_reload_ok: IntCounter,
    pub config_reload_error: IntCounter,
    pub config_last_reload_success: Gauge,
    /// 1 when the file's last load (at start or on reload) succeeded, 0
    /// when it failed and an older configuration keeps serving.
    pub config_last_reload_successful: IntGauge,
}

/// Per-JWKS-source handles, resolved once.
#[derive(Clone)]
pub struct SourceMetrics {
    pub lookup_hit: IntCounter,
    pub lookup_miss: IntCounter,
    pub fetch_ok: IntCounter,
    pub fetch_error: IntCounter,
    pub fetch_not_modified: IntCounter,
    pub keys: IntGauge,
    /// Created at the first success: before it there is no time to report
    /// (a 0 would read as "last success in 1970").
    last_success: GaugeVec,
    source: String,
    families: (IntCounterVec, IntCounterVec, IntGaugeVec),
    /// Set by [`SourceMetrics::forget`]: a fetch still running then must not
    /// bring the success time back.
    forgotten: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SourceMetrics {
    /// The `source` label: the id of the first mode using this JWKS.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Removes this source's series, when no configured mode uses it any
    /// more: a dropped JWKS would otherwise age forever on dashboards and
    /// fire staleness alerts.
    pub fn forget(&self) {
        self.forgotten
            .store(true, std::sync::atomic::Ordering::Release);
        let (lookups, fetches, keys) = &self.families;
        let s = self.source.as_str();
        for result in ["hit", "miss"] {
            let _ = lookups.remove_label_values(&[s, result]);
        }
        for result in ["ok", "error", "not_modified"] {
            let _ = fetches.remove_label_values(&[s, result]);
        }
        let _ = keys.remove_label_values(&[s]);
        let _ = self.last_success.remove_label_values(&[s]);
    }

    /// Records a successful fetch (new keys or 304) at `unix_seconds`.
    pub fn succeeded(&self, unix_seconds: f64) {
        if self.forgotten.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        self.last_success
            .with_label_values(&[self.source.as_str()])
            .set(unix_seconds);
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(v.clone()))
        .expect("metric registered once");
    v
}

impl Metrics {
    pub fn new() -> Self {
        Self::build(true)
    }

    /// Without the `process_*` collector: for a host that reports on its
    /// process itself (Envoy, for the module) and reads these metrics
    /// through [`Metrics::for_each_series`], which leaves them out anyway;
    /// the collector would read `/proc` at every gather for nothing.
    pub fn without_process_metrics() -> Self {
        Self::build(false)
    }

    fn build(process: bool) -> Self {
        let registry = Registry::new();
        let check_vec = counter_vec(
            &registry,
            "authgate_check_requests_total",
            "Authorization decisions, by front door, decision, reason and mode type.",
            &["frontend", "decision", "reason", "mode"],
        );
        let mut checks = Vec::with_capacity(Frontend::ALL.len() * OUTCOMES * MODE_LABELS.len());
        for f in Frontend::ALL {
            for outcome in 0..OUTCOMES {
                let (decision, reason) = if outcome == 0 {
                    ("allow", "none")
                } else {
                    ("deny", DenyReason::ALL[outcome - 1].as_str())
                };
                for mode in MODE_LABELS {
                    checks.push(check_vec.with_label_values(&[f.as_str(), decision, reason, mode]));
                }
            }
        }
        let duration_vec = HistogramVec::new(
            HistogramOpts::new(
                "authgate_check_duration_seconds",
                "Time to reach a decision, by front door.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["frontend"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(duration_vec.clone()))
            .expect("metric registered once");
        let durations = Frontend::ALL
            .iter()
            .map(|f| duration_vec.with_label_values(&[f.as_str()]))
            .collect();
        let jwk_lookups = counter_vec(
            &registry,
            "authgate_jwk_cache_lookups_total",
            JWK_LOOKUPS_HELP,
            &["source", "result"],
        );
        let jwks_fetches = counter_vec(
            &registry,
            "authgate_jwks_fetches_total",
            JWKS_FETCHES_HELP,
            &["source", "result"],
        );
        let jwks_keys =
            IntGaugeVec::new(Opts::new("authgate_jwks_keys", JWKS_KEYS_HELP), &["source"])
                .expect("static metric definition");
        registry
            .register(Box::new(jwks_keys.clone()))
            .expect("metric registered once");
        let jwks_last_success = GaugeVec::new(
            Opts::new(
                "authgate_jwks_last_success_timestamp_seconds",
                JWKS_LAST_SUCCESS_HELP,
            ),
            &["source"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(jwks_last_success.clone()))
            .expect("metric registered once");
        let token_cache = counter_vec(
            &registry,
            "authgate_token_cache_lookups_total",
            "Verified-token cache lookups, by result.",
            &["result"],
        );
        let policy_decisions = counter_vec(
            &registry,
            "authgate_policy_decisions_total",
            POLICY_DECISIONS_HELP,
            &["policy", "decision"],
        );
        let elevation_failures = counter_vec(
            &registry,
            "authgate_elevation_failures_total",
            "Requests refused or ceremonies failed for elevated access, by reason.",
            &["reason"],
        );
        let elevation_failures = ElevationFailure::ALL
            .iter()
            .map(|r| elevation_failures.with_label_values(&[r.as_str()]))
            .collect();
        let elevation_ceremonies = counter_vec(
            &registry,
            "authgate_elevation_ceremonies_total",
            "WebAuthn ceremonies, by step and result.",
            &["step", "result"],
        );
        let elevation_ceremonies = CeremonyStep::ALL
            .iter()
            .map(|s| {
                ["ok", "error"].map(|r| elevation_ceremonies.with_label_values(&[s.as_str(), r]))
            })
            .collect();
        let elevation_store_errors = IntCounter::new(
            "authgate_elevation_store_errors_total",
            "Operations on the security-key store that failed (unreachable, timed out, corrupt data); each was answered internal_error.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(elevation_store_errors.clone()))
            .expect("metric registered once");
        let reloads = counter_vec(
            &registry,
            "authgate_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        let config_last_reload_success = Gauge::new(
            "authgate_config_last_reload_success_timestamp_seconds",
            "Unix time the configuration was last loaded successfully.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(config_last_reload_success.clone()))
            .expect("metric registered once");
        let config_last_reload_successful = IntGauge::new(
            "authgate_config_last_reload_successful",
            "1 when the last load of the configuration file succeeded, 0 when it failed (the previous configuration keeps serving).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(config_last_reload_successful.clone()))
            .expect("metric registered once");
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, ...: the standard process metrics, read from
        // /proc at scrape time (Linux only; elsewhere the family is absent).
        #[cfg(target_os = "linux")]
        if process {
            registry
                .register(Box::new(
                    prometheus::process_collector::ProcessCollector::for_self(),
                ))
                .expect("metric registered once");
        }
        #[cfg(not(target_os = "linux"))]
        let _ = process;
        let build_info = IntGaugeVec::new(
            Opts::new("authgate_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Metrics {
            registry,
            checks,
            durations,
            jwk_lookups,
            jwks_fetches,
            jwks_keys,
            jwks_last_success,
            token_cache_hit: token_cache.with_label_values(&["hit"]),
            token_cache_miss: token_cache.with_label_values(&["miss"]),
            policy_decisions,
            elevation_failures,
            elevation_ceremonies,
            elevation_store_errors,
            config_reload_ok: reloads.with_label_values(&["ok"]),
            config_reload_error: reloads.with_label_values(&["error"]),
            config_last_reload_success,
            config_last_reload_successful,
        }
    }

    /// Counts one decision and its latency.
    pub fn record(&self, frontend: Frontend, outcome: Summary, seconds: f64) {
        let idx = (frontend as usize * OUTCOMES + outcome_index(outcome.reason))
            * MODE_LABELS.len()
            + mode_index(outcome.mode);
        if let Some(c) = self.checks.get(idx) {
            c.inc();
        }
        if let Some(h) = self.durations.get(frontend as usize) {
            h.observe(seconds);
        }
    }

    pub fn elevation_failure(&self, reason: ElevationFailure) {
        if let Some(i) = ElevationFailure::ALL.iter().position(|r| *r == reason) {
            self.elevation_failures[i].inc();
        }
    }

    /// Counts a ceremony step; a failed one is also an elevation failure
    /// (`ceremony_failed`).
    pub fn ceremony(&self, step: CeremonyStep, ok: bool) {
        if let Some(i) = CeremonyStep::ALL.iter().position(|s| *s == step) {
            self.elevation_ceremonies[i][usize::from(!ok)].inc();
        }
        if !ok {
            self.elevation_failure(ElevationFailure::CeremonyFailed);
        }
    }

    /// `authgate_policy_decisions_total` for `policy`: (allow, deny).
    /// Names come from the config, so the series are bounded by it.
    pub fn policy(&self, policy: &str) -> (IntCounter, IntCounter) {
        (
            self.policy_decisions.with_label_values(&[policy, "allow"]),
            self.policy_decisions.with_label_values(&[policy, "deny"]),
        )
    }

    /// Handles for one JWKS source (`source` = the id of the first mode using it).
    pub fn source(&self, source: &str) -> SourceMetrics {
        SourceMetrics {
            lookup_hit: self.jwk_lookups.with_label_values(&[source, "hit"]),
            lookup_miss: self.jwk_lookups.with_label_values(&[source, "miss"]),
            fetch_ok: self.jwks_fetches.with_label_values(&[source, "ok"]),
            fetch_error: self.jwks_fetches.with_label_values(&[source, "error"]),
            fetch_not_modified: self
                .jwks_fetches
                .with_label_values(&[source, "not_modified"]),
            keys: self.jwks_keys.with_label_values(&[source]),
            last_success: self.jwks_last_success.clone(),
            source: source.to_owned(),
            families: (
                self.jwk_lookups.clone(),
                self.jwks_fetches.clone(),
                self.jwks_keys.clone(),
            ),
            forgotten: Default::default(),
        }
    }

    /// Prometheus text exposition. Families without any series yet (the
    /// per-source JWKS families when no `jwkFromUrl` is configured) are still
    /// announced with their HELP and TYPE lines, so every family exists from start.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        let families = self.registry.gather();
        if encoder.encode(&families, &mut buf).is_err() {
            return String::new();
        }
        let mut text = String::from_utf8(buf).unwrap_or_default();
        for (name, kind, help) in SOURCE_FAMILIES {
            if !families.iter().any(|f| f.name() == name) {
                text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            }
        }
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric family as a host that must declare its stats up front (Envoy,
/// for the module) sees it: name, kind and label names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
}

/// Every `authgate_*` family [`Metrics`] registers (a unit test keeps the
/// two in step).
pub const FAMILIES: [Family; 14] = [
    Family {
        name: "authgate_check_requests_total",
        kind: Kind::Counter,
        labels: &["frontend", "decision", "reason", "mode"],
    },
    Family {
        name: "authgate_check_duration_seconds",
        kind: Kind::Histogram,
        labels: &["frontend"],
    },
    Family {
        name: "authgate_jwk_cache_lookups_total",
        kind: Kind::Counter,
        labels: &["source", "result"],
    },
    Family {
        name: "authgate_jwks_fetches_total",
        kind: Kind::Counter,
        labels: &["source", "result"],
    },
    Family {
        name: "authgate_jwks_keys",
        kind: Kind::Gauge,
        labels: &["source"],
    },
    Family {
        name: "authgate_jwks_last_success_timestamp_seconds",
        kind: Kind::Gauge,
        labels: &["source"],
    },
    Family {
        name: "authgate_token_cache_lookups_total",
        kind: Kind::Counter,
        labels: &["result"],
    },
    Family {
        name: "authgate_policy_decisions_total",
        kind: Kind::Counter,
        labels: &["policy", "decision"],
    },
    Family {
        name: "authgate_elevation_failures_total",
        kind: Kind::Counter,
        labels: &["reason"],
    },
    Family {
        name: "authgate_elevation_ceremonies_total",
        kind: Kind::Counter,
        labels: &["step", "result"],
    },
    Family {
        name: "authgate_elevation_store_errors_total",
        kind: Kind::Counter,
        labels: &[],
    },
    Family {
        name: "authgate_config_reloads_total",
        kind: Kind::Counter,
        labels: &["result"],
    },
    Family {
        name: "authgate_config_last_reload_success_timestamp_seconds",
        kind: Kind::Gauge,
        labels: &[],
    },
    Family {
        name: "authgate_config_last_reload_successful",
        kind: Kind::Gauge,
        labels: &[],
    },
];

/// `authgate_build_info{version}`: a gauge always 1.
pub const BUILD_INFO: Family = Family {
    name: "authgate_build_info",
    kind: Kind::Gauge,
    labels: &["version"],
};

impl Metrics {
    /// Calls `f` with every counter and gauge series of the `authgate_*`
    /// families (histograms and the process collector's series left out):
    /// the family's index in [`FAMILIES`] (`None` for [`BUILD_INFO`]), the
    /// label values in the family's label order, and the value.
    pub fn for_each_series(&self, mut f: impl FnMut(Option<usize>, &[&str], f64)) {
        for family in self.registry.gather() {
            let index = FAMILIES.iter().position(|x| x.name == family.name());
            let labels = match index {
                Some(i) if FAMILIES[i].kind != Kind::Histogram => FAMILIES[i].labels,
                None if family.name() == BUILD_INFO.name => BUILD_INFO.labels,
                _ => continue,
            };
            for m in family.get_metric() {
                let mut values: Vec<&str> = Vec::with_capacity(labels.len());
                for name in labels {
                    let v = m
                        .get_label()
                        .iter()
                        .find(|l| l.name() == *name)
                        .map_or("", |l| l.value());
                    values.push(v);
                }
                let value = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
                f(index, &values, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, ModeRef};

    #[test]
    #[cfg(target_os = "linux")]
    fn process_metrics_only_when_asked() {
        assert!(Metrics::new().render().contains("process_open_fds"));
        let host = Metrics::without_process_metrics().render();
        assert!(!host.contains("process_"), "{host}");
        assert!(host.contains("authgate_check_requests_total"));
    }

    #[test]
    fn families_list_what_the_registry_holds() {
        let m = Metrics::new();
        let _ = m.source("users");
        let _ = m.policy("admin");
        m.jwks_last_success.with_label_values(&["users"]).set(1.0);
        let mut names: Vec<String> = m
            .registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .filter(|n| n.starts_with("authgate_"))
            .collect();
        names.sort();
        let mut want: Vec<String> = FAMILIES
            .iter()
            .chain([&BUILD_INFO])
            .map(|f| f.name.to_owned())
            .collect();
        want.sort();
        assert_eq!(names, want);
        for family in m.registry.gather() {
            let Some(f) = FAMILIES
                .iter()
                .chain([&BUILD_INFO])
                .find(|f| f.name == family.name())
            else {
                continue;
            };
            for series in family.get_metric() {
                let mut got: Vec<&str> = series.get_label().iter().map(|l| l.name()).collect();
                let mut names = f.labels.to_vec();
                got.sort();
                names.sort();
                assert_eq!(got, names, "{}", f.name);
            }
        }
        let mut seen = 0;
        m.for_each_series(|i, labels, _| {
            if i == Some(0) {
                assert_eq!(labels.len(), 4);
                seen += 1;
            }
        });
        assert_eq!(seen, Frontend::ALL.len() * OUTCOMES * MODE_LABELS.len());
    }

    #[test]
    fn every_family_is_present_from_start() {
        // Without any key source too.
        let text = Metrics::new().render();
        for name in [
            "authgate_check_requests_total",
            "authgate_check_duration_seconds",
            "authgate_jwk_cache_lookups_total",
            "authgate_jwks_fetches_total",
            "authgate_jwks_keys",
            "authgate_jwks_last_success_timestamp_seconds",
            "authgate_token_cache_lookups_total",
            "authgate_elevation_failures_total",
            "authgate_elevation_ceremonies_total",
            "authgate_config_reloads_total",
            "authgate_config_last_reload_success_timestamp_seconds",
            "authgate_config_last_reload_successful",
            "authgate_elevation_store_errors_total",
            "authgate_build_info",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        // The slowest bucket holds the longest decision timeout.
        assert!(
            text.contains(r#"authgate_check_duration_seconds_bucket{frontend="grpc",le="60"} 0"#)
        );
    }

    #[test]
    fn a_jwks_source_has_no_success_time_before_its_first_success() {
        let m = Metrics::new();
        let source = m.source("idp");
        let name = "authgate_jwks_last_success_timestamp_seconds";
        assert!(!m.render().contains(&format!("{name}{{")));
        source.succeeded(1.7e9);
        assert!(
            m.render()
                .contains(&format!("{name}{{source=\"idp\"}} 1700000000"))
        );
    }

    #[test]
    fn record_moves_the_right_series() {
        let m = Metrics::new();
        let d = Decision::deny(
            DenyReason::TokenExpired,
            Some(ModeRef {
                kind: "jwt",
                id: "users".into(),
            }),
        );
        m.record(Frontend::Grpc, d.summary(), 0.001);
        let text = m.render();
        assert!(text.contains(
            r#"authgate_check_requests_total{decision="deny",frontend="grpc",mode="jwt",reason="token_expired"} 1"#
        ));
    }
}
