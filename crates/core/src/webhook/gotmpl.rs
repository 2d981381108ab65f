//! Go templates (RelyAuth's `gotmpl` transformer) with gtmpl, and the
//! checks that keep gtmpl's defects away: a template is checked before
//! gtmpl parses it, and a render that panics is a failed render.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// A parsed Go template.
#[derive(Clone)]
pub struct GoTemplate(Arc<gtmpl::Template>);

impl fmt::Debug for GoTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GoTemplate")
    }
}

impl GoTemplate {
    /// Checks `text` ([`check_delimiters`]), then parses it.
    pub fn parse(text: &str) -> Result<Self, String> {
        check_delimiters(text)?;
        let mut t = gtmpl::Template::default();
        t.parse(text).map_err(|e| e.to_string())?;
        Ok(GoTemplate(Arc::new(t)))
    }

    /// Renders with `doc` as the template's data; `None` when the template
    /// fails. gtmpl panics on some input, e.g. a `printf` width over 65535
    /// (found by fuzzing), which the document can supply: a panic is a
    /// failed render, not a failed request task.
    pub fn render(&self, doc: &Value) -> Option<String> {
        let ctx = gtmpl::Context::from(to_gtmpl(doc));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.0.render(&ctx).ok()))
            .ok()
            .flatten()
    }
}

