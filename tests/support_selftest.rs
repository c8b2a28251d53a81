//! Checks of the test-support modules themselves (tests/common/auth.rs, tests/common/redis.rs):
//! the served JWKs verify the tokens the keys sign, discovery documents are consistent, the
//! JWKS server can go down / stop / restart, and the Redis child process starts, stops and
//! restarts on its port.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::auth::{self, JwksServer, TestKey};
use common::redis::{RedisServer, Resp};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

async fn get_json(c: &reqwest::Client, url: &str) -> (u16, Value) {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Verify `token` with the JWK of `kid` taken from the served `/jwks` document.
fn verify_with_served_jwk(jwks: &Value, kid: &str, alg: Algorithm, token: &str) -> Value {
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    let jwk: Jwk = serde_json::from_value(jwk.clone()).expect("a valid JWK");
    let key = DecodingKey::from_jwk(&jwk).expect("DecodingKey::from_jwk");
    let mut v = Validation::new(alg);
    v.set_issuer(&["https://issuer.test"]);
    v.set_audience(&["stoa"]);
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kid));
    assert_eq!(header.alg, alg);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("{alg:?} token does not verify with the served JWK: {e}"))
        .claims
}

#[tokio::test]
async fn jwks_server_serves_keys_and_discovery() {
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let ec = TestKey::ec_p256("ec-1");
    let mut srv = JwksServer::with_keys(&[&rsa, &ec]).await;
    let c = common::client();

    let (status, jwks) = get_json(&c, &srv.jwks_url()).await;
    assert_eq!(status, 200);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["kid"], "rsa-1");
    assert_eq!(keys[0]["alg"], "RS256");
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(keys[0]["e"], "AQAB");
    assert_eq!(keys[1]["kty"], "EC");
    assert_eq!(keys[1]["crv"], "P-256");
    assert_eq!(keys[1]["alg"], "ES256");
    assert_eq!(srv.jwks_hits(), 1);

    let (status, doc) = get_json(
        &c,
        &format!("{}/.well-known/openid-configuration", srv.issuer("stoa")),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(doc["issuer"], srv.issuer("stoa"));
    assert_eq!(
        doc["issuer"],
        format!("http://127.0.0.1:{}/realms/stoa", srv.port())
    );
    assert_eq!(doc["jwks_uri"], srv.jwks_url());
    let (status, doc) = get_json(
        &c,
        &format!("{}/.well-known/openid-configuration", srv.url()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(doc["issuer"], srv.url());
    assert_eq!(doc["jwks_uri"], srv.jwks_url());
    assert_eq!(srv.discovery_hits(), 2);

    // The jwks_uri of the discovery document really serves the keys.
    let (_, jwks2) = get_json(&c, doc["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(jwks2, jwks);

    // Swapping keys.
    let rsa2 = TestKey::rsa("rsa-2", Algorithm::PS256);
    srv.set_keys(&[&rsa2]);
    let (_, jwks) = get_json(&c, &srv.jwks_url()).await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"], "rsa-2");
    assert_eq!(jwks["keys"][0]["alg"], "PS256");

    // Down: everything 503, still counted.
    srv.set_down(true);
    assert_eq!(get_json(&c, &srv.jwks_url()).await.0, 503);
    let disco = format!("{}/.well-known/openid-configuration", srv.issuer("x"));
    assert_eq!(get_json(&c, &disco).await.0, 503);
    srv.set_down(false);
    assert_eq!(get_json(&c, &srv.jwks_url()).await.0, 200);
    assert_eq!(srv.jwks_hits(), 5);
    assert_eq!(srv.discovery_hits(), 3);

    // Stop: the port is closed, also for the client's kept-alive connection.
    let port = srv.port();
    srv.stop().await;
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(c.get(srv.jwks_url()).send().await.is_err());

    // restart(): same port, same keys and counters.
    srv.restart().await;
    assert_eq!(srv.port(), port);
    let (status, jwks) = get_json(&c, &srv.jwks_url()).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"][0]["kid"], "rsa-2");
    assert_eq!(srv.jwks_hits(), 6);

    // start_on(port) after a drop: a fresh server on the same port.
    drop(srv);
    let srv = JwksServer::start_on(port).await;
    assert_eq!(srv.port(), port);
    let (status, jwks) = get_json(&c, &srv.jwks_url()).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 0);
    assert_eq!(srv.jwks_hits(), 1);
}

#[tokio::test]
async fn every_key_kind_verifies_with_its_served_jwk() {
    let keys = [
        TestKey::rsa("rs256", Algorithm::RS256),
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
    let srv = JwksServer::with_keys(&refs).await;
    let (_, jwks) = get_json(&common::client(), &srv.jwks_url()).await;

    let p256 = &jwks["keys"][6];
    assert_eq!(p256["x"].as_str().unwrap().len(), 43, "32 bytes, base64url");
    assert_eq!(p256["y"].as_str().unwrap().len(), 43);
    let p384 = &jwks["keys"][7];
    assert_eq!(p384["crv"], "P-384");
    assert_eq!(p384["x"].as_str().unwrap().len(), 64, "48 bytes, base64url");
    let ed = &jwks["keys"][8];
    assert_eq!(ed["kty"], "OKP");
    assert_eq!(ed["crv"], "Ed25519");
    assert_eq!(ed["alg"], "EdDSA");
    assert_eq!(ed["x"].as_str().unwrap().len(), 43);
    for k in jwks["keys"].as_array().unwrap() {
        assert_eq!(k["use"], "sig");
        for field in ["n", "e", "x", "y"] {
            if let Some(s) = k.get(field) {
                let s = s.as_str().unwrap();
                assert!(
                    !s.contains(['=', '+', '/']),
                    "{field} not base64url without padding: {s}"
                );
            }
        }
    }

    for key in &keys {
        let claims = auth::claims("https://issuer.test", "stoa", "alice");
        let token = key.sign(&claims);
        let got = verify_with_served_jwk(&jwks, &key.kid, key.alg, &token);
        assert_eq!(got, claims);

        // The other keys' JWKs do not verify it.
        let other = keys.iter().find(|k| k.kid != key.kid && k.alg == key.alg);
        if let Some(other) = other {
            let jwk: Jwk = serde_json::from_value(other.jwk.clone()).unwrap();
            let dk = DecodingKey::from_jwk(&jwk).unwrap();
            let mut v = Validation::new(key.alg);
            v.set_audience(&["stoa"]);
            assert!(jsonwebtoken::decode::<Value>(&token, &dk, &v).is_err());
        }

        // The public PEM is the same key.
        let pem_key = match key.alg {
            Algorithm::ES256 | Algorithm::ES384 => {
                DecodingKey::from_ec_pem(key.public_pem.as_bytes())
            }
            Algorithm::EdDSA => DecodingKey::from_ed_pem(key.public_pem.as_bytes()),
            _ => DecodingKey::from_rsa_pem(key.public_pem.as_bytes()),
        }
        .unwrap();
        let mut v = Validation::new(key.alg);
        v.set_audience(&["stoa"]);
        jsonwebtoken::decode::<Value>(&token, &pem_key, &v).expect("verifies with public_pem");

        let no_kid = key.sign_without_kid(&claims);
        assert_eq!(jsonwebtoken::decode_header(&no_kid).unwrap().kid, None);
    }
}

#[test]
fn forged_tokens_have_the_expected_shape() {
    let rsa = TestKey::rsa("rsa-1", Algorithm::RS256);
    let claims = auth::claims("https://issuer.test", "stoa", "mallory");
    let now = auth::now();
    assert!(claims["exp"].as_u64().unwrap() >= now + 299);
    assert!(claims["iat"].as_u64().unwrap() <= now);

    let none = auth::unsigned_alg_none_token(&claims);
    let parts: Vec<&str> = none.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[2], "");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header: Value = serde_json::from_slice(&b64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header, serde_json::json!({"alg": "none", "typ": "JWT"}));
    let payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(payload, claims);

    // Key confusion: HS256 with the RSA public key PEM as the HMAC secret.
    let forged = auth::hs256_token_with_secret(&claims, rsa.public_pem.as_bytes(), Some("rsa-1"));
    let h = jsonwebtoken::decode_header(&forged).unwrap();
    assert_eq!(h.alg, Algorithm::HS256);
    assert_eq!(h.kid.as_deref(), Some("rsa-1"));
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["stoa"]);
    let dk = DecodingKey::from_secret(rsa.public_pem.as_bytes());
    assert_eq!(
        jsonwebtoken::decode::<Value>(&forged, &dk, &v)
            .unwrap()
            .claims,
        claims
    );
    assert!(rsa.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
}

fn port_closed(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err()
}

#[test]
fn redis_server_starts_stops_and_restarts() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
    assert!(redis.ping());
    assert_eq!(redis.cmd(&["SET", "k", "41"]), Resp::Simple("OK".into()));
    assert_eq!(redis.cmd(&["INCR", "k"]), Resp::Int(42));
    assert_eq!(redis.cmd(&["GET", "k"]).as_int(), Some(42));
    assert_eq!(redis.cmd(&["GET", "missing"]), Resp::Bulk(None));
    assert_eq!(redis.keys("*"), vec!["k".to_string()]);
    assert!(matches!(redis.cmd(&["NOSUCHCOMMAND"]), Resp::Error(_)));
    // No persistence configured.
    assert_eq!(
        redis.cmd(&["CONFIG", "GET", "save"]),
        Resp::Array(Some(vec![
            Resp::Bulk(Some("save".into())),
            Resp::Bulk(Some(String::new()))
        ]))
    );

    redis.stop();
    assert!(!redis.ping());
    assert!(port_closed(port), "port {port} still open after stop()");

    redis.restart();
    assert_eq!(redis.port(), port);
    assert!(redis.ping());
    assert_eq!(
        redis.keys("*"),
        Vec::<String>::new(),
        "a restart starts empty"
    );

    // A frozen server accepts connections but does not answer.
    redis.freeze();
    assert!(!redis.ping());
    redis.thaw();
    assert!(redis.ping());
    redis.flushall();

    drop(redis);
    assert!(port_closed(port), "port {port} still open after drop");
}
