//! The Secret Notes demo (`examples/secret-notes/`) as a user runs it: its
//! page in Debian's Chromium (ChromeDriver, DevTools virtual authenticators),
//! a real Envoy with the demo's `envoy.yaml`, authgate with the demo's
//! `auth.yaml`, and the demo's Python upstream. The page drives authgate's
//! browser client (`/elevation/client.js`, served by authgate through Envoy);
//! the test calls the page's own functions (`window.secretNotes`) and reads
//! what a user would see: results, or the client's error codes and messages.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::browser::Driver;
use crate::common::envoy::{Bootstrap, Envoy};
use crate::common::{free_port, repo_root};

/// The notes upstream (`notes.py`), stopped on drop.
struct Notes(Child);

impl Drop for Notes {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo: authgate, the upstream and Envoy, with the page at
/// `http://localhost:<port>`.
struct Demo {
    port: u16,
    running: authgate::server::Running,
    _notes: Notes,
    _envoy: (Envoy, String, tempfile::TempDir),
    _dir: tempfile::TempDir,
}

impl Demo {
    /// `origins` replaces the allowed origins (`None`: the page's own);
    /// `challenge_ttl` is `elevation.challengeTtl`.
    async fn start(origins: Option<&str>, challenge_ttl: u64) -> Self {
        let demo = repo_root().join("examples/secret-notes");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let origin = format!("http://localhost:{port}");
        let auth = std::fs::read_to_string(demo.join("auth.yaml"))
            .unwrap()
            .replace(
                "origins: [\"http://localhost:8000\"]",
                &format!("origins: [\"{}\"]", origins.unwrap_or(&origin)),
            )
            .replace(
                "sqlite://secret-notes.db",
                &format!("sqlite://{}", dir.path().join("notes.db").display()),
            )
            .replace(
                "    grant:\n",
                &format!("    challengeTtl: {challenge_ttl}\n    grant:\n"),
            );
        let config = authgate::config::parse(&auth, &|_: &str| None).unwrap();
        let shared = authgate::server::Shared::new(config, None).await.unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let running = authgate::server::start(shared, any, any).await.unwrap();

        let mut child = Command::new("python3")
            .arg(demo.join("notes.py"))
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs the notes upstream");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let notes_port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the upstream did not say its port: {line:?}"));
        let notes = Notes(child);

        let admin = free_port();
        let yaml = std::fs::read_to_string(demo.join("envoy.yaml")).unwrap();
        let replaced = [
            ("port_value: 9901", admin),
            ("port_value: 8000", port),
            ("port_value: 50051", running.grpc_addr.port()),
            ("port_value: 8081", running.http_addr.port()),
            ("port_value: 8090", notes_port),
        ]
        .iter()
        .fold(yaml, |y, (from, to)| {
            assert!(y.contains(from), "envoy.yaml has no {from}");
            y.replace(from, &format!("port_value: {to}"))
        });
        let envoy = Bootstrap {
            yaml: replaced,
            listen: port,
            admin,
            env: Vec::new(),
            stdout: None,
        }
        .run()
        .await;
        Demo {
            port,
            running,
            _notes: notes,
            _envoy: envoy,
            _dir: dir,
        }
    }

    /// Opens the page at `host` and waits for its script.
    async fn open(&self, driver: &Driver, host: &str) {
        driver.open(&format!("http://{host}:{}/", self.port)).await;
        let ready = driver
            .script(
                "for (let i = 0; i < 100; i++) { if (window.secretNotes) return true; \
                 await new Promise(r => setTimeout(r, 50)); } return false;",
            )
            .await;
        assert_eq!(ready, true, "the page's script did not load");
    }
}

/// `expr` (a promise, in terms of `app` = `window.secretNotes`) in the page.
async fn page(driver: &Driver, expr: &str) -> Value {
    driver
        .script(&format!(
            "const app = window.secretNotes; return await ({expr});"
        ))
        .await
}

/// The client's error code of a result, or a panic saying it succeeded.
fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an ElevationError, got {v}"))
}

fn ok(v: Value) -> Value {
    assert!(v.get("error").is_none_or(|e| e.is_null()), "failed: {v}");
    v
}

