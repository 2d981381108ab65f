//! The PostgreSQL store, for several replicas. authgate's tables live in the
//! schema `authgate`; nhost's `auth.user_security_keys` can be read so that
//! an nhost user's existing keys count and answer step-ups (its `counter` is
//! the one column written, after a step-up, when the role may).

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Row};

use super::{
    BoxFuture, ChallengeKind, CredentialStore, MAX_PENDING_CHALLENGES_PER_USER, Migration,
    NHOST_ID_PREFIX, PendingChallenge, StoreError, StoreOptions, StoredKey, challenge_from_row,
    db_error, json_text, key_from_row, scrub,
};

/// The key of the transaction-scoped advisory lock that serialises migrations
/// of replicas opening the same database ("authgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x6175_7468_6761_7465;

/// The schema, one entry per version; never edit a released entry, add one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            "CREATE TABLE IF NOT EXISTS authgate.authgate_security_keys (
            id text PRIMARY KEY,
            user_id text NOT NULL,
            credential_id bytea NOT NULL UNIQUE,
            nickname text,
            credential text NOT NULL,
            counter bigint NOT NULL,
            created_at bigint NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS authgate_security_keys_user_id_idx
            ON authgate.authgate_security_keys (user_id)",
            "CREATE TABLE IF NOT EXISTS authgate.authgate_challenges (
            challenge text PRIMARY KEY,
            user_id text NOT NULL,
            kind text NOT NULL CHECK (kind IN ('register', 'authenticate')),
            state text NOT NULL,
            expires_at bigint NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS authgate_challenges_expires_at_idx
            ON authgate.authgate_challenges (expires_at)",
        ],
    },
    Migration {
        version: 2,
        statements: &["CREATE INDEX IF NOT EXISTS authgate_challenges_user_id_idx
            ON authgate.authgate_challenges (user_id, expires_at)"],
    },
];

const KEY_COLUMNS: &str = "id, user_id, credential_id, nickname, credential, counter, created_at";
const CHALLENGE_COLUMNS: &str = "challenge, user_id, kind, state, expires_at";

/// How long a request waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The PostgreSQL implementation of [`CredentialStore`].
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Whether nhost's `auth.user_security_keys` is read (asked for, and present
    /// at open).
    nhost: bool,
    /// nhost keys already reported as unusable for a step-up (warned once
    /// each, up to [`MAX_WARNED_KEYS`]).
    warned: Arc<Mutex<HashSet<String>>>,
}

/// How many unusable nhost keys are remembered as reported.
const MAX_WARNED_KEYS: usize = 1024;

impl PostgresStore {
    /// Connects, runs the migrations and looks for nhost's table when asked to.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let shown = crate::redact::database_url(url);
        let connect = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "invalid PostgreSQL store URL `{shown}`: {}",
                scrub(&e.to_string(), url)
            ))
        })?;
        let cannot_connect = |e: sqlx::Error| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL store `{shown}`: {}",
                scrub(&e.to_string(), url)
            ))
        };
        // One plain connection first: fails at once with the driver's reason
        // (the pool would retry until its timeout and report only that).
        let probe = PgConnection::connect_with(&connect)
            .await
            .map_err(cannot_connect)?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect)
            .await
            .map_err(cannot_connect)?;
        let with_context = |what: &str, e: StoreError| match e {
            StoreError::Unavailable(msg) => StoreError::Unavailable(format!(
                "{what} PostgreSQL store `{shown}`: {}",
                scrub(&msg, url)
            )),
            other => other,
        };
        migrate(&pool)
            .await
            .map_err(|e| with_context("cannot migrate", e))?;
        let nhost = if options.nhost_keys {
            nhost_table_readable(&pool)
                .await
                .map_err(|e| with_context("cannot inspect", e))?
        } else {
            false
        };
        Ok(PostgresStore {
            pool,
            nhost,
            warned: Arc::default(),
        })
    }

    /// Whether the nhost key `id`, unusable for a step-up, is reported now:
    /// once, not on every listing.
    fn first_report(&self, id: &str) -> bool {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        warned.len() < MAX_WARNED_KEYS && warned.insert(id.to_owned())
    }

    /// Records an nhost key's signature counter after a step-up, as nhost's
    /// Node service does after its own, so that a cloned key is noticed by
    /// either (the counter never goes back). A role that may only read
    /// nhost's table leaves it as it was (a warning says so): the step-up
    /// still counts, as with nhost's Go service, which never updates it.
    async fn update_nhost_counter(&self, id: &str, counter: u32) -> Result<(), StoreError> {
        let Ok(id) = uuid::Uuid::parse_str(id) else {
            return Ok(());
        };
        let done = sqlx::query(
            "UPDATE auth.user_security_keys SET counter = $2
             WHERE id = $1::uuid AND counter < $2",
        )
        .bind(id.to_string())
        .bind(i64::from(counter))
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => {
                tracing::warn!(
                    "this role may not UPDATE auth.user_security_keys: the signature counter \
                     of an nhost key is not recorded (GRANT UPDATE (counter) to record it)"
                );
                Ok(())
            }
            Err(e) => Err(db_error(e)),
        }
    }
}

