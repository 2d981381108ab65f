//! authgate in-process, as its clients see it: a real server on
//! `127.0.0.1:0` per test, talked to over gRPC and HTTP, with real stores,
//! key servers and hooks. One test binary for all of them (one link of the
//! dependencies instead of ten).

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/sql.rs"]
mod sql;

mod attacks;
mod cli;
mod elevation;
mod faults;
mod grpc_check;
mod http_check;
mod import;
mod introspection;
mod jwks;
mod oidc_provider;
mod policies;
mod private_ca;
mod relyauth_vectors;
mod store;
mod traces;
mod upstream;
mod webhook;
