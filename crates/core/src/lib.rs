//! authgate's decision pipeline as a library: everything that decides a
//! request, and nothing that listens on a socket. A host (the gRPC/HTTP
//! server in the `authgate` package, or a proxy that links this crate)
//! builds a [`pipeline::Engine`] from a config and asks it for
//! [`decision::Decision`]s. The JWKS fetcher, the webhook client and the
//! credential store run on whatever tokio runtime the host provides.
//!
//! Data flows one way (docs/design.md):
//! `Request -> credentials -> verify -> claims -> session/role -> rules ->
//! elevation -> Decision`.
//!
//! | module | job |
//! |---|---|
//! | [`request`] | the protocol-neutral request, and where a credential sits in it ([`request::TokenLocation`]) |
//! | [`pipeline`] | the [`pipeline::Engine`]: modes in order, token cache, role, elevation, the final allow; the gRPC door's encoded-allow memo |
//! | [`jwt`] | JWT parsing and claim checks (`exp`, `nbf`, `aud`, `iss`) with the algorithm from config |
//! | [`keys`] | fixed keys and JWK sets, parsed into verification keys |
//! | [`jwks`] | remote JWK sets: fetch, refresh, single-flight unknown-`kid` refetch, stale-if-error |
//! | [`claims`] | verified claims to Hasura session variables (`claimsConfig`) |
//! | [`session`] | session variables, role resolution, header rendering |
//! | [`rules`] | security rules: allowed IPs and header patterns |
//! | [`route`] | method and canonical path matching (elevation and policy routes) |
//! | [`policy`] | per-route policies: which apply to a request, what a credential satisfies |
//! | [`webhook`] | the webhook mode's client, transforms and Go templates |
//! | [`introspection`] | the introspection mode: opaque tokens checked at the issuer (RFC 7662) |
//! | [`elevation`] | elevated access: which requests need it, grants, and the WebAuthn ceremonies |
//! | [`signing`] | keys authgate signs with (grants, upstream tokens) and their public JWKs |
//! | [`trace`] | spans around outbound calls, and the trace context they carry |
//! | [`upstream`] | tokens signed by authgate for the upstream, in Hasura's JWT claims format, and their key rotation |
//! | [`store`] | the security-key store trait, SQLite and PostgreSQL |
//! | [`identity`] | who a request proved to be, for authgate's own endpoints |
//! | [`decision`] | `Decision` (allow or deny) and the closed table of denial reasons |
//! | [`forward_auth`] | how a forward-auth proxy describes the original request |
//! | [`metrics`] | every metric name and label value (Prometheus) |
//! | [`config`] | `auth.yaml` read and validated into the types above; imported only by hosts |
//! | [`redact`] | secrets as logs may show them |
//! | [`clock`] | Unix time |
#![forbid(unsafe_code)]

mod body;
pub mod claims;
pub mod clock;
pub mod config;
pub mod decision;
mod discovery;
pub mod elevation;
pub mod forward_auth;
pub mod identity;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod redact;
pub mod request;
pub mod route;
pub mod rules;
pub mod session;
pub mod signing;
pub mod store;
pub mod trace;
pub mod upstream;
pub mod webhook;