/// Applies the missing migrations in one transaction holding an advisory lock,
/// so that replicas opening together migrate once. Creates nothing that exists
/// already (so a role without CREATE works once the schema is in place).
async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    let schema: bool = sqlx::query_scalar("SELECT to_regnamespace('authgate') IS NOT NULL")
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)?;
    if !schema {
        sqlx::query("CREATE SCHEMA IF NOT EXISTS authgate")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    let versions: bool =
        sqlx::query_scalar("SELECT to_regclass('authgate.authgate_schema_version') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
    if !versions {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS authgate.authgate_schema_version (
                version bigint PRIMARY KEY,
                applied_at bigint NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    }
    let current: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) FROM authgate.authgate_schema_version",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db_error)?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    if current > latest {
        tracing::warn!(
            current,
            latest,
            "the PostgreSQL store's schema is newer than this authgate knows"
        );
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        for statement in migration.statements {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
        }
        sqlx::query(
            "INSERT INTO authgate.authgate_schema_version (version, applied_at)
             VALUES ($1, EXTRACT(EPOCH FROM now())::bigint)",
        )
        .bind(migration.version)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tracing::info!(version = migration.version, "PostgreSQL store migrated");
    }
    tx.commit().await.map_err(db_error)
}

/// Whether nhost's table exists; an error when it exists but this role may not
/// read it (ignoring it would silently drop keys that should count).
async fn nhost_table_readable(pool: &PgPool) -> Result<bool, StoreError> {
    let row = sqlx::query(
        "SELECT to_regclass('auth.user_security_keys') IS NOT NULL AS present,
                COALESCE(has_table_privilege(to_regclass('auth.user_security_keys'), 'SELECT'),
                         false) AS readable",
    )
    .fetch_one(pool)
    .await
    .map_err(db_error)?;
    let present: bool = row.try_get("present").map_err(db_error)?;
    let readable: bool = row.try_get("readable").map_err(db_error)?;
    match (present, readable) {
        (false, _) => {
            tracing::info!(
                "nhost's auth.user_security_keys does not exist: no nhost keys to count"
            );
            Ok(false)
        }
        (true, false) => Err(StoreError::Unavailable(
            "nhost keys are enabled but this role may not SELECT from auth.user_security_keys"
                .to_owned(),
        )),
        (true, true) => Ok(true),
    }
}

fn key_of(row: &PgRow) -> Result<StoredKey, StoreError> {
    let credential: String = row.try_get("credential").map_err(db_error)?;
    key_from_row(
        row.try_get("id").map_err(db_error)?,
        row.try_get("user_id").map_err(db_error)?,
        row.try_get("credential_id").map_err(db_error)?,
        row.try_get("nickname").map_err(db_error)?,
        &credential,
        row.try_get("counter").map_err(db_error)?,
        row.try_get("created_at").map_err(db_error)?,
    )
}

/// Decodes nhost's text credential id (base64url, tolerating padding and the
/// standard alphabet).
fn decode_credential_id(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(trimmed)
        .or_else(|_| STANDARD_NO_PAD.decode(trimmed))
        .ok()
}

/// A key of nhost's table; None (with a warning) for a row whose credential id
/// is missing or cannot be decoded.
fn nhost_key_of(store: &PostgresStore, row: &PgRow) -> Result<Option<StoredKey>, StoreError> {
    let id: String = row.try_get("id").map_err(db_error)?;
    let user_id: String = row.try_get("user_id").map_err(db_error)?;
    let credential_id_text: Option<String> = row.try_get("credential_id").map_err(db_error)?;
    let credential_id_text = credential_id_text.unwrap_or_default();
    let public_key: Option<Vec<u8>> = row.try_get("credential_public_key").map_err(db_error)?;
    let counter: Option<i64> = row.try_get("counter").map_err(db_error)?;
    let nickname: Option<String> = row.try_get("nickname").map_err(db_error)?;
    let Some(credential_id) = decode_credential_id(&credential_id_text).filter(|id| !id.is_empty())
    else {
        tracing::warn!(
            id,
            "nhost security key with a credential id that is not base64url: ignored"
        );
        return Ok(None);
    };
    let counter = counter.unwrap_or(0).clamp(0, i64::from(u32::MAX));
    let counter = u32::try_from(counter).unwrap_or(u32::MAX);
    let credential = public_key
        .as_deref()
        .and_then(|cose| nhost_credential(&credential_id, cose, counter))
        .unwrap_or_else(|| {
            if store.first_report(&id) {
                tracing::warn!(
                    id,
                    "nhost security key whose public key is missing or not a supported COSE \
                     key: it counts, but cannot be used for a step-up"
                );
            }
            serde_json::json!({
                "nhost": true,
                "credentialId": credential_id_text,
                "publicKey": public_key.map(|k| URL_SAFE_NO_PAD.encode(k)),
            })
        });
    Ok(Some(StoredKey {
        id: format!("{NHOST_ID_PREFIX}{id}"),
        user_id,
        credential_id,
        nickname,
        credential,
        counter,
        created_at: 0,
    }))
}

