//! Config loading: `config::parse` (YAML or JSON, validation, compilation
//! of keys, JMESPath and templates), then the `validate` summary. Run twice:
//! with an empty environment, and with one where every `{env: NAME}` holds a
//! marker that must never show up in a problem, warning or summary (secrets
//! never appear in errors or `validate` output).
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

fn check(text: &str, env: &dyn config::Env, marked: bool) {
    let out = match config::parse(text, env) {
        Ok(c) => {
            let mut out = config::summary(&c);
            for w in &c.warnings {
                out.push_str(&w.to_string());
            }
            out
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a failed load reports no problem");
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
    check(text, &no_env, false);
    check(text, &marker_env, true);
});
