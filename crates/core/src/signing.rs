//! Keys authgate signs with (elevation grants, upstream tokens): a private
//! key, its public JWK with an RFC 7638 thumbprint as `kid`, and the same
//! key prepared for verification.

use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header};
use serde_json::json;

use crate::keys::VerifyKey;

/// One signing key.
pub struct SigningKey {
    pub alg: Algorithm,
    /// The RFC 7638 SHA-256 thumbprint of the public key: two different
    /// keys never share a `kid`, and the same key always has the same one.
    pub kid: String,
    encoding: EncodingKey,
    pub verify: VerifyKey,
    /// The public key as published (`kid`, `use: sig`, `alg`).
    pub jwk: Jwk,
}

impl SigningKey {
    /// From a private key PEM (PKCS#8 for EC and Ed25519; RSA PKCS#1 or #8).
    pub fn from_pem(alg: Algorithm, pem: &str) -> Result<Self, String> {
        let encoding = match alg.family() {
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem.as_bytes()),
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes()),
            AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => return Err("signing needs an asymmetric algorithm".into()),
        }
        .map_err(|_| {
            "not a private key PEM for this algorithm (EC and Ed25519 keys must be PKCS#8)"
                .to_string()
        })?;
        Self::from_encoding_key(alg, encoding)
    }

    /// A fresh key for `alg` (ES256, ES384 or EdDSA); what it signs
    /// verifies only while the process holds it.
    pub fn generate(alg: Algorithm) -> Result<Self, String> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
            Ed25519KeyPair,
        };
        let failed = |_| "cannot generate a key".to_string();
        let encoding = match alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                let curve = if alg == Algorithm::ES256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pair = EcdsaKeyPair::generate(curve).map_err(failed)?;
                let der = pair.to_pkcs8v1().map_err(failed)?;
                EncodingKey::from_ec_der(der.as_ref())
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().map_err(failed)?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair.as_der().map_err(failed)?;
                EncodingKey::from_ed_der(der.as_ref())
            }
            _ => return Err("a key is generated only for ES256, ES384 and EdDSA".into()),
        };
        Self::from_encoding_key(alg, encoding)
    }

    fn from_encoding_key(alg: Algorithm, encoding: EncodingKey) -> Result<Self, String> {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg)
            .map_err(|_| "cannot derive the public key".to_string())?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| "cannot compute the key id".to_string())?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let verify = DecodingKey::from_jwk(&jwk)
            .map_err(|_| "cannot derive the public key".to_string())
            .and_then(|k| VerifyKey::new(None, Some(alg), alg, alg.family(), &k))?;
        let key = SigningKey {
            alg,
            kid,
            encoding,
            verify,
            jwk,
        };
        // Prove the pair works before serving with it.
        let probe = key
            .sign(&json!({"probe": true}))
            .map_err(|_| "the key cannot sign".to_string())?;
        let parsed = crate::jwt::parse(&probe).map_err(|_| "the key cannot sign".to_string())?;
        if !parsed.verify_with(&key.verify) {
            return Err("the private key does not match its public key".into());
        }
        Ok(key)
    }

    /// A compact JWT of `claims`, with this key's `alg` and `kid`.
    pub fn sign(&self, claims: &impl serde::Serialize) -> Result<String, String> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|_| "signing failed".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_what_they_verify_and_have_distinct_kids() {
        let mut kids = Vec::new();
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let key = SigningKey::generate(alg).expect("generates");
            let token = key.sign(&json!({"sub": "u"})).expect("signs");
            let parsed = crate::jwt::parse(&token).expect("parses");
            assert_eq!(parsed.alg, alg);
            assert!(parsed.verify_with(&key.verify));
            assert_eq!(key.jwk.common.key_id.as_deref(), Some(key.kid.as_str()));
            kids.push(key.kid);
        }
        kids.push(SigningKey::generate(Algorithm::ES256).unwrap().kid);
        let n = kids.len();
        kids.sort();
        kids.dedup();
        assert_eq!(kids.len(), n);
        assert!(SigningKey::generate(Algorithm::RS256).is_err());
        assert!(SigningKey::generate(Algorithm::HS256).is_err());
        assert!(SigningKey::from_pem(Algorithm::ES256, "not a pem").is_err());
    }
}
