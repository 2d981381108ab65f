//! Bounded soak test (ignored by default; run it with `scripts/soak.sh`).
//!
//! The real `authgate` binary serves a config file on 127.0.0.1 while this
//! test, for `SOAK_SECONDS` (default 60), keeps 32 Check streams busy over 2
//! HTTP/2 connections with a mix of requests whose decisions are all known in
//! advance, and meanwhile:
//!
//! * rotates the RS256 JWKS served by a real HTTP endpoint: a new key (new
//!   `kid`, freshly generated) is published beside the current one, tokens of
//!   the new key come into use once authgate has it, then the old key is
//!   withdrawn and its tokens must be denied;
//! * rewrites the config file, adding or removing an `apiKey` mode, and
//!   reloads it, alternately by SIGHUP (which also trips the file watcher:
//!   two reloads) and by the file watcher alone (one reload).
//!
//! Every answer is checked against its expected decision (gRPC code, HTTP
//! status, reason, `WWW-Authenticate`; for allows the role, user id and
//! `x-hasura-auth-elevated`). How expectations stay exact while things change:
//!
//! * Request tasks hold a read lock on the [`Plan`] for the whole call; the
//!   rotation and reload tasks take the write lock to change it, so a request
//!   never straddles a change of plan.
//! * A change that authgate picks up on its own schedule has a window in
//!   which both outcomes are correct. Only the requests of the thing being
//!   changed may be sent in that window and they are counted as
//!   `ambiguous` (either outcome accepted, anything else is wrong):
//!   - a key just published: `new_key_unconfirmed` (allowed or
//!     `invalid_token`) until a fresh token of that key (never seen, so not
//!     in the token cache) is allowed;
//!   - a key just withdrawn: `old_key_unconfirmed` (allowed or
//!     `invalid_token`) until a fresh token of that key is denied;
//!   - the `apiKey` mode between the file write and the first reload that
//!     `authgate_config_reloads_total{result="ok"}` counts after it (a
//!     reload swaps the engine in, then counts; any reload that starts after
//!     the rename reads the new file).
//! * The verified-token cache may keep accepting an already-verified token
//!   of a withdrawn key for up to `settings.tokenCacheTtl` (3 s here). So
//!   after a withdrawal is confirmed, only *fresh* tokens of that key are sent
//!   (`retired_key_fresh`, must be `invalid_token` at once); the reused token
//!   pool of that key (`retired_key_pool`) is sent again only after
//!   `tokenCacheTtl` + 2 s and must then be `invalid_token` too.
//!
//! The report goes to stdout and to `target/soak-report.json`
//! (`SOAK_REPORT` overrides the path). The test fails on any wrong decision,
//! any transport error (every call runs under a 5 s tokio timeout), a failed
//! reload or rotation, a server not healthy or not ready at the end, a
//! panic in its log, an exit code other than 0 after SIGTERM, or when
//! authgate's `authgate_check_requests_total{frontend="grpc"}` per outcome
//! differs from the client's count.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;
use tonic::transport::Channel;

const CONNECTIONS: usize = 2;
const STREAMS_PER_CONNECTION: usize = 16;
/// Every call to authgate or to its HTTP endpoints runs under this.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a rotation or reload may take to be confirmed.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);
/// `settings.tokenCacheTtl` in the config.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(3);
/// After a withdrawal is confirmed, reused tokens of that key wait this long.
const CACHE_GRACE: Duration = Duration::from_secs(TOKEN_CACHE_TTL.as_secs() + 2);
/// Valid tokens (and grants) per key; fresh tokens minted per withdrawal.
const POOL: usize = 64;
const FRESH_PER_RETIREMENT: usize = 400;
const ISSUER: &str = "https://issuer.soak.test";
const AUDIENCE: &str = "authgate-soak";
const API_KEY: &str = "soak-service-key-0123456789abcdef";
const PROTECTED: &str = "/v1/user/password";
const PLAIN: &str = "/graphql";

// ---------------------------------------------------------------------------
// Keys and tokens

/// A fresh RSA-2048 private key as a PKCS#8 PEM.
fn generate_rsa_pem() -> String {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("RSA key generation");
    let der: Pkcs8V1Der = pair.as_der().expect("PKCS#8 encoding");
    let b64 = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn access_claims(user: &str, iat: i64, exp: i64) -> Value {
    let mut c = hasura_claims(user, &["user", "editor"], "user");
    let o = c.as_object_mut().unwrap();
    o.insert("iss".into(), json!(ISSUER));
    o.insert("aud".into(), json!(AUDIENCE));
    o.insert("iat".into(), json!(iat));
    o.insert("exp".into(), json!(exp));
    o.insert("jti".into(), json!(uuid::Uuid::new_v4().to_string()));
    c
}

/// authgate's grant key (the config's `elevation.grant.signingKey`).
struct GrantSigner {
    pem: String,
    kid: String,
}

impl GrantSigner {
    /// The key id authgate gives this key: its RFC 7638 thumbprint.
    fn new(pem: String) -> Self {
        let jwk = Jwk::from_encoding_key(&encoding_key(Algorithm::ES256, &pem), Algorithm::ES256)
            .unwrap();
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).unwrap();
        GrantSigner { pem, kid }
    }

    /// An elevation grant as authgate mints it (crates/core/src/elevation/
    /// `GrantKeys::mint`), bound to `user` and to `access_token`.
    fn grant(&self, user: &str, access_token: &str, exp: i64) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = json!({
            "iss": "authgate",
            "aud": "authgate-elevation",
            "sub": user,
            "ath": URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes())),
            "iat": now(),
            "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        jsonwebtoken::encode(&header, &claims, &encoding_key(Algorithm::ES256, &self.pem)).unwrap()
    }
}

struct Issued {
    user: String,
    token: String,
    grant: String,
}

/// One signing key of the JWKS and the tokens made with it.
struct KeyMaterial {
    kid: String,
    pem: String,
    jwk: Value,
    /// Valid tokens, reused (so the token cache is exercised), with grants.
    pool: Vec<Issued>,
    /// Signed by this key, expired an hour ago.
    expired: Vec<String>,
    /// This key's `kid`, signed by a key that is in no JWKS.
    forged: Vec<String>,
    /// Never-sent tokens of this key, filled when it is withdrawn.
    fresh: Mutex<Vec<String>>,
    token_exp: i64,
}

