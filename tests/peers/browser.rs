//! The WebAuthn ceremonies in a real browser: Debian's Chromium, driven by
//! its ChromeDriver over WebDriver, with the DevTools virtual authenticator
//! (the WebDriver extension of the Web Authentication spec). The page is on
//! authgate's own origin (`http://localhost:<port>`, a secure context), so
//! it calls the endpoints as a web app of that origin would, converting the
//! server's JSON with the browser's own helpers
//! (`PublicKeyCredential.parseCreationOptionsFromJSON`, `toJSON()`).
//!
//! A soft authenticator applies none of the browser's checks; Chromium
//! refused webauthn-rs' security-key options (credProtect
//! `userVerificationRequired` with user verification only `preferred`)
//! before it asked the authenticator. These tests fail, not skip, without
//! `/usr/bin/chromium` and `/usr/bin/chromedriver` (`CHROMIUM_BIN`,
//! `CHROMEDRIVER_BIN`); `.ci/run` installs both.

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

fn binary(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: install Debian's chromium and chromium-driver (.ci/run does), or set {var}"
    );
    path
}

pub(crate) struct Driver {
    child: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    /// ChromeDriver on a free port and a headless Chromium session.
    pub(crate) async fn start() -> Self {
        let chromium = binary("CHROMIUM_BIN", "/usr/bin/chromium");
        let chromedriver = binary("CHROMEDRIVER_BIN", "/usr/bin/chromedriver");
        let port = free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let mut up = false;
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("{base}/status")).send().await
                && r.status() == 200
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "chromedriver did not start");
        let profile = tempfile::tempdir().unwrap();
        // Without the background-networking switches Chromium keeps trying
        // Google's hosts, which this sandbox refuses.
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let resp: Value = client
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_owned();
        Driver {
            child,
            base,
            session,
            client,
            _profile: profile,
        }
    }

    pub(crate) async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let rb = self.client.request(method.parse().unwrap(), url);
        let rb = if method == "GET" || method == "DELETE" {
            rb
        } else {
            rb.json(&body)
        };
        let resp: Value = rb.send().await.unwrap().json().await.unwrap();
        if let Some(err) = resp["value"]["error"].as_str() {
            panic!(
                "WebDriver {method} {path}: {err}: {}",
                resp["value"]["message"]
            );
        }
        resp["value"].clone()
    }

    pub(crate) async fn open(&self, url: &str) {
        self.command("POST", "/url", json!({"url": url})).await;
    }

    /// A virtual security key (CTAP2 over USB, no resident keys).
    pub(crate) async fn add_authenticator(&self, user_verification: bool) -> String {
        let id = self
            .command(
                "POST",
                "/webauthn/authenticator",
                json!({
                    "protocol": "ctap2",
                    "transport": "usb",
                    "hasResidentKey": false,
                    "hasUserVerification": user_verification,
                    "isUserConsenting": true,
                    "isUserVerified": user_verification,
                }),
            )
            .await;
        id.as_str().unwrap().to_owned()
    }

    /// Gives the virtual authenticator `id` a credential ("Add Credential":
    /// the fields "Get Credentials" returns, private key included).
    pub(crate) async fn add_credential(&self, id: &str, credential: Value) {
        self.command(
            "POST",
            &format!("/webauthn/authenticator/{id}/credential"),
            credential,
        )
        .await;
    }

    pub(crate) async fn remove_authenticator(&self, id: &str) {
        self.command(
            "DELETE",
            &format!("/webauthn/authenticator/{id}"),
            Value::Null,
        )
        .await;
    }

    pub(crate) async fn credentials(&self, id: &str) -> Vec<Value> {
        self.command(
            "GET",
            &format!("/webauthn/authenticator/{id}/credentials"),
            Value::Null,
        )
        .await
        .as_array()
        .cloned()
        .unwrap_or_default()
    }

    /// Sets whether the virtual authenticator `id` verifies its user (the
    /// WebDriver extension's "Set User Verified").
    pub(crate) async fn set_user_verified(&self, id: &str, verified: bool) {
        self.command(
            "POST",
            &format!("/webauthn/authenticator/{id}/uv"),
            json!({"isUserVerified": verified}),
        )
        .await;
    }

    /// Runs `body`, the body of an async function, in the page: its value,
    /// or `{"error": {name, code, message, status}}` when it throws.
    pub(crate) async fn script(&self, body: &str) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             (async () => {{ {body} }})().then(\n\
               v => done(v === undefined ? null : v),\n\
               e => done({{error: {{name: e && e.name, code: e && e.code, message: String(e && e.message), status: e && e.status}}}}));"
        );
        self.command(
            "POST",
            "/execute/async",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Runs `body` (an async function of `token`, `grant` returning a JSON
    /// value) in the page.
    async fn run(&self, body: &str, token: &str, grant: Option<&str>) -> Value {
        let script = format!(
            "const done = arguments[arguments.length - 1];\n\
             const token = arguments[0], grant = arguments[1];\n\
             {PAGE_HELPERS}\n\
             (async () => {{ {body} }})().then(done, e => done({{step: 'script', error: String(e)}}));"
        );
        self.command(
            "POST",
            "/execute/async",
            json!({"script": script, "args": [token, grant]}),
        )
        .await
    }
}

/// What a web app of authgate's origin does for the ceremonies, with the
/// browser's JSON helpers only.
const PAGE_HELPERS: &str = r#"
const call = async (method, path, body, extra) => {
  const headers = Object.assign({'authorization': 'Bearer ' + token}, extra || {});
  const init = {method, headers};
  if (body !== undefined) { headers['content-type'] = 'application/json'; init.body = JSON.stringify(body); }
  const r = await fetch(path, init);
  const text = await r.text();
  let json = null; try { json = JSON.parse(text); } catch (e) {}
  return {status: r.status, json, text};
};
const addKey = async (nickname, extra) => {
  const begin = await call('POST', '/user/webauthn/add', {nickname}, extra);
  if (begin.status !== 200) return {step: 'add', begin};
  let cred;
  try {
    cred = await navigator.credentials.create({publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(begin.json.publicKey)});
  } catch (e) { return {step: 'create', error: e.name + ': ' + e.message, options: begin.json}; }
  const finish = await call('POST', '/user/webauthn/verify', {credential: cred.toJSON(), nickname}, extra);
  return {step: 'verify', status: finish.status, answer: finish.json || finish.text};
};
const elevate = async () => {
  const begin = await call('POST', '/elevate/webauthn', {});
  if (begin.status !== 200) return {step: 'elevate', begin};
  let cred;
  try {
    cred = await navigator.credentials.get({publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(begin.json.publicKey)});
  } catch (e) { return {step: 'get', error: e.name + ': ' + e.message, options: begin.json}; }
  const finish = await call('POST', '/elevate/webauthn/verify', {credential: cred.toJSON()});
  return {step: 'verify', status: finish.status, answer: finish.json || finish.text};
};
"#;

/// authgate with elevation required on `POST /v1/user/password`, its
/// relying party `localhost` and allowed origin `origin` (`None`: its own).
async fn server(db: &std::path::Path, origin: Option<&str>) -> (authgate::server::Running, String) {
    let port = free_port();
    let own = format!("http://localhost:{port}");
    let origin = origin.unwrap_or(&own);
    let yaml = hs256_config(&format!(
        r#"  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: /v1/user/password}}
    webauthn: {{rpId: localhost, rpName: authgate test, origins: ["{origin}"]}}
    store: {{url: "sqlite://{}"}}
"#,
        db.display()
    ));
    let config = authgate::config::parse(&yaml, &|_: &str| None).unwrap();
    let shared = authgate::server::Shared::new(config, None).await.unwrap();
    let grpc: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let running = authgate::server::start(shared, grpc, http).await.unwrap();
    (running, own)
}

fn token(user: &str) -> String {
    mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims(user, &["user"], "user"),
        None,
    )
}

