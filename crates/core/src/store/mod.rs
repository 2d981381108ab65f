//! The credential and challenge store behind WebAuthn elevation (docs/elevation.md, "Stores").
//!
//! One trait, [`CredentialStore`], with two implementations chosen by URL in
//! [`open`]:
//!
//! - SQLite (`sqlite://path`, `sqlite:path`, `sqlite::memory:`): embedded, the
//!   file is created on first use and put in WAL mode.
//! - PostgreSQL (`postgres://...`, `postgresql://...`): for several replicas.
//!   Tables live in the schema `authgate`; with [`StoreOptions::nhost_keys`],
//!   nhost's `auth.user_security_keys` is read (never written) so an nhost
//!   user's existing keys count.
//!
//! Both run their versioned migrations at every open; that is idempotent, and on
//! PostgreSQL serialised by a transaction-scoped advisory lock so replicas may
//! start together.
//!
//! Challenges are single use: [`CredentialStore::take_challenge`] removes and
//! returns a challenge in one statement (`DELETE ... RETURNING`), so two
//! concurrent ceremonies can never both consume it. A take that names another
//! user or the other kind of ceremony does not consume the challenge (a user
//! cannot burn another user's pending ceremony); an expired challenge is
//! removed whoever asks and is never returned.

use std::sync::Arc;

mod postgres;
mod sqlite;
mod traced;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A boxed, sendable future, so that the trait is object safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or used (down, I/O error, bad URL,
    /// missing permission).
    #[error("credential store unavailable: {0}")]
    Unavailable(String),
    /// A unique key is taken: the credential id (for any user) or the key id
    /// is already registered, or the challenge already exists.
    #[error("credential store conflict: the record already exists")]
    Conflict,
    /// A stored row cannot be decoded.
    #[error("credential store data is corrupt: {0}")]
    Corrupt(String),
}

/// A registered security key (WebAuthn credential).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    /// The key's id: UUID v4 text for authgate's keys, `nhost:<uuid>` for keys
    /// read from nhost's table.
    pub id: String,
    pub user_id: String,
    /// The raw WebAuthn credential id.
    pub credential_id: Vec<u8>,
    pub nickname: Option<String>,
    /// Opaque JSON (webauthn-rs `SecurityKey`); for an nhost key
    /// `{"nhost": true, "credentialId": "<base64url>", "publicKey": "<base64url COSE key>"}`.
    pub credential: serde_json::Value,
    pub counter: u32,
    /// Unix seconds (0 for nhost keys, whose table has no such column).
    pub created_at: i64,
}

/// A ceremony's pending challenge.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingChallenge {
    /// The challenge, base64url; the primary key.
    pub challenge: String,
    pub user_id: String,
    pub kind: ChallengeKind,
    /// Opaque JSON (the webauthn-rs ceremony state).
    pub state: serde_json::Value,
    /// Unix seconds; the challenge is valid while `now < expires_at`.
    pub expires_at: i64,
}

/// Which ceremony a challenge belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    Register,
    Authenticate,
}

impl ChallengeKind {
    /// The stored text: `register` or `authenticate`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Register => "register",
            ChallengeKind::Authenticate => "authenticate",
        }
    }

    /// Parses the stored text.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "register" => Some(ChallengeKind::Register),
            "authenticate" => Some(ChallengeKind::Authenticate),
            _ => None,
        }
    }
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Security keys and pending challenges.
pub trait CredentialStore: Send + Sync {
    /// How many keys the user has (with nhost's when enabled).
    fn count_keys<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;
    /// The user's keys, oldest first (nhost's, which have no creation time, first).
    fn list_keys<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>, StoreError>>;
    /// Conflict when the credential id already exists (for ANY user, nhost's
    /// keys included when enabled), when the key id exists, or when the id uses
    /// the reserved `nhost:` prefix.
    fn add_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Replaces the credential JSON and counter of key `id` (after a successful
    /// assertion; the caller checks the counter). A key that no longer exists,
    /// or an nhost key (read only), is left alone without error.
    fn update_key<'a>(
        &'a self,
        id: &'a str,
        credential: &'a serde_json::Value,
        counter: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// true if a key with this id belonging to user_id was deleted (never for
    /// an `nhost:` id: nhost's table is not written).
    fn delete_key<'a>(
        &'a self,
        user_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Stores a challenge; Conflict if the same challenge text exists. The
    /// user's oldest pending challenges (expired ones first) are dropped so
    /// that at most [`MAX_PENDING_CHALLENGES_PER_USER`] remain.
    fn put_challenge<'a>(
        &'a self,
        c: &'a PendingChallenge,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Single use: atomically removes and returns the challenge if it exists,
    /// belongs to `user_id`, has this kind and has not expired
    /// (`now < expires_at`). An expired challenge is removed too (None). A
    /// challenge of another user or kind is left in place (None).
    fn take_challenge<'a>(
        &'a self,
        challenge: &'a str,
        user_id: &'a str,
        kind: ChallengeKind,
        now: i64,
    ) -> BoxFuture<'a, Result<Option<PendingChallenge>, StoreError>>;
    /// Removes the challenges with `expires_at <= now`; returns how many.
    fn purge_expired<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// Pending challenges kept per user: a user may have a few ceremonies open
/// at once (tabs, devices), never an unbounded number.
pub const MAX_PENDING_CHALLENGES_PER_USER: usize = 8;

/// Options for [`open`].
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// PostgreSQL only: also count/list keys in nhost's `auth.user_security_keys`
    /// (read-only) so existing nhost keys count. Ignored for SQLite.
    pub nhost_keys: bool,
}

