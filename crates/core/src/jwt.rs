//! JWS compact tokens: parsing, signature check and time/audience checks.
//!
//! The header is read only for `alg` and `kid`; `jku`, `x5u`, `jwk` and
//! `x5c` are never looked at, so a token cannot bring its own key. A `crit`
//! header is refused (RFC 7515 4.1.11: we understand no extension). The
//! signature is checked before any claim, so a forged token is reported as
//! invalid, never as expired.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::decision::DenyReason;
use crate::keys::VerifyKey;

/// Tokens above this size are refused before any decoding (16 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is too large")]
    TooLarge,
    #[error("token algorithm is not accepted")]
    Algorithm,
    #[error("token has a critical header extension")]
    Critical,
    #[error("no key matches the token")]
    NoKey,
    #[error("signature does not verify")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token is issued in the future")]
    IssuedInFuture,
    #[error("audience does not match")]
    Audience,
    #[error("issuer does not match")]
    Issuer,
    #[error("claims are not valid")]
    Claims,
    #[error("verification keys are not available")]
    KeysUnavailable,
}

impl JwtError {
    pub fn reason(self) -> DenyReason {
        match self {
            JwtError::Expired => DenyReason::TokenExpired,
            JwtError::KeysUnavailable => DenyReason::InternalError,
            _ => DenyReason::InvalidToken,
        }
    }
}

/// A token split into its parts, header decoded.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `header.payload`, the signed bytes.
    pub message: &'a str,
    pub payload: &'a str,
    pub signature: &'a str,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(JwtError::Malformed);
    }
    let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| JwtError::Malformed)?;
    let header: Header = serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Malformed)?;
    if header.crit.is_some() {
        return Err(JwtError::Critical);
    }
    let alg = header
        .alg
        .parse::<Algorithm>()
        .map_err(|_| JwtError::Algorithm)?;
    Ok(Parsed {
        alg,
        kid: header.kid,
        message: &token[..h.len() + 1 + p.len()],
        payload: p,
        signature: s,
    })
}

impl Parsed<'_> {
    /// Whether the signature verifies under `key` with the header's `alg`
    /// (callers chose `key` because it may verify that algorithm).
    pub fn verify_with(&self, key: &VerifyKey) -> bool {
        // Decoded on the stack: an RSA-8192 signature is 1024 bytes.
        let mut buf = [0u8; 1024];
        match URL_SAFE_NO_PAD.decode_slice(self.signature, &mut buf) {
            Ok(n) => key.verify(self.alg, self.message.as_bytes(), &buf[..n]),
            Err(_) => false,
        }
    }

    /// The payload as a JSON object (call only after the signature verified).
    pub fn claims(&self) -> Result<Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(self.payload)
            .map_err(|_| JwtError::Malformed)?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(JwtError::Malformed),
        }
    }
}

/// What a mode requires of a token's registered claims.
#[derive(Debug, Clone)]
pub struct ClaimRules<'a> {
    pub audience: &'a [String],
    pub issuer: Option<&'a str>,
    pub skew: u64,
    pub require_exp: bool,
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or(JwtError::Claims),
        Some(_) => Err(JwtError::Claims),
    }
}

/// Returns the token's `exp`, if any, once every check passed.
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules<'_>,
    now: i64,
) -> Result<Option<i64>, JwtError> {
    let skew = i64::try_from(rules.skew).unwrap_or(i64::MAX / 4);
    let exp = numeric_date(claims, "exp")?;
    match exp {
        Some(exp) if now >= exp.saturating_add(skew) => return Err(JwtError::Expired),
        None if rules.require_exp => return Err(JwtError::MissingExp),
        _ => {}
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(skew) < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    if let Some(iat) = numeric_date(claims, "iat")?
        && iat > now.saturating_add(skew)
    {
        return Err(JwtError::IssuedInFuture);
    }
    if !rules.audience.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audience.iter().any(|x| x == a),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .any(|a| rules.audience.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(JwtError::Audience);
        }
    }
    if let Some(iss) = rules.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(iss)
    {
        return Err(JwtError::Issuer);
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        let h = b64(&json!({"alg": "HS256"}));
        assert!(parse(&format!("{h}.e30.sig")).is_ok());
        assert_eq!(parse("a.b").unwrap_err(), JwtError::Malformed);
        assert_eq!(
            parse(&format!("{h}.e30.sig.x.y")).unwrap_err(),
            JwtError::Malformed
        );
        assert_eq!(
            parse(&format!("{h}.e30.")).unwrap_err(),
            JwtError::Malformed
        );
        assert_eq!(parse("!!.e30.sig").unwrap_err(), JwtError::Malformed);
        let none = b64(&json!({"alg": "none"}));
        assert_eq!(
            parse(&format!("{none}.e30.sig")).unwrap_err(),
            JwtError::Algorithm
        );
        let crit = b64(&json!({"alg": "HS256", "crit": ["exp"]}));
        assert_eq!(
            parse(&format!("{crit}.e30.sig")).unwrap_err(),
            JwtError::Critical
        );
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(parse(&big).unwrap_err(), JwtError::TooLarge);
    }

    #[test]
    fn time_checks_honour_skew() {
        let rules = ClaimRules {
            audience: &[],
            issuer: None,
            skew: 0,
            require_exp: true,
        };
        let c = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            check_claims(&c(json!({"exp": 100})), &rules, 99),
            Ok(Some(100))
        );
        assert_eq!(
            check_claims(&c(json!({"exp": 100})), &rules, 100),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check_claims(&c(json!({})), &rules, 100),
            Err(JwtError::MissingExp)
        );
        assert_eq!(
            check_claims(&c(json!({"exp": "x"})), &rules, 1),
            Err(JwtError::Claims)
        );
        let skewed = ClaimRules {
            skew: 60,
            ..rules.clone()
        };
        assert!(check_claims(&c(json!({"exp": 100})), &skewed, 159).is_ok());
        assert_eq!(
            check_claims(&c(json!({"exp": 100})), &skewed, 160),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check_claims(&c(json!({"exp": 1000, "nbf": 200})), &skewed, 139),
            Err(JwtError::NotYetValid)
        );
        assert!(check_claims(&c(json!({"exp": 1000, "nbf": 200})), &skewed, 140).is_ok());
        assert_eq!(
            check_claims(&c(json!({"exp": 1000, "iat": 200})), &skewed, 139),
            Err(JwtError::IssuedInFuture)
        );
        let no_exp = ClaimRules {
            require_exp: false,
            ..rules
        };
        assert_eq!(check_claims(&c(json!({})), &no_exp, 1), Ok(None));
    }

    #[test]
    fn audience_any_of_and_issuer() {
        let aud = vec!["a".to_string(), "b".to_string()];
        let rules = ClaimRules {
            audience: &aud,
            issuer: Some("iss"),
            skew: 0,
            require_exp: false,
        };
        let c = |v: Value| v.as_object().unwrap().clone();
        assert!(check_claims(&c(json!({"aud": "b", "iss": "iss"})), &rules, 0).is_ok());
        assert!(check_claims(&c(json!({"aud": ["x", "a"], "iss": "iss"})), &rules, 0).is_ok());
        assert_eq!(
            check_claims(&c(json!({"aud": "x", "iss": "iss"})), &rules, 0),
            Err(JwtError::Audience)
        );
        assert_eq!(
            check_claims(&c(json!({"iss": "iss"})), &rules, 0),
            Err(JwtError::Audience)
        );
        assert_eq!(
            check_claims(&c(json!({"aud": "a", "iss": "other"})), &rules, 0),
            Err(JwtError::Issuer)
        );
    }
}
