//! CheckRequest handling: fuzz bytes decoded by the server's decoder
//! (`grpc::decode_check`) and, as a reference, as an Envoy ext_authz v3
//! `CheckRequest` (prost) turned into the neutral request by
//! `grpc::to_request` (the two must agree whenever prost accepts the
//! bytes); then decided by a real `Engine` (JWT modes with fixed keys,
//! apiKey with security rules, noAuth, required elevation with grants and an
//! in-memory store) on a current-thread runtime, and rendered back as a
//! `CheckResponse` (an allow both ways: written directly by
//! `grpc::put_allow`, as the server does, and built by `grpc::render`; the
//! two must decode alike). Checks the decision's invariants.
//! Input: a serialized `CheckRequest`.
#![no_main]

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use authgate::config;
use authgate::decision::Decision;
use authgate::jwks::JwksRegistry;
use authgate::metrics::Metrics;
use authgate::pipeline::{Engine, KeyFetch, Parts};
use authgate::session;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use libfuzzer_sys::fuzz_target;
use prost::Message;

mod common;

struct World {
    rt: tokio::runtime::Runtime,
    engine: Engine,
    /// The same config with a token cache, deciding as the gRPC front door
    /// does (reusing encoded allows): it must answer as `engine` does.
    cached: Engine,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let registry = JwksRegistry::new().expect("JWKS registry");
    let engine = |text: &str| {
        let cfg = match config::parse(text, &|_: &str| None) {
            Ok(c) => c,
            Err(e) => panic!("fuzz check config does not load: {e}"),
        };
        let metrics = Arc::new(Metrics::new());
        let elevation = rt
            .block_on(authgate::server::open_elevation(&cfg, None, &metrics))
            .expect("elevation opens");
        Engine::build(
            cfg.settings,
            cfg.modes,
            Parts {
                registry: &registry,
                metrics,
                fetch: KeyFetch::OnDemand,
                elevation,
            },
        )
        .with_policies(cfg.policies)
    };
    let text = common::check_config();
    let engine_without_cache = engine(&text);
    let cached = engine(&text.replace("tokenCacheMaxEntries: 0", "tokenCacheMaxEntries: 1000"));
    World {
        engine: engine_without_cache,
        cached,
        rt,
    }
});

/// What the pipeline can observe of a request, order-free (prost's maps
/// iterate in random order).
#[allow(clippy::type_complexity)]
fn normal(
    r: &authgate::request::Request,
) -> (
    Vec<(String, String)>,
    String,
    String,
    Option<std::net::IpAddr>,
    Vec<(String, String)>,
) {
    let mut h: Vec<_> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    h.sort();
    let mut c: Vec<_> = r.context.clone().into_iter().collect();
    c.sort();
    (h, r.method.clone(), r.path.clone(), r.source_ip, c)
}

fuzz_target!(|data: &[u8]| {
    // The server's decoder (grpc::decode_check) against prost + to_request:
    // whatever prost accepts, it must accept too, with the same request.
    let ours = authgate::grpc::decode_check(data, None);
    let Ok(check) = CheckRequest::decode(data) else {
        return;
    };
    let reference = authgate::grpc::to_request(check, None);
    let req = match ours {
        Ok(r) => r,
        Err(e) => panic!("prost decodes the message, decode_check refuses it: {e}"),
    };
    assert_eq!(
        normal(&req),
        normal(&reference),
        "the two decoders disagree"
    );
    let world = &*WORLD;
    for (name, _) in req.headers.iter() {
        // `:authority` is Envoy's `HttpRequest.host`, for policy routes.
        assert!(
            !name.starts_with(':') || name == ":authority",
            "a pseudo header reached the pipeline"
        );
        assert_eq!(name, name.to_ascii_lowercase());
    }
    let decision = world.rt.block_on(world.engine.decide(&req));
    if let Decision::Allow(a) = &decision {
        let set: HashSet<&str> = a.headers.iter().map(|(k, _)| k.as_str()).collect();
        let role = a.headers.iter().find(|(k, _)| k == session::ROLE);
        assert!(
            role.is_some_and(|(_, v)| !v.is_empty()),
            "an allow without x-hasura-role"
        );
        for (k, v) in &a.headers {
            assert!(
                session::is_valid_header_value(v),
                "header {k} has control characters"
            );
            assert_ne!(k, session::ALLOWED_ROLES);
            assert_ne!(k, session::DEFAULT_ROLE);
        }
        for r in &a.headers_to_remove {
            assert!(!set.contains(r.as_str()), "{r} is both set and removed");
        }
        if !a.elevated {
            assert!(
                !set.contains(session::ELEVATED),
                "elevation header without elevation"
            );
        }
    }
    // What the server sends for an allow (written directly) must read back
    // as what render builds with prost's types.
    let direct = match &decision {
        Decision::Allow(a) => {
            let mut bytes = Vec::new();
            authgate::grpc::put_allow(a, &mut bytes);
            Some(bytes)
        }
        Decision::Deny(_) => None,
    };
    let response = authgate::grpc::render(decision);
    // Reuse (the gRPC front door's path): a token's repeats may be served an
    // allow rendered for an earlier request; whatever the earlier requests
    // were, the answer must be the one this request gets without reuse.
    for _ in 0..3 {
        let reused = world
            .rt
            .block_on(world.cached.decide_memo(&req, authgate::grpc::encode_allow));
        assert_eq!(
            authgate::grpc::render_answer(reused),
            response,
            "a reused allow differs from the decision"
        );
    }
    let _ = response.encode_to_vec();
    if let Some(bytes) = direct {
        let read = CheckResponse::decode(bytes.as_slice())
            .unwrap_or_else(|e| panic!("the direct encoding does not decode: {e}"));
        assert_eq!(read, response, "direct encoding and render disagree");
    }
});
