//! The verified-token cache.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};

use super::memo::Encoded;

use crate::jwt::{ClaimRules, JwtError};
use crate::policy::Facts;
use crate::session::Session;
use crate::upstream::Minted;

/// Verified tokens (docs/design.md, "Verified-token cache"): key = SHA-256 of mode index and token, value =
/// the session before per-request steps. An entry is served for at most
/// `tokenCacheTtl` and never past the token's `exp` (time validity is
/// re-checked on every hit). `quick_cache`, not moka, for this one cache:
/// at 100k entries moka's bookkeeping alone was ~400 bytes an entry
/// (docs/benchmarks.md), quick_cache's is tens of bytes; eviction is by
/// capacity, expiry checked on read.
pub(super) struct TokenCache {
    cache: quick_cache::sync::Cache<[u8; 32], Arc<CachedToken>>,
    ttl: Duration,
}

pub(super) struct CachedToken {
    /// [`Session::to_compact`]: one allocation per entry.
    pub(super) session: Box<str>,
    /// `exp` and `nbf`; `i64::MAX` and `i64::MIN` when absent (not
    /// `Option`s: 16 bytes less an entry, and the checks stay the same).
    pub(super) exp: i64,
    nbf: i64,
    /// The mode's cache TTL after the insert.
    fresh_until: std::time::Instant,
    /// Which policies the token satisfies.
    pub(super) facts: Facts,
    /// The front door's encoded allow for requests that ask for
    /// nothing ([`Engine::decide_memo`](super::Engine::decide_memo)), stored on the token's first repeat
    /// and replaced when stale.
    pub(super) memo: ArcSwapOption<Encoded>,
    /// The last upstream token signed for this token's session
    /// ([`crate::upstream`]), for the role and elevation it was signed with.
    pub(super) upstream: ArcSwapOption<SignedFor>,
}

/// An upstream token and what, besides the credential, its session depended on.
pub(super) struct SignedFor {
    pub(super) role: Box<str>,
    pub(super) elevated: bool,
    pub(super) minted: Minted,
}

impl CachedToken {
    pub(super) fn check_time(&self, now: i64, rules: &ClaimRules<'_>) -> Result<(), JwtError> {
        let skew = i64::try_from(rules.skew).unwrap_or(i64::MAX / 4);
        if now >= self.exp.saturating_add(skew) {
            return Err(JwtError::Expired);
        }
        if now.saturating_add(skew) < self.nbf {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

impl TokenCache {
    pub(super) fn new(max_entries: u64, ttl: Duration) -> Self {
        TokenCache {
            cache: quick_cache::sync::Cache::new(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
            ),
            ttl,
        }
    }

    pub(super) fn key(index: usize, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((index as u64).to_le_bytes());
        h.update(token.as_bytes());
        h.finalize().into()
    }

    pub(super) fn get(&self, key: &[u8; 32]) -> Option<Arc<CachedToken>> {
        let hit = self.cache.get(key)?;
        if std::time::Instant::now() < hit.fresh_until {
            Some(hit)
        } else {
            self.cache.remove(key);
            None
        }
    }

    /// `tokenCacheTtl`: how long a verified JWT is kept.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Keeps `session` for at most `ttl` (a mode's own limit: `tokenCacheTtl`
    /// for JWTs, `cacheTtl` for introspection answers); expiry past `exp`
    /// is refused by [`CachedToken::check_time`] on every hit. Returns the
    /// entry, so that what the rest of the decision signs is kept with it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn insert(
        &self,
        key: [u8; 32],
        session: &Session,
        exp: Option<i64>,
        nbf: Option<i64>,
        now: i64,
        ttl: Duration,
        facts: Facts,
    ) -> Option<Arc<CachedToken>> {
        let until_exp = match exp {
            Some(exp) => Duration::from_secs(u64::try_from(exp.saturating_sub(now)).unwrap_or(0)),
            None => ttl,
        };
        let ttl = ttl.min(until_exp);
        let fresh_until = std::time::Instant::now()
            .checked_add(ttl)
            .filter(|_| !ttl.is_zero())?;
        let entry = Arc::new(CachedToken {
            session: session.to_compact(),
            exp: exp.unwrap_or(i64::MAX),
            nbf: nbf.unwrap_or(i64::MIN),
            fresh_until,
            facts,
            memo: ArcSwapOption::empty(),
            upstream: ArcSwapOption::empty(),
        });
        self.cache.insert(key, entry.clone());
        Some(entry)
    }
}
