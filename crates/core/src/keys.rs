//! Verification keys: fixed keys from the config and keys from a JWKS.
//!
//! A key's algorithm is fixed here, from the config or the JWK, never from a
//! token: a token whose header names another algorithm finds no key.

use std::str::FromStr;
use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};
use serde_json::Value;

/// One verification key.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    /// The algorithm the key declares (JWK `alg`, or the config's `algorithm`).
    pub declared: Option<Algorithm>,
    /// What the key is used for when nothing declares it (RSA: RS256).
    pub default_alg: Algorithm,
    pub family: AlgorithmFamily,
    /// The key parsed once per algorithm it may verify: a verification then
    /// costs the signature check alone (no DER parse, no Montgomery setup).
    prepared: Arc<[(Algorithm, Prepared)]>,
}

/// Key material ready to verify one algorithm.
enum Prepared {
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

impl VerifyKey {
    /// Prepares `key` for every algorithm it may verify (`declared`, or all
    /// of its family's); fails when none accepts the material.
    pub fn new(
        kid: Option<String>,
        declared: Option<Algorithm>,
        default_alg: Algorithm,
        family: AlgorithmFamily,
        key: &DecodingKey,
    ) -> Result<Self, String> {
        let algs: Vec<Algorithm> = match declared {
            Some(d) => vec![d],
            None => family_algorithms(family, default_alg),
        };
        let prepared: Vec<(Algorithm, Prepared)> = algs
            .into_iter()
            .filter_map(|alg| prepare(key, alg).map(|p| (alg, p)))
            .collect();
        if prepared.is_empty() {
            return Err(format!("not a valid {} key", family_name(family)));
        }
        Ok(VerifyKey {
            kid,
            declared,
            default_alg,
            family,
            prepared: prepared.into(),
        })
    }

    /// Whether `signature` (decoded) signs `message` under `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match self.prepared.iter().find(|(a, _)| *a == alg) {
            Some((_, Prepared::Hmac(k))) => hmac::verify(k, message, signature).is_ok(),
            Some((_, Prepared::Public(k))) => k.verify_sig(message, signature).is_ok(),
            None => false,
        }
    }
}

fn family_algorithms(family: AlgorithmFamily, default_alg: Algorithm) -> Vec<Algorithm> {
    use Algorithm::*;
    match family {
        AlgorithmFamily::Hmac => vec![HS256, HS384, HS512],
        AlgorithmFamily::Rsa => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmFamily::Ec | AlgorithmFamily::Ed => vec![default_alg],
    }
}

fn rsa_parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    Some(match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// The same primitives jsonwebtoken's aws-lc provider uses, parsed once.
fn prepare(key: &DecodingKey, alg: Algorithm) -> Option<Prepared> {
    if alg.family() != key.family() {
        return None;
    }
    match (key.kind(), alg.family()) {
        (DecodingKeyKind::SecretOrDer(secret), AlgorithmFamily::Hmac) => {
            let h = match alg {
                Algorithm::HS256 => hmac::HMAC_SHA256,
                Algorithm::HS384 => hmac::HMAC_SHA384,
                _ => hmac::HMAC_SHA512,
            };
            Some(Prepared::Hmac(Box::new(hmac::Key::new(h, secret))))
        }
        (DecodingKeyKind::SecretOrDer(der), AlgorithmFamily::Rsa) => {
            ParsedPublicKey::new(rsa_parameters(alg)?, der)
                .ok()
                .map(Prepared::Public)
        }
        (DecodingKeyKind::RsaModulusExponent { n, e }, AlgorithmFamily::Rsa) => {
            RsaPublicKeyComponents { n, e }
                .to_parsed_public_key(rsa_parameters(alg)?)
                .ok()
                .map(Prepared::Public)
        }
        (DecodingKeyKind::SecretOrDer(point), AlgorithmFamily::Ec) => {
            let a: &'static signature::EcdsaVerificationAlgorithm = match alg {
                Algorithm::ES256 => &signature::ECDSA_P256_SHA256_FIXED,
                Algorithm::ES384 => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return None,
            };
            ParsedPublicKey::new(a, point).ok().map(Prepared::Public)
        }
        (DecodingKeyKind::SecretOrDer(raw), AlgorithmFamily::Ed) => {
            ParsedPublicKey::new(&signature::ED25519, raw)
                .ok()
                .map(Prepared::Public)
        }
        _ => None,
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("declared", &self.declared)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    /// The algorithm this key verifies for a mode pinned to `pinned`, if any.
    pub fn algorithm_for(&self, pinned: Option<Algorithm>) -> Option<Algorithm> {
        match (pinned, self.declared) {
            (Some(p), Some(d)) => (p == d).then_some(p),
            (Some(p), None) => (p.family() == self.family).then_some(p),
            (None, Some(d)) => Some(d),
            (None, None) => Some(self.default_alg),
        }
    }
}

/// An immutable set of keys, swapped whole when a JWKS is refetched.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys that may verify a token with header `alg` and `kid`: same
    /// algorithm (as pinned for this mode), and the same `kid` when both have
    /// one. A token without `kid` tries every key of its algorithm.
    pub fn candidates<'a>(
        &'a self,
        pinned: Option<Algorithm>,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithm_for(pinned) == Some(alg)
                && match (kid, k.kid.as_deref()) {
                    (Some(t), Some(k)) => t == k,
                    _ => true,
                }
        })
    }

    /// Whether a key with exactly this `kid` exists (for unknown-kid refetch).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// How many keys are usable for a mode pinned to `pinned`.
    pub fn usable(&self, pinned: Option<Algorithm>) -> usize {
        self.keys
            .iter()
            .filter(|k| k.algorithm_for(pinned).is_some())
            .count()
    }
}

