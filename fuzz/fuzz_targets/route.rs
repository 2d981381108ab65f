//! Route matching: `route::canonical_path` and `RoutePath` on any path, and
//! `Route::covers` with method-override headers.
//!
//! Input: the first line is a request path, the second a configured path
//! (exact and prefix), the rest `name: value` header lines.
//!
//! Checked: a canonical path starts with `/`, has no empty, `.` or `..`
//! segment, no `\`, no control character, no trailing slash (but `/`), and
//! is its own canonical form; a refused path names why. A configured exact
//! path covers its own canonical form, whatever the spelling; a prefix
//! covers every path it is a prefix of.
#![no_main]

use authgate::request::{Headers, Request};
use authgate::route::{Route, RoutePath, canonical_path};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let text = common::text(data);
    let mut lines = text.lines();
    let path = lines.next().unwrap_or("");
    let configured = lines.next().unwrap_or("");
    let mut headers = Headers::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.push(k.trim(), v.trim());
        }
    }
    let canonical = match canonical_path(path) {
        Ok(c) => c,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(canonical.starts_with('/'), "{canonical:?}");
    assert!(
        canonical == "/" || !canonical.ends_with('/'),
        "{canonical:?}"
    );
    assert!(!canonical.contains('\\') && !canonical.chars().any(char::is_control));
    for seg in canonical.split('/').skip(1) {
        assert!(
            canonical == "/" || !matches!(seg, "" | "." | ".."),
            "{canonical:?}"
        );
    }
    assert_eq!(
        canonical_path(&canonical).as_deref(),
        Ok(canonical.as_str())
    );

    // The request's own spelling of a configured path is covered by it.
    if let Ok(exact) = RoutePath::exact(path) {
        assert!(exact.covers(&canonical), "{path:?}");
    }
    if let Ok(prefix) = RoutePath::prefix(configured)
        && let RoutePath::Prefix(p) = &prefix
        && canonical
            .to_ascii_lowercase()
            .starts_with(&p.to_ascii_lowercase())
    {
        assert!(prefix.covers(&canonical), "{p:?} {canonical:?}");
    }
    // Methods: a route naming the request's method covers it, whatever the
    // override headers say; overrides only ever add coverage.
    let req = Request {
        headers,
        method: "POST".into(),
        path: path.to_owned(),
        ..Default::default()
    };
    let route = |methods: &[&str]| Route {
        methods: methods.iter().map(|m| m.to_string()).collect(),
        path: RoutePath::Exact(canonical.clone()),
    };
    assert!(route(&["POST"]).covers(&req, &canonical));
    assert!(route(&[]).covers(&req, &canonical));
    let _ = route(&["DELETE", "GET"]).covers(&req, &canonical);
});
