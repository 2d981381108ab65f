//! A reader over the raw YAML/JSON tree that remembers where it is.
//!
//! Every problem is recorded with its YAML path and reading goes on, so that
//! `validate` can list all of them at once. Objects track which keys were
//! read; whatever is left over is an unknown key, reported with a suggestion.

use std::fmt;

use serde_json::{Map, Value};

/// A location in the config, printed as `definition.modes[0].key.algorithm`.
///
/// Modes are shown by their `id` when they have one
/// (`definition.modes[my-jwt].key`); the index-only form stays alongside, as
/// the key into the file's [`Positions`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct YamlPath {
    shown: String,
    located: String,
    /// Length of `located` at each ancestor, for the nearest known position.
    ancestors: Vec<usize>,
}

fn segment(key: &str) -> (String, bool) {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if simple {
        (key.to_owned(), true)
    } else {
        (format!("{key:?}"), false)
    }
}

impl YamlPath {
    pub fn root() -> Self {
        YamlPath::default()
    }

    fn push(&self, shown: &str, located: &str) -> Self {
        let mut ancestors = self.ancestors.clone();
        ancestors.push(self.located.len());
        YamlPath {
            shown: format!("{}{shown}", self.shown),
            located: format!("{}{located}", self.located),
            ancestors,
        }
    }

    pub fn key(&self, key: &str) -> Self {
        let (seg, simple) = segment(key);
        let seg = if self.located.is_empty() {
            seg
        } else if simple {
            format!(".{seg}")
        } else {
            format!("[{seg}]")
        };
        self.push(&seg, &seg)
    }

    pub fn index(&self, i: usize) -> Self {
        let seg = format!("[{i}]");
        self.push(&seg, &seg)
    }

    /// The `i`-th item, shown by its name (a mode's `id`); a name that
    /// reads as a number is quoted, so that it is not taken for a position.
    pub fn named_index(&self, i: usize, name: &str) -> Self {
        let shown = if name.bytes().all(|b| b.is_ascii_digit()) {
            format!("{name:?}")
        } else {
            segment(name).0
        };
        self.push(&format!("[{shown}]"), &format!("[{i}]"))
    }

    pub fn as_str(&self) -> &str {
        if self.shown.is_empty() {
            "(root)"
        } else {
            &self.shown
        }
    }

    /// This path and its ancestors, nearest first, in their index-only form.
    fn located_chain(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.located.as_str())
            .chain(self.ancestors.iter().rev().map(|&n| &self.located[..n]))
    }
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line and column in the file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// An error makes the file invalid; a warning does not, unless
/// `validate --strict` asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem in a config file. Messages never contain secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: YamlPath,
    pub message: String,
    /// Where in the file, when the parser knows it.
    pub location: Option<Location>,
    pub severity: Severity,
}

impl Problem {
    pub fn error(path: YamlPath, message: impl Into<String>) -> Self {
        Problem {
            path,
            message: message.into(),
            location: None,
            severity: Severity::Error,
        }
    }

    pub fn at_root(message: impl Into<String>, location: Option<Location>) -> Self {
        Problem {
            location,
            ..Problem::error(YamlPath::root(), message)
        }
    }