impl KeyMaterial {
    fn new(kid: String, rogue_pem: &str, grants: &GrantSigner, token_exp: i64) -> Self {
        let pem = generate_rsa_pem();
        let jwk = public_jwk(Algorithm::RS256, &pem, &kid);
        let t = now();
        let pool = (0..POOL)
            .map(|i| {
                let user = format!("user-{i}");
                let token = mint(
                    Algorithm::RS256,
                    &pem,
                    access_claims(&user, t, token_exp),
                    Some(&kid),
                );
                let grant = grants.grant(&user, &token, token_exp);
                Issued { user, token, grant }
            })
            .collect();
        let expired = (0..16)
            .map(|i| {
                mint(
                    Algorithm::RS256,
                    &pem,
                    access_claims(&format!("user-{i}"), t - 7200, t - 3600),
                    Some(&kid),
                )
            })
            .collect();
        let forged = (0..16)
            .map(|i| {
                mint(
                    Algorithm::RS256,
                    rogue_pem,
                    access_claims(&format!("user-{i}"), t, token_exp),
                    Some(&kid),
                )
            })
            .collect();
        KeyMaterial {
            kid,
            pem,
            jwk,
            pool,
            expired,
            forged,
            fresh: Mutex::new(Vec::new()),
            token_exp,
        }
    }

    /// A token of this key that authgate has never seen.
    fn fresh_token(&self) -> String {
        mint(
            Algorithm::RS256,
            &self.pem,
            access_claims("user-fresh", now(), self.token_exp),
            Some(&self.kid),
        )
    }
}

// ---------------------------------------------------------------------------
// What the test expects

#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Allow {
        role: &'static str,
        user: Option<String>,
        elevated: bool,
    },
    Deny(&'static str),
}

impl Expect {
    fn allow(role: &'static str, user: &str, elevated: bool) -> Self {
        Expect::Allow {
            role,
            user: Some(user.to_owned()),
            elevated,
        }
    }

    /// Per reason: gRPC code, HTTP status and `WWW-Authenticate`.
    fn deny_shape(reason: &str) -> (i32, i32, Option<&'static str>) {
        match reason {
            "missing_credentials" => (16, 401, Some("Bearer")),
            "invalid_token" | "token_expired" | "invalid_api_key" => {
                (16, 401, Some("Bearer error=\"invalid_token\""))
            }
            "elevation_required" => (
                16,
                401,
                Some("Bearer error=\"insufficient_user_authentication\""),
            ),
            "role_not_allowed" => (7, 403, None),
            _ => (14, 503, None),
        }
    }

    fn matches(&self, o: &Outcome) -> bool {
        match self {
            Expect::Allow {
                role,
                user,
                elevated,
            } => {
                let elevated_header = o.headers.get("x-hasura-auth-elevated");
                o.code == 0
                    && o.http_status == 200
                    && o.headers.get("x-hasura-role").map(String::as_str) == Some(*role)
                    && o.headers.get("x-hasura-user-id") == user.as_ref()
                    && if *elevated {
                        elevated_header == user.as_ref()
                    } else {
                        elevated_header.is_none()
                    }
            }
            Expect::Deny(reason) => {
                let (code, status, www) = Self::deny_shape(reason);
                o.code == code
                    && o.http_status == status
                    && o.reason() == *reason
                    && o.headers.get("www-authenticate").map(String::as_str) == www
            }
        }
    }
}

/// `allow` or the denial reason, as authgate answered.
fn observed(o: &Outcome) -> String {
    if o.code == 0 {
        "allow".into()
    } else {
        let r = o.reason();
        if r.is_empty() {
            format!("code_{}", o.code)
        } else {
            r
        }
    }
}

/// One request to send: its class, the call and the acceptable answers.
struct Choice {
    class: &'static str,
    req: CheckRequest,
    expect: Expect,
    /// The other acceptable answer while something is changing.
    alternative: Option<Expect>,
    /// Checked beside the decision: headers the client sent that the
    /// answer must list in `headers_to_remove`.
    must_remove: &'static [&'static str],
}

/// What each class expects, for the report.
const CLASSES: &[(&str, &str)] = &[
    (
        "valid_token",
        "allow (role user, user id, no x-hasura-auth-elevated)",
    ),
    (
        "valid_token_role_header",
        "allow (x-hasura-role: editor requested and allowed)",
    ),
    (
        "spoofed_session_headers",
        "allow; client x-hasura-user-id overwritten, client x-hasura-auth-elevated removed",
    ),
    (
        "elevated_with_grant",
        "allow on POST /v1/user/password, x-hasura-auth-elevated = user id",
    ),
    (
        "plain_route_with_grant",
        "allow on /graphql, x-hasura-auth-elevated = user id",
    ),
    ("elevated_without_grant", "deny elevation_required (16/401)"),
    (
        "elevated_foreign_grant",
        "deny elevation_required (another user's grant)",
    ),
    ("expired_token", "deny token_expired (16/401)"),
    (
        "bad_signature",
        "deny invalid_token (active kid, signed by a key in no JWKS)",
    ),
    ("missing_credentials", "deny missing_credentials (16/401)"),
    ("role_not_allowed", "deny role_not_allowed (7/403)"),
    (
        "api_key",
        "apiKey mode present: allow role service; absent: missing_credentials; either while reloading (ambiguous)",
    ),
    (
        "wrong_api_key",
        "apiKey mode present: invalid_api_key; absent: missing_credentials; either while reloading (ambiguous)",
    ),
    (
        "new_key_unconfirmed",
        "published key not yet seen by authgate: allow or invalid_token (ambiguous)",
    ),
    (
        "old_key_unconfirmed",
        "withdrawn key not yet dropped by authgate: allow or invalid_token (ambiguous)",
    ),
    (
        "retired_key_fresh",
        "withdrawn key, never-seen token: deny invalid_token",
    ),
    (
        "retired_key_pool",
        "withdrawn key, reused token, tokenCacheTtl + 2 s after the withdrawal: deny invalid_token",
    ),
    (
        "probe_new_key",
        "rotation probe (fresh token of a published key): allow or invalid_token (ambiguous)",
    ),
    (
        "probe_removed_key",
        "rotation probe (fresh token of a withdrawn key): allow or invalid_token (ambiguous)",
    ),
];

