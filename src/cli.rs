//! The `authgate` command line (README.md, "Commands"). Results go to stdout; logs,
//! warnings and errors to stderr.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value, json};

use crate::config::{self, Config};
use crate::decision::Decision;
use crate::jwks::JwksRegistry;
use crate::keys;
use crate::metrics::Metrics;
use crate::pipeline::{Engine, KeyFetch, Parts};
use crate::request::{Headers, Request};
use crate::server::{self, Shared};

#[derive(Parser, Debug)]
#[command(
    name = "authgate",
    version,
    about = "External authorization for Envoy, Istio, nginx and Traefik in front of Hasura"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server (gRPC ext_authz and HTTP).
    Serve(ServeArgs),
    /// Load and validate a config; print every problem, or a summary.
    Validate(ValidateArgs),
    /// Run one authorization decision offline and print it as JSON.
    Check(CheckArgs),
    /// Mint a signed JWT (for development and tests).
    Token(TokenArgs),
    /// Write a Hasura auth config as an auth.yaml on stdout; what behaves
    /// differently goes to stderr.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Subcommand, Debug)]
pub enum ImportCommand {
    /// Hasura v2's environment: HASURA_GRAPHQL_JWT_SECRET(S),
    /// _UNAUTHORIZED_ROLE, _AUTH_HOOK and _AUTH_HOOK_MODE.
    #[command(name = "hasura-v2")]
    HasuraV2(HasuraV2Args),
    /// A Hasura DDN `kind: AuthConfig` file (v1 to v4).
    Ddn(DdnArgs),
}

#[derive(Args, Debug)]
pub struct HasuraV2Args {
    /// The JSON of HASURA_GRAPHQL_JWT_SECRET; `@path` reads a file.
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// The JSON list of HASURA_GRAPHQL_JWT_SECRETS; `@path` reads a file.
    #[arg(long)]
    pub jwt_secrets: Option<String>,
    /// HASURA_GRAPHQL_UNAUTHORIZED_ROLE.
    #[arg(long)]
    pub unauthorized_role: Option<String>,
    /// HASURA_GRAPHQL_AUTH_HOOK.
    #[arg(long)]
    pub auth_hook: Option<String>,
    /// HASURA_GRAPHQL_AUTH_HOOK_MODE: GET (Hasura's default) or POST.
    #[arg(long)]
    pub auth_hook_mode: Option<String>,
}

#[derive(Args, Debug)]
pub struct DdnArgs {
    /// The AuthConfig file, YAML or JSON (a `.hml` file holding only it).
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// Config file (default: $AUTHGATE_CONFIG, $RELY_AUTH_CONFIG_PATH, ./auth.yaml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Treat warnings (short HMAC secret, `http://` JWKS URL, ...) as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// gRPC listen address [env: AUTHGATE_GRPC_ADDR] [default: 0.0.0.0:50051]
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// HTTP listen address [env: AUTHGATE_HTTP_ADDR, or PORT] [default: 0.0.0.0:8080]
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    #[arg(long, default_value = "GET")]
    pub method: String,
    #[arg(long, default_value = "/")]
    pub path: String,
    #[arg(long)]
    pub source_ip: Option<IpAddr>,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA.
    #[arg(long)]
    pub alg: String,
    /// An HMAC secret or a private-key PEM; `@path` reads a file.
    #[arg(long)]
    pub key: String,
    /// The claims, a JSON object.
    #[arg(long)]
    pub claims: String,
    #[arg(long)]
    pub kid: Option<String>,
    /// Lifetime in seconds when the claims set no `exp`.
    #[arg(long, default_value_t = 3600)]
    pub ttl: u64,
}

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Validate(a) => validate(a),
        Command::Token(a) => token(a),
        Command::Check(a) => block_on(check(a)),
        Command::Serve(a) => block_on(serve(a)),
        Command::Import(c) => import(c),
    }
}

