//! Hasura's auth configs as input: v2's `HASURA_GRAPHQL_JWT_SECRET(S)`
//! with its unauthorized role and auth hook, and DDN's `kind: AuthConfig`
//! (v1 to v4). Each is written as an authgate `auth.yaml` that keeps
//! Hasura's behaviour wherever authgate can express it, plus a list of the
//! differences it cannot or deliberately does not keep
//! (docs/migrating-from-hasura.md).

mod ddn;
mod hasura_v2;

pub(crate) use ddn::ddn_config;
pub use ddn::{ddn, is_ddn};
pub use hasura_v2::{HasuraV2, hasura_v2};

use serde_json::Value;
use serde_yaml_ng::{Mapping, Value as Y};

/// An imported config: the `auth.yaml` text and what behaves differently.
#[derive(Debug)]
pub struct Imported {
    pub yaml: String,
    pub differences: Vec<String>,
}

/// Input that cannot be imported: what is wrong, one line each.
#[derive(Debug)]
pub struct Unusable(pub Vec<String>);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for line in &self.0 {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// An empty audience list: Hasura then refuses every token that carries
/// `aud`; authgate reads an empty list as no check, so it is refused.
fn empty_audience(f: &mut Findings, at: &str) {
    f.unusable(format!(
        "{at}: an empty audience list (Hasura refuses every token that carries `aud`; authgate cannot say that): list the audiences, or remove the key"
    ));
}

/// Reads a document to import: JSON or YAML (`json` says which).
pub fn read_document(text: &str, json: bool) -> Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if json {
        serde_json::from_str::<super::reader::Tree>(text)
            .map(|t| t.0)
            .map_err(|e| format!("not valid JSON: {e}"))
    } else {
        serde_yaml_ng::from_str::<super::reader::Tree>(text)
            .map(|t| t.0)
            .map_err(|e| format!("not valid YAML: {e}"))
    }
}

/// Differences and problems found while importing.
#[derive(Default)]
struct Findings {
    differences: Vec<String>,
    problems: Vec<String>,
}

impl Findings {
    fn differ(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.differences.contains(&what) {
            self.differences.push(what);
        }
    }

    fn unusable(&mut self, what: impl Into<String>) {
        self.problems.push(what.into());
    }
}

/// The finished config: `modes` under RelyAuth's envelope.
fn finish(modes: Vec<Y>, f: Findings) -> Result<Imported, Unusable> {
    if !f.problems.is_empty() {
        return Err(Unusable(f.problems));
    }
    if modes.is_empty() {
        return Err(Unusable(vec!["nothing to import: no usable mode".into()]));
    }
    let doc = map([
        ("version", "v1".into()),
        ("kind", "RelyAuth".into()),
        ("definition", map([("modes", Y::Sequence(modes))])),
    ]);
    let yaml = serde_yaml_ng::to_string(&doc).map_err(|e| Unusable(vec![e.to_string()]))?;
    Ok(Imported {
        yaml,
        differences: f.differences,
    })
}

/// A YAML mapping in the order given (authgate's files read top-down).
fn map<const N: usize>(pairs: [(&str, Y); N]) -> Y {
    Y::Mapping(
        pairs
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (Y::String(k.to_owned()), v))
            .collect::<Mapping>(),
    )
}

/// `{value: v}`.
fn literal(v: Y) -> Y {
    map([("value", v)])
}

fn yaml(v: &Value) -> Y {
    serde_yaml_ng::to_value(v).unwrap_or(Y::Null)
}

/// One step of a claim path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(u64),
}

/// A JMESPath expression for `steps` from the claims' root (`@` for the
/// root itself); keys that are not plain identifiers are quoted.
fn jmespath(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "@".into();
    }
    let mut out = String::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Key(k) => {
                if i > 0 {
                    out.push('.');
                }
                let plain = k
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    out.push_str(k);
                } else {
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                }
            }
            Step::Index(n) => out.push_str(&format!("[{n}]")),
        }
    }
    out
}

