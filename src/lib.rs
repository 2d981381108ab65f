//! authgate: external authorization for Envoy, Istio, nginx and Traefik in
//! front of Hasura. See `README.md` and `docs/`.
//!
//! This package is the server around the decision pipeline of
//! `authgate-core` (re-exported here whole):
//!
//! | module | job |
//! |---|---|
//! | [`server`] | the composition root: config to engine, listeners, readiness, reload, drain |
//! | [`state`] | what the front doors share: engine, metrics, admission, readiness |
//! | [`grpc`] | Envoy's ext_authz gRPC door: its own `CheckRequest` decoder and allow encoder |
//! | [`http`] | forward auth (`/check`), Hasura webhooks (`/auth/*`), WebAuthn endpoints, probes, `/metrics` |
//! | [`conn`] | connection limits and HTTP/1.1 and HTTP/2 serving |
//! | [`admission`] | slots, byte budgets, and the drain gate |
//! | [`budget`] | byte budgets per connection and in all |
//! | [`limits`] | every bound on connections, streams, bytes and time |
//! | [`cli`] | `authgate serve`, `validate`, `check` |
//! | [`telemetry`] | logs and OpenTelemetry trace export (`OTEL_*`) |
#![forbid(unsafe_code)]

pub use authgate_core::*;

pub mod admission;
pub mod budget;
pub mod cli;
pub mod conn;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod server;
pub mod state;
pub mod telemetry;
