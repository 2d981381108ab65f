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
    fn hit(entry: &Arc<CachedToken>) -> Option<Self::Hit>;
}

/// For [`Engine::decide`](super::Engine::decide) and [`Engine::identify`](super::Engine::identify): no memo.
pub(super) enum NoMemo {}

impl Memo for NoMemo {
    type Hit = std::convert::Infallible;
    fn hit(_: &Arc<CachedToken>) -> Option<Self::Hit> {
        None
    }
}

/// For [`Engine::decide_memo`](super::Engine::decide_memo): the entry, when an encoding is stored.
pub(super) enum WithMemo {}

impl Memo for WithMemo {
    type Hit = Arc<CachedToken>;
    fn hit(entry: &Arc<CachedToken>) -> Option<Self::Hit> {
        entry.memo.get().is_some().then(|| entry.clone())
    }
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

/// Bytes of an allow, lent by the token-cache entry that holds them.
pub struct MemoHit {
    pub mode: ModeRef,
    pub(super) entry: Arc<CachedToken>,
}

impl MemoHit {
    pub fn bytes(&self) -> &[u8] {
        self.entry.memo.get().map_or(&[], |b| b)
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
