//! Wall-clock time as JWTs and the stores count it (RFC 7519 NumericDate:
//! seconds since the Unix epoch). A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Whole seconds since the epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Seconds since the epoch with a fraction, for Prometheus timestamps.
pub fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
