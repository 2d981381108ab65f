//! Verified JWT claims to Hasura session variables (RelyAuth's `claimsConfig`).
//!
//! `namespace` selects an object of session variables; `locations` are
//! evaluated over the whole payload and override it. Only `x-hasura-*`
//! variables survive: anything else in a token would otherwise become an
//! upstream header of the token issuer's choosing.

use jmespath::ast::Ast;
use jmespath::{Expression, Rcvar, Variable};
use serde_json::Value;

use crate::session::{Session, is_hasura_name, is_session_key};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsFormat {
    Json,
    StringifiedJson,
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub expression: ClaimPath,
    pub format: ClaimsFormat,
}

#[derive(Debug, Clone)]
pub struct ClaimLocation {
    /// Lower-case session variable name.
    pub key: String,
    pub path: Option<ClaimPath>,
    pub default: Option<Value>,
}

#[derive(Debug, Clone, Default)]
pub struct ClaimsConfig {
    pub namespace: Option<Namespace>,
    pub locations: Vec<ClaimLocation>,
}

/// Why claims could not be mapped; all are `invalid_token` to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("claims namespace is not a JSON object")]
    NamespaceNotObject,
    #[error("claims namespace is not a string holding a JSON object")]
    NamespaceNotStringifiedObject,
    #[error("JMESPath evaluation failed")]
    Evaluation,
    #[error("session variable name is not a valid header name")]
    InvalidName,
}

/// A compiled JMESPath claim location. Plain field paths (`"a"."b".c`,
/// the usual namespace) are read straight from the payload; any other
/// expression goes through the JMESPath interpreter, which first converts
/// the whole payload (a few microseconds per token).
#[derive(Debug, Clone)]
pub struct ClaimPath {
    expression: Expression<'static>,
    fields: Option<Box<[String]>>,
}

impl ClaimPath {
    pub fn new(expression: Expression<'static>) -> Self {
        let mut fields = Vec::new();
        let fields = collect_fields(expression.as_ast(), &mut fields).then(|| fields.into());
        ClaimPath { expression, fields }
    }

    /// Like [`Self::search`], but a plain field path moves the value out of
    /// the payload instead of copying it (the namespace object of every
    /// newly verified token).
    fn take(&self, payload: &mut Value, data: &mut Option<Rcvar>) -> Result<Value, ClaimsError> {
        if let Some(fields) = &self.fields {
            let mut at = payload;
            for f in fields {
                match at.get_mut(f.as_str()) {
                    Some(v) => at = v,
                    None => return Ok(Value::Null),
                }
            }
            return Ok(std::mem::take(at));
        }
        self.search(payload, data)
    }

    fn search(&self, payload: &Value, data: &mut Option<Rcvar>) -> Result<Value, ClaimsError> {
        if let Some(fields) = &self.fields {
            // JMESPath: a field of a non-object, or a missing field, is null.
            let mut at = payload;
            for f in fields {
                match at.get(f.as_str()) {
                    Some(v) => at = v,
                    None => return Ok(Value::Null),
                }
            }
            return Ok(at.clone());
        }
        let data = match data {
            Some(d) => d,
            None => data.insert(jmespath_input(payload)?),
        };
        evaluate(&self.expression, data)
    }
}

/// A JSON document as the JMESPath interpreter's input.
pub(crate) fn jmespath_input(doc: &Value) -> Result<Rcvar, ClaimsError> {
    Ok(Rcvar::new(
        Variable::from_serializable(doc).map_err(|_| ClaimsError::Evaluation)?,
    ))
}

/// Evaluates a JMESPath expression, with its result as JSON.
pub(crate) fn evaluate(expr: &Expression<'static>, data: &Rcvar) -> Result<Value, ClaimsError> {
    let found = expr.search(data).map_err(|_| ClaimsError::Evaluation)?;
    serde_json::to_value(&*found).map_err(|_| ClaimsError::Evaluation)
}

