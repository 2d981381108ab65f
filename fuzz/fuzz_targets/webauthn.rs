//! WebAuthn request bodies, as `src/http/webauthn.rs` reads them:
//! `parse_body`, `nickname_of`, the `credential` as a
//! `RegisterPublicKeyCredential` (`/user/webauthn/verify`) and as a
//! `PublicKeyCredential` (`/elevate/webauthn/verify`), `challenge_of`, then
//! the ceremony's verification by authgate's relying party against states
//! that carry a fixed challenge (so the seed credentials, made by a software
//! authenticator over that challenge, reach the attestation and signature
//! checks).
//! Input: the request body.
#![no_main]

use std::sync::LazyLock;

use authgate::http::webauthn::{challenge_of, nickname_of, parse_body};
use axum::body::Bytes;
use libfuzzer_sys::fuzz_target;
use webauthn_rs::Webauthn;
use webauthn_rs::prelude::{
    PublicKeyCredential, RegisterPublicKeyCredential, SecurityKey, SecurityKeyAuthentication,
    SecurityKeyRegistration,
};

mod common;

struct World {
    webauthn: std::sync::Arc<Webauthn>,
    registration: SecurityKeyRegistration,
    authentication: SecurityKeyAuthentication,
    _rt: tokio::runtime::Runtime,
}

/// The security key the seed assertion was made with (`examples/gen_seeds.rs`).
const KEY: &str = include_str!("../fixtures/webauthn-key.json");

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let rt = common::current_thread_runtime();
    let elevation = common::open_elevation(&rt, &common::webauthn_config());
    let webauthn = elevation.webauthn.clone().expect("webauthn configured");
    let user = authgate::http::webauthn::user_handle(common::WEBAUTHN_USER);
    let (_, registration) = webauthn
        .start_securitykey_registration(
            user,
            common::WEBAUTHN_USER,
            common::WEBAUTHN_USER,
            None,
            None,
            None,
        )
        .expect("registration starts");
    let key: SecurityKey = serde_json::from_str(KEY).expect("fixture key");
    let (_, authentication) = webauthn
        .start_securitykey_authentication(&[key])
        .expect("authentication starts");
    World {
        registration: common::with_fixed_challenge(&registration),
        authentication: common::with_fixed_challenge(&authentication),
        webauthn,
        _rt: rt,
    }
});

fuzz_target!(|data: &[u8]| {
    let world = &*WORLD;
    let Ok(body) = parse_body(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let _ = nickname_of(&body);
    let Some(credential) = body.get("credential") else {
        return;
    };
    if let Ok(reg) = serde_json::from_value::<RegisterPublicKeyCredential>(credential.clone()) {
        let _ = challenge_of(&reg.response.client_data_json);
        let _ = world
            .webauthn
            .finish_securitykey_registration(&reg, &world.registration);
    }
    if let Ok(assertion) = serde_json::from_value::<PublicKeyCredential>(credential.clone()) {
        let _ = challenge_of(&assertion.response.client_data_json);
        let _ = world
            .webauthn
            .finish_securitykey_authentication(&assertion, &world.authentication);
    }
});