/// An nhost key as the credential record authgate keeps for its own keys
/// (webauthn-rs' `SecurityKey`), so that it can answer a step-up. nhost
/// stores the authenticator's COSE_Key (RFC 9052, section 7) as it came in
/// the attestation; it records neither user verification nor backup
/// eligibility. nhost's step-up requires user verification, so the key is
/// taken as one registered with it (every step-up must verify the user, as
/// with nhost) and as a security key, not a synced passkey.
/// `None` for a key webauthn-rs cannot verify with (EdDSA, RSA other than
/// RS256) or bytes that are not a COSE key.
fn nhost_credential(credential_id: &[u8], cose: &[u8], counter: u32) -> Option<serde_json::Value> {
    use webauthn_rs_core::proto::{
        AttestationFormat, COSEKey, Credential, ParsedAttestation, RegisteredExtensions,
        UserVerificationPolicy,
    };
    let value: serde_cbor_2::Value = serde_cbor_2::from_slice(cose).ok()?;
    let cred = COSEKey::try_from(&value).ok()?;
    let credential = Credential {
        cred_id: credential_id.to_vec(),
        cred,
        counter,
        transports: None,
        user_verified: true,
        backup_eligible: false,
        backup_state: false,
        registration_policy: UserVerificationPolicy::Preferred,
        extensions: RegisteredExtensions::none(),
        attestation: ParsedAttestation::default(),
        attestation_format: AttestationFormat::None,
    };
    Some(serde_json::json!({ "cred": credential }))
}

fn challenge_of(row: &PgRow) -> Result<PendingChallenge, StoreError> {
    let kind: String = row.try_get("kind").map_err(db_error)?;
    let state: String = row.try_get("state").map_err(db_error)?;
    challenge_from_row(
        row.try_get("challenge").map_err(db_error)?,
        row.try_get("user_id").map_err(db_error)?,
        &kind,
        &state,
        row.try_get("expires_at").map_err(db_error)?,
    )
}

