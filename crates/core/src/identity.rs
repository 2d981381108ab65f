//! Who a request proved to be: what the pipeline hands to authgate's own
//! endpoints (the WebAuthn ceremonies) and what elevation grants bind to.

use std::borrow::Cow;

use crate::decision::ModeRef;
use crate::session::Session;

/// The verified bearer token behind a JWT session, for elevation grants.
/// A Check borrows it from the request; an [`Identity`] owns it.
#[derive(Debug, Clone)]
pub struct AccessToken<'r> {
    pub raw: Cow<'r, str>,
    pub exp: Option<i64>,
}

impl AccessToken<'_> {
    pub fn into_owned(self) -> AccessToken<'static> {
        AccessToken {
            raw: Cow::Owned(self.raw.into_owned()),
            exp: self.exp,
        }
    }
}

/// Who is calling, for authgate's own endpoints (WebAuthn).
#[derive(Debug, Clone)]
pub struct Identity {
    pub session: Session,
    pub user_id: Option<String>,
    pub token: Option<AccessToken<'static>>,
    pub elevated: bool,
    pub mode: ModeRef,
}
