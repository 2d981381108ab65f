//! Hasura session variables and their rendering.
//!
//! A session is what a credential proved, as Hasura session variables: keys
//! are case-insensitive (stored in lower case), values are JSON. Front doors
//! render the values either as Hasura strings (headers, `/auth/hasura`) or as
//! typed JSON (`/auth/ddn`).

use std::borrow::Cow;

use serde_json::Value;

pub const ROLE: &str = "x-hasura-role";
pub const ALLOWED_ROLES: &str = "x-hasura-allowed-roles";
pub const DEFAULT_ROLE: &str = "x-hasura-default-role";
pub const USER_ID: &str = "x-hasura-user-id";
pub const ELEVATED: &str = "x-hasura-auth-elevated";

/// An `x-hasura-*` name that is a valid header name: what a token's claims
/// namespace may contribute (Hasura reads nothing else from a token).
pub fn is_session_key(k: &str) -> bool {
    is_hasura_name(k) && k.bytes().all(is_header_name_byte)
}

pub fn is_hasura_name(k: &str) -> bool {
    // Bytes, not `str`: byte 9 may fall inside a character (`x-Hasura̛…`).
    k.len() > "x-hasura-".len()
        && k.as_bytes()[.."x-hasura-".len()].eq_ignore_ascii_case(b"x-hasura-")
}

/// Headers no session variable may set: framing, routing and hop-by-hop
/// headers belong to the proxy, not to an authorization answer.
const FORBIDDEN_VARIABLES: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "cookie",
];

/// Whether `k` may be a session variable named by the operator (config
/// `sessionVariables`, claim `locations`, webhook answers): any valid header
/// name except the proxy's own headers.
pub fn check_variable_name(k: &str) -> Result<(), String> {
    if k.is_empty() || !k.bytes().all(is_header_name_byte) {
        return Err(format!("`{k}` is not a valid header name"));
    }
    if FORBIDDEN_VARIABLES
        .iter()
        .any(|f| f.eq_ignore_ascii_case(k))
    {
        return Err(format!(
            "`{k}` cannot be a session variable: it is a header of the proxy"
        ));
    }
    Ok(())
}

pub fn is_header_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Session variables, lower-case keys, sorted so output is deterministic.
/// A sorted vector, not a map: sessions hold a handful of variables, and
/// each one sits in the verified-token cache (a B-tree node alone is ~600
/// bytes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    vars: Vec<(String, Value)>,
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.vars.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Inserts a variable; the key is lower-cased (an owned key is reused).
    /// `null` values are dropped: a null cannot be expressed as a Hasura
    /// session string.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) {
        let mut key = key.into();
        key.make_ascii_lowercase();
        match (self.find(&key), value.is_null()) {
            (Ok(i), true) => {
                self.vars.remove(i);
            }
            (Ok(i), false) => self.vars[i].1 = value,
            (Err(_), true) => {}
            (Err(i), false) => self.vars.insert(i, (key, value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.vars[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.find(key).ok().map(|i| self.vars.remove(i).1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// A compact encoding for the verified-token cache: one allocation
    /// (JSON pairs, in order) instead of one per key and value.
    pub fn to_compact(&self) -> Box<str> {
        serde_json::to_string(&self.vars)
            .unwrap_or_default()
            .into_boxed_str()
    }

    /// The inverse of [`Session::to_compact`].
    pub fn from_compact(text: &str) -> Option<Session> {
        serde_json::from_str(text).ok().map(|vars| Session { vars })
    }

    /// The user id as text (numbers are accepted, as Hasura does).
    pub fn user_id(&self) -> Option<String> {
        self.user_id_text().map(Cow::into_owned)
    }

    /// [`Session::user_id`], borrowed when it is a string.
    pub fn user_id_text(&self) -> Option<Cow<'_, str>> {
        match self.get(USER_ID)? {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            _ => None,
        }
    }

    /// Typed JSON object (`/auth/ddn`, `check` output).
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }
}

/// Why role resolution refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleError {
    /// The requested or claimed role is not among the allowed roles.
    NotAllowed,
    /// The session names no role at all (a token without `x-hasura-default-role`).
    Missing,
}

/// Applies Hasura's role semantics in place.
///
/// With `x-hasura-allowed-roles`, the client's `x-hasura-role` header selects
/// among them, else the session's `x-hasura-role`, else the default role; the
/// result must be allowed. Without allowed roles (apiKey, noAuth, webhook
/// answers) the header is ignored. The allowed/default role variables are
/// consumed, never forwarded.
pub fn resolve_role(session: &mut Session, requested: Option<&str>) -> Result<(), RoleError> {
    let allowed = session.remove(ALLOWED_ROLES);
    let default = session.remove(DEFAULT_ROLE);
    let claimed = session.remove(ROLE);
    let as_role = |v: Option<Value>| match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let claimed = as_role(claimed);
    let default = as_role(default);
    let role = match allowed {
        Some(allowed) => {
            let requested = requested.map(str::trim).filter(|r| !r.is_empty());
            let role = match requested {
                Some(r) => r.to_owned(),
                None => claimed.or(default).ok_or(RoleError::Missing)?,
            };
            if !role_allowed(&allowed, &role) {
                return Err(RoleError::NotAllowed);
            }
            role
        }
        None => claimed.or(default).ok_or(RoleError::Missing)?,
    };
    session.insert(ROLE, Value::String(role));
    Ok(())
}

/// Whether `x-hasura-allowed-roles` lists `role`: a JSON array of strings,
/// or a Postgres array literal string (`{a,b}`) as webhooks and stringified
/// claims send it (a plain string is a list of one).
pub fn role_allowed(allowed: &Value, role: &str) -> bool {
    match allowed {
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(role)),
        Value::String(s) => match parse_pg_array(s) {
            Some(items) => items.iter().any(|i| i == role),
            None => s == role,
        },
        _ => false,
    }
}