// ---------------------------------------------------------------------------
// The plan: what may be sent now, changed only under the write lock

#[derive(Clone, Copy, PartialEq, Debug)]
enum KeyState {
    /// Published, authgate may not have it yet.
    Pending,
    /// Published and confirmed.
    Active,
    /// Withdrawn, authgate may still have it.
    Retiring,
    /// Withdrawn and confirmed at this instant.
    Retired(Instant),
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum ApiKeyState {
    Absent,
    Present,
    Switching,
}

struct Plan {
    keys: Vec<(Arc<KeyMaterial>, KeyState)>,
    api_key: ApiKeyState,
}

impl Plan {
    fn with_state(&self, f: impl Fn(KeyState) -> bool) -> Vec<&Arc<KeyMaterial>> {
        self.keys
            .iter()
            .filter(|(_, s)| f(*s))
            .map(|(k, _)| k)
            .collect()
    }
}

/// xorshift64*: a reproducible mix per task (`SOAK_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut req = check_request(headers, path);
    if let Some(http) = req
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.method = method.into();
    }
    req
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Draws the next request from the plan.
fn choose(plan: &Plan, rng: &mut Rng) -> Choice {
    let active = plan.with_state(|s| s == KeyState::Active);
    let key = rng.pick(&active);
    let issued = rng.pick(&key.pool);
    let auth = bearer(&issued.token);
    let plain = |class: &'static str, expect: Expect| Choice {
        class,
        req: request("POST", PLAIN, &[("authorization", &auth)]),
        expect,
        alternative: None,
        must_remove: &[],
    };
    let valid = || plain("valid_token", Expect::allow("user", &issued.user, false));
    let ambiguous_key = |class: &'static str, k: &KeyMaterial, rng: &mut Rng| {
        let i = rng.pick(&k.pool);
        Choice {
            class,
            req: request("POST", PLAIN, &[("authorization", &bearer(&i.token))]),
            expect: Expect::allow("user", &i.user, false),
            alternative: Some(Expect::Deny("invalid_token")),
            must_remove: &[],
        }
    };
    let api_key = |class: &'static str, value: &str, present: Expect| {
        let absent = Expect::Deny("missing_credentials");
        let (expect, alternative) = match plan.api_key {
            ApiKeyState::Present => (present, None),
            ApiKeyState::Absent => (absent, None),
            ApiKeyState::Switching => (present, Some(absent)),
        };
        Choice {
            class,
            req: request("POST", PLAIN, &[("x-api-key", value)]),
            expect,
            alternative,
            must_remove: &[],
        }
    };
    let r = rng.below(100);
    match r {
        30..35 => Choice {
            class: "valid_token_role_header",
            req: request(
                "POST",
                PLAIN,
                &[("authorization", &auth), ("x-hasura-role", "editor")],
            ),
            expect: Expect::allow("editor", &issued.user, false),
            alternative: None,
            must_remove: &[],
        },
        35..38 => Choice {
            class: "spoofed_session_headers",
            req: request(
                "POST",
                PLAIN,
                &[
                    ("authorization", &auth),
                    ("x-hasura-user-id", "admin-1"),
                    ("x-hasura-auth-elevated", "admin-1"),
                ],
            ),
            expect: Expect::allow("user", &issued.user, false),
            alternative: None,
            must_remove: &["x-hasura-auth-elevated"],
        },
        38..48 => {
            let (class, path) = if r < 46 {
                ("elevated_with_grant", PROTECTED)
            } else {
                ("plain_route_with_grant", PLAIN)
            };
            Choice {
                class,
                req: request(
                    "POST",
                    path,
                    &[
                        ("authorization", &auth),
                        ("x-elevation-token", &issued.grant),
                    ],
                ),
                expect: Expect::allow("user", &issued.user, true),
                alternative: None,
                must_remove: &[],
            }
        }
        48..53 => Choice {
            class: "elevated_without_grant",
            req: request("POST", PROTECTED, &[("authorization", &auth)]),
            expect: Expect::Deny("elevation_required"),
            alternative: None,
            must_remove: &[],
        },
        53..55 => {
            // Another user's genuine grant (same key, so the same issuer).
            let i = key.pool.iter().position(|p| p.user == issued.user).unwrap();
            let other = &key.pool[(i + 1 + rng.below(key.pool.len() - 1)) % key.pool.len()];
            Choice {
                class: "elevated_foreign_grant",
                req: request(
                    "POST",
                    PROTECTED,
                    &[
                        ("authorization", &auth),
                        ("x-elevation-token", &other.grant),
                    ],
                ),
                expect: Expect::Deny("elevation_required"),
                alternative: None,
                must_remove: &[],
            }
        }
        55..62 => Choice {
            class: "expired_token",
            req: request(
                "POST",
                PLAIN,
                &[("authorization", &bearer(rng.pick::<String>(&key.expired)))],
            ),
            expect: Expect::Deny("token_expired"),
            alternative: None,
            must_remove: &[],
        },
        62..69 => Choice {
            class: "bad_signature",
            req: request(
                "POST",
                PLAIN,
                &[("authorization", &bearer(rng.pick::<String>(&key.forged)))],
            ),
            expect: Expect::Deny("invalid_token"),
            alternative: None,
            must_remove: &[],
        },
        69..75 => Choice {
            class: "missing_credentials",
            req: request("POST", PLAIN, &[]),
            expect: Expect::Deny("missing_credentials"),
            alternative: None,
            must_remove: &[],
        },
        75..81 => Choice {
            class: "role_not_allowed",
            req: request(
                "POST",
                PLAIN,
                &[("authorization", &auth), ("x-hasura-role", "admin")],
            ),
            expect: Expect::Deny("role_not_allowed"),
            alternative: None,
            must_remove: &[],
        },
        81..87 => api_key(
            "api_key",
            API_KEY,
            Expect::Allow {
                role: "service",
                user: None,
                elevated: false,
            },
        ),
        87..90 => api_key(
            "wrong_api_key",
            "soak-wrong-key",
            Expect::Deny("invalid_api_key"),
        ),
        90..93 => match plan.with_state(|s| s == KeyState::Pending).first() {
            Some(k) => ambiguous_key("new_key_unconfirmed", k, rng),
            None => valid(),
        },
        93..96 => match plan.with_state(|s| s == KeyState::Retiring).first() {
            Some(k) => ambiguous_key("old_key_unconfirmed", k, rng),
            None => valid(),
        },
        96..100 => {
            let retired = plan.keys.iter().rev().find_map(|(k, s)| match s {
                KeyState::Retired(at) => Some((k, at.elapsed() >= CACHE_GRACE)),
                _ => None,
            });
            let Some((k, settled)) = retired else {
                return valid();
            };
            // One in four of these is a never-seen token while any is left;
            // reused tokens only once the token cache has let go of them.
            let fresh = if r == 96 || !settled {
                k.fresh.lock().unwrap().pop()
            } else {
                None
            };
            let (class, token) = match fresh {
                Some(t) => ("retired_key_fresh", t),
                None if settled => ("retired_key_pool", rng.pick(&k.pool).token.clone()),
                None => return valid(),
            };
            Choice {
                class,
                req: request("POST", PLAIN, &[("authorization", &bearer(&token))]),
                expect: Expect::Deny("invalid_token"),
                alternative: None,
                must_remove: &[],
            }
        }
        _ => valid(),
    }
}

