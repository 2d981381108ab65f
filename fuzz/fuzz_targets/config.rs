//! Config loading: `config::parse_as` as YAML and as strict JSON (the
//! position scan, duplicate keys, validation, compilation of keys, JMESPath
//! and templates), then the `validate` summary. Run with an empty
//! environment, and with one where every `{env: NAME}` holds a marker that
//! must never show up in a problem, warning or summary (secrets never appear
//! in errors or `validate` output). A failed load names at least one error,
//! and problems come in file order.
//! Input: the config text.
#![no_main]

use authgate::config;
use libfuzzer_sys::fuzz_target;

const MARKER: &str = "fuzzenvmarker7f3a";

fn no_env(_: &str) -> Option<String> {
    None
}

fn marker_env(_: &str) -> Option<String> {
    Some(MARKER.to_owned())
}

fn check(text: &str, format: config::Format, env: &dyn config::Env, marked: bool) {
    let out = match config::parse_as(text, format, env) {
        Ok(c) => {
            let mut out = config::summary(&c);
            for w in &c.warnings {
                out.push_str(&w.to_string());
            }
            out
        }
        Err(errors) => {
            assert!(
                errors.errors().next().is_some(),
                "a failed load reports no error"
            );
            let at: Vec<_> = errors.0.iter().map(|p| p.location).collect();
            assert!(
                at.windows(2).all(|w| w[0] <= w[1]),
                "out of file order: {at:?}"
            );
            errors.to_string()
        }
    };
    if marked && !text.contains(MARKER) {
        assert!(!out.contains(MARKER), "environment content in: {out}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, config::Format::Yaml, &no_env, false);
    check(text, config::Format::Yaml, &marker_env, true);
    check(text, config::Format::Json, &marker_env, true);
});
