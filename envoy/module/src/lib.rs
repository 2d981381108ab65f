//! authgate as an Envoy dynamic module: the HTTP filter `authgate` in
//! `libauthgate_envoy.so`, deciding every request in Envoy's process with
//! the same pipeline (`authgate-core`) and the same `auth.yaml` as the
//! ext_authz server (docs/envoy-module.md).
//!
//! - `ffi`: the Envoy ABI (hooks Envoy calls, callbacks the module calls);
//!   the crate's only unsafe code, left out of test builds;
//! - [`settings`]: the filter and per-route configs;
//! - [`load`]: config to [`filter::FilterConfig`], and the module's runtime;
//! - [`filter`]: one request, host-neutral: request in, decision rendered;
//! - [`rendered`]: a cached token's allow kept rendered for its repeats;
//! - [`stats`]: the pipeline's metrics as Envoy stats.

#![deny(unsafe_code)]

#[cfg(not(test))]
mod ffi;
pub mod filter;
pub mod load;
pub mod rendered;
pub mod settings;
pub mod stats;