// ---------------------------------------------------------------------------
// Counting

#[derive(Default, Clone)]
struct ClassStats {
    sent: u64,
    correct: u64,
    ambiguous: u64,
    wrong: u64,
    outcomes: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Stats {
    classes: BTreeMap<&'static str, ClassStats>,
    /// Client-side decisions, `allow` or the reason (probes included).
    decisions: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    transport_errors: u64,
    samples: Vec<String>,
}

impl Stats {
    fn note(&mut self, msg: String) {
        if self.samples.len() < 20 {
            self.samples.push(msg);
        }
    }

    /// Checks one answer; returns whether the primary expectation held.
    fn record(&mut self, choice: &Choice, answer: Result<Outcome, String>) -> bool {
        let c = self.classes.entry(choice.class).or_default();
        c.sent += 1;
        let o = match answer {
            Ok(o) => o,
            Err(e) => {
                self.transport_errors += 1;
                self.note(format!("{}: transport error: {e}", choice.class));
                return false;
            }
        };
        let seen = observed(&o);
        *c.outcomes.entry(seen.clone()).or_default() += 1;
        *self.decisions.entry(seen).or_default() += 1;
        let removed_ok = choice
            .must_remove
            .iter()
            .all(|h| o.removed.iter().any(|r| r == h) && !o.headers.contains_key(*h));
        let primary = choice.expect.matches(&o) && removed_ok;
        if primary {
            c.correct += 1;
            if choice.alternative.is_some() {
                c.ambiguous += 1;
            }
        } else if choice.alternative.as_ref().is_some_and(|a| a.matches(&o)) {
            c.correct += 1;
            c.ambiguous += 1;
        } else {
            c.wrong += 1;
            let class = choice.class;
            self.note(format!(
                "{class}: expected {:?} (or {:?}), got code {} status {} headers {:?} removed {:?} body {}",
                choice.expect, choice.alternative, o.code, o.http_status, o.headers, o.removed, o.body
            ));
        }
        primary
    }

    fn merge(&mut self, other: Stats) {
        for (k, v) in other.classes {
            let c = self.classes.entry(k).or_default();
            c.sent += v.sent;
            c.correct += v.correct;
            c.ambiguous += v.ambiguous;
            c.wrong += v.wrong;
            for (o, n) in v.outcomes {
                *c.outcomes.entry(o).or_default() += n;
            }
        }
        for (k, v) in other.decisions {
            *self.decisions.entry(k).or_default() += v;
        }
        self.latencies_us.extend(other.latencies_us);
        self.transport_errors += other.transport_errors;
        for s in other.samples {
            self.note(s);
        }
    }
}

async fn call(
    client: &mut AuthorizationClient<Channel>,
    req: CheckRequest,
) -> Result<Outcome, String> {
    match tokio::time::timeout(CALL_TIMEOUT, client.check(req)).await {
        Ok(Ok(resp)) => Ok(outcome(&resp.into_inner())),
        Ok(Err(status)) => Err(format!("gRPC error {status}")),
        Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
    }
}

/// One HTTP/2 connection to authgate's gRPC address.
async fn connect(url: &str) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect_timeout(CALL_TIMEOUT);
    tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
        .await
        .expect("connect within 5 s")
        .expect("connect")
}

/// One request stream: draws, sends and checks until the deadline.
async fn stream_task(
    mut client: AuthorizationClient<Channel>,
    plan: Arc<RwLock<Plan>>,
    seed: u64,
    deadline: Instant,
) -> Stats {
    let mut rng = Rng(seed | 1);
    let mut stats = Stats::default();
    while Instant::now() < deadline {
        // The read guard spans the call: the plan cannot change under it.
        let guard = plan.read().await;
        let mut choice = choose(&guard, &mut rng);
        let started = Instant::now();
        let answer = call(&mut client, std::mem::take(&mut choice.req)).await;
        let us = started.elapsed().as_micros();
        drop(guard);
        stats
            .latencies_us
            .push(u32::try_from(us).unwrap_or(u32::MAX));
        stats.record(&choice, answer);
    }
    stats
}

// ---------------------------------------------------------------------------
// The authgate process

struct Authgate {
    child: Child,
    grpc: String,
    http: String,
    log: Arc<Mutex<LogStats>>,
}

#[derive(Default)]
struct LogStats {
    lines: u64,
    warn: u64,
    error: u64,
    panics: u64,
    /// The last warn/error lines, for the report.
    notable: Vec<String>,
    /// The first lines, for a start that fails.
    first: Vec<String>,
}