pub fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    Algorithm::from_str(s).map_err(|_| {
        format!(
            "unsupported algorithm `{s}`; expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
        )
    })
}

pub fn algorithm_name(a: Algorithm) -> &'static str {
    match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        _ => "unsupported",
    }
}

/// A fixed key from the config: an HMAC secret (raw bytes), a PEM public
/// key (SPKI, PKCS#1) or X.509 certificate, or a JWK / JWKS object.
/// Returns the keys and any warnings. Errors never include key material.
pub fn parse_fixed(alg: Algorithm, text: &str) -> Result<(KeySet, Vec<String>), String> {
    let mut warnings = Vec::new();
    let family = alg.family();
    if family == AlgorithmFamily::Hmac {
        let min = match alg {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        };
        if text.is_empty() {
            return Err("the HMAC secret is empty".into());
        }
        if text.len() < min {
            warnings.push(format!(
                "the HMAC secret is {} bytes, shorter than the {min} bytes {} calls for",
                text.len(),
                algorithm_name(alg)
            ));
        }
        let key = VerifyKey::new(
            None,
            Some(alg),
            alg,
            family,
            &DecodingKey::from_secret(text.as_bytes()),
        )?;
        return Ok((KeySet { keys: vec![key] }, warnings));
    }
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        let value: Value = serde_json::from_str(trimmed)
            .map_err(|e| format!("the key looks like JSON but does not parse: {e}"))?;
        let set = parse_jwk_value(&value, Some(alg), false)?;
        if set.usable(Some(alg)) == 0 {
            return Err(format!(
                "the JWK holds no key usable with {}",
                algorithm_name(alg)
            ));
        }
        return Ok((set, warnings));
    }
    if !trimmed.starts_with("-----BEGIN") {
        return Err(
            "expected a PEM public key (SPKI or PKCS#1), an X.509 certificate PEM, or a JWK".into(),
        );
    }
    if trimmed.contains("PRIVATE KEY") {
        return Err(
            "this is a private key: configure the public key (or certificate) instead".into(),
        );
    }
    let key = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(trimmed.as_bytes()),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(trimmed.as_bytes()),
        // HMAC keys returned above; the arm only keeps the match total.
        AlgorithmFamily::Ed | AlgorithmFamily::Hmac => DecodingKey::from_ed_pem(trimmed.as_bytes()),
    }
    .map_err(|_| {
        format!(
            "not a valid {} public key PEM for {} (expected SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY` or `CERTIFICATE`)",
            family_name(family),
            algorithm_name(alg)
        )
    })?;
    let key = VerifyKey::new(None, Some(alg), alg, family, &key).map_err(|_| {
        format!(
            "not a valid {} public key for {}",
            family_name(family),
            algorithm_name(alg)
        )
    })?;
    Ok((KeySet { keys: vec![key] }, warnings))
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

/// Parses a JWKS document (`{"keys": [...]}`) fetched from a URL. Keys that
/// are unusable (encryption keys, `oct` secrets, unknown types) are skipped,
/// not fatal: one odd key must not take down the others.
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("JWKS is not valid JSON: {e}"))?;
    if value.get("keys").is_none() {
        return Err("JWKS has no `keys` array".into());
    }
    let set = parse_jwk_value(&value, None, true)?;
    if set.is_empty() {
        return Err("JWKS holds no usable signature key".into());
    }
    Ok(set)
}

