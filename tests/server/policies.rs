//! Per-route policies: each selector (Envoy `context_extensions`,
//! forward-auth `?policy=`, `policyRoutes`) and each requirement (modes,
//! roles, claims, scopes, elevation), allowed and denied, through gRPC and
//! `/check`; requirements adding up; cached tokens deciding as new ones.

use crate::common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

fn config() -> String {
    hs256_config(
        r#"    - id: svc
      mode: apiKey
      tokenLocation: {in: header, name: X-Api-Key}
      value: {value: service-key-0123456789}
      sessionVariables: {x-hasura-role: {value: service}}
  policies:
    admin: {roles: [admin]}
    orders-read: {scopes: ["orders:read"]}
    acme-pro:
      claims:
        '"claims.jwt.hasura.io"."x-hasura-org-id"': acme
        plan: [pro, enterprise]
    users-only: {modes: [users]}
    step-up: {elevation: required}
  policyRoutes:
    - {pathPrefix: /admin/, policy: admin}
    - {host: orders.example.com, pathPrefix: /, policy: orders-read}
    - {methods: [DELETE], path: /v1/graphql, policy: acme-pro}"#,
    )
}

fn token(roles: &[&str], default: &str, extra: Value) -> String {
    let mut claims = hasura_claims("u1", roles, default);
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    mint(Algorithm::HS256, SECRET, claims, None)
}

/// A Check for `path` with `headers`, and `policy` in `context_extensions`.
async fn grpc(
    server: &TestServer,
    path: &str,
    headers: &[(&str, &str)],
    policy: Option<&str>,
) -> Outcome {
    let mut req = check_request(headers, path);
    if let Some(p) = policy {
        req.attributes
            .as_mut()
            .unwrap()
            .context_extensions
            .insert("policy".into(), p.into());
    }
    outcome(&server.check_request(req).await)
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn context_extensions_select_a_policy_and_each_requirement_holds() {
    let server = TestServer::start(&config()).await;
    let user = token(&["user", "admin"], "user", json!({}));
    let user_auth = bearer(&user);
    let auth = [("authorization", user_auth.as_str())];

    // roles: after role resolution.
    let o = grpc(&server, "/v1/graphql", &auth, Some("admin")).await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (403, "policy_denied"),
        "{o:?}"
    );
    assert!(!o.headers.contains_key("www-authenticate"));
    let o = grpc(
        &server,
        "/v1/graphql",
        &[("authorization", &user_auth), ("x-hasura-role", "admin")],
        Some("admin"),
    )
    .await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.headers["x-hasura-role"], "admin");

    // scopes: `scope` (space-separated) or `scp`.
    let o = grpc(&server, "/v1/graphql", &auth, Some("orders-read")).await;
    assert_eq!(
        (o.http_status, o.reason().as_str()),
        (403, "insufficient_scope")
    );
    assert_eq!(
        o.headers["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    for scoped in [
        token(&["user"], "user", json!({"scope": "profile orders:read"})),
        token(&["user"], "user", json!({"scp": ["orders:read"]})),
    ] {
        let o = grpc(
            &server,
            "/v1/graphql",
            &[("authorization", &bearer(&scoped))],
            Some("orders-read"),
        )
        .await;
        assert_eq!(o.code, 0, "{o:?}");
    }

    // claims: a value, or any of a list.
    let acme = |org: &str, plan: &str| {
        let mut c = hasura_claims("u1", &["user"], "user");
        c["claims.jwt.hasura.io"]["x-hasura-org-id"] = json!(org);
        c["plan"] = json!(plan);
        mint(Algorithm::HS256, SECRET, c, None)
    };
    for (org, plan, allowed) in [
        ("acme", "pro", true),
        ("acme", "enterprise", true),
        ("acme", "free", false),
        ("other", "pro", false),
    ] {
        let o = grpc(
            &server,
            "/v1/graphql",
            &[("authorization", &bearer(&acme(org, plan)))],
            Some("acme-pro"),
        )
        .await;
        assert_eq!(o.code == 0, allowed, "{org} {plan}: {o:?}");
        if !allowed {
            assert_eq!(o.reason(), "policy_denied");
        }
    }

    // modes: the API key is refused by a users-only policy.
    let key = [("x-api-key", "service-key-0123456789")];
    assert_eq!(grpc(&server, "/v1/graphql", &key, None).await.code, 0);
    let o = grpc(&server, "/v1/graphql", &key, Some("users-only")).await;
    assert_eq!(o.reason(), "policy_denied");
    assert_eq!(
        grpc(&server, "/v1/graphql", &auth, Some("users-only"))
            .await
            .code,
        0
    );

    // elevation: required by the policy.
    let o = grpc(&server, "/v1/graphql", &auth, Some("step-up")).await;
    assert_eq!(o.reason(), "elevation_required");

    // An unknown policy is a denial, not a pass.
    let o = grpc(&server, "/v1/graphql", &auth, Some("no-such-policy")).await;
    assert_eq!((o.http_status, o.reason().as_str()), (403, "policy_denied"));

    let m = server.metrics().await;
    for line in [
        r#"authgate_policy_decisions_total{decision="deny",policy="admin"} 1"#,
        r#"authgate_policy_decisions_total{decision="allow",policy="admin"} 1"#,
        r#"authgate_policy_decisions_total{decision="deny",policy="orders-read"} 1"#,
        r#"authgate_check_requests_total{decision="deny",frontend="grpc",mode="jwt",reason="insufficient_scope"} 1"#,
    ] {
        assert!(m.contains(line), "{line}\n{m}");
    }
}