/// `authgate import`: the config on stdout, the differences on stderr
/// (one `difference:` line each); exit 0, or 2 on unusable input.
fn import(command: ImportCommand) -> ExitCode {
    use config::import;
    let imported = match command {
        ImportCommand::HasuraV2(a) => {
            let read = |flag: &str, v: Option<String>| -> Result<Option<String>, String> {
                match v {
                    Some(v) => match v.strip_prefix('@') {
                        Some(path) => std::fs::read_to_string(path)
                            .map(Some)
                            .map_err(|e| format!("{flag}: cannot read {path}: {e}")),
                        None => Ok(Some(v)),
                    },
                    None => Ok(None),
                }
            };
            let input = (|| {
                Ok::<_, String>(import::HasuraV2 {
                    jwt_secret: read("--jwt-secret", a.jwt_secret)?,
                    jwt_secrets: read("--jwt-secrets", a.jwt_secrets)?,
                    unauthorized_role: a.unauthorized_role,
                    auth_hook: a.auth_hook,
                    auth_hook_mode: a.auth_hook_mode,
                })
            })();
            match input {
                Ok(input) => import::hasura_v2(&input),
                Err(e) => Err(import::Unusable(vec![e])),
            }
        }
        ImportCommand::Ddn(a) => match std::fs::read_to_string(&a.file) {
            Ok(text) => {
                let json = matches!(config::Format::of(&a.file), config::Format::Json);
                match import::read_document(&text, json) {
                    Ok(root) if import::is_ddn(&root) => import::ddn(&root),
                    Ok(_) => Err(import::Unusable(vec![format!(
                        "{}: not a DDN AuthConfig (expected `kind: AuthConfig` with `definition.mode`)",
                        a.file.display()
                    )])),
                    Err(e) => Err(import::Unusable(vec![format!("{}: {e}", a.file.display())])),
                }
            }
            Err(e) => Err(import::Unusable(vec![format!(
                "cannot read {}: {e}",
                a.file.display()
            )])),
        },
    };
    let imported = match imported {
        Ok(i) => i,
        Err(u) => {
            for line in u.0 {
                eprintln!("error: {line}");
            }
            return ExitCode::from(2);
        }
    };
    // The result must load as it would in `serve`: a key that is not
    // valid PEM, say, is found now, not at deploy time.
    if let Err(e) = config::parse(&imported.yaml, &|name: &str| std::env::var(name).ok()) {
        // Variables unset here may well be set where it runs.
        let unresolved_env = e
            .errors()
            .all(|p| p.message.contains("and no `value` fallback is given"));
        if !unresolved_env {
            eprintln!("error: the imported config does not load:\n{e}");
            return ExitCode::from(2);
        }
    }
    print!("{}", imported.yaml);
    for d in &imported.differences {
        eprintln!("difference: {d}");
    }
    ExitCode::SUCCESS
}

fn block_on(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match crate::server::runtime() {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config for `check`; problems and warnings go to stderr as
/// `validate` prints them.
fn load(arg: &ConfigArg) -> Result<(PathBuf, Config), ExitCode> {
    let path = config::resolve_path(arg.config.clone());
    let file = path.display().to_string();
    match config::load_file(&path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("{}", w.render(&file, false));
            }
            Ok((path, c))
        }
        Err(e) => {
            for p in &e.0 {
                eprintln!("{}", p.render(&file, false));
            }
            Err(ExitCode::FAILURE)
        }
    }
}