/// A JWK or a JWKS. `remote` rejects symmetric keys: a published HMAC key
/// would let anyone mint tokens.
fn parse_jwk_value(v: &Value, pinned: Option<Algorithm>, remote: bool) -> Result<KeySet, String> {
    let items: Vec<&Value> = match v.get("keys") {
        Some(Value::Array(keys)) => keys.iter().collect(),
        Some(_) => return Err("`keys` must be an array".into()),
        None => vec![v],
    };
    let mut keys = Vec::new();
    let single = items.len() == 1 && v.get("keys").is_none();
    for item in items {
        match parse_jwk(item, pinned, remote) {
            Ok(Some(k)) => keys.push(k),
            Ok(None) => {}
            Err(e) if single => return Err(e),
            Err(_) => {}
        }
    }
    Ok(KeySet { keys })
}

fn parse_jwk(
    v: &Value,
    pinned: Option<Algorithm>,
    remote: bool,
) -> Result<Option<VerifyKey>, String> {
    let Value::Object(map) = v else {
        return Err("a JWK must be a JSON object".into());
    };
    match map.get("use").and_then(Value::as_str) {
        None | Some("sig") => {}
        Some(_) => return Ok(None),
    }
    let kid = map.get("kid").and_then(Value::as_str).map(str::to_owned);
    let declared = match map.get("alg").and_then(Value::as_str) {
        None => None,
        Some(a) => match Algorithm::from_str(a) {
            Ok(a) => Some(a),
            Err(_) => return Ok(None), // an encryption or unsupported algorithm
        },
    };
    // Parse the key material without the fields we already read, so an
    // `alg` jsonwebtoken does not know cannot fail the key.
    let mut material = map.clone();
    for field in ["alg", "use", "key_ops"] {
        material.remove(field);
    }
    let jwk: Jwk = serde_json::from_value(Value::Object(material))
        .map_err(|e| format!("not a valid JWK: {e}"))?;
    let (family, default_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Algorithm::ES256),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Algorithm::ES384),
            _ => return Err("unsupported elliptic curve (expected P-256 or P-384)".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Algorithm::EdDSA),
            _ => return Err("unsupported OKP curve (expected Ed25519)".into()),
        },
        AlgorithmParameters::OctetKey(_) => {
            if remote {
                return Ok(None);
            }
            (AlgorithmFamily::Hmac, Algorithm::HS256)
        }
        _ => return Err("unsupported JWK key type".into()),
    };
    if let Some(d) = declared {
        if d.family() != family {
            return Err(format!(
                "the JWK declares {} but holds a {} key",
                algorithm_name(d),
                family_name(family)
            ));
        }
        // An EC key's curve fixes its algorithm.
        if family == AlgorithmFamily::Ec && d != default_alg {
            return Err(format!(
                "the JWK declares {} but its curve is for {}",
                algorithm_name(d),
                algorithm_name(default_alg)
            ));
        }
    }
    if family == AlgorithmFamily::Ec
        && pinned.is_some_and(|p| p.family() == family && p != default_alg)
    {
        return Ok(None);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("not a valid JWK: {e}"))?;
    VerifyKey::new(kid, declared, default_alg, family, &key)
        .map(Some)
        .map_err(|e| format!("not a valid JWK: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_warns_when_short() {
        let (set, warnings) = parse_fixed(Algorithm::HS256, "tiny-xyz").unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(!warnings[0].contains("tiny-xyz"), "never echo the secret");
        assert!(parse_fixed(Algorithm::HS256, "").is_err());
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = parse_fixed(Algorithm::RS256, "not a key").unwrap_err();
        assert!(e.contains("expected a PEM"));
        let e = parse_fixed(
            Algorithm::RS256,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(e.contains("private key"));
    }

    #[test]
    fn jwks_skips_unusable_keys() {
        let body = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB","kid":"e"},
            {"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB","kid":"o"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"}
        ]}"#;
        let set = parse_jwks(body).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("ed"));
        assert_eq!(set.keys[0].algorithm_for(None), Some(Algorithm::EdDSA));
        assert_eq!(set.keys[0].algorithm_for(Some(Algorithm::RS256)), None);
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn candidates_match_alg_and_kid() {
        let body = br#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let set = parse_jwks(body).unwrap();
        assert_eq!(set.candidates(None, Algorithm::EdDSA, Some("a")).count(), 2);
        assert_eq!(set.candidates(None, Algorithm::EdDSA, Some("b")).count(), 1);
        assert_eq!(set.candidates(None, Algorithm::EdDSA, None).count(), 2);
        assert_eq!(set.candidates(None, Algorithm::HS256, None).count(), 0);
        assert!(set.has_kid("a") && !set.has_kid("b"));
    }
}
