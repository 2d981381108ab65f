//! The `authgate` binary as a user runs it: started, signalled, waited for.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `authgate` binary of this build, without the environment that would
/// change what a test asks of it.
pub fn authgate() -> Command {
    // Set for the tests of the authgate package only (not the module's,
    // which never call this).
    let mut c = Command::new(option_env!("CARGO_BIN_EXE_authgate").unwrap_or("authgate"));
    c.env_remove("AUTHGATE_CONFIG")
        .env_remove("RELY_AUTH_CONFIG_PATH")
        .env_remove("AUTHGATE_GRPC_ADDR")
        .env_remove("AUTHGATE_HTTP_ADDR")
        .env_remove("PORT")
        .env_remove("RUST_LOG");
    c
}

/// stderr lines of a running `authgate`.
pub type Logs = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Starts `authgate serve` on free ports; returns the child and its addresses.
pub fn serve(config: &str, extra_env: &[(&str, &str)]) -> (std::process::Child, String, String) {
    let (child, grpc, http, _) = serve_with_logs(config, extra_env);
    (child, grpc, http)
}

/// Starts `authgate serve`; also returns its stderr lines as they arrive.
pub fn serve_with_logs(
    config: &str,
    extra_env: &[(&str, &str)],
) -> (std::process::Child, String, String, Logs) {
    let mut cmd = authgate();
    cmd.args([
        "serve",
        "--config",
        config,
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let (mut grpc, mut http) = (String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "listening"
        {
            grpc = v["grpc_addr"].as_str().unwrap().to_owned();
            http = v["http_addr"].as_str().unwrap().to_owned();
            break;
        }
    }
    assert!(!http.is_empty(), "server did not report its addresses");
    // Keep draining stderr so the child never blocks on a full pipe.
    let logs: Logs = Default::default();
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (child, grpc, http, logs)
}

pub fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

pub fn wait_exit(child: &mut std::process::Child) -> i32 {
    for _ in 0..200 {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("authgate did not exit");
}
