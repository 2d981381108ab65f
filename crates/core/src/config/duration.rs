//! Durations in config files: seconds, or Go's duration syntax as RelyAuth
//! (a Go program) reads them.

use std::time::Duration;

use serde_json::Value;

use super::reader::{Diagnostics, YamlPath, type_name};

/// A duration as seconds (number) or Go-style text (`1m30s`, `500ms`).
pub fn duration(d: &mut Diagnostics, path: &YamlPath, v: &Value) -> Option<Duration> {
    match v {
        // `try_`: a number past u64 seconds (`1e20`) panicked the loader.
        Value::Number(n) => match n.as_f64().filter(|f| *f >= 0.0) {
            Some(f) if let Ok(d) = Duration::try_from_secs_f64(f) => Some(d),
            _ => {
                d.error(path, "expected a non-negative number of seconds");
                None
            }
        },
        Value::String(s) => match parse_go_duration(s) {
            Some(d) => Some(d),
            None => {
                d.error(
                    path,
                    format!("`{s}` is not a duration (e.g. 5s, 1m30s, 500ms)"),
                );
                None
            }
        },
        other => {
            d.error(
                path,
                format!("expected a duration, found {}", type_name(other)),
            );
            None
        }
    }
}

fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(n).ok();
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Fuzzing (`fuzz/`, target `config`) found that a duration past u64
    /// seconds, as a number or as text, panicked while the config loaded.
    #[test]
    fn huge_durations_are_errors() {
        for v in [
            json!(1e20),
            json!("1e400"),
            json!("99999999999999999999h"),
            json!(-1),
        ] {
            let mut d = Diagnostics::default();
            assert_eq!(duration(&mut d, &YamlPath::root(), &v), None, "{v}");
            assert_eq!(d.errors.len(), 1, "{v}");
        }
        let mut d = Diagnostics::default();
        assert_eq!(
            duration(&mut d, &YamlPath::root(), &json!("1e19")),
            Some(Duration::from_secs(10_000_000_000_000_000_000))
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}
