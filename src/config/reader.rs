//! A reader over the raw YAML/JSON tree that remembers where it is.
//!
//! Every problem is recorded with its YAML path and reading goes on, so that
//! `validate` can list all of them at once. Objects track which keys were
//! read; whatever is left over is an unknown key, reported with a suggestion.

use std::fmt;

use serde_json::{Map, Value};

/// A location in the config, printed as `definition.modes[0].key.algorithm`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct YamlPath(String);

impl YamlPath {
    pub fn root() -> Self {
        YamlPath(String::new())
    }

    pub fn key(&self, key: &str) -> Self {
        let simple = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let seg = if simple {
            key.to_owned()
        } else {
            format!("{:?}", key)
        };
        if self.0.is_empty() {
            YamlPath(seg)
        } else if simple {
            YamlPath(format!("{}.{}", self.0, seg))
        } else {
            YamlPath(format!("{}[{}]", self.0, seg))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        YamlPath(format!("{}[{}]", self.0, i))
    }

    pub fn as_str(&self) -> &str {
        if self.0.is_empty() { "(root)" } else { &self.0 }
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a config file. Messages never contain secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: YamlPath,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Collects errors and warnings while a config is read.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Diagnostics {
    pub fn error(&mut self, path: &YamlPath, message: impl Into<String>) {
        self.errors.push(Problem {
            path: path.clone(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, path: &YamlPath, message: impl Into<String>) {
        self.warnings.push(Problem {
            path: path.clone(),
            message: message.into(),
        });
    }
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A mapping being read. Call [`Obj::finish`] when done to report unknown keys.
pub struct Obj<'a> {
    pub path: YamlPath,
    map: &'a Map<String, Value>,
    read: Vec<&'a str>,
}

impl<'a> Obj<'a> {
    /// Opens `v` as a mapping, or records an error and returns `None`.
    pub fn open(d: &mut Diagnostics, path: YamlPath, v: &'a Value) -> Option<Self> {
        match v {
            Value::Object(map) => Some(Obj {
                path,
                map,
                read: Vec::new(),
            }),
            other => {
                d.error(
                    &path,
                    format!("expected a mapping, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An optional key; `null` counts as absent.
    pub fn get(&mut self, key: &str) -> Option<(YamlPath, &'a Value)> {
        let (k, v) = self.map.get_key_value(key)?;
        self.read.push(k.as_str());
        if v.is_null() {
            return None;
        }
        Some((self.path.key(key), v))
    }

    /// A required key: records "missing" when absent.
    pub fn require(&mut self, d: &mut Diagnostics, key: &str) -> Option<(YamlPath, &'a Value)> {
        let got = self.get(key);
        if got.is_none() {
            d.error(&self.path, format!("missing required key `{key}`"));
        }
        got
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn str(&mut self, d: &mut Diagnostics, key: &str) -> Option<&'a str> {
        let (p, v) = self.get(key)?;
        as_str(d, &p, v)
    }

    pub fn bool(&mut self, d: &mut Diagnostics, key: &str) -> Option<bool> {
        let (p, v) = self.get(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                d.error(
                    &p,
                    format!("expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn u64(&mut self, d: &mut Diagnostics, key: &str) -> Option<u64> {
        let (p, v) = self.get(key)?;
        as_u64(d, &p, v)
    }

    /// Reports every key that was never read, with a close match if one exists.
    pub fn finish(self, d: &mut Diagnostics, known: &[&str]) {
        for key in self.map.keys() {
            if self.read.contains(&key.as_str()) {
                continue;
            }
            let mut msg = format!("unknown key `{key}`");
            if let Some(s) = suggest(key, known) {
                msg.push_str(&format!(" (did you mean `{s}`?)"));
            }
            d.error(&self.path.key(key), msg);
        }
    }

    /// The keys of the mapping, in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter()
    }

    /// Marks every key as read (for free-form maps such as session variables).
    pub fn read_all(&mut self) {
        self.read = self.map.keys().map(String::as_str).collect();
    }
}

pub fn as_str<'a>(d: &mut Diagnostics, p: &YamlPath, v: &'a Value) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            d.error(p, format!("expected a string, found {}", type_name(other)));
            None
        }
    }
}

pub fn as_u64(d: &mut Diagnostics, p: &YamlPath, v: &Value) -> Option<u64> {
    match v.as_u64() {
        Some(n) => Some(n),
        None => {
            d.error(
                p,
                format!("expected a non-negative integer, found {}", type_name(v)),
            );
            None
        }
    }
}

/// A list of strings; a single string is accepted as a one-element list.
pub fn as_str_list(d: &mut Diagnostics, p: &YamlPath, v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    other => {
                        ok = false;
                        d.error(
                            &p.index(i),
                            format!("expected a string, found {}", type_name(other)),
                        );
                    }
                }
            }
            ok.then_some(out)
        }
        other => {
            d.error(
                p,
                format!("expected a list of strings, found {}", type_name(other)),
            );
            None
        }
    }
}

fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(dist, k)| *dist <= 2.max(k.len() / 4))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_render_like_yaml_paths() {
        let p = YamlPath::root()
            .key("definition")
            .key("modes")
            .index(2)
            .key("claimsConfig")
            .key("locations")
            .key("x-hasura-user-id");
        assert_eq!(
            p.to_string(),
            "definition.modes[2].claimsConfig.locations.x-hasura-user-id"
        );
        assert_eq!(
            YamlPath::root().key("a").key("b.c").to_string(),
            "a[\"b.c\"]"
        );
    }

    #[test]
    fn unknown_keys_are_reported_with_suggestions() {
        let v = json!({"issuer": "x", "audiance": ["a"]});
        let mut d = Diagnostics::default();
        let mut o = Obj::open(&mut d, YamlPath::root().key("m"), &v).unwrap();
        assert_eq!(o.str(&mut d, "issuer"), Some("x"));
        o.finish(&mut d, &["issuer", "audience"]);
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].path.to_string(), "m.audiance");
        assert!(d.errors[0].message.contains("did you mean `audience`"));
    }
}