impl CredentialStore for PostgresStore {
    fn count_keys<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let sql = if self.nhost {
                "SELECT (SELECT count(*) FROM authgate.authgate_security_keys WHERE user_id = $1)
                      + (SELECT count(*) FROM auth.user_security_keys WHERE user_id::text = $1)"
            } else {
                "SELECT count(*) FROM authgate.authgate_security_keys WHERE user_id = $1"
            };
            let n: i64 = sqlx::query_scalar(sql)
                .bind(user_id)
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
        })
    }

    fn list_keys<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>, StoreError>> {
        Box::pin(async move {
            let mut keys = Vec::new();
            if self.nhost {
                let rows = sqlx::query(
                    "SELECT id::text AS id, user_id::text AS user_id, credential_id,
                            credential_public_key, counter, nickname
                     FROM auth.user_security_keys WHERE user_id::text = $1 ORDER BY id",
                )
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
                for row in &rows {
                    keys.extend(nhost_key_of(self, row)?);
                }
            }
            let rows = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM authgate.authgate_security_keys WHERE user_id = $1
                 ORDER BY created_at, id"
            ))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            for row in &rows {
                keys.push(key_of(row)?);
            }
            Ok(keys)
        })
    }

    fn add_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if key.id.starts_with(NHOST_ID_PREFIX) {
                return Err(StoreError::Conflict);
            }
            if self.nhost {
                let taken: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM auth.user_security_keys
                                    WHERE rtrim(credential_id, '=') = $1)",
                )
                .bind(URL_SAFE_NO_PAD.encode(&key.credential_id))
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
                if taken {
                    return Err(StoreError::Conflict);
                }
            }
            let credential = json_text(&key.credential)?;
            sqlx::query(&format!(
                "INSERT INTO authgate.authgate_security_keys ({KEY_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(&key.id)
            .bind(&key.user_id)
            .bind(&key.credential_id)
            .bind(&key.nickname)
            .bind(credential)
            .bind(i64::from(key.counter))
            .bind(key.created_at)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            Ok(())
        })
    }

    fn update_key<'a>(
        &'a self,
        id: &'a str,
        credential: &'a serde_json::Value,
        counter: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(nhost_id) = id.strip_prefix(NHOST_ID_PREFIX) {
                if !self.nhost {
                    return Ok(());
                }
                return self.update_nhost_counter(nhost_id, counter).await;
            }
            let credential = json_text(credential)?;
            sqlx::query(
                "UPDATE authgate.authgate_security_keys SET credential = $2, counter = $3
                 WHERE id = $1",
            )
            .bind(id)
            .bind(credential)
            .bind(i64::from(counter))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            Ok(())
        })
    }

    fn delete_key<'a>(
        &'a self,
        user_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM authgate.authgate_security_keys WHERE id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn put_challenge<'a>(
        &'a self,
        c: &'a PendingChallenge,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let state = json_text(&c.state)?;
            let mut tx = self.pool.begin().await.map_err(db_error)?;
            // Room for this one: the user's newest `MAX - 1` stay.
            sqlx::query(
                "DELETE FROM authgate.authgate_challenges WHERE user_id = $1 AND challenge IN (
                    SELECT challenge FROM authgate.authgate_challenges WHERE user_id = $1
                    ORDER BY expires_at DESC, challenge OFFSET $2)",
            )
            .bind(&c.user_id)
            .bind(MAX_PENDING_CHALLENGES_PER_USER as i64 - 1)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query(&format!(
                "INSERT INTO authgate.authgate_challenges ({CHALLENGE_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5)"
            ))
            .bind(&c.challenge)
            .bind(&c.user_id)
            .bind(c.kind.as_str())
            .bind(state)
            .bind(c.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tx.commit().await.map_err(db_error)?;
            Ok(())
        })
    }

    fn take_challenge<'a>(
        &'a self,
        challenge: &'a str,
        user_id: &'a str,
        kind: ChallengeKind,
        now: i64,
    ) -> BoxFuture<'a, Result<Option<PendingChallenge>, StoreError>> {
        Box::pin(async move {
            // One statement: removes the challenge when it is this user's and
            // kind's, or when it has expired (whoever asks). Concurrent takes
            // serialise on the row: only one gets it back.
            let row = sqlx::query(&format!(
                "DELETE FROM authgate.authgate_challenges
                 WHERE challenge = $1 AND ((user_id = $2 AND kind = $3) OR expires_at <= $4)
                 RETURNING {CHALLENGE_COLUMNS}"
            ))
            .bind(challenge)
            .bind(user_id)
            .bind(kind.as_str())
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
            let Some(row) = row else { return Ok(None) };
            let taken = challenge_of(&row)?;
            Ok(
                (taken.user_id == user_id && taken.kind == kind && now < taken.expires_at)
                    .then_some(taken),
            )
        })
    }

    fn purge_expired<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let done =
                sqlx::query("DELETE FROM authgate.authgate_challenges WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&self.pool)
                    .await
                    .map_err(db_error)?;
            Ok(done.rows_affected())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_credential_id, nhost_credential};
    use webauthn_rs::prelude::SecurityKey;

    /// The COSE_Key (EC2, ES256, P-256) of the curve's generator point, as an
    /// authenticator encodes a public key.
    fn cose_p256() -> Vec<u8> {
        let x = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
        let y = "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        // {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}
        let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        cose.extend(hex(x));
        cose.extend([0x22, 0x58, 0x20]);
        cose.extend(hex(y));
        cose
    }

    #[test]
    fn nhost_cose_keys_become_security_keys() {
        let v = nhost_credential(&[1, 2, 3], &cose_p256(), 7).expect("an ES256 key");
        let key: SecurityKey = serde_json::from_value(v).expect("a SecurityKey");
        assert_eq!(key.cred_id()[..], [1u8, 2, 3][..]);
        // Not a COSE key, a point off the curve, an unsupported algorithm.
        assert!(nhost_credential(&[1], &[4, 5, 6], 0).is_none());
        let mut off_curve = cose_p256();
        let last = off_curve.len() - 1;
        off_curve[last] ^= 1;
        assert!(nhost_credential(&[1], &off_curve, 0).is_none());
        let mut eddsa = cose_p256();
        eddsa[4] = 0x27; // alg -8 (EdDSA) with an EC2 key
        assert!(nhost_credential(&[1], &eddsa, 0).is_none());
    }

    #[test]
    fn decodes_nhost_credential_ids() {
        assert_eq!(decode_credential_id("AQID_w"), Some(vec![1, 2, 3, 255]));
        assert_eq!(decode_credential_id("AQID_w=="), Some(vec![1, 2, 3, 255]));
        assert_eq!(decode_credential_id("AQID/w=="), Some(vec![1, 2, 3, 255]));
        assert_eq!(decode_credential_id("not base64!"), None);
    }
}
