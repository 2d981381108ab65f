//! The WebAuthn ceremonies of elevated access (docs/elevation.md): add a
//! security key, elevate with one, list and delete keys. Protocol-free:
//! front doors turn requests into these calls and a [`CeremonyError`] into
//! their own answer.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::Webauthn;
use webauthn_rs::prelude::{
    CreationChallengeResponse, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, SecurityKey, SecurityKeyAuthentication, SecurityKeyRegistration,
    WebauthnError,
};

use super::{Elevation, ElevationMode};
use crate::clock::unix_now;
use crate::identity::{AccessToken, Identity};
use crate::metrics::{CeremonyStep, ElevationFailure, Metrics};
use crate::store::{ChallengeKind, PendingChallenge, StoreError, StoredKey};

/// Why a ceremony call was refused. Each names what the caller can do
/// about it ([`CeremonyError::code`], [`CeremonyError::message`]).
#[derive(Debug)]
pub enum CeremonyError {
    /// The config has no WebAuthn settings.
    NotConfigured,
    /// The session names no user (`x-hasura-user-id`).
    UserRequired,
    /// Grants bind to a bearer access token; the caller used another mode.
    TokenRequired,
    /// The request is malformed (400).
    InvalidRequest(&'static str),
    /// The call needs elevated access first.
    ElevationRequired,
    /// The user has no security key to elevate with.
    NoSecurityKey,
    /// webauthn-rs could not start the ceremony.
    CannotStart(&'static str),
    /// The credential answers a challenge unknown, used, expired, or of
    /// another user or ceremony.
    InvalidChallenge,
    /// The credential did not verify.
    Refused(WebauthnError),
    /// The key that signed was deleted during the ceremony.
    KeyGone,
    /// The key is registered already.
    CredentialExists,
    /// The access token expires before a grant could be of use.
    TokenExpiring,
    /// No such key for this user.
    NotFound,
    /// The store failed (counted and logged by [`Elevation::store_failed`]).
    Store(StoreError),
}

impl CeremonyError {
    /// The `error` of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            CeremonyError::NotConfigured | CeremonyError::NotFound => "not_found",
            CeremonyError::UserRequired => "user_required",
            CeremonyError::TokenRequired => "token_required",
            CeremonyError::InvalidRequest(_) => "invalid_request",
            CeremonyError::ElevationRequired => "elevation_required",
            CeremonyError::NoSecurityKey => "no_security_key",
            CeremonyError::CannotStart(_) | CeremonyError::KeyGone => "ceremony_failed",
            CeremonyError::InvalidChallenge => "invalid_challenge",
            CeremonyError::Refused(e) => match failure_cause(e).0 {
                "credential_exists" => "credential_exists",
                _ => "ceremony_failed",
            },
            CeremonyError::CredentialExists => "credential_exists",
            CeremonyError::TokenExpiring => "token_expiring",
            CeremonyError::Store(_) => "internal_error",
        }
    }

    /// What did not match, for a refused credential ([`failure_cause`]).
    pub fn cause(&self) -> Option<&'static str> {
        match self {
            CeremonyError::Refused(e) => Some(failure_cause(e).0),
            _ => None,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            CeremonyError::NotConfigured => "WebAuthn is not configured",
            CeremonyError::UserRequired => "a user session is required",
            CeremonyError::TokenRequired => "elevation grants bind to a bearer access token",
            CeremonyError::InvalidRequest(m) => m,
            CeremonyError::ElevationRequired => "elevated access is required",
            CeremonyError::NoSecurityKey => "register a security key first",
            CeremonyError::CannotStart(m) => m,
            CeremonyError::InvalidChallenge => "unknown, used or expired challenge",
            CeremonyError::Refused(e) => failure_cause(e).1,
            CeremonyError::KeyGone => "the security key is no longer registered",
            CeremonyError::CredentialExists => "this security key is already registered",
            CeremonyError::TokenExpiring => "the access token is about to expire",
            CeremonyError::NotFound => "no such security key",
            CeremonyError::Store(_) => "authorization temporarily unavailable",
        }
    }
}