/// Parses a one-dimensional Postgres array literal of text.
fn parse_pg_array(s: &str) -> Option<Vec<String>> {
    let inner = s.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut item = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '\\' => item.push(chars.next()?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '}' || c == '"' {
                    return None;
                }
                item.push(c);
                chars.next();
            }
            item = item.trim().to_owned();
        }
        out.push(item);
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// Renders a session value as a Hasura string: scalars as text, arrays as
/// Postgres array literals, objects as compact JSON.
pub fn hasura_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let mut out = String::new();
            pg_array(items, &mut out);
            out
        }
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn pg_array(items: &[Value], out: &mut String) {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Array(inner) => pg_array(inner, out),
            Value::Null => out.push_str("NULL"),
            Value::String(s) => pg_element(s, out),
            other => pg_element(&other.to_string(), out),
        }
    }
    out.push('}');
}

fn pg_element(s: &str, out: &mut String) {
    let needs_quotes = s.is_empty()
        || s.eq_ignore_ascii_case("null")
        || s.chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if !needs_quotes {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Whether `s` can be sent as an HTTP header value: no control characters
/// (CR, LF, NUL, DEL...). Tabs are allowed, as RFC 9110 allows them.
pub fn is_valid_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorted_insert_replace_remove_and_compact_round_trip() {
        let mut s = Session::new();
        s.insert("X-Hasura-User-Id", json!("u1"));
        s.insert("x-hasura-allowed-roles", json!(["user", "admin"]));
        s.insert("x-hasura-default-role", json!("user"));
        s.insert("x-hasura-org", json!({"id": 7, "name": "a\"b"}));
        s.insert("x-hasura-user-id", json!(42));
        s.insert("x-hasura-gone", json!("x"));
        s.insert("x-hasura-gone", Value::Null);
        let keys: Vec<&str> = s.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "x-hasura-allowed-roles",
                "x-hasura-default-role",
                "x-hasura-org",
                "x-hasura-user-id"
            ]
        );
        assert_eq!(s.user_id().as_deref(), Some("42"));
        let back = Session::from_compact(&s.to_compact()).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            s.remove("x-hasura-org"),
            Some(json!({"id": 7, "name": "a\"b"}))
        );
        assert!(!s.contains("x-hasura-org") && s.len() == 3);
        assert!(Session::from_compact("not json").is_none());
    }

    fn session(v: Value) -> Session {
        let mut s = Session::new();
        for (k, v) in v.as_object().unwrap() {
            s.insert(k, v.clone());
        }
        s
    }

    #[test]
    fn keys_are_case_insensitive() {
        let s = session(json!({"X-Hasura-User-Id": "1"}));
        assert_eq!(s.get_str("x-hasura-user-id"), Some("1"));
    }

    #[test]
    fn role_from_default_header_and_claim() {
        let base =
            json!({"x-hasura-allowed-roles": ["user", "admin"], "x-hasura-default-role": "user"});
        let mut s = session(base.clone());
        resolve_role(&mut s, None).unwrap();
        assert_eq!(s.get_str(ROLE), Some("user"));
        assert!(!s.contains(ALLOWED_ROLES) && !s.contains(DEFAULT_ROLE));

        let mut s = session(base.clone());
        resolve_role(&mut s, Some("admin")).unwrap();
        assert_eq!(s.get_str(ROLE), Some("admin"));

        let mut s = session(base.clone());
        assert_eq!(
            resolve_role(&mut s, Some("root")),
            Err(RoleError::NotAllowed)
        );

        // Roles are case-sensitive, as in Hasura.
        let mut s = session(base);
        assert_eq!(
            resolve_role(&mut s, Some("Admin")),
            Err(RoleError::NotAllowed)
        );

        let mut s = session(
            json!({"x-hasura-allowed-roles": ["user"], "x-hasura-role": "user", "x-hasura-default-role": "x"}),
        );
        resolve_role(&mut s, None).unwrap();
        assert_eq!(s.get_str(ROLE), Some("user"));

        let mut s =
            session(json!({"x-hasura-allowed-roles": ["user"], "x-hasura-default-role": "admin"}));
        assert_eq!(resolve_role(&mut s, None), Err(RoleError::NotAllowed));

        let mut s = session(json!({"x-hasura-allowed-roles": ["user"]}));
        assert_eq!(resolve_role(&mut s, None), Err(RoleError::Missing));
    }

    #[test]
    fn header_ignored_without_allowed_roles() {
        let mut s = session(json!({"x-hasura-role": "service"}));
        resolve_role(&mut s, Some("admin")).unwrap();
        assert_eq!(s.get_str(ROLE), Some("service"));
        let mut s = session(json!({"x-hasura-user-id": "1"}));
        assert_eq!(resolve_role(&mut s, Some("admin")), Err(RoleError::Missing));
    }

    #[test]
    fn allowed_roles_as_pg_literal() {
        let mut s = session(
            json!({"x-hasura-allowed-roles": "{user,\"a b\"}", "x-hasura-default-role": "user"}),
        );
        resolve_role(&mut s, Some("a b")).unwrap();
        assert_eq!(s.get_str(ROLE), Some("a b"));
    }

    #[test]
    fn renders_hasura_strings() {
        assert_eq!(hasura_string(&json!("x")), "x");
        assert_eq!(hasura_string(&json!(12)), "12");
        assert_eq!(hasura_string(&json!(true)), "true");
        assert_eq!(hasura_string(&json!(["a", "b"])), "{a,b}");
        assert_eq!(
            hasura_string(&json!(["a b", "", "x,y", "q\"", "null", 1, null])),
            r#"{"a b","","x,y","q\"","null",1,NULL}"#
        );
        assert_eq!(hasura_string(&json!([["a"], ["b"]])), "{{a},{b}}");
        assert_eq!(hasura_string(&json!({"a": 1})), r#"{"a":1}"#);
    }

    #[test]
    fn pg_array_round_trip() {
        let v = json!(["a", "b c", "d,e", "f\\g", "h\"i"]);
        let text = hasura_string(&v);
        let parsed = parse_pg_array(&text).unwrap();
        assert_eq!(json!(parsed), v);
    }

    #[test]
    fn header_value_validity() {
        assert!(is_valid_header_value("abc déf\t"));
        assert!(!is_valid_header_value("a\r\nx-evil: 1"));
        assert!(!is_valid_header_value("a\0"));
        assert!(!is_valid_header_value("a\u{7f}"));
    }
}