impl Drop for Authgate {
    fn drop(&mut self) {
        // Only when the test failed before its orderly SIGTERM.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Authgate {
    fn spawn(config: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_authgate"));
        for var in [
            "AUTHGATE_CONFIG",
            "RELY_AUTH_CONFIG_PATH",
            "AUTHGATE_GRPC_ADDR",
            "AUTHGATE_HTTP_ADDR",
            "PORT",
            "LOG_LEVEL",
        ] {
            cmd.env_remove(var);
        }
        // authgate's own default is `info` (one line per denial).
        let level = std::env::var("SOAK_LOG").unwrap_or_else(|_| "info".into());
        cmd.args(["serve", "--config"])
            .arg(config)
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .env("AUTHGATE_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                format!("warn,authgate={level},authgate::cli=info"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn authgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(LogStats::default()));
        let sink = log.clone();
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel::<(String, String)>();
        // Reads the addresses, then drains stderr so authgate never blocks
        // on a full pipe.
        std::thread::spawn(move || {
            let mut addrs_tx = Some(addrs_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v["message"] == "listening"
                    && let Some(tx) = addrs_tx.take()
                {
                    let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
                    let _ = tx.send((field("grpc_addr"), field("http_addr")));
                }
                let mut s = sink.lock().unwrap();
                s.lines += 1;
                if s.first.len() < 20 {
                    s.first.push(line.chars().take(400).collect());
                }
                let panicked = line.contains("panicked");
                let notable = match v["level"].as_str() {
                    Some("WARN") => {
                        s.warn += 1;
                        true
                    }
                    Some("ERROR") => {
                        s.error += 1;
                        true
                    }
                    _ => panicked,
                };
                if panicked {
                    s.panics += 1;
                }
                if notable {
                    if s.notable.len() >= 10 {
                        s.notable.remove(0);
                    }
                    s.notable.push(line.chars().take(400).collect());
                }
            }
        });
        let (grpc, http) = match addrs_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "authgate did not report its addresses within 30 s:\n{}",
                    log.lock().unwrap().first.join("\n")
                );
            }
        };
        Authgate {
            child,
            grpc,
            http,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {}", self.pid());
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The 1-minute load average (other work on the machine skews figures).
fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// GET on authgate's HTTP address: (status, body), or an error text.
async fn http_get(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let fut = async {
        let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, body))
    };
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Prometheus series `name{labels} value` of one family.
fn series(text: &str, name: &str) -> Vec<(HashMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let map = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k.trim().to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((map, value.trim().parse().ok()?))
        })
        .collect()
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name)
        .iter()
        .filter(|(m, _)| {
            labels
                .iter()
                .all(|(k, v)| m.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

async fn metrics_text(http: &reqwest::Client, base: &str) -> Result<String, String> {
    match http_get(http, &format!("{base}/metrics")).await? {
        (200, body) => Ok(body),
        (s, _) => Err(format!("/metrics answered {s}")),
    }
}

// ---------------------------------------------------------------------------
// Config file

fn config_yaml(jwks_url: &str, grant_pem: &str, db: &Path, api_key: bool) -> String {
    let api = if api_key {
        format!(
            "    - id: service\n      mode: apiKey\n      tokenLocation: {{in: header, name: X-API-Key}}\n      value: {{value: \"{API_KEY}\"}}\n      sessionVariables: {{x-hasura-role: {{value: service}}}}\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"# authgate soak test config (rewritten during the run)
version: v1
kind: RelyAuth
definition:
  settings:
    reloadInterval: 2
    unknownKidCooldown: 5
    tokenCacheTtl: {ttl}
  modes:
    - id: users
      mode: jwt
      tokenLocation: {{in: header, name: Authorization, scheme: bearer}}
      key: {{jwkFromUrl: {{value: "{jwks_url}"}}, algorithm: RS256}}
      audience: ["{AUDIENCE}"]
      issuer: {ISSUER}
      claimsConfig:
        namespace: {{location: '"claims.jwt.hasura.io"', claimsFormat: Json}}
{api}  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: {PROTECTED}}}
    webauthn: {{rpId: example.com, rpName: Soak, origins: ["https://app.example.com"]}}
    grant:
      ttl: 900
      signingKey: {{algorithm: ES256, key: {{value: {pem}}}}}
    store: {{url: "sqlite://{db}"}}
"#,
        ttl = TOKEN_CACHE_TTL.as_secs(),
        pem = serde_json::to_string(grant_pem).unwrap(),
        db = db.display(),
    )
}

/// Replaces the file atomically (a reload never reads half a file).
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------
// Control tasks

/// Publishes `keys` as the JWKS document.
fn publish(jwks: &JwksServer, keys: &[&Arc<KeyMaterial>]) {
    jwks.set(200, jwks_of(keys.iter().map(|k| k.jwk.clone()).collect()));
}

/// Sends fresh tokens of `key` until authgate's answer is `want`
/// (`allow` or `invalid_token`); either answer is acceptable meanwhile.
async fn probe_until(
    client: &mut AuthorizationClient<Channel>,
    key: &Arc<KeyMaterial>,
    class: &'static str,
    want_allow: bool,
    stats: &mut Stats,
) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < SYNC_TIMEOUT {
        let k = key.clone();
        let token = tokio::task::spawn_blocking(move || k.fresh_token())
            .await
            .unwrap();
        let mut choice = Choice {
            class,
            req: request("POST", PLAIN, &[("authorization", &bearer(&token))]),
            expect: Expect::allow("user", "user-fresh", false),
            alternative: Some(Expect::Deny("invalid_token")),
            must_remove: &[],
        };
        let answer = call(client, std::mem::take(&mut choice.req)).await;
        let allowed = stats.record(&choice, answer);
        if allowed == want_allow && stats.transport_errors == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{class}: key {} not {} within {SYNC_TIMEOUT:?}",
        key.kid,
        if want_allow { "accepted" } else { "dropped" }
    ))
}

struct RotationReport {
    added: u64,
    removed: u64,
    /// Time from publishing a key to its confirmation, and from
    /// withdrawing one to its confirmation (the ambiguous windows).
    pending: Duration,
    retiring: Duration,
    stats: Stats,
    error: Option<String>,
}

