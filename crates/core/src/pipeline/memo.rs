//! The encoded-allow memo of the front doors that encode allows themselves
//! (the gRPC door, the Envoy module; docs/design.md, "Verified-token
//! cache"): a shortcut that only [`Engine::decide_memo`](super::Engine::decide_memo)
//! takes, checked against plain decisions by the `check_request` fuzz target
//! and the module's tests.

use std::sync::Arc;

use super::token_cache::CachedToken;
use crate::decision::{Allow, Decision, ModeRef, Summary};

/// Whether a caller takes encoded allows from the token cache. The type
/// proves that [`Engine::decide`](super::Engine::decide) never gets one.
pub(super) trait Memo {
    type Hit;
    fn hit(entry: &Arc<CachedToken>, now: i64) -> Option<Self::Hit>;
}

/// For [`Engine::decide`](super::Engine::decide) and [`Engine::identify`](super::Engine::identify): no memo.
pub(super) enum NoMemo {}

impl Memo for NoMemo {
    type Hit = std::convert::Infallible;
    fn hit(_: &Arc<CachedToken>, _: i64) -> Option<Self::Hit> {
        None
    }
}

/// For [`Engine::decide_memo`](super::Engine::decide_memo): the stored
/// encoding, while it is fresh.
pub(super) enum WithMemo {}

impl Memo for WithMemo {
    type Hit = Arc<Encoded>;
    fn hit(entry: &Arc<CachedToken>, now: i64) -> Option<Self::Hit> {
        entry.memo.load_full().filter(|m| now < m.until)
    }
}

/// A front door's encoded allow, as kept in a token-cache entry.
pub(super) struct Encoded {
    pub(super) bytes: Box<[u8]>,
    /// Unix time from which it is stale: the upstream token it carries
    /// should be renewed ([`crate::upstream::Minted::reuse_until`]);
    /// `i64::MAX` without one.
    pub(super) until: i64,
}

/// How a front door encodes an allow, for the memo of
/// [`Engine::decide_memo`](super::Engine::decide_memo). One engine serves one encoder.
pub type EncodeAllow = fn(&Allow) -> Box<[u8]>;

/// The answer of [`Engine::decide_memo`](super::Engine::decide_memo).
#[derive(Debug)]
pub enum Answer {
    Decided(Decision),
    /// An allow encoded earlier for the same token and an equivalent request.
    Memo(MemoHit),
}

/// Bytes of an allow, shared with the token-cache entry that holds them.
pub struct MemoHit {
    pub mode: ModeRef,
    pub(super) encoded: Arc<Encoded>,
}

impl MemoHit {
    pub fn bytes(&self) -> &[u8] {
        &self.encoded.bytes
    }
}

impl std::fmt::Debug for MemoHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoHit")
            .field("mode", &self.mode)
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

impl Answer {
    pub fn summary(&self) -> Summary {
        match self {
            Answer::Decided(d) => d.summary(),
            Answer::Memo(m) => Summary {
                reason: None,
                mode: m.mode.kind,
            },
        }
    }
}