/// Why a credential was refused, told so that a user or an operator can
/// act on it: `(cause, message)`. A cause names what did not match, never
/// a value the client could not see anyway (the configured origins are not
/// echoed).
pub fn failure_cause(e: &WebauthnError) -> (&'static str, &'static str) {
    use WebauthnError as E;
    match e {
        E::InvalidRPOrigin | E::CredentialCrossOrigin => (
            "origin_mismatch",
            "the page's origin is not allowed for this relying party (webauthn.origins)",
        ),
        E::InvalidRPIDHash => (
            "rp_id_mismatch",
            "the security key answered for another relying party ID (webauthn.rpId)",
        ),
        E::UserNotPresent => (
            "user_not_present",
            "the security key did not confirm the user's presence (touch)",
        ),
        E::UserNotVerified => (
            "user_not_verified",
            "the security key did not verify the user (PIN or biometric), which this key requires",
        ),
        E::AuthenticationFailure | E::SignatureInvalid => (
            "bad_signature",
            "the security key's signature did not verify",
        ),
        E::MismatchedChallenge => (
            "challenge_mismatch",
            "the credential answers another challenge",
        ),
        E::InvalidClientDataType => (
            "wrong_ceremony",
            "the credential was made for the other ceremony (registration or authentication)",
        ),
        E::CredentialNotFound => (
            "unknown_credential",
            "this security key is not registered for the user",
        ),
        E::CredentialExcludedFromRequest | E::CredentialAlreadyExists => (
            "credential_exists",
            "this security key is already registered",
        ),
        E::ParseBase64Failure(_)
        | E::ParseCBORFailure(_)
        | E::ParseJSONFailure(_)
        | E::ParseNOMFailure
        | E::ParseInsufficientBytesAvailable
        | E::MissingAttestationCredentialData
        | E::AuthenticatorDataMissingExtension
        | E::InvalidExtensions => ("malformed_credential", "the credential could not be parsed"),
        E::COSEKeyInvalidCBORValue
        | E::COSEKeyInvalidType
        | E::COSEKeyEDUnsupported
        | E::COSEKeyECDSAXYInvalid
        | E::COSEKeyRSANEInvalid
        | E::COSEKeyECDSAInvalidCurve
        | E::COSEKeyEDDSAXInvalid
        | E::COSEKeyEDDSAInvalidCurve
        | E::COSEKeyInvalidAlgorithm
        | E::CredentialAlteredAlgFromRequest
        | E::CredentialInsecureCryptography => (
            "unsupported_key",
            "the security key's public key or algorithm is not supported",
        ),
        E::CredentialBackupEligibilityInconsistent | E::CredentialMayNotBeHardwareBound => (
            "synced_passkey",
            "the key reports that it is a synced passkey (backup eligible or backed up), which it \
             was not registered as; step up with a security key",
        ),
        _ => ("ceremony_failed", "the security key could not be verified"),
    }
}

/// The caller of a ceremony, as the pipeline identified them.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub elevated: bool,
    /// The bearer access token a grant will bind to.
    pub token: Option<AccessToken<'static>>,
}

impl Caller {
    /// A caller needs a user id.
    pub fn of(identity: Identity) -> Result<Caller, CeremonyError> {
        Ok(Caller {
            user: identity.user_id.ok_or(CeremonyError::UserRequired)?,
            elevated: identity.elevated,
            token: identity.token,
        })
    }

    /// The access token a grant will bind to.
    pub fn bearer(&self) -> Result<&AccessToken<'static>, CeremonyError> {
        self.token.as_ref().ok_or(CeremonyError::TokenRequired)
    }
}

/// A key just registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedKey {
    pub id: String,
    pub nickname: Option<String>,
}

/// An elevation grant and its lifetime in seconds.
#[derive(Debug, Clone)]
pub struct Grant {
    pub token: String,
    pub expires_in: i64,
}

/// A registered key as listed to its user.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub id: String,
    pub nickname: Option<String>,
    pub created_at: i64,
}

/// The ceremonies of one config's elevation stage.
pub struct Ceremonies<'a> {
    elevation: &'a Elevation,
    webauthn: &'a Webauthn,
    metrics: &'a Metrics,
}

impl<'a> Ceremonies<'a> {
    /// `None` config of WebAuthn is [`CeremonyError::NotConfigured`].
    pub fn of(elevation: &'a Elevation, metrics: &'a Metrics) -> Result<Self, CeremonyError> {
        let webauthn = elevation
            .webauthn
            .as_deref()
            .ok_or(CeremonyError::NotConfigured)?;
        Ok(Ceremonies {
            elevation,
            webauthn,
            metrics,
        })
    }