/// `policyRoutes` always apply, on the same canonical path as elevation
/// routes; a selected policy adds to them, never replaces them.
#[tokio::test]
async fn routes_apply_and_requirements_add_up() {
    let server = TestServer::start(&config()).await;
    let admin = bearer(&token(&["admin"], "admin", json!({})));
    let user = bearer(&token(&["user"], "user", json!({})));
    for (path, reason) in [
        ("/admin/users", "policy_denied"),
        ("/ADMIN/users", "policy_denied"),
        ("/admin//users", "policy_denied"),
        ("/%61dmin/users", "policy_denied"),
        // A path with no single reading is refused outright.
        ("/x/../admin/users", "invalid_request"),
    ] {
        let o = grpc(&server, path, &[("authorization", &user)], None).await;
        assert_eq!(o.reason(), reason, "{path}: {o:?}");
    }
    assert_eq!(
        grpc(&server, "/admin/users", &[("authorization", &admin)], None)
            .await
            .code,
        0
    );
    assert_eq!(
        grpc(&server, "/v1/graphql", &[("authorization", &user)], None)
            .await
            .code,
        0
    );

    // Host: Envoy's `host` (the :authority), the Host header or
    // X-Forwarded-Host; any port.
    let mut req = check_request(&[("authorization", &user)], "/v1/graphql");
    req.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .host = "orders.example.com".into();
    assert_eq!(
        outcome(&server.check_request(req).await).reason(),
        "insufficient_scope"
    );
    for host in [
        "Orders.Example.com:8443",
        "orders.example.com.",
        "orders.example.com.:443",
    ] {
        let o = grpc(
            &server,
            "/v1/graphql",
            &[("authorization", &user), ("host", host)],
            None,
        )
        .await;
        assert_eq!(o.reason(), "insufficient_scope", "{host}");
    }
    // Adding a header can only add policies.
    let o = grpc(
        &server,
        "/v1/graphql",
        &[
            ("authorization", &user),
            ("host", "orders.example.com"),
            ("x-forwarded-host", "elsewhere"),
        ],
        None,
    )
    .await;
    assert_eq!(o.reason(), "insufficient_scope");

    // Methods: DELETE only (and what a request may pass as one).
    let mut req = check_request(&[("authorization", &admin)], "/v1/graphql");
    req.attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap()
        .method = "DELETE".into();
    assert_eq!(
        outcome(&server.check_request(req).await).reason(),
        "policy_denied"
    );
    let o = grpc(
        &server,
        "/v1/graphql",
        &[
            ("authorization", &admin),
            ("x-http-method-override", "DELETE"),
        ],
        None,
    )
    .await;
    assert_eq!(o.reason(), "policy_denied");

    // The route's policy and the selected one both apply.
    let scoped_admin = bearer(&token(&["admin"], "admin", json!({"scope": "orders:read"})));
    assert_eq!(
        grpc(
            &server,
            "/admin/x",
            &[("authorization", &scoped_admin)],
            Some("orders-read")
        )
        .await
        .code,
        0
    );
    assert_eq!(
        grpc(
            &server,
            "/admin/x",
            &[("authorization", &admin)],
            Some("orders-read")
        )
        .await
        .reason(),
        "insufficient_scope"
    );
    assert_eq!(
        grpc(
            &server,
            "/admin/x",
            &[("authorization", &user)],
            Some("orders-read")
        )
        .await
        .reason(),
        "policy_denied",
        "both fail: the first policy in the file names the reason"
    );
    let scoped_user = bearer(&token(&["user"], "user", json!({"scope": "orders:read"})));
    assert_eq!(
        grpc(
            &server,
            "/admin/x",
            &[("authorization", &scoped_user)],
            Some("orders-read")
        )
        .await
        .reason(),
        "policy_denied"
    );
}