/// Opens the store for a URL: `sqlite://path` or `sqlite:path` (created if
/// missing, WAL mode, `sqlite::memory:` allowed), `postgres://...` or
/// `postgresql://...`. Runs migrations. Errors name the problem without
/// printing passwords in the URL.
pub async fn open(
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn CredentialStore>, StoreError> {
    let url = url.trim();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(traced::Traced {
            inner: Arc::new(SqliteStore::open(url).await?),
            system: "sqlite",
        }))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(traced::Traced {
            inner: Arc::new(PostgresStore::open(url, options).await?),
            system: "postgresql",
        }))
    } else {
        Err(StoreError::Unavailable(format!(
            "unsupported store URL `{}`: expected sqlite://PATH, sqlite::memory: or postgres://...",
            crate::redact::database_url(url)
        )))
    }
}

/// The secrets of a URL (password, raw and percent-decoded), to scrub from
/// driver messages.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@')
            && let Some((_, pw)) = authority[..at].split_once(':')
        {
            out.push(pw.to_owned());
        }
    }
    if let Some((_, query)) = url.split_once('?') {
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k.eq_ignore_ascii_case("password") {
                out.push(v.into_owned());
            }
        }
    }
    let decoded: Vec<String> = out
        .iter()
        .map(|s| {
            form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .map(|(_, v)| v.into_owned())
                .next()
                .unwrap_or_default()
        })
        .collect();
    out.extend(decoded);
    out.retain(|s| !s.is_empty());
    out.sort();
    out.dedup();
    // Longest first, so that a secret containing another is scrubbed whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// `msg` with every secret of `url` replaced by `***`.
fn scrub(msg: &str, url: &str) -> String {
    let mut msg = msg.to_owned();
    for secret in url_secrets(url) {
        msg = msg.replace(&secret, "***");
    }
    msg
}

/// Maps a driver error: unique violations to Conflict, decoding problems to
/// Corrupt, anything else to Unavailable.
fn db_error(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// The prefix of the ids of keys read from nhost's table.
pub const NHOST_ID_PREFIX: &str = "nhost:";

fn json_text(value: &serde_json::Value) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("JSON: {e}")))
}

fn parse_json(what: &str, id: &str, text: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{what} of `{id}` is not JSON: {e}")))
}

/// Builds a key from its stored columns.
fn key_from_row(
    id: String,
    user_id: String,
    credential_id: Vec<u8>,
    nickname: Option<String>,
    credential: &str,
    counter: i64,
    created_at: i64,
) -> Result<StoredKey, StoreError> {
    let credential = parse_json("credential", &id, credential)?;
    let counter = u32::try_from(counter).map_err(|_| {
        StoreError::Corrupt(format!("counter of key `{id}` out of range: {counter}"))
    })?;
    Ok(StoredKey {
        id,
        user_id,
        credential_id,
        nickname,
        credential,
        counter,
        created_at,
    })
}

/// Builds a challenge from its stored columns.
fn challenge_from_row(
    challenge: String,
    user_id: String,
    kind: &str,
    state: &str,
    expires_at: i64,
) -> Result<PendingChallenge, StoreError> {
    let kind = ChallengeKind::parse(kind).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "challenge kind `{kind}` is neither register nor authenticate"
        ))
    })?;
    let state = parse_json("state", "challenge", state)?;
    Ok(PendingChallenge {
        challenge,
        user_id,
        kind,
        state,
        expires_at,
    })
}

/// A versioned migration: applied once, in order, in one transaction.
struct Migration {
    version: i64,
    statements: &'static [&'static str],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_secrets() {
        let url = "postgres://u:p%40ss@h/d?password=other";
        let msg = scrub("bad p@ss and p%40ss and other", url);
        assert_eq!(msg, "bad *** and *** and ***");
    }

    #[test]
    fn kinds_round_trip() {
        for k in [ChallengeKind::Register, ChallengeKind::Authenticate] {
            assert_eq!(ChallengeKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ChallengeKind::parse("other"), None);
    }
}