    /// Starts a registration: the options for `navigator.credentials.create`.
    pub async fn add_begin(
        &self,
        caller: &Caller,
        nickname: Option<String>,
    ) -> Result<CreationChallengeResponse, CeremonyError> {
        self.may_add_key(caller).await?;
        let existing = self.store(self.elevation.store.list_keys(&caller.user).await)?;
        // nhost's keys too: the browser then refuses to register one of
        // them again before it asks the key.
        let exclude = existing.iter().map(|k| k.credential_id.clone()).collect();
        let started = self.webauthn.start_securitykey_registration(
            user_handle(&caller.user),
            &caller.user,
            &caller.user,
            Some(exclude),
            None,
            None,
        );
        let (mut options, state) = started.map_err(|e| {
            tracing::warn!(error = %e, "cannot start a WebAuthn registration");
            self.failed(
                CeremonyStep::Begin,
                CeremonyError::CannotStart("cannot start the registration"),
            )
        })?;
        consistent_registration_options(&mut options);
        self.put_challenge(
            caller,
            &options.public_key.challenge,
            ChallengeKind::Register,
            json!({"registration": state, "nickname": nickname}),
        )
        .await?;
        self.metrics.ceremony(CeremonyStep::Begin, true);
        Ok(options)
    }

    /// Verifies a registration and stores the key.
    pub async fn add_finish(
        &self,
        caller: &Caller,
        credential: &RegisterPublicKeyCredential,
        nickname: Option<String>,
    ) -> Result<AddedKey, CeremonyError> {
        self.may_add_key(caller).await?;
        let pending = self
            .take_challenge(
                caller,
                &credential.response.client_data_json,
                ChallengeKind::Register,
                CeremonyStep::Register,
            )
            .await?;
        let state = serde_json::from_value::<SecurityKeyRegistration>(
            pending.state["registration"].clone(),
        )
        .map_err(|_| self.store_error(StoreError::Corrupt("registration state".into())))?;
        let key = self
            .webauthn
            .finish_securitykey_registration(credential, &state)
            .map_err(|e| {
                tracing::info!(error = %e, "WebAuthn registration refused");
                self.failed(CeremonyStep::Register, CeremonyError::Refused(e))
            })?;
        let nickname = nickname.or_else(|| pending.state["nickname"].as_str().map(str::to_owned));
        let stored = StoredKey {
            id: Uuid::new_v4().to_string(),
            user_id: caller.user.clone(),
            credential_id: key.cred_id().to_vec(),
            nickname: nickname.clone(),
            credential: serde_json::to_value(&key)
                .map_err(|_| self.store_error(StoreError::Corrupt("credential".into())))?,
            counter: 0,
            created_at: unix_now(),
        };
        match self.elevation.store.add_key(&stored).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => {
                return Err(self.failed(CeremonyStep::Register, CeremonyError::CredentialExists));
            }
            Err(e) => return Err(self.store_error(e)),
        }
        self.elevation.invalidate(&caller.user);
        self.metrics.ceremony(CeremonyStep::Register, true);
        Ok(AddedKey {
            id: stored.id,
            nickname,
        })
    }

    /// Starts a step-up: the options for `navigator.credentials.get`.
    pub async fn elevate_begin(
        &self,
        caller: &Caller,
    ) -> Result<RequestChallengeResponse, CeremonyError> {
        let keys = security_keys(&self.store(self.elevation.store.list_keys(&caller.user).await)?);
        if keys.is_empty() {
            return Err(self.failed(CeremonyStep::Begin, CeremonyError::NoSecurityKey));
        }
        let creds: Vec<SecurityKey> = keys.into_iter().map(|(_, k)| k).collect();
        let (options, state) = self
            .webauthn
            .start_securitykey_authentication(&creds)
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot start a WebAuthn authentication");
                self.failed(
                    CeremonyStep::Begin,
                    CeremonyError::CannotStart("cannot start the challenge"),
                )
            })?;
        self.put_challenge(
            caller,
            &options.public_key.challenge,
            ChallengeKind::Authenticate,
            json!({"authentication": state}),
        )
        .await?;
        self.metrics.ceremony(CeremonyStep::Begin, true);
        Ok(options)
    }

    /// Verifies an assertion and mints a grant bound to the caller's token.
    pub async fn elevate_finish(
        &self,
        caller: &Caller,
        credential: &PublicKeyCredential,
    ) -> Result<Grant, CeremonyError> {
        let token = caller.bearer()?;
        let pending = self
            .take_challenge(
                caller,
                &credential.response.client_data_json,
                ChallengeKind::Authenticate,
                CeremonyStep::Verify,
            )
            .await?;
        let state = serde_json::from_value::<SecurityKeyAuthentication>(
            pending.state["authentication"].clone(),
        )
        .map_err(|_| self.store_error(StoreError::Corrupt("authentication state".into())))?;
        let result = self
            .webauthn
            .finish_securitykey_authentication(credential, &state)
            .map_err(|e| {
                tracing::info!(error = %e, "WebAuthn assertion refused");
                self.failed(CeremonyStep::Verify, CeremonyError::Refused(e))
            })?;
        // Persist the new signature counter.
        let keys = security_keys(&self.store(self.elevation.store.list_keys(&caller.user).await)?);
        let Some((id, mut key)) = keys
            .into_iter()
            .find(|(_, k)| k.cred_id() == result.cred_id())
        else {
            return Err(self.failed(CeremonyStep::Verify, CeremonyError::KeyGone));
        };
        if key.update_credential(&result).is_some() {
            let value = serde_json::to_value(&key).unwrap_or(Value::Null);
            self.store(
                self.elevation
                    .store
                    .update_key(&id, &value, result.counter())
                    .await,
            )?;
        }
        let (token, expires_in) = self
            .elevation
            .grants
            .mint(
                &caller.user,
                &token.raw,
                token.exp,
                self.elevation.cfg.grant.ttl,
                unix_now(),
            )
            .map_err(|_| CeremonyError::TokenExpiring)?;
        self.metrics.ceremony(CeremonyStep::Verify, true);
        Ok(Grant { token, expires_in })
    }

    /// The caller's keys.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<KeyInfo>, CeremonyError> {
        let keys = self.store(self.elevation.store.list_keys(&caller.user).await)?;
        Ok(keys
            .into_iter()
            .map(|k| KeyInfo {
                id: k.id,
                nickname: k.nickname,
                created_at: k.created_at,
            })
            .collect())
    }

    /// Deletes one of the caller's keys; always needs elevation (nhost),
    /// whatever the mode.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), CeremonyError> {
        if !caller.elevated {
            return Err(self.elevation_required());
        }
        match self.store(self.elevation.store.delete_key(&caller.user, id).await)? {
            true => {
                self.elevation.invalidate(&caller.user);
                Ok(())
            }
            false => Err(CeremonyError::NotFound),
        }
    }

    /// Adding a key follows the mode (nhost): the first key is free; later
    /// ones need elevation unless elevation is disabled.
    async fn may_add_key(&self, caller: &Caller) -> Result<(), CeremonyError> {
        let count = self.store(self.elevation.store.count_keys(&caller.user).await)?;
        if count == 0 || caller.elevated || self.elevation.cfg.mode == ElevationMode::Disabled {
            Ok(())
        } else {
            Err(self.elevation_required())
        }
    }

    async fn put_challenge(
        &self,
        caller: &Caller,
        challenge: &[u8],
        kind: ChallengeKind,
        state: Value,
    ) -> Result<(), CeremonyError> {
        let ttl = i64::try_from(self.elevation.cfg.challenge_ttl.as_secs()).unwrap_or(i64::MAX);
        let pending = PendingChallenge {
            challenge: URL_SAFE_NO_PAD.encode(challenge),
            user_id: caller.user.clone(),
            kind,
            state,
            expires_at: unix_now().saturating_add(ttl),
        };
        self.store(self.elevation.store.put_challenge(&pending).await)
    }

    /// The pending challenge the credential answers, taken (used once).
    async fn take_challenge(
        &self,
        caller: &Caller,
        client_data_json: &[u8],
        kind: ChallengeKind,
        step: CeremonyStep,
    ) -> Result<PendingChallenge, CeremonyError> {
        let Some(challenge) = challenge_of(client_data_json) else {
            return Err(CeremonyError::InvalidRequest(
                "clientDataJSON has no challenge",
            ));
        };
        let taken = self
            .elevation
            .store
            .take_challenge(&challenge, &caller.user, kind, unix_now())
            .await;
        self.store(taken)?
            .ok_or_else(|| self.failed(step, CeremonyError::InvalidChallenge))
    }

    fn store<T>(&self, r: Result<T, StoreError>) -> Result<T, CeremonyError> {
        r.map_err(|e| self.store_error(e))
    }

    fn store_error(&self, e: StoreError) -> CeremonyError {
        self.elevation.store_failed(&e);
        CeremonyError::Store(e)
    }

    fn elevation_required(&self) -> CeremonyError {
        self.metrics.elevation_failure(ElevationFailure::Missing);
        CeremonyError::ElevationRequired
    }

    fn failed(&self, step: CeremonyStep, e: CeremonyError) -> CeremonyError {
        self.metrics.ceremony(step, false);
        e
    }
}

