//! The `jwt` filter end to end: real keys generated here, a real JWKS/OIDC server, the real
//! binary. Covers every algorithm family, the classic attacks (`alg: none`, RSA public key as
//! HMAC secret), claim validation, key rotation, issuer outages, the token cache, token
//! locations, per-route auth, claims forwarded upstream and the Keycloak preset.

mod common;

use std::time::Duration;

use common::auth::*;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const AUD: &str = "stoa-gateway";

/// A gateway with `router` then `jwt` (+ `extra` filters) in front of one echo upstream.
fn config(jwt: &str, extra: &str, upstream: &Upstream) -> String {
    format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: access_log
    - type: router
      routes:
        - name: public
          match: {{ path_prefix: /public }}
          cluster: b
          auth: anonymous
        - name: maybe
          match: {{ path_prefix: /maybe }}
          cluster: b
          auth: optional
        - name: admin
          match: {{ path_prefix: /admin-api }}
          cluster: b
          required_scopes: [admin]
        - name: orders
          match: {{ path_prefix: /orders }}
          cluster: b
          required_roles: [order-manager]
        - name: api
          match: {{ path_prefix: / }}
          cluster: b
    - type: jwt
{jwt}
{extra}
clusters:
  b: {{ endpoints: ["{}"] }}
"#,
        upstream.address()
    )
}

fn jwks_filter(jwks: &JwksServer, issuer: &str) -> String {
    format!(
        "      issuer: \"{issuer}\"\n      audiences: [{AUD}]\n      jwks_url: \"{}\"\n      forward_claims: {{ x-user-id: sub, x-tenant-id: tenant, x-roles: roles }}\n",
        jwks.jwks_url()
    )
}

