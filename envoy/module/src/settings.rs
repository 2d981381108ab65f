//! What Envoy hands the module as text: the filter config (where the
//! `auth.yaml` is) and the per-route config (what a route asks for).
//! Both are JSON strings (`google.protobuf.StringValue` in the Envoy config,
//! docs/envoy-module.md); unknown keys are errors, since a misspelled
//! security setting must not read as "not set".

#![forbid(unsafe_code)]

use std::collections::HashMap;

use authgate_core::config::{self, Config, ConfigErrors, Format, ProcessEnv};
use authgate_core::elevation::CONTEXT_KEY;
use authgate_core::policy::CONTEXT_KEY as POLICY_KEY;
use authgate_core::rules::IpLocation;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::filter::Options;

/// The filter config: exactly one of `configPath` and `config`, and
/// optionally `trustEnvoyRemoteAddress` and `dynamicMetadata`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterConfigText<'a> {
    #[serde(rename = "configPath")]
    config_path: Option<String>,
    #[serde(borrow)]
    config: Option<&'a RawValue>,
    /// Envoy's `source.address` is the address Envoy decided the client
    /// has: the TCP peer with `use_remote_address: true` and no trusted
    /// hops, else an `X-Forwarded-For` entry the client may have written.
    /// An IP rule reading `remote_addr` is refused unless the operator
    /// says the listener is set up for the former.
    #[serde(rename = "trustEnvoyRemoteAddress", default)]
    trust_envoy_remote_address: bool,
    /// Whether an allow sets Envoy dynamic metadata (namespace `authgate`),
    /// as ext_authz does; off saves Envoy a few µs per request when no
    /// access log or rate limit reads it.
    #[serde(rename = "dynamicMetadata", default = "yes")]
    dynamic_metadata: bool,
}

fn yes() -> bool {
    true
}

/// A loaded filter config.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// `authgate validate`'s warning lines.
    pub warnings: Vec<String>,
    pub options: Options,
}

/// A config that could not be loaded: the lines to log, as `authgate
/// validate` prints them.
#[derive(Debug)]
pub struct LoadError(pub Vec<String>);

/// The name problems are reported under for an inline config.
pub const INLINE_NAME: &str = "filter_config";

/// Reads the filter config and the `auth.yaml` it names (or holds) into a
/// validated [`Config`], plus the warnings to log.
pub fn load(filter_config: &[u8]) -> Result<Loaded, LoadError> {
    let one = |m: String| LoadError(vec![format!("{INLINE_NAME}: error: {m}")]);
    let text = std::str::from_utf8(filter_config)
        .map_err(|_| one("the filter config is not UTF-8 text".to_owned()))?;
    let parsed: FilterConfigText<'_> = serde_json::from_str(text).map_err(|e| {
        one(format!(
            "the filter config must be JSON {{\"configPath\": PATH}} or {{\"config\": AUTH_YAML_AS_JSON}}: {e}"
        ))
    })?;
    let trusted = parsed.trust_envoy_remote_address;
    let (file, result) = match (parsed.config_path, parsed.config) {
        (Some(path), None) => {
            let path = std::path::PathBuf::from(path);
            let file = path.display().to_string();
            (file, config::load_file(&path))
        }
        (None, Some(raw)) => (
            INLINE_NAME.to_owned(),
            config::parse_as(raw.get(), Format::Json, &ProcessEnv),
        ),
        (Some(_), Some(_)) => {
            return Err(one("give configPath or config, not both".to_owned()));
        }
        (None, None) => return Err(one("configPath or config is required".to_owned())),
    };
    let cfg = result.map_err(|e| report(&file, &e))?;
    let reading: Vec<&str> = cfg
        .modes
        .iter()
        .filter(|m| {
            m.rules
                .allowed_ips
                .as_ref()
                .is_some_and(|r| r.location == IpLocation::RemoteAddr)
        })
        .map(|m| &*m.id)
        .collect();
    if !reading.is_empty() && !trusted {
        return Err(one(format!(
            "mode {} reads the client address (allowedIPs location remote_addr): in Envoy that is \
             the listener's downstream address, taken from X-Forwarded-For unless the listener sets \
             use_remote_address: true without trusted hops; set that, then \
             \"trustEnvoyRemoteAddress\": true in the filter config (docs/envoy-module.md)",
            reading.join(", ")
        )));
    }
    let options = Options {
        reads_source_address: !reading.is_empty(),
        dynamic_metadata: parsed.dynamic_metadata,
    };
    let warnings = cfg
        .warnings
        .iter()
        .map(|w| w.render(&file, false))
        .collect();
    Ok(Loaded {
        config: cfg,
        warnings,
        options,
    })
}

fn report(file: &str, e: &ConfigErrors) -> LoadError {
    LoadError(e.report(file, false))
}

