//! Key material: a JWKS document as fetched from `jwkFromUrl` (bytes from
//! the network), and the same text as a fixed key in the config (JWK, JWKS
//! or PEM) for each asymmetric algorithm family.
//! Input: the document.
#![no_main]

use authgate::keys;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = keys::parse_jwks(data) {
        for key in &set.keys {
            // A remote JWKS never yields an HMAC key.
            assert_ne!(key.family, jsonwebtoken::AlgorithmFamily::Hmac);
        }
        let _ = set.usable(None);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        if let Ok((set, _)) = keys::parse_fixed(alg, text) {
            assert!(set.usable(Some(alg)) > 0, "a fixed key that cannot verify");
        }
    }
});