    /// `FILE:LINE:COLUMN: error: PATH: message` (or `warning:`), the form
    /// compilers use, so that editors and CI annotations can jump to the
    /// line. `strict` prints warnings as the errors they then are.
    pub fn render(&self, file: &str, strict: bool) -> String {
        let severity = match self.severity {
            Severity::Warning if !strict => "warning",
            _ => "error",
        };
        match self.location {
            Some(at) => format!("{file}:{at}: {severity}: {self}"),
            None => format!("{file}: {severity}: {self}"),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Where each key and list item of a file starts, by index-only YAML path.
#[derive(Debug, Default)]
pub struct Positions(std::collections::HashMap<String, Location>);

impl Positions {
    /// The position of `path`, or of its nearest ancestor the file has.
    pub fn find(&self, path: &YamlPath) -> Option<Location> {
        path.located_chain().find_map(|p| self.0.get(p).copied())
    }

    /// Fills in every problem's location and puts them in file order
    /// (problems without a location, about the whole file, first).
    pub fn place(&self, problems: &mut [Problem]) {
        for p in problems.iter_mut() {
            if p.location.is_none() {
                p.location = self.find(&p.path);
            }
        }
        problems.sort_by_key(|p| p.location);
    }
}

/// Deepest nesting the position scan follows (the config has a few levels;
/// a deeper file is refused by the parser anyway).
const MAX_SCAN_DEPTH: usize = 64;

/// Scans `text` (YAML, or JSON, which is YAML's flow style) for the position
/// of every key and item, and reports keys repeated in one mapping. Best
/// effort: a file this scanner cannot read yields what it found so far, and
/// the value parser reports the syntax error.
pub fn scan(text: &str) -> (Positions, Vec<Problem>) {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let mut positions = Positions::default();
    let mut duplicates = Vec::new();
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) | Err(_) => break,
            Ok((ev @ (Event::MappingStart(..) | Event::SequenceStart(..)), _)) => {
                let root = Some(YamlPath::root());
                if node(&mut parser, &ev, root, 0, &mut positions, &mut duplicates).is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    (positions, duplicates)
}

type Events<'a> = yaml_rust2::parser::Parser<std::str::Chars<'a>>;

/// Passes over the node whose first event is `first` without looking
/// inside (no recursion: a deep node costs no stack).
fn skip(parser: &mut Events<'_>, first: &yaml_rust2::parser::Event) -> Result<(), ()> {
    use yaml_rust2::parser::Event;
    let mut open = match first {
        Event::MappingStart(..) | Event::SequenceStart(..) => 1usize,
        _ => return Ok(()),
    };
    while open > 0 {
        match parser.next_token().map_err(drop)?.0 {
            Event::MappingStart(..) | Event::SequenceStart(..) => open += 1,
            Event::MappingEnd | Event::SequenceEnd => open -= 1,
            Event::StreamEnd => return Err(()),
            _ => {}
        }
    }
    Ok(())
}

/// Walks one node whose first event is `first`; `path` is `None` inside
/// complex keys, where no config path leads.
fn node(
    parser: &mut Events<'_>,
    first: &yaml_rust2::parser::Event,
    path: Option<YamlPath>,
    depth: usize,
    positions: &mut Positions,
    duplicates: &mut Vec<Problem>,
) -> Result<(), ()> {
    use yaml_rust2::parser::Event;
    if depth > MAX_SCAN_DEPTH {
        return skip(parser, first);
    }
    // yaml-rust2 counts lines from 1 and columns from 0.
    let at = |m: yaml_rust2::scanner::Marker| Location {
        line: m.line(),
        column: m.col() + 1,
    };
    match first {
        Event::SequenceStart(..) => {
            for i in 0.. {
                let (ev, mark) = parser.next_token().map_err(drop)?;
                if matches!(ev, Event::SequenceEnd) {
                    break;
                }
                let item = path.as_ref().map(|p| p.index(i));
                if let Some(item) = &item {
                    positions.0.insert(item.located.clone(), at(mark));
                }
                node(parser, &ev, item, depth + 1, positions, duplicates)?;
            }
        }
        Event::MappingStart(..) => {
            let mut seen = std::collections::HashSet::new();
            loop {
                let (key, mark) = parser.next_token().map_err(drop)?;
                let child = match &key {
                    Event::MappingEnd => break,
                    Event::Scalar(name, ..) => path.as_ref().map(|p| {
                        // A block mapping's start is marked at its first `:`;
                        // its first key is where a reader sees it begin.
                        if seen.is_empty() {
                            let first = at(mark);
                            positions
                                .0
                                .entry(p.located.clone())
                                .and_modify(|l| *l = (*l).min(first))
                                .or_insert(first);
                        }
                        let child = p.key(name);
                        if seen.insert(name.clone()) {
                            positions.0.insert(child.located.clone(), at(mark));
                        } else {
                            let first = positions
                                .find(&child)
                                .map_or_else(String::new, |l| l.to_string());
                            duplicates.push(Problem {
                                location: Some(at(mark)),
                                ..Problem::error(
                                    child.clone(),
                                    format!(
                                        "duplicate key `{name}` (a mapping takes each key once; the first is at {first})"
                                    ),
                                )
                            });
                        }
                        child
                    }),
                    complex => {
                        node(parser, complex, None, depth + 1, positions, duplicates)?;
                        None
                    }
                };
                let (value, _) = parser.next_token().map_err(drop)?;
                node(parser, &value, child, depth + 1, positions, duplicates)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Collects errors and warnings while a config is read.
#[derive(Debug, Default)]
pub struct Diagnostics {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Diagnostics {
    pub fn error(&mut self, path: &YamlPath, message: impl Into<String>) {
        self.errors.push(Problem::error(path.clone(), message));
    }

    pub fn warn(&mut self, path: &YamlPath, message: impl Into<String>) {
        self.warnings.push(Problem {
            severity: Severity::Warning,
            ..Problem::error(path.clone(), message)
        });
    }
}

/// The parsed file as a JSON tree, refusing a key repeated in one mapping:
/// YAML (1.2, section 3.2.1.1) and JSON (RFC 8259, section 4: names
/// "SHOULD be unique") parsers otherwise keep the last value silently, and a
/// second `x-hasura-role` or `definition:` would replace the first unseen.
#[derive(Debug)]
pub struct Tree(pub Value);

impl<'de> serde::Deserialize<'de> for Tree {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor).map(Tree)
    }
}

struct TreeVisitor;

impl<'de> serde::de::Visitor<'de> for TreeVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // NaN and infinities have no JSON form: null, as serde_json does.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(TreeVisitor)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Tree(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Tree(value) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
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

/// A mapping being read. Call [`Obj::finish`] when done to report unknown
/// keys: the keys asked for are remembered, so each is named once, where
/// it is read.
pub struct Obj<'a> {
    pub path: YamlPath,
    map: &'a Map<String, Value>,
    read: Vec<&'a str>,
    /// Every key asked for, present or not: what an unknown key may be a
    /// misspelling of.
    asked: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// Opens `v` as a mapping, or records an error and returns `None`.
    pub fn open(d: &mut Diagnostics, path: YamlPath, v: &'a Value) -> Option<Self> {
        match v {
            Value::Object(map) => Some(Obj {
                path,
                map,
                read: Vec::new(),
                asked: Vec::new(),
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
    pub fn get(&mut self, key: &'static str) -> Option<(YamlPath, &'a Value)> {
        if !self.asked.contains(&key) {
            self.asked.push(key);
        }
        let (k, v) = self.map.get_key_value(key)?;
        self.read.push(k.as_str());
        if v.is_null() {
            return None;
        }
        Some((self.path.key(key), v))
    }

    /// A required key: records "missing" when absent.
    pub fn require(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
    ) -> Option<(YamlPath, &'a Value)> {
        let got = self.get(key);
        if got.is_none() {
            d.error(&self.path, format!("missing required key `{key}`"));
        }
        got
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn str(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<&'a str> {
        let (p, v) = self.get(key)?;
        as_str(d, &p, v)
    }

    pub fn bool(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<bool> {
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

    pub fn u64(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<u64> {
        let (p, v) = self.get(key)?;
        as_u64(d, &p, v)
    }

    /// Reads RelyAuth keys that authgate accepts but does not act on: each
    /// one present is a warning (an error under `validate --strict`).
    pub fn no_effect(&mut self, d: &mut Diagnostics, keys: &[&'static str], why: &str) {
        for key in keys {
            if let Some((p, _)) = self.get(key) {
                d.warn(
                    &p,
                    format!(
                        "accepted for RelyAuth compatibility; it has no effect in authgate{why}"
                    ),
                );
            }
        }
    }

    /// Reports every key that was never read, with a close match among the
    /// keys asked for if one exists.
    pub fn finish(self, d: &mut Diagnostics) {
        let known = &self.asked;
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

    /// [`Obj::finish`] for mappings that hold secrets (`{value: ...}`): an
    /// unknown key is named only when it is a misspelling of a known one
    /// (`valu`); any other may be the secret itself (`{value:s3cret}`, no
    /// space after the colon, is one key) and is counted, not shown.
    pub fn finish_hiding_keys(self, d: &mut Diagnostics) {
        let known = &self.asked;
        let mut unknown = 0;
        for key in self.map.keys() {
            if self.read.contains(&key.as_str()) {
                continue;
            }
            match suggest(key, known) {
                Some(s) => d.error(
                    &self.path.key(key),
                    format!("unknown key `{key}` (did you mean `{s}`?)"),
                ),
                None => unknown += 1,
            }
        }
        if unknown > 0 {
            let expected = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(" or ");
            d.error(
                &self.path,
                format!(
                    "{unknown} unknown key{} (not shown: it may hold a secret); expected {expected}, with a space after the colon",
                    if unknown == 1 { "" } else { "s" }
                ),
            );
        }
    }

    /// The keys of the mapping, sorted (problems are put back into file
    /// order by their positions).
    pub fn entries(&self) -> impl Iterator<Item = (&'a String, &'a Value)> {
        self.map.iter()
    }

    /// Reports keys that differ only in ASCII case, for mappings whose keys
    /// are header or session-variable names (case-insensitive, so two
    /// spellings would silently set one name twice). Every spelling is
    /// reported at its own line. True when there is none.
    pub fn no_case_duplicates(&self, d: &mut Diagnostics, what: &str) -> bool {
        let mut groups: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for key in self.map.keys() {
            groups
                .entry(key.to_ascii_lowercase())
                .or_default()
                .push(key.as_str());
        }
        let mut ok = true;
        for spellings in groups.values().filter(|g| g.len() > 1) {
            ok = false;
            let all = spellings
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            for key in spellings {
                d.error(
                    &self.path.key(key),
                    format!(
                        "{all} name the same {what} ({what} names are case-insensitive): keep one"
                    ),
                );
            }
        }
        ok
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
    fn modes_are_shown_by_name_and_located_by_index() {
        let p = YamlPath::root()
            .key("definition")
            .key("modes")
            .named_index(1, "main jwt")
            .key("key");
        assert_eq!(p.to_string(), "definition.modes[\"main jwt\"].key");
        let chain: Vec<&str> = p.located_chain().collect();
        assert_eq!(
            chain,
            [
                "definition.modes[1].key",
                "definition.modes[1]",
                "definition.modes",
                "definition",
                ""
            ]
        );
    }

    #[test]
    fn scan_finds_keys_items_and_duplicates() {
        let text = "a:\n  b: [x, {c: 1}]\n  'd': &anchor {e: 2}\n  f: *anchor\n  ? [complex, key]\n  : {g: 3}\n  \"d\": again\n";
        let (pos, dups) = scan(text);
        let at = |p: &YamlPath| pos.find(p).map(|l| (l.line, l.column));
        let a = YamlPath::root().key("a");
        assert_eq!(at(&a), Some((1, 1)));
        assert_eq!(at(&a.key("b")), Some((2, 3)));
        assert_eq!(at(&a.key("b").index(1).key("c")), Some((2, 11)));
        assert_eq!(at(&a.key("d").key("e")), Some((3, 17)));
        // Unknown paths fall back to their nearest ancestor.
        assert_eq!(at(&a.key("b").index(7)), Some((2, 3)));
        // Quoted and plain spellings of one key are one key.
        assert_eq!(dups.len(), 1, "{dups:?}");
        assert_eq!(dups[0].path.to_string(), "a.d");
        assert_eq!(dups[0].location, Some(Location { line: 7, column: 3 }));
    }

    #[test]
    fn scan_survives_what_it_cannot_read() {
        for text in [
            "",
            "a: [",
            "{",
            "a: b: c",
            "- - - -",
            "\u{feff}a: 1",
            "%YAML 9.9\n---\na: 1",
        ] {
            let _ = scan(text);
        }
        // Deeper than the scan follows: no stack overflow, no false duplicates.
        let deep = "[".repeat(10_000);
        let (_, dups) = scan(&deep);
        assert!(dups.is_empty());
        let deep = format!("{}1{}", "{a: ".repeat(200), "}".repeat(200));
        let (_, dups) = scan(&deep);
        assert!(dups.is_empty());
    }

    #[test]
    fn trees_refuse_duplicate_keys_in_json_and_yaml() {
        let json = r#"{"a": {"b": 1, "b": 2}}"#;
        let err = serde_json::from_str::<Tree>(json).expect_err("refused");
        assert!(err.to_string().contains("duplicate key `b`"), "{err}");
        let err = serde_yaml_ng::from_str::<Tree>("a:\n  b: 1\n  b: 2\n").expect_err("refused");
        assert!(err.to_string().contains("duplicate key `b`"), "{err}");
        let Tree(v) = serde_yaml_ng::from_str("a: [1, -2, 1.5, true, null, x]").unwrap();
        assert_eq!(v, json!({"a": [1, -2, 1.5, true, null, "x"]}));
    }

    #[test]
    fn unknown_keys_are_reported_with_suggestions() {
        let v = json!({"issuer": "x", "audiance": ["a"]});
        let mut d = Diagnostics::default();
        let mut o = Obj::open(&mut d, YamlPath::root().key("m"), &v).unwrap();
        assert_eq!(o.str(&mut d, "issuer"), Some("x"));
        assert_eq!(o.get("audience"), None);
        o.finish(&mut d);
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].path.to_string(), "m.audiance");
        assert!(d.errors[0].message.contains("did you mean `audience`"));
    }
}
