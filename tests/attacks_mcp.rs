//! The attack suite, second part: what an anonymous MCP client, a crafted token or a config
//! edit could cost (issue 13, items 4, 5, 8, 9, 11), against the real binary.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::get;
use axum::Json;
use common::auth::{b64url, claims, hs256_token_with_secret};
use common::mcp::{initialize, json_of, post};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

/// A tool backend: `/users/{id}`, counting calls.
async fn users_api() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = axum::Router::new().route(
        "/users/{id}",
        get(move |Path(id): Path<u64>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Json(json!({"id": id}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

fn mcp_config(api: std::net::SocketAddr, before: &str) -> String {
    format!(
        r#"
listeners:
  - name: mcp
    address: "127.0.0.1:@PORT@"
    chains: [mcp]
chains:
  mcp:
{before}    - type: mcp
      session_secret: "attack-suite-session-secret-0123"
      tools:
        - name: get_user
          description: A user by id
          input_schema: {{ type: object, required: [id], properties: {{ id: {{ type: integer }} }} }}
          backend: {{ url: "http://{api}/users/{{id}}" }}
"#
    )
}

fn call(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
           "params": {"name": "get_user", "arguments": {"id": id}}})
}

#[tokio::test]
async fn a_client_supplied_object_is_capped_before_it_is_kept() {
    let (api, _) = users_api().await;
    let gw = Gateway::start(&mcp_config(api, "")).await;
    let url = gw.url("/mcp");
    let big = "x".repeat(900 * 1024);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {"experimental": {"blob": big}},
        "clientInfo": {"name": "hog", "version": "0"}}})
    .to_string();
    let (status, headers, text) = post(&url, &body, None, &[]).await;
    assert_eq!(status, 200, "{text}");
    let v = json_of(&text);
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("16384"),
        "{v}"
    );
    assert!(
        !headers.contains_key("mcp-session-id"),
        "a session was opened"
    );
    // The legacy transport, whose sessions keep capabilities in the process, refuses the same.
    let mut sse = client().get(gw.url("/sse")).send().await.unwrap();
    let first = String::from_utf8_lossy(&sse.chunk().await.unwrap().unwrap()).into_owned();
    let endpoint = first
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("endpoint event")
        .to_string();
    let r = client()
        .post(gw.url(&endpoint))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut answer = String::new();
    while !answer.contains("\n\n") || !answer.contains("data: ") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), sse.chunk())
            .await
            .expect("an answer on the stream")
            .unwrap()
            .unwrap();
        answer.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(answer.contains("-32602"), "{answer}");
    // A normal client still gets its session.
    let (version, session) = initialize(&url, "2025-06-18").await;
    assert_eq!(version, "2025-06-18");
    assert!(!session.is_empty());
}

#[tokio::test]
async fn batches_are_bounded_and_every_call_in_one_counts() {
    let (api, hits) = users_api().await;
    let limit =
        "    - type: rate_limit\n      key: \"{{ client_ip }}\"\n      requests_per_minute: 20\n";
    let gw = Gateway::start(&mcp_config(api, limit)).await;
    let url = gw.url("/mcp");
    let (_, session) = initialize(&url, "2025-03-26").await;
    let batch = |from: u64, n: u64| Value::Array((from..from + n).map(call).collect()).to_string();
    // Larger than max_batch (32): refused whole, nothing called.
    let (status, _, text) = post(&url, &batch(1, 33), Some(&session), &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("max_batch"), "{text}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // Ten calls: ten backend calls, and ten units of the HTTP rate limit (1 + 1 + 10 = 12).
    let (status, _, text) = post(&url, &batch(1, 10), Some(&session), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(json_of(&text).as_array().unwrap().len(), 10);
    assert_eq!(hits.load(Ordering::SeqCst), 10);
    // Ten more would make 22 of 20: refused before any call is made.
    let (status, _, text) = post(&url, &batch(11, 10), Some(&session), &[]).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(json_of(&text)["error"]["code"], -32004);
    assert_eq!(hits.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_replies_are_never_dropped() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let (api, hits) = users_api().await;
    let gw = Gateway::start(&mcp_config(api, "")).await;
    let mut request = format!("ws://127.0.0.1:{}/ws", gw.port)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "mcp".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "ws", "version": "0"}}});
    tx.send(Message::text(init.to_string())).await.unwrap();
    let first = rx.next().await.unwrap().unwrap();
    assert!(first.to_text().unwrap().contains("protocolVersion"));
    const CALLS: u64 = 5000;
    // All at once, while the replies are read: the gateway must answer every one.
    let sender = tokio::spawn(async move {
        for id in 1..=CALLS {
            tx.send(Message::text(call(id).to_string())).await.unwrap();
        }
        tx
    });
    let mut seen = std::collections::HashSet::new();
    while seen.len() < CALLS as usize {
        let frame = tokio::time::timeout(Duration::from_secs(60), rx.next())
            .await
            .expect("a reply within 60 s (one was dropped?)")
            .unwrap()
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        assert!(v.get("result").is_some(), "{v}");
        seen.insert(v["id"].as_u64().unwrap());
    }
    let _tx = sender.await.unwrap();
    assert_eq!(seen.len(), CALLS as usize);
    assert_eq!(hits.load(Ordering::SeqCst), CALLS as usize);
}

