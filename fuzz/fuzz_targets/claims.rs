//! JMESPath claim mapping: `claims::extract` over a fuzzed JWT
//! payload, with claims configs loaded from real config text (namespace as
//! `Json` and `StringifiedJson`, JMESPath locations with defaults), then
//! role resolution and rendering of every value as a Hasura string.
//!
//! Input: a JSON payload; an optional first line `#<expr>` adds a location
//! with that JMESPath expression (compiled as the config would).
#![no_main]

use std::sync::LazyLock;

use authgate::claims::{self, ClaimPath};
use authgate::claims::{ClaimLocation, ClaimsConfig};
use authgate::config;
use authgate::pipeline::ModeKind;
use authgate::session::{self, Session};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

mod common;

const CONFIG: &str = r#"
definition:
  modes:
    - id: json
      mode: jwt
      key: {algorithm: HS256, key: {value: authgate-fuzz-hmac-secret-0123456789abcdef}}
      claimsConfig:
        namespace: {location: '"https://hasura.io/jwt/claims"', claimsFormat: Json}
        locations:
          x-hasura-user-id: {path: sub}
          x-hasura-org-id: {path: org.id, default: {value: "none"}}
          x-hasura-team-ids: {path: "teams[*].id"}
          x-hasura-first-group: {path: "groups[0]"}
          x-hasura-email: {path: "join('@', [user.name, user.domain])"}
          x-hasura-admin: {path: "length(roles[?@ == 'admin']) > `0`", default: {value: false}}
    - id: stringified
      mode: jwt
      key: {algorithm: HS256, key: {value: authgate-fuzz-hmac-secret-0123456789abcdef}}
      claimsConfig:
        namespace: {location: hasura, claimsFormat: StringifiedJson}
        locations:
          x-hasura-user-id: {path: "to_string(sub)"}
          x-hasura-default-role: {path: "keys(@)[0]", default: {value: user}}
    - id: locations-only
      mode: jwt
      key: {algorithm: HS256, key: {value: authgate-fuzz-hmac-secret-0123456789abcdef}}
      claimsConfig:
        locations:
          x-hasura-role: {path: "role || 'user'"}
          x-hasura-allowed-roles: {path: "roles"}
          x-hasura-user-id: {path: "sub"}
"#;

static CONFIGS: LazyLock<Vec<ClaimsConfig>> = LazyLock::new(|| {
    let c = match config::parse(CONFIG, &|_: &str| None) {
        Ok(c) => c,
        Err(e) => panic!("fuzz claims config does not load: {e}"),
    };
    c.modes
        .into_iter()
        .filter_map(|m| match m.kind {
            ModeKind::Jwt(j) => Some(j.claims),
            _ => None,
        })
        .collect()
});

fn check(session: &Session) {
    for (k, v) in session.iter() {
        assert_eq!(k, k.to_ascii_lowercase(), "session keys are lower case");
        assert!(!v.is_null(), "a null session value");
        let _ = session::is_valid_header_value(&session::hasura_string(v));
    }
    for requested in [None, Some("user"), Some(" admin ")] {
        let mut s = session.clone();
        if session::resolve_role(&mut s, requested).is_ok() {
            let role = s.get_str(session::ROLE);
            assert!(role.is_some_and(|r| !r.is_empty()), "resolved to no role");
            assert!(!s.contains(session::ALLOWED_ROLES));
            assert!(!s.contains(session::DEFAULT_ROLE));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, json) = match text.strip_prefix('#') {
        Some(rest) => match rest.split_once('\n') {
            Some((e, j)) => (Some(e), j),
            None => return,
        },
        None => (None, text),
    };
    let Ok(payload) = serde_json::from_str::<Value>(json) else {
        return;
    };
    let extra = match expr.map(jmespath::compile) {
        None => None,
        Some(Ok(path)) => Some(ClaimsConfig {
            namespace: None,
            locations: vec![ClaimLocation {
                key: "x-hasura-fuzz".into(),
                path: Some(ClaimPath::new(path)),
                default: None,
            }],
        }),
        Some(Err(_)) => return,
    };
    for c in CONFIGS.iter().chain(extra.as_ref()) {
        if let Ok(s) = claims::extract(c, &payload) {
            check(&s);
        }
    }
});