/// A Check on the protected route, with or without a grant.
async fn password_change(
    running: &authgate::server::Running,
    token: &str,
    grant: Option<&str>,
) -> Outcome {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(g) = grant {
        headers.push(("x-elevation-token", g));
    }
    let mut client = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::connect(
        format!("http://{}", running.grpc_addr),
    )
    .await
    .unwrap();
    let resp = client
        .check(check_request(&headers, "/v1/user/password"))
        .await
        .unwrap()
        .into_inner();
    outcome(&resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_keys_register_and_step_up_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (running, origin) = server(&dir.path().join("b.db"), None).await;
    let driver = Driver::start().await;
    driver.open(&format!("{origin}/healthz")).await;
    let alice = token("alice");

    // Without a key, the protected route needs elevation.
    let o = password_change(&running, &alice, None).await;
    assert_eq!(o.http_status, 401, "{o:?}");

    // A key with user verification (a PIN set), then one without: both are
    // security keys authgate accepts.
    let with_pin = driver.add_authenticator(true).await;
    let first = driver
        .run("return await addKey('with PIN');", &alice, None)
        .await;
    assert_eq!(
        first["status"], 200,
        "first key, no elevation needed: {first}"
    );
    assert_eq!(first["answer"]["nickname"], "with PIN", "{first}");
    assert_eq!(driver.credentials(&with_pin).await.len(), 1);

    // A second key needs elevation first (mode required).
    let second = driver
        .run("return await addKey('second');", &alice, None)
        .await;
    assert_eq!(second["begin"]["status"], 401, "{second}");
    assert_eq!(
        second["begin"]["json"]["error"], "elevation_required",
        "{second}"
    );

    // Step-up with the first key: the grant opens the protected route.
    let elevated = driver.run("return await elevate();", &alice, None).await;
    assert_eq!(elevated["status"], 200, "{elevated}");
    let grant = elevated["answer"]["elevationToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = password_change(&running, &alice, Some(&grant)).await;
    assert_eq!(o.http_status, 200, "{o:?}");
    assert_eq!(o.headers["x-hasura-auth-elevated"], "alice");
    // Another user's token with Alice's grant: still needs elevation.
    let o = password_change(&running, &token("bob"), Some(&grant)).await;
    assert_eq!(o.http_status, 401, "{o:?}");

    // Elevated, Alice adds a PIN-less key: user verification is not required.
    driver.remove_authenticator(&with_pin).await;
    let pinless = driver.add_authenticator(false).await;
    let added = driver
        .run(
            "return await addKey('no PIN', {'x-elevation-token': grant});",
            &alice,
            Some(&grant),
        )
        .await;
    assert_eq!(added["status"], 200, "{added}");
    assert_eq!(driver.credentials(&pinless).await.len(), 1);
    let elevated = driver.run("return await elevate();", &alice, None).await;
    assert_eq!(
        elevated["status"], 200,
        "step-up with the PIN-less key: {elevated}"
    );

    let listed = driver
        .run(
            "return (await call('GET', '/user/webauthn')).json;",
            &alice,
            None,
        )
        .await;
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["nickname"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{listed}");
    assert!(
        names.contains(&"with PIN") && names.contains(&"no PIN"),
        "{listed}"
    );
    running.shutdown().await;
}

/// A page on an origin the config does not allow: the browser makes the
/// credential (the RP ID matches), authgate refuses it and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_origin_is_named_in_the_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (running, origin) = server(&dir.path().join("o.db"), Some("https://app.localhost")).await;
    let driver = Driver::start().await;
    driver.open(&format!("{origin}/healthz")).await;
    driver.add_authenticator(true).await;
    let refused = driver
        .run("return await addKey('k');", &token("carol"), None)
        .await;
    assert_eq!(refused["status"], 401, "{refused}");
    assert_eq!(refused["answer"]["error"], "ceremony_failed", "{refused}");
    assert_eq!(refused["answer"]["cause"], "origin_mismatch", "{refused}");
    running.shutdown().await;
}

/// A fresh PostgreSQL database holding nhost's `auth.user_security_keys`
/// (hasura-auth's layout); its URL and name.
async fn nhost_database() -> (String, String) {
    use sqlx::Connection;
    let admin = postgres_url();
    let name = format!("authgate_browser_{}_{}", std::process::id(), now());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
    let base = &base[..base.rfind('/').unwrap()];
    let url = if query.is_empty() {
        format!("{base}/{name}")
    } else {
        format!("{base}/{name}?{query}")
    };
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    for stmt in NHOST_SECURITY_KEYS {
        sqlx::query(stmt).execute(&mut db).await.unwrap();
    }
    (url, name)
}

/// A key registered by nhost, not by authgate: its row in nhost's table (the
/// credential id in base64url, the authenticator's COSE public key, a
/// counter), the key itself in a Chromium virtual authenticator. The step-up
/// through authgate's browser client works with it, and its counter is
/// recorded in nhost's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_nhost_registered_steps_up_in_chromium() {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use sqlx::Connection;

    let (url, name) = nhost_database().await;
    let _drop = crate::sql::SqlOnDrop {
        url: postgres_url(),
        statements: vec![format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")],
    };
    let user = "3c7f6a52-7f43-4d5e-9a0b-5e2d7c1f0a11";
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
        .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    assert_eq!(
        (point.len(), point[0]),
        (65, 4),
        "an uncompressed P-256 point"
    );
    // The COSE_Key an authenticator sends: {1: 2 (EC2), 3: -7 (ES256),
    // -1: 1 (P-256), -2: x, -3: y}.
    let mut cose = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
    cose.extend(&point[1..33]);
    cose.extend([0x22, 0x58, 0x20]);
    cose.extend(&point[33..]);
    let credential_id = uuid::Uuid::new_v4().as_bytes().to_vec();
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let nhost_id: String = sqlx::query_scalar(
        "INSERT INTO auth.user_security_keys (user_id, credential_id, credential_public_key, nickname)
         VALUES ($1::uuid, $2, $3, 'YubiKey (nhost)') RETURNING id::text",
    )
    .bind(user)
    .bind(B64.encode(&credential_id))
    .bind(&cose)
    .fetch_one(&mut db)
    .await
    .unwrap();

    let port = free_port();
    let own = format!("http://localhost:{port}");
    let yaml = hs256_config(&format!(
        r#"  elevation:
    mode: required
    routes:
      - {{methods: [POST], path: /v1/user/password}}
    webauthn: {{rpId: localhost, rpName: authgate test, origins: ["{own}"]}}
    store: {{url: "{url}", nhostSecurityKeys: true}}
"#
    ));
    let config = authgate::config::parse(&yaml, &|_: &str| None).unwrap();
    let shared = authgate::server::Shared::new(config, None).await.unwrap();
    let grpc: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let running = authgate::server::start(shared, grpc, http).await.unwrap();

    let driver = Driver::start().await;
    driver.open(&format!("{own}/healthz")).await;
    // nhost's step-up verifies the user (a PIN): so does authgate's with
    // nhost's keys.
    let authenticator = driver.add_authenticator(true).await;
    driver
        .add_credential(
            &authenticator,
            json!({
                "credentialId": B64.encode(&credential_id),
                "isResidentCredential": false,
                "rpId": "localhost",
                "privateKey": B64.encode(pkcs8.as_ref()),
                "signCount": 0,
            }),
        )
        .await;

    let token = token(user);
    let result = driver
        .run(
            r#"const {createElevationClient} = await import('/elevation/client.js');
            const c = window.client = createElevationClient({getAccessToken: () => token});
            const attempt = async (f) => { try { return {ok: await f()}; } catch (e) { return {code: e.code, message: e.message}; } };
            const keys = await c.listSecurityKeys();
            const unelevated = await attempt(() => c.addSecurityKey({nickname: 'second', elevate: false}));
            const stepUp = await attempt(() => c.elevate());
            const again = await attempt(() => c.addSecurityKey({nickname: 'again'}));
            const removal = await attempt(() => c.deleteSecurityKey(keys[0].id));
            return {keys, unelevated, stepUp, again, removal, grant: c.grant && c.grant.token};"#,
            &token,
            None,
        )
        .await;
    assert_eq!(
        result["keys"][0]["id"],
        format!("nhost:{nhost_id}"),
        "{result}"
    );
    assert_eq!(result["keys"][0]["nickname"], "YubiKey (nhost)", "{result}");
    // The nhost key counts: a second key needs the step-up.
    assert_eq!(
        result["unelevated"]["code"], "elevation_required",
        "{result}"
    );
    assert!(result["stepUp"]["ok"].is_object(), "{result}");
    // Registering the same key again: the browser is told to exclude it.
    assert_eq!(result["again"]["code"], "credential_exists", "{result}");
    // nhost's keys are removed in nhost, not through authgate.
    assert_eq!(result["removal"]["code"], "not_found", "{result}");

    let grant = result["grant"].as_str().expect("a grant");
    let o = password_change(&running, &token, Some(grant)).await;
    assert_eq!(o.http_status, 200, "{o:?}");
    assert_eq!(o.headers["x-hasura-auth-elevated"], user);
    let counter: i64 =
        sqlx::query_scalar("SELECT counter FROM auth.user_security_keys WHERE id = $1::uuid")
            .bind(&nhost_id)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(counter >= 1, "the step-up's counter is recorded: {counter}");
    let exported = driver.credentials(&authenticator).await;
    assert_eq!(exported.len(), 1);

    // With the grant the nhost key gave, a new key is registered (in
    // authgate's table, beside nhost's key) and deleted.
    driver.remove_authenticator(&authenticator).await;
    let second = driver.add_authenticator(true).await;
    let result = driver
        .run(
            r#"const c = window.client;
            const added = await c.addSecurityKey({nickname: 'second', elevate: false});
            const listed = (await c.listSecurityKeys()).map(k => k.id);
            await c.deleteSecurityKey(added.id, {elevate: false});
            const after = (await c.listSecurityKeys()).map(k => k.id);
            return {added, listed, after};"#,
            &token,
            None,
        )
        .await;
    let added = result["added"]["id"].as_str().expect("a new key");
    assert_eq!(
        result["listed"],
        json!([format!("nhost:{nhost_id}"), added]),
        "{result}"
    );
    assert_eq!(
        result["after"],
        json!([format!("nhost:{nhost_id}")]),
        "{result}"
    );
    assert_eq!(driver.credentials(&second).await.len(), 1);
    driver.remove_authenticator(&second).await;

    // The same key without its PIN, then as a synced passkey: refused, each
    // with its cause.
    const STEP_UP: &str = r#"const {createElevationClient} = await import('/elevation/client.js');
        const c = createElevationClient({getAccessToken: () => token});
        try { await c.elevate(); return {ok: true}; } catch (e) { return {code: e.code, message: e.message}; }"#;
    let without_pin = driver.add_authenticator(false).await;
    driver
        .add_credential(&without_pin, exported[0].clone())
        .await;
    let refused = driver.run(STEP_UP, &token, None).await;
    assert_eq!(refused["code"], "user_not_verified", "{refused}");
    driver.remove_authenticator(&without_pin).await;
    let synced = driver.add_authenticator(true).await;
    let mut passkey = exported[0].clone();
    passkey["backupEligibility"] = json!(true);
    passkey["backupState"] = json!(true);
    driver.add_credential(&synced, passkey).await;
    let refused = driver.run(STEP_UP, &token, None).await;
    assert_eq!(refused["code"], "synced_passkey", "{refused}");
    running.shutdown().await;
}
