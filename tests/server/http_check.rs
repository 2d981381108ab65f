//! HTTP forward-auth (`/check`) and RelyAuth `securityRules` (IP lists with
//! X-Forwarded-For and trusted proxies, the Envoy source address, header rules).

use crate::common;

use common::*;
use jsonwebtoken::Algorithm;

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[tokio::test]
async fn check_endpoint_allows_and_denies_like_the_grpc_door() {
    let server = TestServer::start(&hs256_config("")).await;
    let client = reqwest::Client::new();
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u-1", &["user", "editor"], "user"),
        None,
    );
    for (method, path) in [
        ("GET", "/check"),
        ("POST", "/check/v1/graphql"),
        ("PUT", "/check/"),
        ("DELETE", "/check?x=1"),
    ] {
        let resp = client
            .request(method.parse().unwrap(), server.http_url(path))
            .header("authorization", bearer(&token))
            .header("x-hasura-role", "editor")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        assert_eq!(resp.headers()["x-hasura-role"], "editor");
        assert_eq!(resp.headers()["x-hasura-user-id"], "u-1");
    }
    let resp = client.get(server.http_url("/check")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"missing_credentials","message":"credentials required"}"#
    );
    let resp = client
        .get(server.http_url("/check"))
        .header("authorization", bearer(&token))
        .header("x-hasura-role", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().get("www-authenticate").is_none());
    let m = server.metrics().await;
    assert!(m.contains(r#"authgate_check_requests_total{decision="allow",frontend="http",mode="jwt",reason="none"} 4"#), "{m}");
}

/// The original URI and method come from nginx's or Traefik's headers, or
/// from the path after `/check`; checked through a path-restricted... header
/// rule on `x-original-uri` is not possible, so observe them via the decision
/// of a mode selected by `X-Rely-Auth-ID` in the query of the original URI.
#[tokio::test]
async fn original_uri_sources_feed_query_token_locations() {
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: jwt
      tokenLocation: {{in: query, name: token}}
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: h}}}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let client = reqwest::Client::new();
    let token = mint(
        Algorithm::HS256,
        SECRET,
        serde_json::json!({"h": {"x-hasura-role": "q"}}),
        None,
    );
    // nginx: X-Original-URI on a call to /check.
    let resp = client
        .get(server.http_url("/check"))
        .header("x-original-uri", format!("/v1/graphql?token={token}"))
        .header("x-original-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-hasura-role"], "q");
    // A path after /check that disagrees with X-Original-URI: which proxy
    // sent it is not configured, so the call is refused ...
    let resp = client
        .get(server.http_url("/check/other"))
        .header("x-original-uri", format!("/v1/graphql?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-authgate-reason"], "invalid_request");
    // ... unless it is: behind nginx, only X-Original-URI counts.
    let nginx = TestServer::start(&cfg.replace(
        "definition:\n",
        "definition:\n  settings: {forwardAuth: {proxy: nginx}}\n",
    ))
    .await;
    let resp = client
        .get(nginx.http_url("/check/other"))
        .header("x-original-uri", format!("/v1/graphql?token={token}"))
        .header("x-original-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Traefik: X-Forwarded-Uri.
    let resp = client
        .get(server.http_url("/check"))
        .header("x-forwarded-uri", format!("/api?token={token}"))
        .header("x-forwarded-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Envoy HTTP ext_authz with path_prefix: the path after /check.
    let resp = client
        .get(server.http_url(&format!("/check/api?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .get(server.http_url("/check/api?token=bad"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn ip_rules_with_forwarded_for_trusted_proxies_and_envoy_source() {
    let cfg = r#"
definition:
  modes:
    - id: office
      mode: apiKey
      tokenLocation: {in: header, name: X-Office-Key}
      value: {value: office-key}
      sessionVariables: {x-hasura-role: {value: office}}
      securityRules:
        allowedIPs:
          include: {value: ["198.51.100.0/24"]}
          location: x_forwarded_for
          numTrustedProxies: 1
    - id: internal
      mode: apiKey
      tokenLocation: {in: header, name: X-Internal-Key}
      value: {value: internal-key}
      sessionVariables: {x-hasura-role: {value: internal}}
      securityRules:
        allowedIPs:
          exclude: {value: ["203.0.113.0/24"]}
          location: remote_addr
    - id: proxied
      mode: apiKey
      tokenLocation: {in: header, name: X-Proxied-Key}
      value: {value: proxied-key}
      sessionVariables: {x-hasura-role: {value: proxied}}
      securityRules:
        allowedIPs:
          include: {value: ["192.0.2.10"]}
          trustedProxyIpPrefixes: ["10.0.0.0/8"]
    - mode: noAuth
      sessionVariables: {x-hasura-role: {value: anonymous}}
      securityRules:
        allowedIPs: {publicOnly: true, location: remote_addr}
"#
    .to_string();
    let server = TestServer::start(&cfg).await;
    // The client is the rightmost entry, appended by the one trusted proxy.
    let o = outcome(
        &server
            .check(&[
                ("x-office-key", "office-key"),
                ("x-forwarded-for", "1.1.1.1, 198.51.100.20"),
            ])
            .await,
    );
    assert_eq!(
        o.headers.get("x-hasura-role").map(String::as_str),
        Some("office"),
        "{o:?}"
    );
    // A spoofed leftmost entry does not help.
    let o = outcome(
        &server
            .check(&[
                ("x-office-key", "office-key"),
                ("x-forwarded-for", "198.51.100.20, 8.8.8.8"),
            ])
            .await,
    );
    assert_eq!(
        (o.code, o.http_status, o.reason().as_str()),
        (7, 403, "blocked_by_rule")
    );
    let o = outcome(&server.check(&[("x-office-key", "office-key")]).await);
    assert_eq!(
        o.reason(),
        "blocked_by_rule",
        "no X-Forwarded-For: fail closed"
    );
    // Trusted prefixes are skipped from the right.
    let o = outcome(
        &server
            .check(&[
                ("x-proxied-key", "proxied-key"),
                ("x-forwarded-for", "192.0.2.10, 10.1.1.1, 10.2.2.2"),
            ])
            .await,
    );
    assert_eq!(
        o.headers.get("x-hasura-role").map(String::as_str),
        Some("proxied"),
        "{o:?}"
    );
    // remote_addr is Envoy's source.address (203.0.113.7 in these requests).
    let o = outcome(&server.check(&[("x-internal-key", "internal-key")]).await);
    assert_eq!(o.reason(), "blocked_by_rule");
    let mut req = check_request(&[("x-internal-key", "internal-key")], "/");
    if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) = req
        .attributes
        .as_mut()
        .and_then(|a| a.source.as_mut())
        .and_then(|s| s.address.as_mut())
        .and_then(|a| a.address.as_mut())
    {
        sa.address = "192.0.2.99".into();
    }
    let o = outcome(&server.check_request(req).await);
    assert_eq!(
        o.headers.get("x-hasura-role").map(String::as_str),
        Some("internal"),
        "{o:?}"
    );
    // A blocked mode whose credential is absent is simply skipped: anonymous
    // access from a public source address works.
    let o = outcome(&server.check(&[]).await);
    assert_eq!(
        o.headers.get("x-hasura-role").map(String::as_str),
        Some("anonymous"),
        "{o:?}"
    );
    // Over HTTP the TCP peer is 127.0.0.1: not public, so noAuth is blocked.
    let resp = reqwest::get(server.http_url("/check")).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("blocked_by_rule"));
}

#[tokio::test]
async fn header_rules_on_a_jwt_mode() {
    let cfg = format!(
        r#"
definition:
  modes:
    - mode: jwt
      key: {{algorithm: HS256, key: {{value: "{SECRET}"}}}}
      claimsConfig: {{namespace: {{location: '"claims.jwt.hasura.io"'}}}}
      securityRules:
        headerRules:
          Origin:
            include: {{value: ["^https://app\\.example\\.com$", "localhost"]}}
            exclude: {{value: ["evil"]}}
"#
    );
    let server = TestServer::start(&cfg).await;
    let token = mint(
        Algorithm::HS256,
        SECRET,
        hasura_claims("u", &["user"], "user"),
        None,
    );
    let auth = bearer(&token);
    for (origin, allowed) in [
        (Some("https://app.example.com"), true),
        (Some("http://localhost:3000"), true),
        (Some("https://app.example.com.evil.net"), false),
        (Some("https://other.example.com"), false),
        (None, false),
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(o) = origin {
            headers.push(("origin", o));
        }
        let o = outcome(&server.check(&headers).await);
        if allowed {
            assert_eq!(o.code, 0, "{origin:?}: {o:?}");
        } else {
            assert_eq!(o.reason(), "blocked_by_rule", "{origin:?}");
        }
    }
}

#[test]
fn security_rule_config_errors() {
    let err = authgate::config::parse(
        r#"
definition:
  modes:
    - mode: noAuth
      sessionVariables: {x-hasura-role: {value: a}}
      securityRules:
        allowedIPs: {include: {value: [not-an-ip]}, location: somewhere}
        headerRules:
          origin: {include: {value: ["(unclosed"]}, other: 1}
"#,
        &|_: &str| None,
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "definition.modes[0].securityRules.allowedIPs.include[0]: `not-an-ip` is not an IP address or CIDR range",
        "definition.modes[0].securityRules.allowedIPs.location: unknown location `somewhere`",
        "definition.modes[0].securityRules.headerRules.origin.include[0]: invalid pattern `(unclosed`",
        "definition.modes[0].securityRules.headerRules.origin.other: unknown key `other`",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
