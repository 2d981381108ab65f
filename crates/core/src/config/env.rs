//! RelyAuth's `{value | env}` wrappers.
//!
//! A non-empty environment variable wins; otherwise `value` is the fallback.
//! Naming an unset variable with no fallback is an error at load, so a typo
//! in a variable name cannot silently turn into an empty secret. Messages
//! name the variable, never its content.

use serde_json::Value;

use super::reader::{Diagnostics, Obj, YamlPath, as_str_list, type_name};

/// Where `{env: NAME}` is looked up; a trait so tests can supply their own.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// What a `{value|env}` mapping resolved to before typing.
enum Resolved<'a> {
    FromEnv(String, String),
    Literal(&'a Value),
}

fn resolve<'a>(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: &YamlPath,
    v: &'a Value,
) -> Option<Resolved<'a>> {
    let mut o = Obj::open(d, path.clone(), v)?;
    let literal = o.get("value").map(|(_, v)| v);
    let name = o.str(d, "env");
    o.finish_hiding_keys(d);
    if let Some(name) = name {
        match env.var(name) {
            Some(val) if !val.is_empty() => return Some(Resolved::FromEnv(name.to_owned(), val)),
            found => {
                if literal.is_none() {
                    let state = if found.is_some() {
                        "is empty"
                    } else {
                        "is not set"
                    };
                    d.error(
                        path,
                        format!(
                            "environment variable `{name}` {state} and no `value` fallback is given"
                        ),
                    );
                    return None;
                }
            }
        }
    }
    match literal {
        Some(v) => Some(Resolved::Literal(v)),
        None => {
            if name.is_none() {
                d.error(path, "expected `value` or `env`");
            }
            None
        }
    }
}

/// `EnvString`: a string from `value` or the environment.
pub fn env_string(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: &YamlPath,
    v: &Value,
) -> Option<String> {
    match resolve(d, env, path, v)? {
        Resolved::FromEnv(_, s) => Some(s),
        Resolved::Literal(Value::String(s)) => Some(s.clone()),
        Resolved::Literal(other) => {
            d.error(
                &path.key("value"),
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    }
}

/// `EnvAny`: any JSON value; environment content must be JSON (`"admin"`, `[1,2]`).
pub fn env_any(d: &mut Diagnostics, env: &dyn Env, path: &YamlPath, v: &Value) -> Option<Value> {
    match resolve(d, env, path, v)? {
        Resolved::FromEnv(name, s) => match serde_json::from_str(&s) {
            Ok(v) => Some(v),
            Err(_) => {
                d.error(
                    path,
                    format!(
                        "environment variable `{name}` must hold JSON (a string is written with quotes, e.g. \"admin\")"
                    ),
                );
                None
            }
        },
        Resolved::Literal(v) => Some(v.clone()),
    }
}

/// `EnvStringSlice`: a list from `value`, or a comma-separated variable.
pub fn env_string_list(
    d: &mut Diagnostics,
    env: &dyn Env,
    path: &YamlPath,
    v: &Value,
) -> Option<Vec<String>> {
    match resolve(d, env, path, v)? {
        Resolved::FromEnv(_, s) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Resolved::Literal(v) => as_str_list(d, &path.key("value"), v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("secret".into()),
            "EMPTY" => Some(String::new()),
            "JSON" => Some("[1,2]".into()),
            "LIST" => Some("a, b,,c".into()),
            _ => None,
        }
    }

    #[test]
    fn env_wins_then_value() {
        let mut d = Diagnostics::default();
        let p = YamlPath::root().key("k");
        assert_eq!(
            env_string(&mut d, &env, &p, &json!({"env": "SET", "value": "x"})).as_deref(),
            Some("secret")
        );
        assert_eq!(
            env_string(&mut d, &env, &p, &json!({"env": "EMPTY", "value": "x"})).as_deref(),
            Some("x")
        );
        assert_eq!(
            env_string(&mut d, &env, &p, &json!({"env": "UNSET", "value": "x"})).as_deref(),
            Some("x")
        );
        assert!(d.errors.is_empty());
        assert_eq!(env_string(&mut d, &env, &p, &json!({"env": "UNSET"})), None);
        assert!(d.errors[0].message.contains("`UNSET` is not set"));
        assert_eq!(env_string(&mut d, &env, &p, &json!({})), None);
        assert_eq!(env_string(&mut d, &env, &p, &json!({"valu": "x"})), None);
        assert!(
            d.errors
                .iter()
                .any(|e| e.message.contains("unknown key `valu`"))
        );
    }

    #[test]
    fn env_any_parses_json() {
        let mut d = Diagnostics::default();
        let p = YamlPath::root();
        assert_eq!(
            env_any(&mut d, &env, &p, &json!({"env": "JSON"})),
            Some(json!([1, 2]))
        );
        assert_eq!(env_any(&mut d, &env, &p, &json!({"env": "SET"})), None);
        assert!(d.errors[0].message.contains("must hold JSON"));
        assert!(!d.errors[0].message.contains("secret"));
        assert_eq!(
            env_any(&mut d, &env, &p, &json!({"value": {"a": 1}})),
            Some(json!({"a": 1}))
        );
    }

    #[test]
    fn lists_split_on_commas() {
        let mut d = Diagnostics::default();
        let p = YamlPath::root();
        assert_eq!(
            env_string_list(&mut d, &env, &p, &json!({"env": "LIST"})),
            Some(vec!["a".into(), "b".into(), "c".into()])
        );
    }
}