/// The WebAuthn user handle: the user id when it is a UUID, else a stable
/// name-based UUID (v5) of it.
pub fn user_handle(user: &str) -> Uuid {
    Uuid::parse_str(user).unwrap_or_else(|_| {
        Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            format!("urn:authgate:user:{user}").as_bytes(),
        )
    })
}

/// The challenge a credential answers, from its clientDataJSON.
pub fn challenge_of(client_data_json: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(client_data_json).ok()?;
    let c = v.get("challenge")?.as_str()?;
    let bytes = URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok()?;
    Some(URL_SAFE_NO_PAD.encode(bytes))
}

/// Makes webauthn-rs' security-key registration options acceptable to
/// browsers. webauthn-rs asks for the credProtect extension with
/// `userVerificationRequired` while it asks for user verification only as
/// `preferred`; Chromium refuses that pair before it asks the authenticator
/// ("Requested protection policy is inconsistent or incongruent with other
/// requested parameters", kanidm/webauthn-rs#490). authgate does not
/// require user verification (a PIN-less key can step up, as with nhost),
/// so the extension goes: a key then keeps its default protection. The
/// registration state still says it was asked for, and webauthn-rs does
/// not require the extension's output, so the ceremony verifies the same.
/// docs/elevation.md ("User verification").
pub fn consistent_registration_options(options: &mut CreationChallengeResponse) {
    if let Some(ext) = options.public_key.extensions.as_mut() {
        ext.cred_protect = None;
    }
}