/// Prints every problem as `FILE:LINE:COLUMN: error: PATH: message` (in file
/// order), then a summary; exit 1 on errors, or on warnings with `--strict`.
fn validate(args: ValidateArgs) -> ExitCode {
    let path = config::resolve_path(args.config.config.clone());
    let file = path.display().to_string();
    let config = match config::load_file(&path) {
        Ok(c) => c,
        Err(e) => {
            for line in e.report(&file, args.strict) {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    for w in &config.warnings {
        eprintln!("{}", w.render(&file, args.strict));
    }
    if args.strict && !config.warnings.is_empty() {
        let n = config.warnings.len();
        eprintln!(
            "{file}: invalid under --strict: {n} warning{}",
            if n == 1 { "" } else { "s" }
        );
        return ExitCode::FAILURE;
    }
    println!("{file}: {}", config::summary(&config));
    ExitCode::SUCCESS
}

async fn check(args: CheckArgs) -> ExitCode {
    let (_, config) = match load(&args.config) {
        Ok(c) => c,
        Err(_) => return ExitCode::from(2),
    };
    let mut headers = Headers::new();
    for h in &args.headers {
        match h.split_once(':') {
            Some((k, v)) if !k.trim().is_empty() => headers.push(k.trim(), v.trim()),
            _ => {
                eprintln!("error: header `{h}` is not `name: value`");
                return ExitCode::from(2);
            }
        }
    }
    let registry = match JwksRegistry::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = Arc::new(Metrics::new());
    let elevation = match server::open_elevation(&config, None, &metrics).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let grant_kid = elevation.as_ref().map(|e| e.grants.kid().to_owned());
    let upstream =
        match crate::upstream::open_configured(config.upstream_token, None, grant_kid.as_deref()) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
    let engine = Engine::build(
        config.settings,
        config.modes,
        Parts {
            registry: &registry,
            metrics,
            fetch: KeyFetch::Background,
            elevation,
        },
    )
    .with_policies(config.policies)
    .with_upstream_token(upstream)
    .with_dynamic_metadata(config.dynamic_metadata);
    // Remote keys are fetched once before deciding.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !engine.is_ready() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = Request {
        headers,
        method: args.method,
        path: args.path,
        source_ip: args.source_ip,
        context: Default::default(),
        body: None,
    };
    let decision = engine.decide(&req).await;
    println!("{}", decision_json(&decision));
    if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `{"allowed","status","reason","headers","session"}`, as `authgate check` prints it.
pub fn decision_json(d: &Decision) -> Value {
    match d {
        Decision::Allow(a) => {
            let headers: Map<String, Value> = a
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            json!({
                "allowed": true,
                "status": 200,
                "reason": "allowed",
                "headers": headers,
                "headersToRemove": a.headers_to_remove,
                "session": a.session.to_json(),
                "mode": a.mode.kind,
                "modeId": &*a.mode.id,
                "upstreamToken": a.upstream_token.as_ref().map(|u| json!({
                    "header": &*u.name,
                    "value": &*u.value,
                })),
                "metadata": a.extra_metadata.iter().map(|f| (f.key.to_string(), Value::String(f.value.clone()))).collect::<Map<String, Value>>(),
            })
        }
        Decision::Deny(deny) => {
            let mut headers = Map::new();
            headers.insert("content-type".into(), json!("application/json"));
            if let Some(c) = deny.reason.www_authenticate() {
                headers.insert("www-authenticate".into(), json!(c));
            }
            json!({
                "allowed": false,
                "status": deny.reason.http_status(),
                "reason": deny.reason.as_str(),
                "headers": headers,
                "session": {},
                "mode": deny.mode.as_ref().map(|m| m.kind),
                "modeId": deny.mode.as_ref().map(|m| &*m.id),
            })
        }
    }
}

fn token(args: TokenArgs) -> ExitCode {
    match mint(&args) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Mints a token; `iat`/`exp` are added unless the claims set them.
pub fn mint(args: &TokenArgs) -> Result<String, String> {
    let alg: Algorithm = keys::parse_algorithm(&args.alg)?;
    let key_text = match args.key.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the key file {path}: {e}"))?,
        None => args.key.clone(),
    };
    let key = match alg.family() {
        AlgorithmFamily::Hmac => Ok(EncodingKey::from_secret(key_text.as_bytes())),
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(key_text.as_bytes()),
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(key_text.as_bytes()),
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(key_text.as_bytes()),
    }
    .map_err(|_| {
        "the key is not a private key PEM for this algorithm (EC and Ed25519 keys must be PKCS#8)"
            .to_string()
    })?;
    let mut claims: Map<String, Value> = match serde_json::from_str(&args.claims) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("--claims must be a JSON object".into()),
        Err(e) => return Err(format!("--claims is not valid JSON: {e}")),
    };
    let now = crate::clock::unix_now();
    claims.entry("iat").or_insert(json!(now));
    claims.entry("exp").or_insert(json!(
        now.saturating_add(i64::try_from(args.ttl).unwrap_or(i64::MAX / 2))
    ));
    let mut header = Header::new(alg);
    header.kid = args.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| format!("signing failed: {e}"))
}

fn listen_addrs(args: &ServeArgs) -> Result<(SocketAddr, SocketAddr), String> {
    let env_addr = |name: &str| -> Result<Option<SocketAddr>, String> {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}=`{v}` is not an address like 0.0.0.0:8080")),
            _ => Ok(None),
        }
    };
    let grpc = match args.grpc_addr {
        Some(a) => a,
        None => env_addr("AUTHGATE_GRPC_ADDR")?.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 50051))),
    };
    let http = match args.http_addr {
        Some(a) => a,
        None => match env_addr("AUTHGATE_HTTP_ADDR")? {
            Some(a) => a,
            None => {
                let port = match std::env::var("PORT") {
                    Ok(p) if !p.is_empty() => p
                        .parse::<u16>()
                        .map_err(|_| format!("PORT=`{p}` is not a port number"))?,
                    _ => 8080,
                };
                SocketAddr::from(([0, 0, 0, 0], port))
            }
        },
    };
    Ok((grpc, http))
}