fn to_gtmpl(v: &Value) -> gtmpl_value::Value {
    use gtmpl_value::Value as G;
    match v {
        Value::Null => G::Nil,
        Value::Bool(b) => G::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                G::from(i)
            } else if let Some(u) = n.as_u64() {
                G::from(u)
            } else {
                G::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => G::String(s.clone()),
        Value::Array(a) => G::Array(a.iter().map(to_gtmpl).collect()),
        Value::Object(m) => G::Map(
            m.iter()
                .map(|(k, v)| (k.clone(), to_gtmpl(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

/// Checks a Go template for what gtmpl cannot take, before gtmpl parses it.
/// Every `{{` must be closed by `}}` (quotes inside actions respected), as
/// gtmpl's lexer loops forever on an unterminated action. Fuzzing found more
/// gtmpl defects, kept out here:
/// - outside quotes an action must be ASCII: the lexer panics on a non-ASCII
///   identifier (`{{ .é }}`), and when `{{- ` trims spaces after a non-ASCII
///   character;
/// - quoted strings end where gtmpl's lexer ends them (it takes the quote
///   after `\\` as escaped) and may only use the escapes
///   `\b \f \n \r \t \' \" \\`, in every kind of quotes (gtmpl unquotes
///   backquoted strings too): its unquoting loops forever on a short `\x` or
///   `\u` escape (`"\x4"`) and panics on others; any character can be
///   written as itself instead;
/// - `template` and `block` are refused: gtmpl allows 100 000 nested calls,
///   so `{{template ""}}` (a template calling itself) overflowed the stack,
///   which aborts the process.
fn check_delimiters(text: &str) -> Result<(), String> {
    let b = text.as_bytes();
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'{' && b[i + 1] == b'{' {
            let start = i;
            if b[i + 2..].starts_with(b"- ")
                && text[..i]
                    .trim_end()
                    .chars()
                    .next_back()
                    .is_some_and(|c| !c.is_ascii())
            {
                return Err(format!(
                    "`{{{{- ` right after a non-ASCII character (byte {start}) is not supported; drop the `-`"
                ));
            }
            i += 2;
            loop {
                if i >= b.len() {
                    return Err(format!("unclosed action starting at byte {start}"));
                }
                let c = b[i];
                if c == b'"' || c == b'`' || c == b'\'' {
                    let end = string_end(b, i).ok_or_else(|| {
                        format!("unclosed quoted string in the action starting at byte {start}")
                    })?;
                    check_escapes(&b[i + 1..end]).map_err(|()| {
                        format!(
                            "unsupported escape in a quoted string in the action starting at byte {start} (use \\b \\f \\n \\r \\t \\' \\\" \\\\, or the character itself)"
                        )
                    })?;
                    i = end;
                } else if c == b'}' && b.get(i + 1) == Some(&b'}') {
                    i += 1;
                    break;
                } else if !c.is_ascii() {
                    return Err(format!(
                        "non-ASCII character outside quotes in the action starting at byte {start}"
                    ));
                } else if c.is_ascii_alphabetic()
                    && !b[i - 1].is_ascii_alphanumeric()
                    && !matches!(b[i - 1], b'_' | b'.' | b'$')
                {
                    let end = b[i..]
                        .iter()
                        .position(|c| !c.is_ascii_alphanumeric() && *c != b'_')
                        .map_or(b.len(), |n| i + n);
                    if matches!(&b[i..end], b"template" | b"block") {
                        return Err(format!(
                            "`template` and `block` are not supported (the action starting at byte {start}): a template may not call a template"
                        ));
                    }
                    i = end - 1;
                }
                i += 1;
            }
        }
        i += 1;
    }
    Ok(())
}

/// Where gtmpl's lexer ends the string whose opening quote is at `open`: a
/// raw string at the next backquote; otherwise at the next quote not
/// preceded by a backslash (any run of them), and never across a newline.
fn string_end(b: &[u8], open: usize) -> Option<usize> {
    let q = b[open];
    let mut escaped = false;
    for (n, &c) in b[open + 1..].iter().enumerate() {
        if q == b'`' {
            if c == q {
                return Some(open + 1 + n);
            }
            continue;
        }
        match c {
            b'\\' => {
                escaped = true;
                continue;
            }
            b'\n' => return None,
            c if c == q && !escaped => return Some(open + 1 + n),
            _ => {}
        }
        escaped = false;
    }
    None
}

/// The escapes gtmpl's unquoting handles without looping or panicking,
/// paired from the start as it pairs them.
fn check_escapes(content: &[u8]) -> Result<(), ()> {
    let mut k = 0;
    while k < content.len() {
        if content[k] == b'\\' {
            if !matches!(
                content.get(k + 1),
                Some(b'b' | b'f' | b'n' | b'r' | b't' | b'\'' | b'"' | b'\\')
            ) {
                return Err(());
            }
            k += 1;
        }
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn go_templates_see_the_document() {
        let t =
            GoTemplate::parse(r#"{"role": "{{ index .headers "x-role" }}", "n": {{ len .list }}}"#)
                .unwrap();
        let doc = json!({"headers": {"x-role": "admin"}, "list": [1, 2]});
        let out = t.render(&doc).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"role": "admin", "n": 2})
        );
    }

    #[test]
    fn unclosed_actions_are_caught_before_gtmpl() {
        assert!(check_delimiters("{{ .x }} and {{ index .h \"}}\" }}").is_ok());
        assert!(check_delimiters("{{ .x ").is_err());
        assert!(check_delimiters("{{ \"}} ").is_err());
        assert!(check_delimiters("{{").is_err());
        assert!(check_delimiters("plain { text }").is_ok());
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's lexer panics
    /// on a non-ASCII identifier inside an action; such templates are
    /// refused before gtmpl sees them. Quoted text and text outside actions
    /// may be any Unicode.
    #[test]
    fn non_ascii_identifiers_are_caught_before_gtmpl() {
        for t in [
            "{{\u{48f}}}",
            "{{ .\u{e9} }}",
            "{{ .body.na\u{ef}ve }}",
            "{{ $\u{e9} := 1 }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            "{{ \"na\u{ef}ve\" }}",
            "{{ index .body `\u{e9}` }}",
            "{{ '\u{e9}' }}",
            "\u{e9} {{ .url }} \u{fc}",
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's unquoting
    /// never returns on a short `\x` or `\u` escape, so a config load (or a
    /// reload) hung; its escape parsing also slices past the end of a string
    /// (`` `a\` ``) or inside a UTF-8 character, a panic while the config
    /// loads. Only the simple escapes reach gtmpl, in every kind of quotes.
    #[test]
    fn hex_and_unicode_escapes_are_caught_before_gtmpl() {
        for t in [
            r#"{{ "\x4" }}"#,
            r#"{{ "\x" }}"#,
            r#"{{ "\u004" }}"#,
            r#"{{ "\x41" }}"#,
            r#"{{ '\x4' }}"#,
            "{{ \"\\x41a\u{e9}b\" }}",
            "{{ \"\\\u{e9}\" }}",
            r#"{{ "\"#,
            r#"{{ `\x4` }}"#,
            r#"{{ (`\\(}\`{}}"#,
            "{{ `\\\u{e9}` }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            r#"{{ "a\"b\\c\n\t\r\b\f" }}"#,
            r#"{{ '\'' }}"#,
            r#"{{ `\n` }}"#,
            r#"{{ printf "%s\n" .url }}"#,
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that a template calling
    /// itself (`{{template ""}}`, or through `define`/`block`) overflowed
    /// the stack while rendering, which aborts the whole process. Calls to
    /// templates are refused at load; the words elsewhere are fine.
    #[test]
    fn template_calls_are_refused() {
        for t in [
            r#"{{template ""}}"#,
            r#"{{- template "a" . -}}"#,
            r#"{{define "a"}}{{template "a"}}{{end}}{{template "a"}}"#,
            r#"{{block "a" .}}x{{end}}"#,
            r#"{{if 1}}{{ template "a" }}{{end}}"#,
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            r#"{{ .body.template }}"#,
            r#"{{ $template := 1 }}{{ $block := 2 }}"#,
            r#"{{ index .headers "template" }}"#,
            r#"{{ .templates }}{{ .x_block }} template block"#,
            r#"{{define "a"}}x{{end}}"#,
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's lexer takes
    /// the quote after `\\` as escaped, so `"\\"` does not end there and
    /// what follows is lexed as code.
    #[test]
    fn strings_end_where_gtmpl_ends_them() {
        for t in [
            "{{\"\\\\\"\"\u{64c}\"}}",
            r#"{{ "a\\" }}"#,
            "{{ \"a\nb\" }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [r#"{{ "a\\b" }}"#, r#"{{ "a\\\"" }}"#, r#"{{ "\"" }}"#] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }

    /// Fuzzing (`fuzz/`, target `gotmpl`) found that gtmpl's lexer panics
    /// when a left trim marker follows a non-ASCII character.
    #[test]
    fn left_trim_after_non_ascii_is_refused() {
        for t in [
            "\u{382}{{- \"x\" }}",
            "\u{e9} \n {{- .url }}",
            "{{ 1 }}\u{e9}{{- 2 }}",
        ] {
            assert!(check_delimiters(t).is_err(), "{t}");
        }
        for t in [
            "\u{e9}{{ .url -}} \u{e9}",
            "\u{e9}.{{- .url }}",
            "  {{- .url }}",
            "{{- 1 }}",
        ] {
            assert!(check_delimiters(t).is_ok(), "{t}");
        }
    }
}
