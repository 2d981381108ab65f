//! Token parsing and verification: `jwt::parse`, signature checks against
//! fixed HMAC, RSA, EC and Ed25519 keys (through the key set's candidate
//! selection, as the pipeline does, and on keys open to their whole family,
//! compared with jsonwebtoken's verification), `claims()` and
//! `check_claims`.
//! Input: the token text.
#![no_main]

use std::sync::LazyLock;

use authgate::jwt::{self, ClaimRules};
use authgate::keys::{self, KeySet, VerifyKey};
use jsonwebtoken::{Algorithm, DecodingKey};
use libfuzzer_sys::fuzz_target;

mod common;

struct Keys {
    /// Fixed keys as the config pins them (one algorithm each).
    sets: Vec<(Algorithm, KeySet)>,
    /// Keys that declare no algorithm (as JWKS keys without `alg`): every
    /// algorithm of their family, each beside jsonwebtoken's own
    /// verification as the reference.
    open: Vec<(VerifyKey, DecodingKey)>,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let fixed = [
        (Algorithm::HS256, common::HMAC_SECRET),
        (Algorithm::HS512, common::HMAC_SECRET),
        (Algorithm::RS256, common::RSA_PUBLIC_PEM),
        (Algorithm::PS256, common::RSA_PUBLIC_PEM),
        (Algorithm::ES256, common::EC256_PUBLIC_PEM),
        (Algorithm::EdDSA, common::ED25519_PUBLIC_PEM),
    ];
    let sets = fixed
        .iter()
        .map(|(alg, text)| match keys::parse_fixed(*alg, text) {
            Ok((set, _)) => (*alg, set),
            Err(e) => panic!("fixture key for {alg:?} does not load: {e}"),
        })
        .collect();
    let raw = [
        (
            Algorithm::HS256,
            DecodingKey::from_secret(common::HMAC_SECRET.as_bytes()),
        ),
        (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(common::RSA_PUBLIC_PEM.as_bytes()).expect("RSA fixture"),
        ),
        (
            Algorithm::ES256,
            DecodingKey::from_ec_pem(common::EC256_PUBLIC_PEM.as_bytes()).expect("EC fixture"),
        ),
        (
            Algorithm::EdDSA,
            DecodingKey::from_ed_pem(common::ED25519_PUBLIC_PEM.as_bytes()).expect("Ed fixture"),
        ),
    ];
    let open = raw
        .into_iter()
        .map(|(alg, key)| {
            let vk = VerifyKey::new(None, None, alg, alg.family(), &key).expect("fixture key");
            (vk, key)
        })
        .collect();
    Keys { sets, open }
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let keys = &*KEYS;
    let Ok(parsed) = jwt::parse(token) else {
        return;
    };
    assert!(token.len() <= jwt::MAX_TOKEN_BYTES);
    assert_eq!(
        parsed.message.len() + 1 + parsed.signature.len(),
        token.len(),
        "message and signature cover the token"
    );

    // Keys open to their whole family, with whatever algorithm the token
    // names: authgate's prepared verification must agree with
    // jsonwebtoken's (mismatched families fail in both).
    for (vk, reference) in &keys.open {
        let ours = parsed.verify_with(vk);
        let theirs = jsonwebtoken::crypto::verify(
            parsed.signature,
            parsed.message.as_bytes(),
            reference,
            parsed.alg,
        )
        .unwrap_or(false);
        assert_eq!(
            ours, theirs,
            "verification differs from jsonwebtoken for {:?}",
            parsed.alg
        );
    }
    // As the pipeline does: only keys whose pinned algorithm is the token's.
    for (pinned, set) in &keys.sets {
        for key in set.candidates(Some(*pinned), parsed.alg, parsed.kid.as_deref()) {
            assert_eq!(parsed.alg, *pinned, "a candidate key of another algorithm");
            let _ = parsed.verify_with(key);
        }
    }

    // The claim checks are pure; run them whether or not the signature held
    // (a mutated payload no longer verifies).
    let Ok(claims) = parsed.claims() else {
        return;
    };
    let audience = vec![common::AUDIENCE.to_owned(), "other".to_owned()];
    let strict = ClaimRules {
        audience: &audience,
        issuer: Some(common::ISSUER),
        skew: 60,
        require_exp: true,
    };
    let lax = ClaimRules {
        audience: &[],
        issuer: None,
        skew: u64::MAX,
        require_exp: false,
    };
    let strict_ok = jwt::check_claims(&claims, &strict, common::NOW);
    let lax_ok = jwt::check_claims(&claims, &lax, common::NOW);
    for now in [i64::MIN, 0, i64::MAX] {
        let _ = jwt::check_claims(&claims, &strict, now);
    }
    if let Ok(exp) = strict_ok {
        assert!(exp.is_some(), "require_exp passed without an exp");
        assert!(lax_ok.is_ok(), "passes strict rules but not lax ones");
    }
});