async fn call(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = fresh_client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

/// Assert a 401 whose challenge carries `invalid_token` and a description containing `why`.
async fn assert_invalid(gw: &Gateway, token: &str, why: &str) {
    let r = call(&gw.url("/x"), Some(token)).await;
    assert_eq!(r.status(), 401, "{why}: expected 401");
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.starts_with("Bearer realm=\"stoa\", error=\"invalid_token\""),
        "{why}: {challenge}"
    );
    assert!(
        challenge.contains(why),
        "challenge should say `{why}`: {challenge}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], 401);
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_pass_and_claims_reach_the_upstream() {
    let up = echo("b").await;
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let jwks = JwksServer::with_keys(&[&rsa]).await;
    let iss = jwks.url();
    let gw = Gateway::start(&config(&jwks_filter(&jwks, &iss), "", &up)).await;

    let mut c = claims(&iss, AUD, "alice");
    c["tenant"] = json!("acme");
    c["realm_access"] = json!({"roles": ["reader"]});
    c["resource_access"] =
        json!({AUD: {"roles": ["order-manager"]}, "other": {"roles": ["ignored"]}});
    let token = rsa.sign(&c);
    let r = fresh_client()
        .get(gw.url("/x"))
        .bearer_auth(&token)
        // A client cannot set the identity headers itself.
        .header("x-user-id", "mallory")
        .header("x-tenant-id", "evil")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["headers"]["x-user-id"], "alice");
    assert_eq!(seen["headers"]["x-tenant-id"], "acme");
    assert_eq!(seen["headers"]["x-roles"], "order-manager,reader");
    // Keycloak client roles satisfy a route's required_roles.
    assert_eq!(call(&gw.url("/orders/1"), Some(&token)).await.status(), 200);

    // No token: 401 with a bare challenge (RFC 6750 §3.1: no error code).
    let r = call(&gw.url("/x"), None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"stoa\"");
    assert_eq!(up.hits(), 2, "refused requests never reach the upstream");

    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "stoa_jwt_validations_total", &[("result", "missing")]),
        Some(1.0)
    );
    // Rejections are counted in the logging phase, after the answer went out: wait for it.
    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "jwt"), ("reason", "missing_token")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    // The access log names the caller; no credential appears in any output.
    let line = gw
        .wait_stdout_line("\"sub\":\"alice\"", Duration::from_secs(5))
        .await;
    assert!(line.contains("\"tenant\":\"acme\""), "{line}");
    assert!(!gw.stdout().contains(&token) && !gw.stderr().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asymmetric_algorithm_verifies() {
    let up = echo("b").await;
    let keys = vec![
        TestKey::rsa("rs384", Algorithm::RS384),
        TestKey::rsa("rs512", Algorithm::RS512),
        TestKey::rsa("ps256", Algorithm::PS256),
        TestKey::rsa("ps384", Algorithm::PS384),
        TestKey::rsa("ps512", Algorithm::PS512),
        TestKey::ec_p256("es256"),
        TestKey::ec_p384("es384"),
        TestKey::ed25519("eddsa"),
    ];
    let refs: Vec<&TestKey> = keys.iter().collect();
    let jwks = JwksServer::with_keys(&refs).await;
    let iss = jwks.url();
    let gw = Gateway::start(&config(&jwks_filter(&jwks, &iss), "", &up)).await;
    for k in &keys {
        let token = k.sign(&claims(&iss, AUD, "bob"));
        let r = call(&gw.url("/x"), Some(&token)).await;
        assert_eq!(r.status(), 200, "{}", alg_name(k.alg));
        // Without a kid, the key is found by algorithm.
        let token = k.sign_without_kid(&claims(&iss, AUD, "bob"));
        assert_eq!(
            call(&gw.url("/x"), Some(&token)).await.status(),
            200,
            "{} without kid",
            alg_name(k.alg)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_invalid_token() {
    let up = echo("b").await;
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let jwks = JwksServer::with_keys(&[&rsa]).await;
    let iss = jwks.url();
    let gw = Gateway::start(&config(&jwks_filter(&jwks, &iss), "", &up)).await;
    let good = claims(&iss, AUD, "alice");
    let now = now();

    assert_invalid(
        &gw,
        &rsa.sign(&with(good.clone(), "exp", json!(now - 120))),
        "expired",
    )
    .await;
    assert_invalid(
        &gw,
        &rsa.sign(&with(good.clone(), "nbf", json!(now + 600))),
        "not valid yet",
    )
    .await;
    assert_invalid(
        &gw,
        &rsa.sign(&with(good.clone(), "iss", json!("https://evil.example"))),
        "issuer",
    )
    .await;
    assert_invalid(
        &gw,
        &rsa.sign(&with(good.clone(), "aud", json!("someone-else"))),
        "audience",
    )
    .await;
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_invalid(&gw, &rsa.sign(&no_aud), "required claim").await;
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_invalid(&gw, &rsa.sign(&no_exp), "required claim").await;
    // alg: none is never accepted.
    assert_invalid(&gw, &unsigned_alg_none_token(&good), "malformed").await;
    // The RSA public key used as an HMAC secret (key confusion): HS256 is not allowed here.
    let forged = hs256_token_with_secret(&good, rsa.public_pem.as_bytes(), Some("rsa-1"));
    assert_invalid(&gw, &forged, "algorithm").await;
    // Signed by another key claiming the same kid.
    let impostor = TestKey::rsa("rsa-1", Algorithm::RS256);
    assert_invalid(&gw, &impostor.sign(&good), "signature").await;
    // Tampered payload.
    let token = rsa.sign(&good);
    let parts: Vec<&str> = token.split('.').collect();
    let evil = b64url(
        with(good.clone(), "sub", json!("root"))
            .to_string()
            .as_bytes(),
    );
    assert_invalid(
        &gw,
        &format!("{}.{evil}.{}", parts[0], parts[2]),
        "signature",
    )
    .await;
    assert_invalid(&gw, "not-a-jwt", "malformed").await;
    // An audience given as a list is accepted when it contains ours.
    let listed = rsa.sign(&with(good.clone(), "aud", json!(["x", AUD])));
    assert_eq!(call(&gw.url("/x"), Some(&listed)).await.status(), 200);
    assert_eq!(up.hits(), 1);

    let m = gw.metrics().await;
    for label in [
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "bad_signature",
        "bad_algorithm",
        "malformed",
    ] {
        assert!(
            metric_value(&m, "stoa_jwt_validations_total", &[("result", label)]).unwrap_or(0.0)
                >= 1.0,
            "no {label} counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_only_with_a_configured_secret_and_leeway_is_configurable() {
    let up = echo("b").await;
    let filter = "      issuer: https://issuer.example\n      audiences: [stoa-gateway]\n      hmac_secret: \"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t\"\n      algorithms: [HS256]\n      leeway: 0s\n";
    let gw = Gateway::start(&config(filter, "", &up)).await;
    let c = claims("https://issuer.example", AUD, "svc");
    let token = hs256_token_with_secret(&c, b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t", None);
    assert_eq!(call(&gw.url("/x"), Some(&token)).await.status(), 200);
    let wrong = hs256_token_with_secret(&c, b"another-secret-another-secret", None);
    assert_invalid(&gw, &wrong, "signature").await;
    // No leeway: a token that expired a few seconds ago is refused.
    let stale = hs256_token_with_secret(
        &with(c.clone(), "exp", json!(now() - 3)),
        b"s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t",
        None,
    );
    assert_invalid(&gw, &stale, "expired").await;
    // The secret is redacted from /config.
    let cfg = client()
        .get(gw.admin_url("/config"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!cfg.contains("s3cr3t"), "{cfg}");

    // HS256 in `algorithms` without a secret is a config error naming the key.
    let bad = "      issuer: https://issuer.example\n      audiences: [stoa-gateway]\n      algorithms: [HS256, RS256]\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, config(bad, "", &up).replace("@PORT@", "1")).unwrap();
    let (status, _out, err) = run_to_end(
        &["--check", "-c", path.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(
        err.contains("hmac_secret") && err.contains("chains.main[2] (jwt)"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_refresh_on_unknown_kid_and_survive_an_issuer_outage() {
    let up = echo("b").await;
    let k1 = TestKey::rsa("k1", Algorithm::RS256);
    let k2 = TestKey::ec_p256("k2");
    let jwks = JwksServer::with_keys(&[&k1]).await;
    let iss = jwks.url();
    let filter = format!(
        "{}      min_refresh_interval: 2s\n",
        jwks_filter(&jwks, &iss)
    );
    let gw = Gateway::start(&config(&filter, "", &up)).await;

    assert_eq!(
        call(&gw.url("/x"), Some(&k1.sign(&claims(&iss, AUD, "a"))))
            .await
            .status(),
        200
    );
    let hits = jwks.jwks_hits();
    assert!(hits >= 1);
    // Many requests with known keys do not refetch.
    for _ in 0..5 {
        assert_eq!(
            call(&gw.url("/x"), Some(&k1.sign(&claims(&iss, AUD, "a"))))
                .await
                .status(),
            200
        );
    }
    assert_eq!(jwks.jwks_hits(), hits);

    // Rotation: the issuer now signs with k2, which the gateway has never seen.
    jwks.set_keys(&[&k1, &k2]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(&gw.url("/x"), Some(&k2.sign(&claims(&iss, AUD, "b"))))
            .await
            .status(),
        200
    );
    let after_rotation = jwks.jwks_hits();
    assert_eq!(
        after_rotation,
        hits + 1,
        "one on-demand fetch for the new kid"
    );

    // Unknown kids are rate limited: a burst of them costs at most one fetch.
    let stranger = TestKey::rsa("unknown", Algorithm::RS256);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for _ in 0..10 {
        let r = call(&gw.url("/x"), Some(&stranger.sign(&claims(&iss, AUD, "x")))).await;
        assert_eq!(r.status(), 401);
    }
    assert_eq!(
        jwks.jwks_hits(),
        after_rotation + 1,
        "unknown kids must not hammer the issuer"
    );

    // The issuer goes down: cached keys keep verifying new tokens.
    jwks.set_down(true);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        call(&gw.url("/x"), Some(&k2.sign(&claims(&iss, AUD, "c"))))
            .await
            .status(),
        200
    );
    assert_eq!(
        call(&gw.url("/x"), Some(&k1.sign(&claims(&iss, AUD, "d"))))
            .await
            .status(),
        200
    );
    // An unknown kid during the outage: a failed fetch, still a clean 401.
    let r = call(&gw.url("/x"), Some(&stranger.sign(&claims(&iss, AUD, "x")))).await;
    assert_eq!(r.status(), 401);
    let m = gw.metrics().await;
    assert!(
        metric_value(&m, "stoa_jwks_refreshes_total", &[("result", "error")]).unwrap_or(0.0) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_discovery_and_unavailable_keys() {
    let up = echo("b").await;
    let key = TestKey::ed25519("ed");
    let mut jwks = JwksServer::with_keys(&[&key]).await;
    let iss = jwks.issuer("stoa");
    // The issuer is down when the first request arrives: 503, not a token error.
    jwks.set_down(true);
    let filter = format!(
        "      issuer: \"{iss}\"\n      audiences: [{AUD}]\n      min_refresh_interval: 1s\n"
    );
    let gw = Gateway::start(&config(&filter, "", &up)).await;
    let token = key.sign(&claims(&iss, AUD, "a"));
    let r = call(&gw.url("/x"), Some(&token)).await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    jwks.set_down(false);
    // Discovery: <issuer>/.well-known/openid-configuration -> jwks_uri -> keys, once
    // `min_refresh_interval` (1 s) has passed since the last failed attempt (polled, bounded:
    // the background refresh and the on-demand fetch both count as attempts).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let status = call(&gw.url("/x"), Some(&token)).await.status();
        if status == 200 {
            break;
        }
        assert_eq!(
            status, 503,
            "only 'keys unavailable' while the keys are fetched"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the keys never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(jwks.discovery_hits() >= 1);
    // The issuer restarting on the same port changes nothing.
    jwks.restart().await;
    assert_eq!(
        call(&gw.url("/x"), Some(&key.sign(&claims(&iss, AUD, "b"))))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cache_skips_repeated_signature_checks() {
    let up = echo("b").await;
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let jwks = JwksServer::with_keys(&[&rsa]).await;
    let iss = jwks.url();
    let gw = Gateway::start(&config(&jwks_filter(&jwks, &iss), "", &up)).await;
    let token = rsa.sign(&claims(&iss, AUD, "alice"));
    for _ in 0..5 {
        assert_eq!(call(&gw.url("/x"), Some(&token)).await.status(), 200);
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric_value(&m, "stoa_jwt_validations_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "stoa_jwt_validations_total", &[("result", "ok_cached")]),
        Some(4.0)
    );
    // A cached token still expires: one valid for 2 more seconds stops working after that.
    let short = rsa.sign(&with(claims(&iss, AUD, "bob"), "exp", json!(now() + 2)));
    let filter = format!("{}      leeway: 0s\n", jwks_filter(&jwks, &iss));
    let gw2 = Gateway::start(&config(&filter, "", &up)).await;
    assert_eq!(call(&gw2.url("/x"), Some(&short)).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(call(&gw2.url("/x"), Some(&short)).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_header_cookie_or_query() {
    let up = echo("b").await;
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let jwks = JwksServer::with_keys(&[&rsa]).await;
    let iss = jwks.url();
    let filter = format!(
        "{}      from_header: x-api-token\n      from_cookie: access_token\n      from_query: access_token\n",
        jwks_filter(&jwks, &iss)
    );
    let gw = Gateway::start(&config(&filter, "", &up)).await;
    let token = rsa.sign(&claims(&iss, AUD, "alice"));
    let c = fresh_client();
    let ok = |r: reqwest::Response| async move { r.status() };
    assert_eq!(
        ok(c.get(gw.url("/x"))
            .header("x-api-token", &token)
            .send()
            .await
            .unwrap())
        .await,
        200
    );
    assert_eq!(
        ok(c.get(gw.url("/x"))
            .header("x-api-token", format!("Bearer {token}"))
            .send()
            .await
            .unwrap())
        .await,
        200
    );
    assert_eq!(
        ok(c.get(gw.url("/x"))
            .header("cookie", format!("theme=dark; access_token={token}"))
            .send()
            .await
            .unwrap())
        .await,
        200
    );
    assert_eq!(
        ok(c.get(gw.url(&format!("/x?a=1&access_token={token}")))
            .send()
            .await
            .unwrap())
        .await,
        200
    );
    assert_eq!(
        ok(c.get(gw.url("/x"))
            .header("cookie", "theme=dark")
            .send()
            .await
            .unwrap())
        .await,
        401
    );
    // Basic credentials are not a bearer token.
    assert_eq!(
        ok(c.get(gw.url("/x"))
            .basic_auth("u", Some("p"))
            .send()
            .await
            .unwrap())
        .await,
        401
    );
    // The query token is not logged.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!gw.stdout().contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_choose_anonymous_optional_or_required_with_scopes_and_roles() {
    let up = echo("b").await;
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let jwks = JwksServer::with_keys(&[&rsa]).await;
    let iss = jwks.url();
    let gw = Gateway::start(&config(&jwks_filter(&jwks, &iss), "", &up)).await;
    let good = rsa.sign(&claims(&iss, AUD, "alice"));
    let bad = rsa.sign(&with(claims(&iss, AUD, "alice"), "exp", json!(now() - 600)));

    // anonymous: nothing is checked, even a bad token.
    assert_eq!(call(&gw.url("/public/a"), None).await.status(), 200);
    assert_eq!(call(&gw.url("/public/a"), Some(&bad)).await.status(), 200);
    // optional: no token is fine, a bad one is not; a good one is forwarded as identity.
    let r = call(&gw.url("/maybe/a"), None).await;
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert!(seen["headers"].get("x-user-id").is_none());
    assert_eq!(call(&gw.url("/maybe/a"), Some(&bad)).await.status(), 401);
    let seen: Value = call(&gw.url("/maybe/a"), Some(&good))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(seen["headers"]["x-user-id"], "alice");

    // required scope missing: 403 insufficient_scope naming the scope.
    let r = call(&gw.url("/admin-api/users"), Some(&good)).await;
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"admin\""), "{challenge}");
    let admin = rsa.sign(&with(
        claims(&iss, AUD, "root"),
        "scope",
        json!("read admin"),
    ));
    assert_eq!(
        call(&gw.url("/admin-api/users"), Some(&admin))
            .await
            .status(),
        200
    );
    // required role missing (roles claim, realm roles, client roles all count).
    assert_eq!(call(&gw.url("/orders/1"), Some(&good)).await.status(), 403);
    let realm = rsa.sign(&with(
        claims(&iss, AUD, "m"),
        "realm_access",
        json!({"roles": ["order-manager"]}),
    ));
    assert_eq!(call(&gw.url("/orders/1"), Some(&realm)).await.status(), 200);
    let plain = rsa.sign(&with(
        claims(&iss, AUD, "m"),
        "roles",
        json!(["order-manager"]),
    ));
    assert_eq!(call(&gw.url("/orders/1"), Some(&plain)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_key_files_and_claim_templates_in_header_transforms() {
    let up = echo("b").await;
    let dir = tempfile::tempdir().unwrap();
    let ec = TestKey::ec_p384("file-ec");
    let rsa = TestKey::rsa("pem-rsa", Algorithm::PS256);
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [ec.jwk]}).to_string()).unwrap();
    let pem_path = dir.path().join("key.pem");
    std::fs::write(&pem_path, &rsa.public_pem).unwrap();
    let iss = "https://files.example";
    for (source, key) in [
        (
            format!("      jwks_file: \"{}\"\n", jwks_path.display()),
            &ec,
        ),
        (
            format!("      public_key_file: \"{}\"\n", pem_path.display()),
            &rsa,
        ),
    ] {
        let filter = format!("      issuer: {iss}\n      audiences: [{AUD}]\n{source}");
        // The usual header transforms behind `jwt`: a tenant header from the token, an
        // internal header removed.
        let extra = "    - type: headers\n      request:\n        set: { X-Tenant-ID: \"{{ .tenant }}\", X-Sub: \"user={{ sub }}\", X-Plan: \"{{ claims.plan.tier }}\" }\n      response:\n        remove: [X-Internal-Secret]\n";
        let gw = Gateway::start(&config(&filter, extra, &up)).await;
        let mut c = claims(iss, AUD, "carol");
        c["tenant"] = json!("globex");
        c["plan"] = json!({"tier": "gold"});
        let r = call(&gw.url("/x"), Some(&key.sign(&c))).await;
        assert_eq!(r.status(), 200);
        assert!(
            r.headers().get("x-internal-secret").is_none(),
            "removed from the response"
        );
        let seen: Value = r.json().await.unwrap();
        assert_eq!(seen["headers"]["x-tenant-id"], "globex");
        assert_eq!(seen["headers"]["x-sub"], "user=carol");
        assert_eq!(seen["headers"]["x-plan"], "gold");
        let other = TestKey::ec_p384("file-ec");
        assert_eq!(
            call(&gw.url("/x"), Some(&other.sign(&c))).await.status(),
            401
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keycloak_env_vars_secure_the_proxy_preset_without_a_file() {
    let up = echo("b").await;
    let key = TestKey::rsa("kc", Algorithm::RS256);
    let jwks = JwksServer::with_keys(&[&key]).await;
    let iss = jwks.issuer("stoa");
    let gw = Gateway::builder()
        .arg("--mode=proxy")
        .arg("--port=@PORT@")
        .arg("--admin-address=127.0.0.1:@ADMIN@")
        .arg(format!("--upstream=http://{}", up.address()))
        .env("KEYCLOAK_URL", jwks.url())
        .env("KEYCLOAK_REALM", "stoa")
        .env("KEYCLOAK_CLIENT_ID", "stoa-gateway")
        .start()
        .await;
    let url = gw.url("/x");
    assert_eq!(call(&url, None).await.status(), 401);
    let mut c = claims(&iss, "stoa-gateway", "dave");
    c["realm_access"] = json!({"roles": ["user"]});
    assert_eq!(call(&url, Some(&key.sign(&c))).await.status(), 200);
    let wrong_realm = key.sign(&claims(&jwks.issuer("other"), "stoa-gateway", "dave"));
    assert_eq!(call(&url, Some(&wrong_realm)).await.status(), 401);
    assert!(jwks.discovery_hits() >= 1);
    let (status, out, _) = run_to_end(
        &["--mode=proxy", "--upstream=http://127.0.0.1:1", "--check"],
        Duration::from_secs(20),
    );
    assert!(status.success());
    assert!(
        !out.contains("jwt"),
        "no Keycloak env, no jwt filter: {out}"
    );
    drop(gw);
}

/// `/ready` waits for the first fetch of remote signing keys (so no traffic is routed to a
/// gateway that would answer 503 to every token), and a fetch that fails still ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_key_fetch() {
    let up = echo("b").await;
    // A JWKS endpoint that accepts connections and never answers.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", black_hole.local_addr().unwrap());
    let filter = format!(
        "      issuer: \"https://issuer.test\"\n      audiences: [{AUD}]\n      jwks_url: \"{url}\"\n      fetch_timeout: 3s\n"
    );
    let gw = Gateway::builder()
        .config(&config(&filter, "", &up))
        .wait_ready(false)
        .start()
        .await;
    let cl = fresh_client();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut saw_waiting = false;
    loop {
        if let Ok(r) = cl.get(gw.admin_url("/ready")).send().await {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if status == 503 && body.contains("jwt: fetching signing keys") {
                saw_waiting = true;
            }
            if status == 200 {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_waiting, "/ready did not wait for the key fetch");
    drop(black_hole);
}
