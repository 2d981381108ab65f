//! The pipeline's metrics as Envoy stats (docs/envoy-module.md#metrics).
//! The pipeline counts into its own registry, as in the server; a periodic
//! sync on Envoy's main thread adds each counter's growth to, and sets each
//! gauge on, the Envoy stat of the same name and labels. The decision-time
//! histogram is recorded into Envoy directly, per decision.

#![forbid(unsafe_code)]

use std::collections::HashMap;

use authgate_core::metrics::{FAMILIES, Kind, Metrics};

/// Which family a series belongs to: an index into [`FAMILIES`], or the
/// build-info gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Family(usize),
    BuildInfo,
}

/// Where the sync writes: Envoy's stats.
pub trait Sink {
    fn add(&mut self, target: Target, labels: &[&str], n: u64);
    fn set(&mut self, target: Target, labels: &[&str], value: u64);
}

/// How often counters and gauges reach Envoy; Prometheus scrapes every 15 s
/// or more, so a second's lag is not seen.
pub const SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What has been written to Envoy so far, by series.
#[derive(Default)]
pub struct Mirror {
    counters: HashMap<(Target, Vec<String>), f64>,
}

impl Mirror {
    /// Brings Envoy's stats up to `metrics`. Counters only grow in both:
    /// a series seen lower than before (never expected) is written from its
    /// new value on.
    pub fn sync(&mut self, metrics: &Metrics, sink: &mut dyn Sink) {
        metrics.for_each_series(|index, labels, value| {
            let target = index.map_or(Target::BuildInfo, Target::Family);
            let kind = index.map_or(Kind::Gauge, |i| FAMILIES[i].kind);
            match kind {
                Kind::Counter => {
                    let key = (target, labels.iter().map(|s| (*s).to_owned()).collect());
                    let last = self.counters.entry(key).or_insert(0.0);
                    if value < *last {
                        *last = 0.0;
                    }
                    let n = (value - *last).round();
                    if n >= 1.0 {
                        sink.add(target, labels, n as u64);
                        *last += n;
                    }
                }
                Kind::Gauge => sink.set(target, labels, value.max(0.0).round() as u64),
                Kind::Histogram => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use authgate_core::decision::{DenyReason, Summary};
    use authgate_core::metrics::Frontend;

    #[derive(Default)]
    struct Recorded {
        added: HashMap<(Target, Vec<String>), u64>,
        set: HashMap<(Target, Vec<String>), u64>,
    }

    impl Sink for Recorded {
        fn add(&mut self, target: Target, labels: &[&str], n: u64) {
            let key = (target, labels.iter().map(|s| s.to_string()).collect());
            *self.added.entry(key).or_default() += n;
        }
        fn set(&mut self, target: Target, labels: &[&str], value: u64) {
            let key = (target, labels.iter().map(|s| s.to_string()).collect());
            self.set.insert(key, value);
        }
    }

    fn key(target: Target, labels: &[&str]) -> (Target, Vec<String>) {
        (target, labels.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn counters_grow_by_what_the_pipeline_counted() {
        let m = Metrics::new();
        let mut mirror = Mirror::default();
        let mut envoy = Recorded::default();
        mirror.sync(&m, &mut envoy);
        assert!(envoy.added.is_empty(), "nothing counted yet");
        let deny = Summary {
            reason: Some(DenyReason::TokenExpired),
            mode: "jwt",
        };
        for _ in 0..3 {
            m.record(Frontend::EnvoyModule, deny, 0.001);
        }
        m.token_cache_hit.inc();
        mirror.sync(&m, &mut envoy);
        m.record(Frontend::EnvoyModule, deny, 0.001);
        mirror.sync(&m, &mut envoy);
        mirror.sync(&m, &mut envoy);
        let checks = key(
            Target::Family(0),
            &["envoy_module", "deny", "token_expired", "jwt"],
        );
        assert_eq!(envoy.added.get(&checks), Some(&4));
        let hits = FAMILIES
            .iter()
            .position(|f| f.name == "authgate_token_cache_lookups_total")
            .unwrap();
        assert_eq!(
            envoy.added.get(&key(Target::Family(hits), &["hit"])),
            Some(&1)
        );
        assert_eq!(
            envoy
                .set
                .get(&key(Target::BuildInfo, &[env!("CARGO_PKG_VERSION")])),
            Some(&1)
        );
    }
}