fn collect_fields(ast: &Ast, out: &mut Vec<String>) -> bool {
    match ast {
        Ast::Field { name, .. } => {
            out.push(name.clone());
            true
        }
        Ast::Subexpr { lhs, rhs, .. } => collect_fields(lhs, out) && collect_fields(rhs, out),
        _ => false,
    }
}

pub fn extract(cfg: &ClaimsConfig, payload: &Value) -> Result<Session, ClaimsError> {
    extract_owned(cfg, payload.clone())
}

/// [`extract`] from a payload it may take apart (the verify path's).
pub fn extract_owned(cfg: &ClaimsConfig, mut payload: Value) -> Result<Session, ClaimsError> {
    let payload = &mut payload;
    let mut data = None;
    let mut session = Session::new();
    if let Some(ns) = &cfg.namespace {
        // Locations read the whole payload afterwards: only then is the
        // namespace copied rather than moved out.
        let found = if cfg.locations.is_empty() {
            ns.expression.take(payload, &mut data)?
        } else {
            ns.expression.search(payload, &mut data)?
        };
        let object = match (ns.format, found) {
            (_, Value::Null) => serde_json::Map::new(),
            (ClaimsFormat::Json, Value::Object(m)) => m,
            (ClaimsFormat::Json, _) => return Err(ClaimsError::NamespaceNotObject),
            (ClaimsFormat::StringifiedJson, Value::String(s)) => {
                match serde_json::from_str::<Value>(&s) {
                    Ok(Value::Object(m)) => m,
                    _ => return Err(ClaimsError::NamespaceNotStringifiedObject),
                }
            }
            (ClaimsFormat::StringifiedJson, _) => {
                return Err(ClaimsError::NamespaceNotStringifiedObject);
            }
        };
        // From the token: only x-hasura-* variables, as Hasura reads them.
        for (k, v) in object {
            if is_hasura_name(&k) {
                if !is_session_key(&k) {
                    return Err(ClaimsError::InvalidName);
                }
                session.insert(k, v);
            }
        }
    }
    for loc in &cfg.locations {
        let found = match &loc.path {
            Some(path) => match path.search(payload, &mut data) {
                Ok(Value::Null) | Err(_) => None,
                Ok(v) => Some(v),
            },
            None => None,
        };
        // No match and no default overrides with null (RelyAuth), i.e. removes.
        let value = found.or_else(|| loc.default.clone()).unwrap_or(Value::Null);
        // Configured names were checked at load.
        session.insert(&loc.key, value);
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{ClaimLocation, Namespace};
    use serde_json::json;

    /// The direct field walk answers exactly what the interpreter answers.
    #[test]
    fn field_paths_match_the_interpreter() {
        let payloads = [
            json!({"a": {"b": {"c": 1}}, "claims.jwt.hasura.io": {"x-hasura-role": "r"}}),
            json!({"a": [1, 2], "claims.jwt.hasura.io": "not an object"}),
            json!({"a": {"b": null}}),
            json!({"a": {"b-c": {"d": [true]}}}),
            json!([1, 2, 3]),
            json!("text"),
        ];
        for expr in [
            r#""claims.jwt.hasura.io""#,
            "a.b",
            "a.b.c",
            r#"a."b-c".d"#,
            "zz",
        ] {
            let fast = ClaimPath::new(jmespath::compile(expr).unwrap());
            assert!(fast.fields.is_some(), "{expr} should take the fast path");
            let slow = ClaimPath {
                fields: None,
                ..fast.clone()
            };
            for p in &payloads {
                assert_eq!(
                    fast.search(p, &mut None).unwrap(),
                    slow.search(p, &mut None).unwrap(),
                    "{expr} on {p}"
                );
            }
        }
        for expr in ["a[0]", "a.b || `1`", "@", "a.*"] {
            let c = ClaimPath::new(jmespath::compile(expr).unwrap());
            assert!(c.fields.is_none(), "{expr} needs the interpreter");
        }
    }

    fn cfg(
        ns: Option<(&str, ClaimsFormat)>,
        locs: &[(&str, Option<&str>, Option<Value>)],
    ) -> ClaimsConfig {
        ClaimsConfig {
            namespace: ns.map(|(e, f)| Namespace {
                expression: ClaimPath::new(jmespath::compile(e).unwrap()),
                format: f,
            }),
            locations: locs
                .iter()
                .map(|(k, p, d)| ClaimLocation {
                    key: k.to_string(),
                    path: p.map(|p| ClaimPath::new(jmespath::compile(p).unwrap())),
                    default: d.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn locations_still_see_the_namespace_object() {
        // With locations the namespace is copied, not moved out: a location
        // may read inside it. Without, a nested namespace moves out whole.
        let payload = json!({"h": {"in": {"x-hasura-role": "r", "id": "7"}}});
        let c = cfg(
            Some(("h.\"in\"", ClaimsFormat::Json)),
            &[("x-hasura-user-id", Some("h.\"in\".id"), None)],
        );
        let s = extract(&c, &payload).unwrap();
        assert_eq!(s.get_str("x-hasura-role"), Some("r"));
        assert_eq!(s.get_str("x-hasura-user-id"), Some("7"));
        let c = cfg(Some(("h.\"in\"", ClaimsFormat::Json)), &[]);
        let s = extract_owned(&c, payload.clone()).unwrap();
        assert_eq!(s.get_str("x-hasura-role"), Some("r"));
        assert_eq!(s.len(), 1);
        let c = cfg(Some(("h.missing", ClaimsFormat::Json)), &[]);
        assert!(extract_owned(&c, payload).unwrap().is_empty());
    }

    #[test]
    fn namespace_then_locations_override() {
        let c = cfg(
            Some((r#""claims.jwt.hasura.io""#, ClaimsFormat::Json)),
            &[
                ("x-hasura-user-id", Some("sub"), None),
                ("x-hasura-org-id", Some("org.id"), Some(json!("none"))),
                ("x-hasura-custom", Some("missing"), None),
            ],
        );
        let payload = json!({
            "sub": "u1",
            "claims.jwt.hasura.io": {
                "X-Hasura-Default-Role": "user",
                "x-hasura-user-id": "ignored",
                "x-hasura-custom": "dropped by the null location",
                "not-hasura": "dropped",
            }
        });
        let s = extract(&c, &payload).unwrap();
        assert_eq!(s.get_str("x-hasura-user-id"), Some("u1"));
        assert_eq!(s.get_str("x-hasura-org-id"), Some("none"));
        assert_eq!(s.get_str("x-hasura-default-role"), Some("user"));
        assert!(!s.contains("x-hasura-custom"));
        assert!(!s.contains("not-hasura"));
    }

    #[test]
    fn stringified_namespace() {
        let c = cfg(Some(("hasura", ClaimsFormat::StringifiedJson)), &[]);
        let s = extract(&c, &json!({"hasura": "{\"x-hasura-role\":\"r\"}"})).unwrap();
        assert_eq!(s.get_str("x-hasura-role"), Some("r"));
        assert_eq!(
            extract(&c, &json!({"hasura": {"x-hasura-role": "r"}})),
            Err(ClaimsError::NamespaceNotStringifiedObject)
        );
        let c = cfg(Some(("hasura", ClaimsFormat::Json)), &[]);
        assert_eq!(
            extract(&c, &json!({"hasura": "x"})),
            Err(ClaimsError::NamespaceNotObject)
        );
        // A missing namespace is an empty map.
        assert!(extract(&c, &json!({})).unwrap().is_empty());
    }

    #[test]
    fn bad_variable_names_are_refused() {
        let c = cfg(Some(("h", ClaimsFormat::Json)), &[]);
        assert_eq!(
            extract(&c, &json!({"h": {"x-hasura-a b": "1"}})),
            Err(ClaimsError::InvalidName)
        );
    }
}