/// Hasura's JSONPath (its `Data.Parser.JSONPath`): an optional `$`, then
/// elements, each an optional `.` and a name, `[n]`, `['key']` or
/// `["key"]` (quoted keys decoded as JSON strings); no wildcards, filters
/// or slices. `$` alone is the root.
fn hasura_json_path(path: &str) -> Result<Vec<Step>, String> {
    let bad = |why: &str| Err(format!("JSONPath `{path}`: {why}"));
    if path.is_empty() {
        return bad("empty");
    }
    let mut rest = path.strip_prefix('$').unwrap_or(path);
    let mut steps = Vec::new();
    while !rest.is_empty() {
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if let Some(r) = rest.strip_prefix('[') {
            if let Some(q) = r.chars().next().filter(|c| *c == '\'' || *c == '"') {
                // The raw text up to the closing quote, escapes kept.
                let body = &r[1..];
                let mut end = None;
                let mut escaped = false;
                for (i, c) in body.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        c if c == q => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let Some(end) = end else {
                    return bad("unterminated quoted key");
                };
                let raw = &body[..end];
                // As a JSON string: a single-quoted key's `\'` is a quote,
                // its bare `"` needs escaping.
                let json = if q == '\'' {
                    raw.replace("\\'", "'").replace('"', "\\\"")
                } else {
                    raw.to_owned()
                };
                let Ok(key) = serde_json::from_str::<String>(&format!("\"{json}\"")) else {
                    return bad("a quoted key that is not a valid JSON string");
                };
                let Some(r) = body[end + 1..].strip_prefix(']') else {
                    return bad("expected `]` after a quoted key");
                };
                steps.push(Step::Key(key));
                rest = r;
            } else {
                let digits: String = r.chars().take_while(char::is_ascii_digit).collect();
                let Some(after) = r[digits.len()..].strip_prefix(']') else {
                    return bad("expected an index or a quoted key in `[...]`");
                };
                let Ok(n) = digits.parse() else {
                    return bad("expected an index or a quoted key in `[...]`");
                };
                steps.push(Step::Index(n));
                rest = after;
            }
        } else {
            let name: String = rest
                .chars()
                .enumerate()
                .take_while(|(i, c)| {
                    c.is_alphabetic() || *c == '_' || (*i > 0 && (c.is_alphanumeric() || *c == '-'))
                })
                .map(|(_, c)| c)
                .collect();
            if name.is_empty() {
                return bad("expected a name");
            }
            rest = &rest[name.len()..];
            steps.push(Step::Key(name));
        }
    }
    Ok(steps)
}

/// A JSON Pointer (RFC 6901); a step of digits is read as an array index
/// (the pointer alone cannot say), which `numeric` reports.
fn json_pointer(pointer: &str, numeric: &mut bool) -> Result<Vec<Step>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!(
            "JSON Pointer `{pointer}` must start with `/` (or be empty for the whole payload)"
        ));
    };
    Ok(rest
        .split('/')
        .map(|s| {
            let key = s.replace("~1", "/").replace("~0", "~");
            match key.parse::<u64>() {
                Ok(n) if !key.starts_with('+') && (key == "0" || !key.starts_with('0')) => {
                    *numeric = true;
                    Step::Index(n)
                }
                _ => Step::Key(key),
            }
        })
        .collect())
}

/// Hasura's claim-checking differences that hold in both formats.
fn role_header_difference(f: &mut Findings, hasura_status: &str) {
    f.differ(format!(
        "a requested `x-hasura-role` outside the token's allowed roles: Hasura answers {hasura_status}, authgate 403 `role_not_allowed`"
    ));
    f.differ("a token without `x-hasura-allowed-roles`: Hasura refuses it; authgate accepts it with its `x-hasura-default-role` (a requested role is then ignored), and refuses it only without that too");
}

/// `locations` that keep Hasura's role choice: the requested role, else
/// the default one, never an `x-hasura-role` claim of the token.
fn without_role_claim() -> (Y, Y) {
    ("x-hasura-role".into(), map([("path", "`null`".into())]))
}

fn admin_secret_difference(f: &mut Findings) {
    f.differ(
        "the admin secret (`x-hasura-admin-secret`) is deliberately not imported: authgate never turns a shared secret header into the admin role; give administrators tokens with the admin role, or an `apiKey` mode",
    );
}

#[cfg(test)]
mod tests;