async fn serve(args: ServeArgs) -> ExitCode {
    let (grpc_addr, http_addr) = match listen_addrs(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (path, config) = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    tracing::info!(config = %path.display(), "{}", config::summary(&config));
    let shared = match Shared::new(config, Some(path)).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let running = match server::start(shared.clone(), grpc_addr, http_addr).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        grpc_addr = %running.grpc_addr,
        http_addr = %running.http_addr,
        version = env!("CARGO_PKG_VERSION"),
        "listening"
    );
    let watcher = server::watch_config(shared.clone());
    signals.wait(&shared).await;
    if let Some(w) = watcher {
        w.abort();
    }
    tracing::info!("draining in-flight requests");
    if tokio::time::timeout(Duration::from_secs(25), running.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; exiting");
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// SIGTERM, SIGINT and SIGHUP, installed before the server announces itself
/// so that no signal can arrive while the default action would still apply.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Returns on SIGTERM or SIGINT; reloads the config on SIGHUP.
    async fn wait(&mut self, shared: &Shared) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    let _ = shared.reload().await;
                }
            }
        }
    }
}

/// Logs to stderr: JSON by default, `AUTHGATE_LOG_FORMAT=pretty` for a
/// terminal; level from `RUST_LOG`, else `LOG_LEVEL`, else `info`. Spans go
/// to an OpenTelemetry exporter when `OTEL_*` asks for one
/// ([`crate::telemetry`]) when `export` (serve, check) and `OTEL_*` ask for
/// one, never to the log.
pub fn init_logging(export: bool) -> Result<Option<crate::telemetry::Export>, String> {
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| std::env::var("LOG_LEVEL").ok().filter(|v| !v.is_empty()))
        .map(|v| v.to_ascii_lowercase())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Export-only spans never reach the log, whatever RUST_LOG says (span
    // name directives included); a static filter, so they cost nothing.
    let filter = filter.and(
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::TRACE)
            .with_target(
                authgate_core::trace::SPAN_TARGET,
                tracing_subscriber::filter::LevelFilter::OFF,
            ),
    );
    let pretty =
        std::env::var("AUTHGATE_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("pretty"));
    let log = if pretty {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let registry = tracing_subscriber::registry().with(log);
    let layer = if export {
        crate::telemetry::layer()?
    } else {
        None
    };
    match layer {
        Some((export_layer, export)) => {
            registry.with(export_layer).init();
            Ok(Some(export))
        }
        None => {
            registry.init();
            Ok(None)
        }
    }
}