const JWT_SECRET: &str = "attack-suite-hmac-secret-0123456789";

fn jwt_config(up: &Upstream) -> String {
    format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: jwt
      issuer: https://issuer.example
      audiences: [stoa-gateway]
      hmac_secret: "{JWT_SECRET}"
      algorithms: [HS256]
      from_query: access_token
    - type: router
      routes:
        - {{ name: rest, match: {{ path_prefix: / }}, cluster: up }}
clusters:
  up:
    endpoints: ["{}"]
"#,
        up.address()
    )
}

/// An HS256 token whose header carries `extra` fields (e.g. `crit`).
fn token_with_header(claims: &Value, extra: Value) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    for (k, v) in extra.as_object().unwrap() {
        header[k] = v.clone();
    }
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{signature}")
}

#[tokio::test]
async fn tokens_with_unknown_critical_headers_are_refused_and_query_tokens_stay_here() {
    let up = echo("up").await;
    let gw = Gateway::start(&jwt_config(&up)).await;
    let c = claims("https://issuer.example", "stoa-gateway", "alice");
    let plain = token_with_header(&c, json!({}));
    let r = client()
        .get(gw.url("/x"))
        .bearer_auth(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the hand-made token is valid without crit");
    let crit = token_with_header(&c, json!({"crit": ["exp-ext"], "exp-ext": 1}));
    let r = client()
        .get(gw.url("/x"))
        .bearer_auth(&crit)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a token with an unknown crit header was accepted"
    );
    // A token from ?access_token= is verified, then taken out of the forwarded query.
    let token = hs256_token_with_secret(&c, JWT_SECRET.as_bytes(), None);
    let v = get_echo(
        &client(),
        &gw.url(&format!("/x?a=1&access_token={token}&b=2")),
    )
    .await;
    assert_eq!(v["query"], "a=1&b=2", "{v}");
    let v = get_echo(&client(), &gw.url(&format!("/y?access_token={token}"))).await;
    assert_eq!(v["query"], Value::Null, "{v}");
    assert_eq!(v["path"], "/y");
}

#[tokio::test]
async fn config_errors_never_print_a_secret() {
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "listeners:\n  - { name: a, address: \"127.0.0.1:1\", chains: [c] }\nchains:\n  c:\n    - type: jwt\n      issuer: x\n      hmac_secret: \"do-not-print-me-0123456789\"\n      leeway: banana\n      client_secret: nor-me-9876543210\n",
    )
    .unwrap();
    let (status, out, err) = run_to_end(
        &["--check", "-c", &file.display().to_string()],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    let all = format!("{out}{err}");
    assert!(all.contains("leeway"), "{all}");
    assert!(all.contains("banana"), "the snippet is still shown: {all}");
    assert!(!all.contains("do-not-print-me"), "{all}");
    assert!(!all.contains("nor-me-9876543210"), "{all}");
}

#[tokio::test]
async fn a_reload_with_a_bad_value_does_not_log_the_secret_next_to_it() {
    let up = echo("up").await;
    let gw = Gateway::start(&jwt_config(&up)).await;
    let bad = jwt_config(&up).replace(
        "      algorithms: [HS256]\n",
        "      algorithms: [HS256]\n      leeway: banana\n",
    );
    gw.write_config(&bad);
    gw.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let all = loop {
        let all = format!("{}{}", gw.stdout(), gw.stderr());
        if all.contains("banana") {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reload error was not logged: {all}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!all.contains(JWT_SECRET), "the secret reached the log");
}
