//! RelyAuth's own black-box vectors (`authtests/testdata/config.yaml`,
//! `authtests/units.go` in relychan/rely-auth), run unchanged against
//! `/auth/ddn` and `/auth/hasura`.

use crate::common;

use common::*;
use serde_json::{Value, json};

/// RelyAuth's test configuration, verbatim (including `kind: AuthConfig`).
const CONFIG: &str = r#"# yaml-language-server: $schema=../../jsonschema/auth.schema.json
version: v1
kind: AuthConfig
definition:
  settings:
    reloadInterval: 0
  modes:
    - id: test_jwt
      mode: jwt
      tokenLocation:
        in: header
        name: Authorization
        scheme: bearer
      key:
        algorithm: HS256
        key:
          env: JWT_KEY
      claimsConfig:
        namespace:
          location: '"claims.jwt.hasura.io"'
          claimsFormat: Json
        locations:
          x-hasura-user-id:
            path: sub
    - mode: apiKey
      tokenLocation:
        in: header
        name: Authorization
      value:
        value: "randomsecret"
      sessionVariables:
        x-hasura-role:
          value: admin
        x-some-array-int:
          value: [1, 2, 3]
        x-some-array-bool:
          value: [true, false]
        x-some-array-string:
          value: ["foo", "bar"]
        x-some-object:
          value:
            foo: baz
    - mode: noAuth
      sessionVariables:
        x-hasura-role:
          value: anonymous
      securityRules:
        headerRules:
          origin:
            include:
              value:
                - localhost
"#;

const JWT_KEY: &str = "NTNv7j0TuYARvmNMmWXo6fKvM4o6nvxyz";
const TEST_JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJjbGFpbXMuand0Lmhhc3VyYS5pbyI6eyJ4LWhhc3VyYS1hbGxvd2VkLXJvbGVzIjpbInVzZXIiLCJhZG1pbiJdLCJ4LWhhc3VyYS1kZWZhdWx0LXJvbGUiOiJ1c2VyIiwieC1oYXN1cmEtZ3JvdXAtaWQiOjEwfSwiaXNzIjoiaHR0cHM6Ly9yZWx5Y2hhbi5jb20iLCJzdWIiOiJ1c2VyLWlkIiwiYXVkIjoiaHR0cHM6Ly9yZWx5Y2hhbi5jb20iLCJpYXQiOjE3NjA5Mzk5NTQsImV4cCI6OTc2MTAyNjM1NH0.0UuGOB-MPUCwhoMUCyHA7XN5Q05NmZ_j0Mc13oWquN4";

/// POSTs `{url, headers}` (headers also on the HTTP request, as RelyAuth's
/// test client does) and returns status and body.
async fn post(server: &TestServer, endpoint: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let body = json!({
        "url": "http://localhost:8080/graphql",
        "headers": headers.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    let mut req = reqwest::Client::new()
        .post(server.http_url(endpoint))
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
}

#[tokio::test]
async fn auth_ddn_vectors() {
    let server = TestServer::start_with_env(CONFIG, &[("JWT_KEY", JWT_KEY)]).await;
    let (status, body) = post(
        &server,
        "/auth/ddn",
        &[
            ("authorization", "randomsecret"),
            ("true-client-ip", "127.0.0.1"),
            ("origin", "http://localhost:1234"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"x-hasura-role":"admin","x-some-array-int":[1,2,3],"x-some-array-bool":[true,false],"x-some-array-string":["foo","bar"],"x-some-object":{"foo":"baz"}})
    );
    let bearer = format!("Bearer {TEST_JWT}");
    let (status, body) = post(&server, "/auth/ddn", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"x-hasura-role":"user","x-hasura-group-id":10,"x-hasura-user-id":"user-id"})
    );
    let (status, body) = post(&server, "/auth/ddn", &[("Origin", "http://localhost:8080")]).await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body), json!({"x-hasura-role":"anonymous"}));
    let (status, body) = post(&server, "/auth/ddn", &[("Authorization", "test")]).await;
    assert_eq!((status, body.as_str()), (401, ""));
    let (status, body) = post(
        &server,
        "/auth/ddn",
        &[("Authorization", "test"), ("X-Rely-Auth-Mode", "jwt")],
    )
    .await;
    assert_eq!((status, body.as_str()), (401, ""));
}

