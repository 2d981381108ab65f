//! A span per store operation (`store.<operation>`, with `db.system`), for
//! trace export ([`crate::trace`]); the store itself is unchanged.

use std::sync::Arc;

use tracing::Instrument;

use super::{BoxFuture, ChallengeKind, CredentialStore, PendingChallenge, StoreError, StoredKey};

pub(super) struct Traced {
    pub(super) inner: Arc<dyn CredentialStore>,
    /// `sqlite` or `postgresql` (OpenTelemetry's `db.system.name` values).
    pub(super) system: &'static str,
}

impl Traced {
    fn span(&self, operation: &'static str) -> tracing::Span {
        tracing::info_span!(
            target: crate::trace::SPAN_TARGET,
            "store",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = self.system,
        )
    }
}

impl CredentialStore for Traced {
    fn count_keys<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(
            self.inner
                .count_keys(user_id)
                .instrument(self.span("store.count_keys")),
        )
    }

    fn list_keys<'a>(
        &'a self,
        user_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<StoredKey>, StoreError>> {
        Box::pin(
            self.inner
                .list_keys(user_id)
                .instrument(self.span("store.list_keys")),
        )
    }

    fn add_key<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(
            self.inner
                .add_key(key)
                .instrument(self.span("store.add_key")),
        )
    }

    fn update_key<'a>(
        &'a self,
        id: &'a str,
        credential: &'a serde_json::Value,
        counter: u32,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(
            self.inner
                .update_key(id, credential, counter)
                .instrument(self.span("store.update_key")),
        )
    }

    fn delete_key<'a>(
        &'a self,
        user_id: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(
            self.inner
                .delete_key(user_id, id)
                .instrument(self.span("store.delete_key")),
        )
    }

    fn put_challenge<'a>(
        &'a self,
        c: &'a PendingChallenge,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(
            self.inner
                .put_challenge(c)
                .instrument(self.span("store.put_challenge")),
        )
    }

    fn take_challenge<'a>(
        &'a self,
        challenge: &'a str,
        user_id: &'a str,
        kind: ChallengeKind,
        now: i64,
    ) -> BoxFuture<'a, Result<Option<PendingChallenge>, StoreError>> {
        Box::pin(
            self.inner
                .take_challenge(challenge, user_id, kind, now)
                .instrument(self.span("store.take_challenge")),
        )
    }

    fn purge_expired<'a>(&'a self, now: i64) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(
            self.inner
                .purge_expired(now)
                .instrument(self.span("store.purge_expired")),
        )
    }
}