/// A route's per-filter config, as the `context_extensions` the gRPC door
/// would receive: `{"elevation": "required"}`, `{"policy": "admin"}`.
pub fn route(text: &[u8]) -> Result<HashMap<String, String>, String> {
    let map: HashMap<String, String> = serde_json::from_slice(text).map_err(|e| {
        format!("the per-route config must be a JSON object of strings, e.g. {{\"elevation\": \"required\"}}: {e}")
    })?;
    // Envoy hands the module the most specific level only (ext_authz merges
    // context_extensions key by key): an empty route config would silently
    // drop a virtual host's requirement.
    if map.is_empty() {
        return Err(
            "the per-route config is empty; say what the route asks, e.g. {\"elevation\": \"optional\"}"
                .to_owned(),
        );
    }
    for (k, v) in &map {
        if k == POLICY_KEY {
            if v.is_empty() {
                return Err(format!(
                    "per-route `{POLICY_KEY}` is empty (expected a policy name)"
                ));
            }
            continue;
        }
        if k != CONTEXT_KEY {
            return Err(format!(
                "unknown per-route key `{}` (expected `{CONTEXT_KEY}` or `{POLICY_KEY}`)",
                k.escape_debug()
            ));
        }
        if !v.eq_ignore_ascii_case("required") && !v.eq_ignore_ascii_case("optional") {
            return Err(format!(
                "per-route `{CONTEXT_KEY}` is `{}` (expected required or optional)",
                v.escape_debug()
            ));
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML_OK: &str = r#"{"version":"v1","kind":"AuthConfig","definition":{"modes":[{"mode":"noAuth","sessionVariables":{"x-hasura-role":{"value":"anonymous"}}}]}}"#;

    #[test]
    fn inline_config_loads() {
        let text = format!(r#"{{"config": {YAML_OK}}}"#);
        let loaded = load(text.as_bytes()).unwrap();
        assert_eq!(loaded.config.modes.len(), 1);
        assert!(!loaded.options.reads_source_address);
    }

    #[test]
    fn path_config_loads_and_bad_files_report_like_validate() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("auth.yaml");
        std::fs::write(&good, YAML_OK).unwrap();
        let text = serde_json::json!({"configPath": good}).to_string();
        assert!(load(text.as_bytes()).is_ok());

        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            "version: v1\nkind: AuthConfig\ndefinition:\n  modes:\n  - mode: noAuth\n    sessionVariables: {x-hasura-role: {value: anonymous}}\n    rol: anonymous\n",
        )
        .unwrap();
        let text = serde_json::json!({"configPath": bad}).to_string();
        let err = load(text.as_bytes()).unwrap_err().0;
        let file = bad.display().to_string();
        assert!(
            err.last().unwrap()
                == &format!(
                    "{file}: invalid: {} error{}",
                    err.len() - 1,
                    if err.len() == 2 { "" } else { "s" }
                ),
            "{err:?}"
        );
        assert!(err[0].starts_with(&format!("{file}:")), "{err:?}");
        assert!(err[0].contains("rol"), "{err:?}");
    }

    #[test]
    fn malformed_filter_configs_are_refused_with_a_reason() {
        for (text, want) in [
            (&b"\xff"[..], "not UTF-8"),
            (b"not json", "must be JSON"),
            (b"{}", "configPath or config is required"),
            (br#"{"configPath":"/x","config":{}}"#, "not both"),
            (br#"{"configpath":"/x"}"#, "unknown field"),
            (
                br#"{"configPath":"/nonexistent/auth.yaml"}"#,
                "/nonexistent/auth.yaml",
            ),
        ] {
            let err = load(text).unwrap_err().0.join("\n");
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn route_configs() {
        assert_eq!(
            route(br#"{"elevation":"required"}"#).unwrap()["elevation"],
            "required"
        );
        assert_eq!(
            route(br#"{"policy":"admin","elevation":"optional"}"#).unwrap()["policy"],
            "admin"
        );
        assert!(route(br#"{"policy":""}"#).is_err());
        for bad in [
            &b"{}"[..],
            br#"{"elevation":"yes"}"#,
            br#"{"elevaton":"required"}"#,
            br#"{"elevation":true}"#,
            b"[]",
            b"",
        ] {
            assert!(route(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn remote_addr_rules_need_the_operator_to_trust_envoy() {
        let rules = r#"{"version":"v1","kind":"AuthConfig","definition":{"modes":[{"id":"svc","mode":"noAuth","sessionVariables":{"x-hasura-role":{"value":"anonymous"}},"securityRules":{"allowedIPs":{"location":"remote_addr","include":{"value":["10.0.0.0/8"]}}}}]}}"#;
        let err = load(format!(r#"{{"config": {rules}}}"#).as_bytes())
            .unwrap_err()
            .0
            .join("\n");
        assert!(err.contains("mode svc reads the client address"), "{err}");
        let ok =
            load(format!(r#"{{"config": {rules}, "trustEnvoyRemoteAddress": true}}"#).as_bytes())
                .unwrap();
        assert!(ok.options.reads_source_address);
    }
}
