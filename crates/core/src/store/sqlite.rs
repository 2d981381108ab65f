//! The embedded SQLite store: one file (created on first use, WAL mode) or an
//! in-memory database.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::{
    BoxFuture, ChallengeKind, CredentialStore, MAX_PENDING_CHALLENGES_PER_USER, Migration,
    NHOST_ID_PREFIX, PendingChallenge, StoreError, StoredKey, challenge_from_row, db_error,
    json_text, key_from_row,
};

/// The schema, one entry per version; never edit a released entry, add one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            "CREATE TABLE IF NOT EXISTS authgate_security_keys (
            id TEXT PRIMARY KEY NOT NULL,
            user_id TEXT NOT NULL,
            credential_id BLOB NOT NULL UNIQUE,
            nickname TEXT,
            credential TEXT NOT NULL,
            counter INTEGER NOT NULL,
            created_at INTEGER NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS authgate_security_keys_user_id_idx
            ON authgate_security_keys (user_id)",
            "CREATE TABLE IF NOT EXISTS authgate_challenges (
            challenge TEXT PRIMARY KEY NOT NULL,
            user_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('register', 'authenticate')),
            state TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS authgate_challenges_expires_at_idx
            ON authgate_challenges (expires_at)",
        ],
    },
    Migration {
        version: 2,
        statements: &["CREATE INDEX IF NOT EXISTS authgate_challenges_user_id_idx
            ON authgate_challenges (user_id, expires_at)"],
    },
];

const KEY_COLUMNS: &str = "id, user_id, credential_id, nickname, credential, counter, created_at";
const CHALLENGE_COLUMNS: &str = "challenge, user_id, kind, state, expires_at";

/// How long a statement waits for another connection's (or process's) write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The SQLite implementation of [`CredentialStore`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The database part of a `sqlite:` URL and whether it names an in-memory database.
fn parse_target(url: &str) -> (String, bool) {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let memory = path == ":memory:"
        || form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "mode" && v == "memory");
    (path.to_owned(), memory)
}

impl SqliteStore {
    /// Opens (creating if missing) the database of a `sqlite:` URL and runs
    /// the migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let (path, memory) = parse_target(url);
        if path.is_empty() && !memory {
            return Err(StoreError::Unavailable(format!(
                "SQLite store URL `{url}` names no file (use sqlite://PATH or sqlite::memory:)"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite store URL `{url}`: {e}")))?
            .create_if_missing(true)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool_options = if memory {
            // An in-memory database lives as long as one of its connections:
            // keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        };
        let options = if memory {
            options
        } else {
            options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        };
        let pool_options = pool_options.acquire_timeout(BUSY_TIMEOUT * 2);
        // Switching a new file to WAL can answer SQLITE_BUSY without waiting
        // for the busy timeout when several openers race; retry briefly.
        let mut attempt = 0;
        let pool = loop {
            match pool_options.clone().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(e) if attempt < 50 && is_busy(&e) => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 + 10 * attempt)).await;
                }
                Err(e) => {
                    return Err(StoreError::Unavailable(format!(
                        "cannot open SQLite store `{path}`: {e}"
                    )));
                }
            }
        };
        let store = SqliteStore { pool };
        store.migrate().await.map_err(|e| match e {
            StoreError::Unavailable(msg) => {
                StoreError::Unavailable(format!("cannot migrate SQLite store `{path}`: {msg}"))
            }
            other => other,
        })?;
        Ok(store)
    }

    /// A transaction that holds the write lock from its start (`BEGIN
    /// IMMEDIATE`), so that its reads and writes see no other writer.
    async fn write_transaction(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    /// Applies the missing migrations in one write transaction (`BEGIN
    /// IMMEDIATE` serialises processes opening the same file).
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.write_transaction().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS authgate_schema_version (
                version INTEGER PRIMARY KEY NOT NULL,
                applied_at INTEGER NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM authgate_schema_version")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
        let latest = MIGRATIONS.last().map_or(0, |m| m.version);
        if current > latest {
            tracing::warn!(
                current,
                latest,
                "the SQLite store's schema is newer than this authgate knows"
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
                "INSERT INTO authgate_schema_version (version, applied_at) VALUES (?1, ?2)",
            )
            .bind(migration.version)
            .bind(crate::clock::unix_now())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            tracing::info!(version = migration.version, "SQLite store migrated");
        }
        tx.commit().await.map_err(db_error)
    }
}

fn key_of(row: &SqliteRow) -> Result<StoredKey, StoreError> {
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

fn challenge_of(row: &SqliteRow) -> Result<PendingChallenge, StoreError> {
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

impl CredentialStore for SqliteStore {
    fn count_keys<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM authgate_security_keys WHERE user_id = ?1",
            )
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
            let rows = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM authgate_security_keys WHERE user_id = ?1
                 ORDER BY created_at, id"
            ))
            .bind(user_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
            rows.iter().map(key_of).collect()
        })
    }

    fn add_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if key.id.starts_with(NHOST_ID_PREFIX) {
                return Err(StoreError::Conflict);
            }
            let credential = json_text(&key.credential)?;
            sqlx::query(&format!(
                "INSERT INTO authgate_security_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
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
            let credential = json_text(credential)?;
            sqlx::query(
                "UPDATE authgate_security_keys SET credential = ?2, counter = ?3 WHERE id = ?1",
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
            let done =
                sqlx::query("DELETE FROM authgate_security_keys WHERE id = ?1 AND user_id = ?2")
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
            let mut tx = self.write_transaction().await?;
            // Room for this one: the user's newest `MAX - 1` stay.
            sqlx::query(
                "DELETE FROM authgate_challenges WHERE user_id = ?1 AND challenge IN (
                    SELECT challenge FROM authgate_challenges WHERE user_id = ?1
                    ORDER BY expires_at DESC, challenge LIMIT -1 OFFSET ?2)",
            )
            .bind(&c.user_id)
            .bind(MAX_PENDING_CHALLENGES_PER_USER as i64 - 1)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            sqlx::query(&format!(
                "INSERT INTO authgate_challenges ({CHALLENGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
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
            // kind's, or when it has expired (whoever asks).
            let row = sqlx::query(&format!(
                "DELETE FROM authgate_challenges
                 WHERE challenge = ?1 AND ((user_id = ?2 AND kind = ?3) OR expires_at <= ?4)
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
            let done = sqlx::query("DELETE FROM authgate_challenges WHERE expires_at <= ?1")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
            Ok(done.rows_affected())
        })
    }
}

/// SQLITE_BUSY (5) or SQLITE_LOCKED (6), primary codes.
fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        _ => false,
    }
}