#[tokio::test]
async fn auth_hasura_vectors() {
    let server = TestServer::start_with_env(CONFIG, &[("JWT_KEY", JWT_KEY)]).await;
    let (status, body) = post(
        &server,
        "/auth/hasura",
        &[("Authorization", "randomsecret")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"x-hasura-role":"admin","x-some-array-int":"{1,2,3}","x-some-array-bool":"{true,false}","x-some-array-string":"{foo,bar}","x-some-object":"{\"foo\":\"baz\"}"})
    );
    let bearer = format!("Bearer {TEST_JWT}");
    let (status, body) = post(&server, "/auth/hasura", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"x-hasura-role":"user","x-hasura-group-id":"10","x-hasura-user-id":"user-id"})
    );
    let (status, body) = post(
        &server,
        "/auth/hasura",
        &[("origin", "http://localhost:1234")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(json_of(&body), json!({"x-hasura-role":"anonymous"}));
    let (status, body) = post(
        &server,
        "/auth/hasura",
        &[("Authorization", "test"), ("X-Rely-Auth-ID", "test_jwt")],
    )
    .await;
    assert_eq!((status, body.as_str()), (401, ""));
}

#[tokio::test]
async fn hasura_webhook_get_and_malformed_posts() {
    let server = TestServer::start_with_env(CONFIG, &[("JWT_KEY", JWT_KEY)]).await;
    let client = reqwest::Client::new();
    // GET: the request's own headers (Hasura v2 GET mode).
    let resp = client
        .get(server.http_url("/auth/hasura"))
        .header("authorization", format!("Bearer {TEST_JWT}"))
        .header("x-hasura-role", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        json_of(&resp.text().await.unwrap())["x-hasura-role"],
        "admin"
    );
    let resp = client
        .get(server.http_url("/auth/ddn"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "no origin: noAuth's header rule blocks");
    for body in [
        "",
        "{",
        "[]",
        r#"{"headers": 5}"#,
        r#"{"headers": {"a": {"b": 1}}}"#,
    ] {
        let resp = client
            .post(server.http_url("/auth/ddn"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{body}");
        assert_eq!(resp.text().await.unwrap(), "", "{body}");
    }
    let m = server.metrics().await;
    assert!(m.contains(r#"authgate_check_requests_total{decision="allow",frontend="webhook",mode="jwt",reason="none"} 1"#), "{m}");
}

#[tokio::test]
async fn docs_example_token_with_the_seed_config() {
    // The token of RelyAuth's JWT docs (seed 004): exp 2026-12-10, so mint
    // the same claims with the same secret to stay valid.
    let cfg = r#"
version: v1
kind: RelyAuth
definition:
  modes:
    - mode: jwt
      tokenLocation:
        in: header
        name: Authorization
        scheme: bearer
      key:
        algorithm: HS256
        key:
          value: ultra-secret-very-secret-super-secret-key
      claimsConfig:
        namespace:
          location: '"claims.jwt.hasura.io"'
          claimsFormat: Json
"#;
    let server = TestServer::start(cfg).await;
    let token = mint(
        jsonwebtoken::Algorithm::HS256,
        "ultra-secret-very-secret-super-secret-key",
        json!({"iat": 1735916718, "claims.jwt.hasura.io": {
            "x-hasura-default-role": "user",
            "x-hasura-allowed-roles": ["user", "admin"],
            "x-hasura-user-id": "123",
            "x-hasura-org-id": "456",
            "x-hasura-custom": "custom-value"
        }}),
        None,
    );
    let (status, body) = post(
        &server,
        "/auth/ddn",
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        json_of(&body),
        json!({"x-hasura-role":"user","x-hasura-user-id":"123","x-hasura-org-id":"456","x-hasura-custom":"custom-value"})
    );
}