fn security_keys(keys: &[StoredKey]) -> Vec<(String, SecurityKey)> {
    keys.iter()
        .filter_map(|k| {
            Some((
                k.id.clone(),
                serde_json::from_value(k.credential.clone()).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_authenticator_rs::prelude::Url;
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;

    use super::*;
    use crate::elevation::{ElevationConfig, WebauthnSettings};

    const ORIGIN: &str = "https://app.example.com";

    async fn elevation(mode: ElevationMode) -> Elevation {
        let cfg = ElevationConfig {
            mode,
            webauthn: Some(WebauthnSettings {
                rp_id: "example.com".into(),
                rp_name: "authgate test".into(),
                origins: vec![Url::parse(ORIGIN).unwrap()],
            }),
            store_url: "sqlite::memory:".into(),
            ..Default::default()
        };
        let errors = prometheus::IntCounter::new("store_errors", "test").unwrap();
        Elevation::open(cfg, None, errors).await.expect("opens")
    }

    fn caller(user: &str, elevated: bool) -> Caller {
        Caller {
            user: user.into(),
            elevated,
            token: Some(AccessToken {
                raw: Cow::Owned(format!("access-token-of-{user}")),
                exp: Some(unix_now() + 600),
            }),
        }
    }

    async fn register(
        c: &Ceremonies<'_>,
        who: &Caller,
        key: &mut SoftPasskey,
        origin: &str,
    ) -> Result<AddedKey, CeremonyError> {
        let options = c.add_begin(who, Some("yubi".into())).await?;
        let credential = key
            .do_registration(Url::parse(origin).unwrap(), options)
            .expect("the soft authenticator registers");
        c.add_finish(who, &credential, None).await
    }

    async fn assertion(
        c: &Ceremonies<'_>,
        who: &Caller,
        key: &mut SoftPasskey,
    ) -> PublicKeyCredential {
        let options = c.elevate_begin(who).await.expect("options");
        key.do_authentication(Url::parse(ORIGIN).unwrap(), options)
            .expect("the soft authenticator signs")
    }

    #[tokio::test]
    async fn add_elevate_list_and_delete_follow_nhost() {
        let el = elevation(ElevationMode::Required).await;
        let metrics = Metrics::new();
        let c = Ceremonies::of(&el, &metrics).unwrap();
        let alice = caller("alice", false);
        let mut key = SoftPasskey::new(true);

        // No key yet: nothing to elevate with; the first key is free.
        assert!(matches!(
            c.elevate_begin(&alice).await,
            Err(CeremonyError::NoSecurityKey)
        ));
        let added = register(&c, &alice, &mut key, ORIGIN)
            .await
            .expect("first key");
        assert_eq!(added.nickname.as_deref(), Some("yubi"), "kept from begin");
        // A second key needs elevation.
        assert!(matches!(
            c.add_begin(&alice, None).await,
            Err(CeremonyError::ElevationRequired)
        ));

        // Elevate: the grant binds to alice and her access token.
        let signed = assertion(&c, &alice, &mut key).await;
        let grant = c.elevate_finish(&alice, &signed).await.expect("grant");
        assert!(grant.expires_in > 0 && grant.expires_in <= 600);
        let token = alice.token.as_ref().unwrap();
        assert!(
            el.grants
                .verify(&grant.token, "alice", &token.raw, unix_now())
                .is_ok()
        );
        // The challenge was used once.
        assert!(matches!(
            c.elevate_finish(&alice, &signed).await,
            Err(CeremonyError::InvalidChallenge)
        ));
        // Another user cannot answer alice's challenge.
        let signed = assertion(&c, &alice, &mut key).await;
        assert!(matches!(
            c.elevate_finish(&caller("bob", false), &signed).await,
            Err(CeremonyError::InvalidChallenge)
        ));
        // Without a bearer token there is nothing to bind a grant to.
        let no_token = Caller {
            token: None,
            ..alice.clone()
        };
        assert!(matches!(
            c.elevate_finish(&no_token, &signed).await,
            Err(CeremonyError::TokenRequired)
        ));

        let listed = c.list(&alice).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, added.id);
        assert!(matches!(
            c.delete(&alice, &added.id).await,
            Err(CeremonyError::ElevationRequired)
        ));
        let elevated = caller("alice", true);
        c.delete(&elevated, &added.id).await.expect("deleted");
        assert!(matches!(
            c.delete(&elevated, &added.id).await,
            Err(CeremonyError::NotFound)
        ));
        assert!(c.list(&alice).await.unwrap().is_empty());

        let text = metrics.render();
        for line in [
            r#"authgate_elevation_ceremonies_total{result="ok",step="begin"} 3"#,
            r#"authgate_elevation_ceremonies_total{result="ok",step="register"} 1"#,
            r#"authgate_elevation_ceremonies_total{result="ok",step="verify"} 1"#,
            r#"authgate_elevation_ceremonies_total{result="error",step="verify"} 2"#,
            r#"authgate_elevation_ceremonies_total{result="error",step="begin"} 1"#,
            r#"authgate_elevation_failures_total{reason="missing"} 2"#,
            r#"authgate_elevation_failures_total{reason="ceremony_failed"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn refusals_say_what_did_not_match() {
        let el = elevation(ElevationMode::Recommended).await;
        let metrics = Metrics::new();
        let c = Ceremonies::of(&el, &metrics).unwrap();
        let carol = caller("carol", false);
        let mut key = SoftPasskey::new(true);
        // Same relying party ID, an origin the config does not list.
        match register(&c, &carol, &mut key, "https://evil.example.com").await {
            Err(e @ CeremonyError::Refused(_)) => {
                assert_eq!(e.code(), "ceremony_failed");
                assert_eq!(e.cause(), Some("origin_mismatch"));
                assert!(e.message().contains("webauthn.origins"));
            }
            other => panic!("{other:?}"),
        }
        // A registration answered with an assertion-shaped client data.
        let options = c.add_begin(&carol, None).await.unwrap();
        let mut credential = key
            .do_registration(Url::parse(ORIGIN).unwrap(), options)
            .unwrap();
        credential.response.client_data_json = br#"{"type":"webauthn.create"}"#.to_vec();
        assert!(matches!(
            c.add_finish(&carol, &credential, None).await,
            Err(CeremonyError::InvalidRequest(_))
        ));
        // Not configured: no WebAuthn settings.
        let mut bare = elevation(ElevationMode::Required).await;
        bare.webauthn = None;
        assert!(matches!(
            Ceremonies::of(&bare, &metrics),
            Err(CeremonyError::NotConfigured)
        ));
        let user_less = Identity {
            session: Default::default(),
            user_id: None,
            token: None,
            elevated: false,
            mode: crate::decision::ModeRef {
                kind: "jwt",
                id: Arc::from("users"),
            },
        };
        assert!(matches!(
            Caller::of(user_less),
            Err(CeremonyError::UserRequired)
        ));
    }
}
