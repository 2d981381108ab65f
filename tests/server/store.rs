//! The credential store (crates/core/src/store): every scenario runs against SQLite (a
//! temporary file) and against a real PostgreSQL server.
//!
//! The PostgreSQL tests start their own throwaway cluster (see
//! `common::postgres_url`), or use `AUTHGATE_TEST_POSTGRES_URL`, an admin URL
//! whose role may CREATE DATABASE. Each test creates its own database
//! `authgate_test_<unique>` and drops it when done, so tests run in parallel.
//! Without PostgreSQL's programs the tests fail: they are not skipped.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use authgate::store::{
    self, ChallengeKind, CredentialStore, PendingChallenge, StoreError, StoreOptions, StoredKey,
};
use serde_json::json;
use sqlx::Connection;

use crate::common;

/// A fresh, empty database for one test.
struct TestDb {
    url: String,
    postgres: bool,
    /// For PostgreSQL: the database's name, dropped at the end (also when
    /// the test failed).
    name: Option<String>,
    _drop: Option<crate::sql::SqlOnDrop>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub dir").join("authgate.db");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        TestDb {
            url: format!("sqlite://{}", path.display()),
            postgres: false,
            name: None,
            _drop: None,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> TestDb {
        let admin = common::postgres_url();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos();
        let name = format!(
            "authgate_test_{}_{}_{}",
            std::process::id(),
            nanos,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
        // Concurrent CREATE DATABASE may collide on the template: retry.
        let mut tries = 0;
        loop {
            match sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(e) if tries < 10 => {
                    tries += 1;
                    eprintln!("CREATE DATABASE {name} failed ({e}), retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("CREATE DATABASE {name}: {e}"),
            }
        }
        let _ = conn.close().await;
        TestDb {
            url: with_database(&admin, &name),
            postgres: true,
            _drop: Some(crate::sql::SqlOnDrop {
                url: admin,
                statements: vec![format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")],
            }),
            name: Some(name),
            _dir: None,
        }
    }

    async fn open(&self) -> Arc<dyn CredentialStore> {
        self.open_with(false).await
    }

    async fn open_with(&self, nhost_keys: bool) -> Arc<dyn CredentialStore> {
        store::open(&self.url, &StoreOptions { nhost_keys })
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    /// A direct PostgreSQL connection, for arranging and inspecting rows.
    async fn pg(&self) -> sqlx::PgConnection {
        assert!(self.postgres);
        sqlx::PgConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }

    /// A direct SQLite connection.
    async fn lite(&self) -> sqlx::SqliteConnection {
        assert!(!self.postgres);
        sqlx::SqliteConnection::connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("connect {}: {e}", self.url))
    }

    /// The values of a one-column query, as text.
    async fn strings(&self, sql: &str) -> Vec<String> {
        if self.postgres {
            sqlx::query_scalar(sql)
                .fetch_all(&mut self.pg().await)
                .await
        } else {
            sqlx::query_scalar(sql)
                .fetch_all(&mut self.lite().await)
                .await
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// `url` with its database (path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let after = &rest[authority_end..];
    let query = after.find('?').map_or("", |q| &after[q..]);
    format!("{}/{name}{query}", &url[..scheme_end + authority_end])
}

fn key(id: &str, user: &str, credential_id: &[u8], created_at: i64) -> StoredKey {
    StoredKey {
        id: id.to_owned(),
        user_id: user.to_owned(),
        credential_id: credential_id.to_vec(),
        nickname: Some(format!("key {id}")),
        credential: json!({"cred": {"cred_id": id, "counter": 0, "nested": [1, 2.5, null, "x"]}}),
        counter: 0,
        created_at,
    }
}

fn challenge(text: &str, user: &str, kind: ChallengeKind, expires_at: i64) -> PendingChallenge {
    PendingChallenge {
        challenge: text.to_owned(),
        user_id: user.to_owned(),
        kind,
        state: json!({"rs": {"challenge": text, "policy": "required"}}),
        expires_at,
    }
}

const NOW: i64 = 1_700_000_000;

// ---------------------------------------------------------------- scenarios

async fn keys_count_list_add_delete(db: &TestDb) {
    let s = db.open().await;
    assert_eq!(s.count_keys("alice").await.unwrap(), 0);
    assert!(s.list_keys("alice").await.unwrap().is_empty());

    let a1 = key(
        "11111111-1111-4111-8111-111111111111",
        "alice",
        b"cred-a1",
        200,
    );
    let mut a2 = key(
        "22222222-2222-4222-8222-222222222222",
        "alice",
        b"cred-a2",
        100,
    );
    a2.nickname = None;
    let b1 = key(
        "33333333-3333-4333-8333-333333333333",
        "bob",
        b"cred-b1",
        150,
    );
    for k in [&a1, &a2, &b1] {
        s.add_key(k).await.unwrap();
    }
    assert_eq!(s.count_keys("alice").await.unwrap(), 2);
    assert_eq!(s.count_keys("bob").await.unwrap(), 1);
    assert_eq!(s.count_keys("carol").await.unwrap(), 0);
    // Oldest first, every field round-trips.
    assert_eq!(
        s.list_keys("alice").await.unwrap(),
        vec![a2.clone(), a1.clone()]
    );
    assert_eq!(s.list_keys("bob").await.unwrap(), vec![b1.clone()]);

    // Only the owner deletes a key.
    assert!(!s.delete_key("alice", &b1.id).await.unwrap());
    assert_eq!(s.count_keys("bob").await.unwrap(), 1);
    assert!(!s.delete_key("alice", "no-such-key").await.unwrap());
    assert!(s.delete_key("alice", &a1.id).await.unwrap());
    assert!(!s.delete_key("alice", &a1.id).await.unwrap());
    assert_eq!(s.list_keys("alice").await.unwrap(), vec![a2]);
    assert!(s.delete_key("bob", &b1.id).await.unwrap());
    assert_eq!(s.count_keys("bob").await.unwrap(), 0);
}

async fn credential_id_unique_across_users(db: &TestDb) {
    let s = db.open().await;
    s.add_key(&key("k1", "alice", b"same-cred", 1))
        .await
        .unwrap();
    let err = s
        .add_key(&key("k2", "bob", b"same-cred", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    let err = s
        .add_key(&key("k3", "alice", b"same-cred", 3))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    // The same key id twice is a conflict too.
    let err = s
        .add_key(&key("k1", "alice", b"other-cred", 4))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    // The nhost: prefix is reserved.
    let err = s
        .add_key(&key("nhost:x", "alice", b"third", 5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    assert_eq!(s.count_keys("bob").await.unwrap(), 0);
    assert_eq!(s.count_keys("alice").await.unwrap(), 1);
    // Once deleted, the credential id can be registered again.
    assert!(s.delete_key("alice", "k1").await.unwrap());
    s.add_key(&key("k2", "bob", b"same-cred", 2)).await.unwrap();
}

async fn update_key_replaces_credential_and_counter(db: &TestDb) {
    let s = db.open().await;
    let k = key("k1", "alice", b"cred", 10);
    let other = key("k2", "alice", b"cred2", 11);
    s.add_key(&k).await.unwrap();
    s.add_key(&other).await.unwrap();
    let updated = json!({"cred": {"cred_id": "k1", "counter": 7}, "backup": true});
    s.update_key("k1", &updated, 7).await.unwrap();
    let keys = s.list_keys("alice").await.unwrap();
    assert_eq!(keys[0].credential, updated);
    assert_eq!(keys[0].counter, 7);
    assert_eq!(keys[0].nickname, k.nickname);
    assert_eq!(keys[0].created_at, 10);
    assert_eq!(keys[1], other, "other keys untouched");
    // The full u32 range round-trips.
    s.update_key("k1", &updated, u32::MAX).await.unwrap();
    assert_eq!(s.list_keys("alice").await.unwrap()[0].counter, u32::MAX);
    // Unknown and nhost ids are no-ops.
    s.update_key("missing", &updated, 1).await.unwrap();
    s.update_key("nhost:00000000-0000-0000-0000-000000000000", &updated, 1)
        .await
        .unwrap();
}

async fn challenge_is_single_use(db: &TestDb) {
    let s = db.open().await;
    let c = challenge("chal-1", "alice", ChallengeKind::Register, NOW + 300);
    s.put_challenge(&c).await.unwrap();
    let err = s.put_challenge(&c).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");
    let taken = s
        .take_challenge("chal-1", "alice", ChallengeKind::Register, NOW)
        .await
        .unwrap();
    assert_eq!(taken, Some(c));
    let again = s
        .take_challenge("chal-1", "alice", ChallengeKind::Register, NOW)
        .await
        .unwrap();
    assert_eq!(again, None);
    let unknown = s
        .take_challenge("never-issued", "alice", ChallengeKind::Register, NOW)
        .await
        .unwrap();
    assert_eq!(unknown, None);
}

async fn concurrent_takes_yield_one_winner(db: &TestDb) {
    let s = db.open().await;
    s.put_challenge(&challenge(
        "race",
        "alice",
        ChallengeKind::Authenticate,
        NOW + 60,
    ))
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.take_challenge("race", "alice", ChallengeKind::Authenticate, NOW)
                .await
                .unwrap()
                .is_some()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

async fn expired_challenge_is_none_and_removed(db: &TestDb) {
    let s = db.open().await;
    s.put_challenge(&challenge("old", "alice", ChallengeKind::Authenticate, NOW))
        .await
        .unwrap();
    // now == expires_at is expired already.
    let taken = s
        .take_challenge("old", "alice", ChallengeKind::Authenticate, NOW)
        .await
        .unwrap();
    assert_eq!(taken, None);
    // Removed: nothing left to purge, and the text can be stored again.
    assert_eq!(s.purge_expired(NOW + 1000).await.unwrap(), 0);

    // An expired challenge is removed even when another user asks for it.
    s.put_challenge(&challenge(
        "old2",
        "alice",
        ChallengeKind::Authenticate,
        NOW - 1,
    ))
    .await
    .unwrap();
    let taken = s
        .take_challenge("old2", "mallory", ChallengeKind::Register, NOW)
        .await
        .unwrap();
    assert_eq!(taken, None);
    assert_eq!(s.purge_expired(NOW + 1000).await.unwrap(), 0);
}

async fn wrong_user_or_kind_is_none_and_not_consumed(db: &TestDb) {
    let s = db.open().await;
    let c = challenge("chal", "alice", ChallengeKind::Authenticate, NOW + 60);
    s.put_challenge(&c).await.unwrap();
    let wrong_user = s
        .take_challenge("chal", "bob", ChallengeKind::Authenticate, NOW)
        .await
        .unwrap();
    assert_eq!(wrong_user, None);
    let wrong_kind = s
        .take_challenge("chal", "alice", ChallengeKind::Register, NOW)
        .await
        .unwrap();
    assert_eq!(wrong_kind, None);
    // Still there for its owner and ceremony.
    let taken = s
        .take_challenge("chal", "alice", ChallengeKind::Authenticate, NOW)
        .await
        .unwrap();
    assert_eq!(taken, Some(c));
}

async fn purge_removes_only_expired(db: &TestDb) {
    let s = db.open().await;
    assert_eq!(s.purge_expired(NOW).await.unwrap(), 0);
    s.put_challenge(&challenge("a", "alice", ChallengeKind::Register, NOW - 10))
        .await
        .unwrap();
    s.put_challenge(&challenge("b", "bob", ChallengeKind::Authenticate, NOW))
        .await
        .unwrap();
    s.put_challenge(&challenge(
        "c",
        "alice",
        ChallengeKind::Authenticate,
        NOW + 10,
    ))
    .await
    .unwrap();
    assert_eq!(s.purge_expired(NOW).await.unwrap(), 2);
    assert_eq!(s.purge_expired(NOW).await.unwrap(), 0);
    let live = s
        .take_challenge("c", "alice", ChallengeKind::Authenticate, NOW)
        .await
        .unwrap();
    assert!(live.is_some());
}

/// A user's pending challenges are bounded: the oldest (expired first) go
/// when a new one comes; other users' stay.
async fn pending_challenges_are_bounded_per_user(db: &TestDb) {
    let s = db.open().await;
    s.put_challenge(&challenge("bob", "bob", ChallengeKind::Register, NOW + 60))
        .await
        .unwrap();
    let n = store::MAX_PENDING_CHALLENGES_PER_USER;
    for i in 0..n + 4 {
        // The first two are already expired.
        let expires = if i < 2 {
            NOW - 10
        } else {
            NOW + 100 + i as i64
        };
        s.put_challenge(&challenge(
            &format!("a{i}"),
            "alice",
            ChallengeKind::Register,
            expires,
        ))
        .await
        .unwrap();
    }
    let mut kept = Vec::new();
    for i in 0..n + 4 {
        if s.take_challenge(&format!("a{i}"), "alice", ChallengeKind::Register, NOW)
            .await
            .unwrap()
            .is_some()
        {
            kept.push(i);
        }
    }
    assert_eq!(kept, (4..n + 4).collect::<Vec<_>>());
    assert!(
        s.take_challenge("bob", "bob", ChallengeKind::Register, NOW)
            .await
            .unwrap()
            .is_some()
    );
}

async fn reopen_keeps_data(db: &TestDb) {
    {
        let s = db.open().await;
        s.add_key(&key("k1", "alice", b"cred", 5)).await.unwrap();
        s.put_challenge(&challenge("c", "alice", ChallengeKind::Register, NOW + 60))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let s = db.open().await;
        assert_eq!(s.count_keys("alice").await.unwrap(), 1);
        assert_eq!(s.list_keys("alice").await.unwrap()[0].id, "k1");
    }
    let s = db.open().await;
    assert!(
        s.take_challenge("c", "alice", ChallengeKind::Register, NOW)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(schema_versions(db).await, ["1", "2"]);
}

async fn concurrent_opens_migrate_once(db: &TestDb) {
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { store::open(&url, &StoreOptions::default()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(
            o.await
                .unwrap()
                .unwrap_or_else(|e| panic!("concurrent open: {e}")),
        );
    }
    stores[0]
        .add_key(&key("k1", "alice", b"cred", 1))
        .await
        .unwrap();
    for s in &stores {
        assert_eq!(s.count_keys("alice").await.unwrap(), 1);
    }
    assert_eq!(schema_versions(db).await, ["1", "2"]);
}

async fn tables_are_where_documented(db: &TestDb) {
    let _s = db.open().await;
    let tables = if db.postgres {
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'authgate' ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'authgate%' ORDER BY 1"
    };
    assert_eq!(
        db.strings(tables).await,
        [
            "authgate_challenges",
            "authgate_schema_version",
            "authgate_security_keys"
        ]
    );
    if !db.postgres {
        assert_eq!(db.strings("PRAGMA journal_mode").await, ["wal"]);
    }
}

async fn schema_versions(db: &TestDb) -> Vec<String> {
    let table = if db.postgres {
        "authgate.authgate_schema_version"
    } else {
        "authgate_schema_version"
    };
    db.strings(&format!(
        "SELECT CAST(version AS TEXT) FROM {table} ORDER BY version"
    ))
    .await
}

/// Runs each scenario once per backend, as `sqlite::NAME` and `postgres::NAME`.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::sqlite();
                    super::$name(&db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = super::TestDb::postgres().await;
                    super::$name(&db).await;
                }
            )*
        }
    };
}

both_backends!(
    keys_count_list_add_delete,
    credential_id_unique_across_users,
    update_key_replaces_credential_and_counter,
    challenge_is_single_use,
    concurrent_takes_yield_one_winner,
    expired_challenge_is_none_and_removed,
    wrong_user_or_kind_is_none_and_not_consumed,
    purge_removes_only_expired,
    pending_challenges_are_bounded_per_user,
    reopen_keeps_data,
    concurrent_opens_migrate_once,
    tables_are_where_documented,
);

// ------------------------------------------------------ nhost (PostgreSQL only)

const NHOST_USER: &str = "5f0f8c1e-9d8b-4c65-a3f3-0f6c2b8f6e01";
const NHOST_KEY: &str = "0b0c5a4e-2f4e-4a79-9d6e-7a1f1c3d2e10";

async fn create_nhost_table(db: &TestDb) {
    let mut conn = db.pg().await;
    for stmt in common::NHOST_SECURITY_KEYS {
        sqlx::query(stmt).execute(&mut conn).await.unwrap();
    }
    // credential id bytes [1, 2, 3, 255] = base64url "AQID_w"; public key [4, 5, 6] = "BAUG".
    sqlx::query(&format!(
        "INSERT INTO auth.user_security_keys
           (id, user_id, credential_id, credential_public_key, counter, transports, nickname)
         VALUES ('{NHOST_KEY}', '{NHOST_USER}', 'AQID_w', '\\x040506', 42, 'usb', 'YubiKey'),
                (gen_random_uuid(), gen_random_uuid(), 'b3RoZXI', NULL, 0, '', NULL)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nhost_keys_count_when_enabled() {
    let db = TestDb::postgres().await;
    create_nhost_table(&db).await;

    let s = db.open_with(true).await;
    assert_eq!(s.count_keys(NHOST_USER).await.unwrap(), 1);
    let keys = s.list_keys(NHOST_USER).await.unwrap();
    assert_eq!(
        keys,
        vec![StoredKey {
            id: format!("nhost:{NHOST_KEY}"),
            user_id: NHOST_USER.to_owned(),
            credential_id: vec![1, 2, 3, 255],
            nickname: Some("YubiKey".to_owned()),
            credential: json!({"nhost": true, "credentialId": "AQID_w", "publicKey": "BAUG"}),
            counter: 42,
            created_at: 0,
        }]
    );

    // authgate's own keys add up with nhost's, nhost's listed first.
    s.add_key(&key("own", NHOST_USER, b"own-cred", 7))
        .await
        .unwrap();
    assert_eq!(s.count_keys(NHOST_USER).await.unwrap(), 2);
    let ids: Vec<String> = s
        .list_keys(NHOST_USER)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, [format!("nhost:{NHOST_KEY}"), "own".to_owned()]);

    // nhost's credential ids are taken.
    let err = s
        .add_key(&key("dup", "someone", &[1, 2, 3, 255], 8))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict), "{err:?}");

    // nhost's keys are never deleted; a step-up records the signature
    // counter, which never goes back.
    assert!(
        !s.delete_key(NHOST_USER, &format!("nhost:{NHOST_KEY}"))
            .await
            .unwrap()
    );
    s.update_key(&format!("nhost:{NHOST_KEY}"), &json!({}), 99)
        .await
        .unwrap();
    s.update_key(&format!("nhost:{NHOST_KEY}"), &json!({}), 50)
        .await
        .unwrap();
    let mut conn = db.pg().await;
    let counters: Vec<(String, i64)> =
        sqlx::query_as("SELECT id::text, counter FROM auth.user_security_keys ORDER BY counter")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(counters.len(), 2, "{counters:?}");
    assert_eq!(counters[0].1, 0, "the other row is untouched: {counters:?}");
    assert_eq!(counters[1], (NHOST_KEY.to_owned(), 99));
    assert_eq!(s.count_keys(NHOST_USER).await.unwrap(), 2);

    // Disabled: nhost's keys do not count.
    let plain = db.open_with(false).await;
    assert_eq!(plain.count_keys(NHOST_USER).await.unwrap(), 1);
    let ids: Vec<String> = plain
        .list_keys(NHOST_USER)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.id)
        .collect();
    assert_eq!(ids, ["own"]);
}

/// A role that may read nhost's table but not update it: a step-up's counter
/// is not recorded there, and the step-up does not fail for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nhost_counter_is_left_alone_by_a_role_that_may_only_read_it() {
    let db = TestDb::postgres().await;
    create_nhost_table(&db).await;
    drop(db.open_with(true).await);
    let name = db.name.clone().unwrap();
    let role = format!("{name}_reader");
    // Roles outlive databases: dropped (with what they were granted) also
    // when the test fails.
    let _drop = crate::sql::SqlOnDrop {
        url: db.url.clone(),
        statements: vec![
            format!("DROP OWNED BY \"{role}\""),
            format!("DROP ROLE IF EXISTS \"{role}\""),
        ],
    };
    let mut conn = db.pg().await;
    for stmt in [
        format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'reader-password'"),
        format!("GRANT ALL ON DATABASE \"{name}\" TO \"{role}\""),
        format!("GRANT ALL ON SCHEMA authgate, public TO \"{role}\""),
        format!("GRANT ALL ON ALL TABLES IN SCHEMA authgate, public TO \"{role}\""),
        format!("GRANT USAGE ON SCHEMA auth TO \"{role}\""),
        format!("GRANT SELECT ON auth.user_security_keys TO \"{role}\""),
    ] {
        sqlx::query(&stmt).execute(&mut conn).await.unwrap();
    }
    let scheme_end = db.url.find("://").unwrap() + 3;
    let at = db
        .url
        .find('@')
        .expect("the test PostgreSQL URL names a user");
    let reader_url = format!(
        "{}{role}:reader-password{}",
        &db.url[..scheme_end],
        &db.url[at..]
    );
    let reader = store::open(&reader_url, &StoreOptions { nhost_keys: true })
        .await
        .unwrap_or_else(|e| panic!("open as {role}: {e}"));
    assert_eq!(reader.count_keys(NHOST_USER).await.unwrap(), 1);
    reader
        .update_key(&format!("nhost:{NHOST_KEY}"), &json!({}), 99)
        .await
        .expect("a counter that cannot be written is not an error");
    let counter: i64 =
        sqlx::query_scalar("SELECT counter FROM auth.user_security_keys WHERE id = $1::uuid")
            .bind(NHOST_KEY)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(counter, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nhost_keys_without_nhost_table_count_as_none() {
    let db = TestDb::postgres().await;
    let s = db.open_with(true).await;
    assert_eq!(s.count_keys(NHOST_USER).await.unwrap(), 0);
    assert!(s.list_keys(NHOST_USER).await.unwrap().is_empty());
    s.add_key(&key("own", NHOST_USER, b"own-cred", 7))
        .await
        .unwrap();
    assert_eq!(s.count_keys(NHOST_USER).await.unwrap(), 1);
}

// ------------------------------------------------------------- open errors

#[tokio::test]
async fn sqlite_memory_store_works() {
    let s = store::open("sqlite::memory:", &StoreOptions::default())
        .await
        .unwrap();
    s.add_key(&key("k", "alice", b"c", 1)).await.unwrap();
    s.put_challenge(&challenge("c", "alice", ChallengeKind::Register, NOW + 1))
        .await
        .unwrap();
    assert_eq!(s.count_keys("alice").await.unwrap(), 1);
    assert!(
        s.take_challenge("c", "alice", ChallengeKind::Register, NOW)
            .await
            .unwrap()
            .is_some()
    );
    // Another in-memory store is another database.
    let other = store::open("sqlite::memory:", &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(other.count_keys("alice").await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_file_is_created_with_the_plain_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let url = format!("sqlite:{}", path.display());
    let s = store::open(&url, &StoreOptions::default()).await.unwrap();
    s.add_key(&key("k", "alice", b"c", 1)).await.unwrap();
    assert!(path.exists());
}

#[tokio::test]
async fn open_errors_name_the_problem() {
    let err = store::open("mysql://u:hunter2@db/x", &StoreOptions::default())
        .await
        .err()
        .expect("unsupported scheme");
    let msg = err.to_string();
    assert!(msg.contains("unsupported store URL"), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no such dir").join("a.db");
    let err = store::open(
        &format!("sqlite://{}", missing.display()),
        &StoreOptions::default(),
    )
    .await
    .err()
    .expect("missing directory");
    eprintln!("{err}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains("no such dir"), "{err}");

    let err = store::open("sqlite://", &StoreOptions::default())
        .await
        .err()
        .expect("no path");
    assert!(err.to_string().contains("names no file"), "{err}");
}

#[tokio::test]
async fn postgres_errors_hide_the_password() {
    // Nothing listens on port 1.
    let url = "postgres://app:hunter2secret@127.0.0.1:1/authgate?password=zq%20xv9secret";
    let err = store::open(url, &StoreOptions::default())
        .await
        .err()
        .expect("connection refused");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("hunter2secret"), "{msg}");
    assert!(!msg.contains("xv9secret"), "{msg}");

    // A wrong password against the real server.
    let admin = common::postgres_url();
    let opts = sqlx::postgres::PgConnectOptions::from_str(&admin).unwrap();
    let url = format!(
        "postgres://{}:wrong-pass-xyz@{}:{}/postgres",
        opts.get_username(),
        opts.get_host(),
        opts.get_port()
    );
    let err = store::open(&url, &StoreOptions::default())
        .await
        .err()
        .expect("wrong password");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(!msg.contains("wrong-pass-xyz"), "{msg}");
    assert!(msg.contains("cannot connect to PostgreSQL store"), "{msg}");
}