/// A cached token (and the gRPC door's encoded allow for its repeats)
/// decides policies as a new one does: each repeat is checked.
#[tokio::test]
async fn cached_tokens_are_checked_on_every_repeat() {
    let server = TestServer::start(&config()).await;
    let user = bearer(&token(&["user", "admin"], "user", json!({})));
    let admin = bearer(&token(&["admin"], "admin", json!({})));
    for _ in 0..4 {
        assert_eq!(
            grpc(&server, "/v1/graphql", &[("authorization", &user)], None)
                .await
                .code,
            0
        );
        assert_eq!(
            grpc(&server, "/admin/x", &[("authorization", &user)], None)
                .await
                .reason(),
            "policy_denied"
        );
        assert_eq!(
            grpc(&server, "/admin/x", &[("authorization", &admin)], None)
                .await
                .code,
            0
        );
        assert_eq!(
            grpc(
                &server,
                "/v1/graphql",
                &[("authorization", &user)],
                Some("admin")
            )
            .await
            .reason(),
            "policy_denied"
        );
        assert_eq!(
            grpc(
                &server,
                "/v1/graphql",
                &[("authorization", &user), ("x-hasura-role", "admin")],
                Some("admin")
            )
            .await
            .code,
            0
        );
    }
    let m = server.metrics().await;
    assert!(
        m.contains(r#"authgate_token_cache_lookups_total{result="hit"}"#),
        "{m}"
    );
}

/// Forward auth: `?policy=` on the exact `/check` URL selects (the
/// operator's `auth_request /check?policy=admin;`); after `/check/` the
/// query is the client's and selects nothing.
#[tokio::test]
async fn forward_auth_selects_with_the_check_query_only() {
    let server = TestServer::start(&config()).await;
    let user = bearer(&token(&["user"], "user", json!({})));
    let client = reqwest::Client::new();
    let nginx = |url: String| {
        client
            .get(url)
            .header("authorization", &user)
            .header("x-original-uri", "/v1/graphql")
            .header("x-original-method", "GET")
    };
    let resp = nginx(server.http_url("/check")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = nginx(server.http_url("/check?policy=admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-authgate-reason"], "policy_denied");
    let resp = nginx(server.http_url("/check?policy=orders-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"insufficient_scope\""
    );
    let resp = nginx(server.http_url("/check?policy=admin&policy=orders-read"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "a repeated selector is refused");
    // The original request's own query selects nothing.
    let resp = client
        .get(server.http_url("/check"))
        .header("authorization", &user)
        .header("x-original-uri", "/v1/graphql?policy=admin")
        .header("x-original-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Envoy's HTTP ext_authz: /check<path>; the query is the client's.
    let resp = client
        .get(server.http_url("/check/v1/graphql?policy=admin"))
        .header("authorization", &user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // And routes apply on /check as everywhere.
    let resp = client
        .get(server.http_url("/check/admin/x"))
        .header("authorization", &user)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[test]
fn policy_config_errors_have_paths() {
    let env = |_: &str| None;
    let e = authgate::config::parse(
        &hs256_config(
            r#"  policies:
    a: {modes: [nobody], scopes: ["two words"], elevation: maybe, claims: {"x": []}}
    "b c": {}
    d: {role: [x]}
    e: {modes: [], roles: []}
  policyRoutes:
    - {path: /x, policy: missing}
    - {policy: a}
    - {pathPrefix: /y}
    - {host: "*.example.com", path: /z, policy: e}
    - {host: "a.example/x", path: /z, policy: e}"#,
        ),
        &env,
    )
    .unwrap_err()
    .to_string();
    for want in [
        "definition.policies.a.modes: no mode has the id `nobody`",
        "definition.policies.a.scopes: a scope is one word",
        "definition.policies.a.elevation: expected required or optional",
        "definition.policies.a.claims.x: an empty list matches nothing",
        r#"definition.policies["b c"]: a policy name is letters"#,
        "definition.policies.d.role: unknown key `role` (did you mean `roles`?)",
        "definition.policyRoutes[0].policy: no policy is named `missing`",
        "definition.policyRoutes[1]: set `path` or `pathPrefix`",
        "definition.policyRoutes[2]: missing required key `policy`",
        "definition.policies.e.modes: an empty list would allow no mode",
        "definition.policies.e.roles: an empty list would allow no role",
        "definition.policyRoutes[3].host: expected a host name or address",
        "definition.policyRoutes[4].host: expected a host name or address",
    ] {
        assert!(e.contains(want), "{want}\n{e}");
    }
}