/// Adds a key, confirms it, withdraws the previous one, confirms; repeats.
#[allow(clippy::too_many_arguments)]
async fn rotation_task(
    mut client: AuthorizationClient<Channel>,
    plan: Arc<RwLock<Plan>>,
    jwks: JwksServer,
    grants: Arc<GrantSigner>,
    rogue: Arc<String>,
    token_exp: i64,
    step: Duration,
    deadline: Instant,
) -> RotationReport {
    let mut report = RotationReport {
        added: 0,
        removed: 0,
        pending: Duration::ZERO,
        retiring: Duration::ZERO,
        stats: Stats::default(),
        error: None,
    };
    let mut generation = 1;
    let result: Result<(), String> = async {
        loop {
            if Instant::now() + step >= deadline {
                return Ok(());
            }
            tokio::time::sleep(step).await;
            // Add: publish {old, new}, wait until authgate accepts the new key.
            let kid = format!("soak-key-{generation}");
            generation += 1;
            let (g, r) = (grants.clone(), rogue.clone());
            let new = Arc::new(
                tokio::task::spawn_blocking(move || KeyMaterial::new(kid, &r, &g, token_exp))
                    .await
                    .unwrap(),
            );
            let old = {
                let mut p = plan.write().await;
                let old = p.with_state(|s| s == KeyState::Active)[0].clone();
                p.keys.push((new.clone(), KeyState::Pending));
                old
            };
            let published = Instant::now();
            publish(&jwks, &[&old, &new]);
            // A fetch that read the previous document lands before probing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            probe_until(&mut client, &new, "probe_new_key", true, &mut report.stats).await?;
            set_state(&plan, &new, KeyState::Active).await;
            report.pending += published.elapsed();
            report.added += 1;
            if Instant::now() + step >= deadline {
                return Ok(());
            }
            // Never-seen tokens of the old key, for after its withdrawal.
            let o = old.clone();
            let fresh = tokio::task::spawn_blocking(move || {
                (0..FRESH_PER_RETIREMENT)
                    .map(|_| o.fresh_token())
                    .collect::<Vec<_>>()
            });
            tokio::time::sleep(step).await;
            let fresh = fresh.await.unwrap();
            // Withdraw: stop using the old key, publish {new}, wait until
            // authgate drops it.
            set_state(&plan, &old, KeyState::Retiring).await;
            let withdrawn = Instant::now();
            publish(&jwks, &[&new]);
            tokio::time::sleep(Duration::from_millis(300)).await;
            probe_until(
                &mut client,
                &old,
                "probe_removed_key",
                false,
                &mut report.stats,
            )
            .await?;
            *old.fresh.lock().unwrap() = fresh;
            {
                // Only the latest withdrawn key is drawn from.
                let mut p = plan.write().await;
                p.keys.retain(|(_, s)| !matches!(s, KeyState::Retired(_)));
                for (k, s) in p.keys.iter_mut() {
                    if Arc::ptr_eq(k, &old) {
                        *s = KeyState::Retired(Instant::now());
                    }
                }
            }
            report.retiring += withdrawn.elapsed();
            report.removed += 1;
        }
    }
    .await;
    report.error = result.err();
    report
}

async fn set_state(plan: &RwLock<Plan>, key: &Arc<KeyMaterial>, state: KeyState) {
    let mut p = plan.write().await;
    for (k, s) in p.keys.iter_mut() {
        if Arc::ptr_eq(k, key) {
            *s = state;
        }
    }
}

struct ReloadReport {
    writes: u64,
    by_sighup: u64,
    by_watcher: u64,
    /// Time spent with the apiKey mode `Switching`.
    switching: Duration,
    error: Option<String>,
}

/// `authgate_config_reloads_total` by result: (ok, error).
async fn reload_counts(http: &reqwest::Client, base: &str) -> Result<(f64, f64), String> {
    let text = metrics_text(http, base).await?;
    let count = |r| metric(&text, "authgate_config_reloads_total", &[("result", r)]);
    Ok((count("ok"), count("error")))
}