/// A write straight to the API, without the client: what it answers.
const RAW_WRITE: &str = "(async (token, grant) => { \
    const headers = {'authorization': 'Bearer ' + token, 'content-type': 'application/json'}; \
    if (grant) headers['x-elevation-token'] = grant; \
    const r = await fetch('/api/notes', {method: 'POST', headers, body: JSON.stringify({text: 'raw'})}); \
    return {status: r.status, challenge: r.headers.get('www-authenticate')}; })";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_notes_steps_up_in_chromium_through_envoy() {
    let demo = Demo::start(None, 8).await;
    let driver = Driver::start().await;
    demo.open(&driver, "localhost").await;
    let a = driver.add_authenticator(true).await;

    ok(page(&driver, "app.signIn('alice')").await);
    assert_eq!(
        ok(page(&driver, "app.readNotes()").await),
        Value::Array(vec![])
    );

    // A write asks for a step-up; alice has no key yet.
    let v = page(&driver, "app.addNote('too early')").await;
    assert_eq!(code(&v), "no_security_key", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("add one first"),
        "{v}"
    );

    // The first key needs no step-up (mode required).
    let first = ok(page(&driver, "app.addKey('first key')").await);
    assert_eq!(first["nickname"], "first key");
    let first_id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(driver.credentials(&a).await.len(), 1);

    // A protected write without elevation is refused: by Envoy (authgate's
    // denial, RFC 9470's challenge) and, with `elevate: false`, by the client.
    let raw = page(&driver, &format!("{RAW_WRITE}(app.accessToken)")).await;
    assert_eq!(raw["status"], 401, "{raw}");
    assert!(
        raw["challenge"]
            .as_str()
            .unwrap()
            .contains("insufficient_user_authentication"),
        "{raw}"
    );
    let v = page(&driver, "app.addNote('no step-up', {elevate: false})").await;
    assert_eq!(code(&v), "elevation_required", "{v}");
    assert_eq!(page(&driver, "app.elevations").await, 0);

    // The client steps up by itself and resends the write; the next write
    // reuses the grant.
    ok(page(&driver, "app.addNote('secret 1')").await);
    assert_eq!(page(&driver, "app.elevations").await, 1);
    ok(page(&driver, "app.addNote('secret 2')").await);
    assert_eq!(page(&driver, "app.elevations").await, 1);
    let notes = ok(page(&driver, "app.readNotes()").await);
    assert_eq!(notes.as_array().unwrap().len(), 2, "{notes}");

    // A renewed access token ends the grant: sent with the new token, the
    // old grant is refused; the client says so, then steps up again.
    let grant = page(&driver, "Promise.resolve(app.client.grant.token)").await;
    ok(page(&driver, "app.renew()").await);
    let raw = page(&driver, &format!("{RAW_WRITE}(app.accessToken, {grant})")).await;
    assert_eq!(
        raw["status"], 401,
        "the old grant with the new token: {raw}"
    );
    let v = page(&driver, "app.addNote('secret 3', {elevate: false})").await;
    assert_eq!(code(&v), "grant_expired", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("renewed"),
        "{v}"
    );
    ok(page(&driver, "app.addNote('secret 3')").await);
    assert_eq!(page(&driver, "app.elevations").await, 2);

    // The grant in a cookie instead (`grantIn: 'cookie'`): the browser sends
    // it with a write the app makes without the client; gone once cleared.
    let by_cookie = page(
        &driver,
        "(async () => { \
           const {createElevationClient} = await import('/elevation/client.js'); \
           const c = createElevationClient({getAccessToken: () => app.accessToken, grantIn: 'cookie'}); \
           await c.elevate(); \
           const set = document.cookie.includes('X-Elevation-Token='); \
           const write = () => fetch('/api/notes', {method: 'POST', body: JSON.stringify({text: 'by cookie'}), \
             headers: {'authorization': 'Bearer ' + app.accessToken, 'content-type': 'application/json'}}); \
           const sent = (await write()).status; \
           c.clearGrant(); \
           const cleared = !document.cookie.includes('X-Elevation-Token='); \
           return {set, sent, cleared, after: (await write()).status}; })()",
    )
    .await;
    assert_eq!(
        by_cookie,
        serde_json::json!({"set": true, "sent": 201, "cleared": true, "after": 401}),
        "{by_cookie}"
    );
    let id = page(
        &driver,
        "app.readNotes().then(n => n.find(x => x.text === 'by cookie').id)",
    )
    .await;
    ok(page(&driver, &format!("app.deleteNote({id})")).await);

    // Deleting a note needs elevation too: the grant held covers it.
    let id = page(&driver, "app.readNotes().then(n => n[0].id)").await;
    ok(page(&driver, &format!("app.deleteNote({id})")).await);
    assert_eq!(
        page(&driver, "app.readNotes().then(n => n.length)").await,
        2
    );

    // A second key needs a step-up first.
    ok(page(&driver, "Promise.resolve(app.client.clearGrant())").await);
    let v = page(&driver, "app.addKey('second', {elevate: false})").await;
    assert_eq!(code(&v), "elevation_required", "{v}");
    // Two step-ups at once share one prompt.
    let before = page(&driver, "app.elevations").await.as_u64().unwrap();
    ok(page(&driver, "Promise.all([app.stepUp(), app.stepUp()])").await);
    assert_eq!(page(&driver, "app.elevations").await, before + 1);
    // The same key again: the browser refuses (excludeCredentials).
    let v = page(&driver, "app.addKey('first key again')").await;
    assert_eq!(code(&v), "credential_exists", "{v}");

    // From here on without the browser's JSON helpers: the client's own
    // base64url conversions.
    ok(page(
        &driver,
        "Promise.resolve((() => { delete PublicKeyCredential.parseCreationOptionsFromJSON; \
         delete PublicKeyCredential.parseRequestOptionsFromJSON; \
         delete PublicKeyCredential.prototype.toJSON; \
         return typeof PublicKeyCredential.parseRequestOptionsFromJSON; })())",
    )
    .await);
    driver.remove_authenticator(&a).await;
    let b = driver.add_authenticator(true).await;
    let second = ok(page(&driver, "app.addKey('second')").await);
    assert_eq!(second["nickname"], "second");
    assert_eq!(driver.credentials(&b).await.len(), 1);
    let keys = ok(page(&driver, "app.listKeys()").await);
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys}");

    // Deleting a key needs a step-up: refused without, done with one (the
    // second key, through the client's own conversions).
    ok(page(&driver, "Promise.resolve(app.client.clearGrant())").await);
    let v = page(
        &driver,
        &format!("app.deleteKey('{first_id}', {{elevate: false}})"),
    )
    .await;
    assert_eq!(code(&v), "elevation_required", "{v}");
    let before = page(&driver, "app.elevations").await.as_u64().unwrap();
    ok(page(&driver, &format!("app.deleteKey('{first_id}')")).await);
    assert_eq!(page(&driver, "app.elevations").await, before + 1);
    let keys = ok(page(&driver, "app.listKeys()").await);
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!(keys[0]["nickname"], "second");

    // The key was registered verifying its user. When the key fails to
    // verify the user, Chromium refuses the step-up itself.
    driver.set_user_verified(&b, false).await;
    ok(page(&driver, "Promise.resolve(app.client.clearGrant())").await);
    let v = page(&driver, "app.stepUp()").await;
    assert_eq!(code(&v), "cancelled", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("PIN"),
        "{v}"
    );
    driver.set_user_verified(&b, true).await;
    // The same credential on a key that cannot verify its user at all (no
    // PIN): the browser sends the assertion, authgate refuses it.
    let exported = driver.credentials(&b).await;
    let d = driver.add_authenticator(false).await;
    driver.add_credential(&d, exported[0].clone()).await;
    driver.remove_authenticator(&b).await;
    let v = page(&driver, "app.stepUp()").await;
    assert_eq!(code(&v), "user_not_verified", "{v}");
    assert_eq!(v["error"]["status"], 401, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("every time"),
        "{v}"
    );
    driver.remove_authenticator(&d).await;
    let b = driver.add_authenticator(true).await;
    driver.add_credential(&b, exported[0].clone()).await;

    // A step-up slower than the challenge's life (8 s here).
    let v = page(
        &driver,
        "(async () => { const get = navigator.credentials.get.bind(navigator.credentials); \
         navigator.credentials.get = async (o) => { await new Promise(r => setTimeout(r, 9000)); return get(o); }; \
         try { return await app.stepUp(); } finally { navigator.credentials.get = get; } })()",
    )
    .await;
    assert_eq!(code(&v), "challenge_expired", "{v}");

    // A prompt the user dismisses (an authenticator that never consents).
    driver.remove_authenticator(&b).await;
    let c: Value = driver
        .command(
            "POST",
            "/webauthn/authenticator",
            serde_json::json!({"protocol": "ctap2", "transport": "usb", "hasResidentKey": false,
                "hasUserVerification": false, "isUserConsenting": false}),
        )
        .await;
    assert!(c.is_string(), "{c}");
    let v = page(&driver, "app.stepUp()").await;
    assert_eq!(code(&v), "cancelled", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Try again"),
        "{v}"
    );
    demo.running.shutdown().await;
}

/// An origin authgate does not list, and a domain outside the RP ID: both
/// refused, each with what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_notes_names_a_wrong_origin_and_a_wrong_rp_id() {
    let demo = Demo::start(Some("http://localhost:1"), 300).await;
    let driver = Driver::start().await;
    driver.add_authenticator(true).await;

    demo.open(&driver, "localhost").await;
    ok(page(&driver, "app.signIn('dora')").await);
    let v = page(&driver, "app.addKey('k')").await;
    assert_eq!(code(&v), "origin_mismatch", "{v}");
    assert_eq!(v["error"]["status"], 401, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("http://localhost:{}", demo.port))
            && message.contains("webauthn.origins"),
        "{v}"
    );

    // 127.0.0.1 is not localhost: the browser refuses before any key is asked.
    demo.open(&driver, "127.0.0.1").await;
    ok(page(&driver, "app.signIn('dora')").await);
    let v = page(&driver, "app.addKey('k')").await;
    assert_eq!(code(&v), "rp_id_mismatch", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"localhost\""),
        "{v}"
    );
    demo.running.shutdown().await;
}