/// Toggles the apiKey mode in the file; every other write also sends
/// SIGHUP. A write is confirmed by the first reload counted after it (a
/// reload swaps the engine in, then counts; any reload started after the
/// write reads the new file). The next cycle waits for all the reloads of
/// this one: SIGHUP's and the watcher's (it polls every 2 s), or the
/// watcher's alone.
async fn reload_task(
    plan: Arc<RwLock<Plan>>,
    path: PathBuf,
    render: Arc<dyn Fn(bool) -> String + Send + Sync>,
    pid: u32,
    http_base: String,
    pause: Duration,
    deadline: Instant,
) -> ReloadReport {
    let http = reqwest::Client::new();
    let mut report = ReloadReport {
        writes: 0,
        by_sighup: 0,
        by_watcher: 0,
        switching: Duration::ZERO,
        error: None,
    };
    let mut present = false;
    let result: Result<(), String> = async {
        loop {
            if Instant::now() + pause + Duration::from_secs(3) >= deadline {
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            let (ok_before, err_before) = reload_counts(&http, &http_base).await?;
            plan.write().await.api_key = ApiKeyState::Switching;
            let switched_at = Instant::now();
            present = !present;
            write_atomically(&path, &render(present));
            let sighup = report.writes.is_multiple_of(2);
            report.writes += 1;
            let expected = if sighup {
                let ok = Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if !ok {
                    return Err("kill -HUP failed".into());
                }
                report.by_sighup += 1;
                // SIGHUP and the watcher both see the edit: one reload.
                ok_before + 1.0
            } else {
                report.by_watcher += 1;
                ok_before + 1.0
            };
            let started = Instant::now();
            let mut confirmed = false;
            loop {
                let (ok, err) = reload_counts(&http, &http_base).await?;
                if err > err_before {
                    return Err(format!("a reload failed (write {})", report.writes));
                }
                if !confirmed && ok > ok_before {
                    plan.write().await.api_key = if present {
                        ApiKeyState::Present
                    } else {
                        ApiKeyState::Absent
                    };
                    report.switching += switched_at.elapsed();
                    confirmed = true;
                }
                if ok >= expected {
                    break;
                }
                if started.elapsed() > SYNC_TIMEOUT {
                    return Err(format!(
                        "write {} not reloaded within {SYNC_TIMEOUT:?} ({ok} of {expected})",
                        report.writes
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    .await;
    report.error = result.err();
    report
}

// ---------------------------------------------------------------------------
// The test

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn report_path() -> PathBuf {
    if let Ok(p) = std::env::var("SOAK_REPORT") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("soak-report.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak test: bash scripts/soak.sh [seconds]"]
async fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    assert!(
        (10..=3600).contains(&seconds),
        "SOAK_SECONDS must be 10..=3600"
    );
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let duration = Duration::from_secs(seconds);
    // Rotation: each step (add, then withdraw) this far apart.
    let step = (duration / 8).clamp(Duration::from_secs(3), Duration::from_secs(10));
    let reload_pause = Duration::from_secs(1);

    // Keys: the JWKS's first key, a rogue key, authgate's grant key.
    let token_exp = now() + seconds as i64 + 3600;
    let grant_pem = fixture("ec256.key");
    let rogue = Arc::new(generate_rsa_pem());
    let grants = Arc::new(GrantSigner::new(grant_pem.clone()));
    let first = {
        let (g, r) = (grants.clone(), rogue.clone());
        Arc::new(
            tokio::task::spawn_blocking(move || {
                KeyMaterial::new("soak-key-0".into(), &r, &g, token_exp)
            })
            .await
            .unwrap(),
        )
    };
    let jwks = JwksServer::start(jwks_of(vec![first.jwk.clone()])).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("auth.yaml");
    let db = dir.path().join("soak.db");
    let render: Arc<dyn Fn(bool) -> String + Send + Sync> = {
        let (url, pem, db) = (jwks.url(), grant_pem.clone(), db.clone());
        Arc::new(move |api_key| config_yaml(&url, &pem, &db, api_key))
    };
    write_atomically(&config_path, &render(false));

    let mut server = Authgate::spawn(&config_path);
    let grpc_url = format!("http://{}", server.grpc);
    let http_base = format!("http://{}", server.http);
    let http = reqwest::Client::new();
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(&http, &format!("{http_base}/readyz")).await {
            break;
        }
        assert!(Instant::now() < ready_by, "authgate not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Grants minted here must carry the kid authgate publishes.
    let (status, body) = http_get(&http, &format!("{http_base}/.well-known/jwks.json"))
        .await
        .expect("grant JWKS");
    assert_eq!(status, 200, "{body}");
    let published: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(published["keys"][0]["kid"], grants.kid.as_str());
    let mut control = AuthorizationClient::new(connect(&grpc_url).await);
    let mut warmup = Stats::default();
    probe_until(&mut control, &first, "probe_new_key", true, &mut warmup)
        .await
        .expect("the first key serves");
    let (rss_start, _) = memory_kib(server.pid());
    let load_start = loadavg();

    let plan = Arc::new(RwLock::new(Plan {
        keys: vec![(first.clone(), KeyState::Active)],
        api_key: ApiKeyState::Absent,
    }));

    // Load.
    let started = Instant::now();
    let deadline = started + duration;
    let mut streams = Vec::new();
    for c in 0..CONNECTIONS {
        let channel = connect(&grpc_url).await;
        for s in 0..STREAMS_PER_CONNECTION {
            let client = AuthorizationClient::new(channel.clone());
            let task_seed = seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((c * STREAMS_PER_CONNECTION + s) as u64 + 1);
            streams.push(tokio::spawn(stream_task(
                client,
                plan.clone(),
                task_seed,
                deadline,
            )));
        }
    }
    let rotation = tokio::spawn(rotation_task(
        control.clone(),
        plan.clone(),
        jwks.clone(),
        grants.clone(),
        rogue.clone(),
        token_exp,
        step,
        deadline,
    ));
    let reloads = tokio::spawn(reload_task(
        plan.clone(),
        config_path.clone(),
        render.clone(),
        server.pid(),
        http_base.clone(),
        reload_pause,
        deadline,
    ));
    // RSS every 2 s.
    let rss_samples = Arc::new(Mutex::new(Vec::<(f64, u64)>::new()));
    let sampler = {
        let samples = rss_samples.clone();
        let pid = server.pid();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let (rss, _) = memory_kib(pid);
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), rss));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    let bound = duration + SYNC_TIMEOUT + Duration::from_secs(30);
    let mut stats = Stats::default();
    for s in streams {
        let st = tokio::time::timeout(bound, s)
            .await
            .expect("a stream outlived its bound")
            .unwrap();
        stats.merge(st);
    }
    let elapsed = started.elapsed();
    let rotation = tokio::time::timeout(bound, rotation)
        .await
        .expect("rotation task bounded")
        .unwrap();
    let reloads = tokio::time::timeout(bound, reloads)
        .await
        .expect("reload task bounded")
        .unwrap();
    let _ = sampler.await;
    let requests: u64 = stats.classes.values().map(|c| c.sent).sum();
    stats.merge(rotation.stats);
    stats.merge(warmup);

    // After the load: metrics, memory, health.
    let alive = server.alive();
    let text = metrics_text(&http, &http_base).await.unwrap_or_default();
    let (rss_end, rss_peak) = memory_kib(server.pid());
    let load_end = loadavg();
    let healthz = http_get(&http, &format!("{http_base}/healthz"))
        .await
        .map(|(s, _)| s)
        .unwrap_or(0);
    let readyz = http_get(&http, &format!("{http_base}/readyz"))
        .await
        .map(|(s, _)| s)
        .unwrap_or(0);
    let reloads_ok = metric(&text, "authgate_config_reloads_total", &[("result", "ok")]);
    let reloads_err = metric(
        &text,
        "authgate_config_reloads_total",
        &[("result", "error")],
    );
    let fetches = |r| metric(&text, "authgate_jwks_fetches_total", &[("result", r)]);
    let cache = |r| {
        metric(
            &text,
            "authgate_token_cache_lookups_total",
            &[("result", r)],
        )
    };
    // Server-side decisions over gRPC, by `allow` or reason.
    let mut server_decisions: BTreeMap<String, u64> = BTreeMap::new();
    for (labels, v) in series(&text, "authgate_check_requests_total") {
        if labels.get("frontend").map(String::as_str) != Some("grpc") || v == 0.0 {
            continue;
        }
        let key = if labels.get("decision").map(String::as_str) == Some("allow") {
            "allow".to_owned()
        } else {
            labels.get("reason").cloned().unwrap_or_default()
        };
        *server_decisions.entry(key).or_default() += v as u64;
    }

    // Orderly stop.
    server.signal("-TERM");
    let stop_by = Instant::now() + Duration::from_secs(30);
    let exit_code = loop {
        if let Ok(Some(s)) = server.child.try_wait() {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > stop_by {
            break -2;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Report.
    let mut lat = std::mem::take(&mut stats.latencies_us);
    lat.sort_unstable();
    let wrong: u64 = stats.classes.values().map(|c| c.wrong).sum();
    let ambiguous: u64 = stats.classes.values().map(|c| c.ambiguous).sum();
    let log = server.log.lock().unwrap();
    let samples = rss_samples.lock().unwrap().clone();
    let classes: serde_json::Map<String, Value> = CLASSES
        .iter()
        .filter_map(|(name, expected)| {
            let c = stats.classes.get(name)?;
            Some((
                (*name).to_owned(),
                json!({
                    "expected": expected,
                    "sent": c.sent,
                    "correct": c.correct,
                    "ambiguous": c.ambiguous,
                    "wrong": c.wrong,
                    "outcomes": c.outcomes,
                }),
            ))
        })
        .collect();
    let report = json!({
        "seconds": elapsed.as_secs_f64(),
        "seed": seed,
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "streams": CONNECTIONS * STREAMS_PER_CONNECTION,
        "connections": CONNECTIONS,
        "requests": requests,
        "requests_per_second": requests as f64 / elapsed.as_secs_f64(),
        "probes": stats.classes.iter().filter(|(k, _)| k.starts_with("probe_")).map(|(_, c)| c.sent).sum::<u64>(),
        "wrong_decisions": wrong,
        "ambiguous_decisions": ambiguous,
        "transport_errors": stats.transport_errors,
        "latency_ms": {
            "p50": percentile(&lat, 0.50),
            "p90": percentile(&lat, 0.90),
            "p99": percentile(&lat, 0.99),
            "p999": percentile(&lat, 0.999),
            "max": lat.last().map(|v| f64::from(*v) / 1000.0).unwrap_or(0.0),
        },
        "classes": classes,
        "client_decisions": stats.decisions,
        "server_decisions_grpc": server_decisions,
        "jwks": {
            "keys_added": rotation.added,
            "keys_withdrawn": rotation.removed,
            "rotation_step_seconds": step.as_secs(),
            "new_key_unconfirmed_seconds": rotation.pending.as_secs_f64(),
            "old_key_unconfirmed_seconds": rotation.retiring.as_secs_f64(),
            "fetches_ok": fetches("ok"),
            "fetches_error": fetches("error"),
            "server_hits": jwks.hits(),
        },
        "config_reloads": {
            "file_writes": reloads.writes,
            "writes_with_sighup": reloads.by_sighup,
            "writes_watcher_only": reloads.by_watcher,
            "api_key_switching_seconds": reloads.switching.as_secs_f64(),
            "authgate_config_reloads_total_ok": reloads_ok,
            "authgate_config_reloads_total_error": reloads_err,
        },
        "token_cache": {"hit": cache("hit"), "miss": cache("miss")},
        "rss_kib": {
            "start": rss_start,
            "end": rss_end,
            "peak_vmhwm": rss_peak,
            "samples": samples.iter().map(|(t, r)| json!([(t * 10.0).round() / 10.0, r])).collect::<Vec<_>>(),
        },
        "health_after": {"alive": alive, "healthz": healthz, "readyz": readyz, "exit_code_after_sigterm": exit_code},
        "log": {"lines": log.lines, "warn": log.warn, "error": log.error, "panics": log.panics, "last_notable": log.notable},
        "errors": {
            "rotation": rotation.error,
            "reload": reloads.error,
            "samples": stats.samples,
        },
    });
    let path = report_path();
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();

    println!("\n===== authgate soak report ({}) =====", path.display());
    println!(
        "duration {:.1} s, {} streams over {} connections, seed {seed}; load average {load_start:.2} before, {load_end:.2} after",
        elapsed.as_secs_f64(),
        CONNECTIONS * STREAMS_PER_CONNECTION,
        CONNECTIONS
    );
    println!(
        "requests {requests} ({:.0}/s), wrong decisions {wrong}, ambiguous {ambiguous}, transport errors {}",
        requests as f64 / elapsed.as_secs_f64(),
        stats.transport_errors
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat.last().map(|v| f64::from(*v) / 1000.0).unwrap_or(0.0)
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9} {:>6}  outcomes",
        "class", "sent", "correct", "ambig.", "wrong"
    );
    for (name, _) in CLASSES {
        if let Some(c) = stats.classes.get(name) {
            println!(
                "{name:<26} {:>9} {:>9} {:>9} {:>6}  {:?}",
                c.sent, c.correct, c.ambiguous, c.wrong, c.outcomes
            );
        }
    }
    println!(
        "JWKS: {} keys added, {} withdrawn (step {} s; unconfirmed {:.1} s + {:.1} s in all); fetches ok {} error {}",
        rotation.added,
        rotation.removed,
        step.as_secs(),
        rotation.pending.as_secs_f64(),
        rotation.retiring.as_secs_f64(),
        fetches("ok"),
        fetches("error")
    );
    println!(
        "config: {} file writes ({} with SIGHUP, {} watcher only), apiKey mode switching {:.1} s in all; authgate_config_reloads_total ok {reloads_ok} error {reloads_err}",
        reloads.writes,
        reloads.by_sighup,
        reloads.by_watcher,
        reloads.switching.as_secs_f64()
    );
    println!("token cache: hit {} miss {}", cache("hit"), cache("miss"));
    println!(
        "RSS: start {} KiB, end {} KiB, peak {} KiB",
        rss_start, rss_end, rss_peak
    );
    println!(
        "after the run: alive {alive}, /healthz {healthz}, /readyz {readyz}; exit code after SIGTERM {exit_code}"
    );
    println!(
        "log: {} lines, {} warn, {} error, {} panics",
        log.lines, log.warn, log.error, log.panics
    );
    for s in &stats.samples {
        println!("  ! {s}");
    }
    if let Some(e) = &rotation.error {
        println!("  ! rotation: {e}");
    }
    if let Some(e) = &reloads.error {
        println!("  ! reload: {e}");
    }
    println!("=====");

    assert_eq!(wrong, 0, "wrong decisions: {:#?}", stats.samples);
    assert_eq!(
        stats.transport_errors, 0,
        "transport errors: {:#?}",
        stats.samples
    );
    assert!(rotation.error.is_none(), "{:?}", rotation.error);
    assert!(reloads.error.is_none(), "{:?}", reloads.error);
    assert!(
        rotation.added >= 1 && rotation.removed >= 1,
        "no full rotation"
    );
    assert!(reloads.writes >= 2, "fewer than two config writes");
    assert_eq!(reloads_err, 0.0, "a config reload failed");
    assert!(
        alive && healthz == 200 && readyz == 200,
        "not healthy after the run"
    );
    assert_eq!(log.panics, 0, "panic in authgate's log: {:?}", log.notable);
    assert_eq!(
        stats.decisions, server_decisions,
        "client and server decision counts differ"
    );
    assert_eq!(exit_code, 0, "exit code after SIGTERM");
}
