//! Shadow mode end to end (contract discovery): the real binary in front of a real
//! legacy-style API written here. Passthrough is transparent; opted-in traffic is captured,
//! masked, stored (and survives a restart), purged by retention; contracts are inferred,
//! exported as OpenAPI 3.1 (checked by `openapi-spec-validator`), reviewed with every read
//! audited, exported to a control plane once approved, and enforced by `uac_validation` in
//! proxy mode.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Json;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EMAIL: &str = "grace.hopper@navy.example";
const CARD: &str = "4111 1111 1111 1111";
const JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJncmFjZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg";
const API_KEY: &str = "sk_live_51HxQzLkJ8abcdefghij";

/// A legacy API with no documentation: users, their orders, items (list and create), and an
/// internal endpoint that is not opted in.
async fn legacy_api() -> std::net::SocketAddr {
    let app = axum::Router::new()
        .route(
            "/users/{id}",
            get(|UrlPath(id): UrlPath<String>| async move {
                let numeric = id.parse::<i64>().ok();
                Json(json!({
                    "id": numeric.map(Value::from).unwrap_or(Value::from(id.clone())),
                    "name": format!("User {id}"),
                    "email": EMAIL,
                    "card": CARD,
                    "created_at": "2026-11-23T10:00:00Z",
                    "nickname": if numeric.is_some_and(|n| n % 2 == 0) { Value::Null } else { json!("gh") },
                }))
            }),
        )
        .route(
            "/users/{id}/orders/{order}",
            get(|UrlPath((_, order)): UrlPath<(String, i64)>| async move {
                Json(json!({"order_id": order, "total": 12.5, "status": "paid"}))
            }),
        )
        .route(
            "/api/v1/items",
            get(|Query(q): Query<std::collections::HashMap<String, String>>| async move {
                let page: i64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                Json(json!({"page": page, "items": [{"sku": "A-1", "price": 1.5}, {"sku": "B-2", "price": 3.0}]}))
            })
            .post(|Json(body): Json<Value>| async move {
                (StatusCode::CREATED, Json(json!({"id": 99, "sku": body["sku"]})))
            }),
        )
        .route("/internal/health", get(|| async { "fine" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A control plane that records the contracts POSTed to it.
async fn control_plane() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/contracts",
            post(
                |State(got): State<Arc<Mutex<Vec<Value>>>>, Json(v): Json<Value>| async move {
                    got.lock().unwrap().push(v);
                    StatusCode::CREATED
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/contracts"), got)
}

fn shadow_config(legacy: std::net::SocketAddr, store: &Path, extra: &str) -> String {
    format!(
        r#"
gateway:
  mode: shadow
listeners:
  - name: shadow
    address: "127.0.0.1:@PORT@"
    chains: [shadow]
chains:
  shadow:
    - type: router
      routes:
        - name: legacy
          match: {{ path_prefix: / }}
          cluster: legacy
          preserve_host: true
          forwarded_for: false
clusters:
  legacy:
    endpoints: ["{legacy}"]
shadow:
  store:
    path: "{store}"
  opt_in:
    - name: legacy
      path_prefix: /users/
    - name: legacy
      path_prefix: /api/
{extra}"#,
        store = store.display()
    )
}

/// One raw HTTP/1.1 exchange: the response head's status line and header lines, and the body.
async fn raw(addr: &str, request: &str) -> (Vec<String>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    (
        head.split("\r\n").map(String::from).collect(),
        buf[split + 4..].to_vec(),
    )
}

/// An admin GET as `actor` (`X-Stoa-Actor`), or with a reviewer's token (`bearer:TOKEN`).
async fn admin_get(gw: &Gateway, path: &str, actor: Option<&str>) -> reqwest::Response {
    let mut r = client().get(gw.admin_url(path));
    match actor.map(|a| a.strip_prefix("bearer:").ok_or(a)) {
        Some(Ok(token)) => r = r.bearer_auth(token),
        Some(Err(a)) => r = r.header("x-stoa-actor", a),
        None => {}
    }
    r.send().await.unwrap()
}

async fn admin_json(gw: &Gateway, path: &str) -> Value {
    admin_json_as(gw, path, "alice").await
}

async fn admin_json_as(gw: &Gateway, path: &str, actor: &str) -> Value {
    let r = admin_get(gw, path, Some(actor)).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// Traffic with PII in it: users (ids numeric and UUID), their orders, item pages and
/// creations, an internal endpoint.
async fn send_traffic(gw: &Gateway) {
    let c = client();
    for i in 0..12 {
        let r = c
            .get(gw.url(&format!("/users/{}", 100 + i * 37)))
            .header("authorization", format!("Bearer {JWT}"))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let uuid = format!("7f3c9a2e-1b4d-4c8e-9f0a-{:012x}", 0xabc000 + i);
        let r = c
            .get(gw.url(&format!("/users/{uuid}/orders/{}", 40 + i)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .get(gw.url(&format!("/api/v1/items?page={}&token={API_KEY}", i + 1)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = c
            .post(gw.url("/api/v1/items"))
            .json(&json!({"sku": format!("S-{i}"), "price": 2.5, "owner_email": EMAIL, "card_number": CARD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let r = c.get(gw.url("/internal/health")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

async fn wait_stored(gw: &Gateway, actor: &str, at_least: u64) {
    for _ in 0..100 {
        let v = admin_json_as(
            gw,
            "/uac/observations?api=legacy&limit=1&reason=wait",
            actor,
        )
        .await;
        if v["total"].as_u64().unwrap_or(0) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {at_least} samples stored");
}

/// Every file of the store's directory (the database and its WAL) as bytes.
fn store_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        all.extend(std::fs::read(e.unwrap().path()).unwrap_or_default());
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `openapi-spec-validator` on a document: Ok, or its complaint.
fn validate_openapi(doc: &[u8], ext: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("openapi.{ext}"));
    std::fs::write(&file, doc).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs (the test command installs openapi-spec-validator)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_captures_masks_infers_and_exports() {
    let legacy = legacy_api().await;
    let (plane_url, plane) = control_plane().await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("shadow.db");
    let yaml = shadow_config(
        legacy,
        &store,
        &format!(
            "  uac_generation:\n    export_to_control_plane: true\n    control_plane_url: \"{plane_url}\"\n"
        ),
    );
    let mut gw = Gateway::start(&yaml).await;

    // Transparent passthrough: the same bytes, status and headers (names, order, values; the
    // date aside) with and without the gateway.
    let request = |host: &str| {
        format!("GET /users/42?x=1 HTTP/1.1\r\nHost: {host}\r\nX-Custom-Header: Kept\r\nConnection: close\r\n\r\n")
    };
    let direct = raw(&legacy.to_string(), &request("legacy.example")).await;
    let through = raw(
        &format!("127.0.0.1:{}", gw.port),
        &request("legacy.example"),
    )
    .await;
    // Pingora writes its own `Connection` header (capitalised) when it closes the connection.
    let without_date = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
            .map(|l| {
                if l.to_ascii_lowercase().starts_with("connection:") {
                    l.to_ascii_lowercase()
                } else {
                    l.clone()
                }
            })
            .collect()
    };
    assert_eq!(through.1, direct.1, "body");
    assert_eq!(
        without_date(&through.0),
        without_date(&direct.0),
        "status and headers"
    );

    send_traffic(&gw).await;
    // 12 × (user, order, item page, item creation) + the passthrough request, all opted in.
    wait_stored(&gw, "alice", 49).await;
    assert_eq!(
        gw.metric(
            "stoa_shadow_captures_total",
            &[("api", "-"), ("result", "not_opted_in")]
        )
        .await,
        Some(12.0),
        "/internal/health is not captured"
    );
    let obs = admin_json(
        &gw,
        "/uac/observations?api=legacy&limit=1000&reason=debugging",
    )
    .await;
    let samples = obs["samples"].as_array().unwrap();
    assert!(samples
        .iter()
        .all(|s| !s["path"].as_str().unwrap().starts_with("/internal")));
    let user = samples
        .iter()
        .find(|s| s["path"] == "/users/100")
        .expect("a user sample");
    let headers: Value = user["request_headers"].clone();
    assert!(
        headers
            .to_string()
            .contains("\"authorization\",\"<secret>\""),
        "{headers}"
    );
    assert!(user["response_body"].as_str().unwrap().contains("<email>"));
    assert!(user["response_body"].as_str().unwrap().contains("<card>"));

    // Nothing secret reached the store's files.
    let bytes = store_bytes(store_dir.path());
    assert!(bytes.len() > 4096);
    for secret in [
        EMAIL,
        CARD,
        "4111111111111111",
        JWT,
        "eyJhbGciOiJSUzI1NiJ9",
        API_KEY,
    ] {
        assert!(!contains(&bytes, secret), "`{secret}` is in the store");
    }
    assert!(contains(&bytes, "<email>"), "the masked samples are there");

    // The inferred contract.
    let list = admin_json(&gw, "/uac/contracts?reason=weekly+review").await;
    assert_eq!(list["contracts"][0]["id"], "legacy", "{list}");
    assert_eq!(list["contracts"][0]["status"], "draft");
    let c = admin_json(&gw, "/uac/contracts/legacy?reason=weekly+review").await;
    let draft = &c["draft"];
    let ids: Vec<&str> = draft["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "GET /api/v1/items",
            "POST /api/v1/items",
            "GET /users/{userId}",
            "GET /users/{userId}/orders/{orderId}"
        ],
        "{draft}"
    );
    let endpoint = |id: &str| {
        draft["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .unwrap()
            .clone()
    };
    let items = endpoint("GET /api/v1/items");
    assert_eq!(items["query_parameters"][0]["name"], "page");
    assert_eq!(items["query_parameters"][0]["required"], true);
    assert_eq!(items["query_parameters"][0]["schema"]["type"], "integer");
    let item_schema = &items["responses"]["200"]["schema"];
    assert_eq!(
        item_schema["properties"]["items"]["items"]["properties"]["price"]["type"],
        "number"
    );
    let users = endpoint("GET /users/{userId}");
    assert_eq!(users["path_parameters"][0]["schema"]["type"], "integer");
    let user_schema = &users["responses"]["200"]["schema"];
    assert_eq!(user_schema["properties"]["email"]["format"], "email");
    assert_eq!(
        user_schema["properties"]["created_at"]["format"],
        "date-time"
    );
    assert_eq!(
        user_schema["properties"]["nickname"]["type"],
        json!(["null", "string"])
    );
    assert!(users["confidence"].as_f64().unwrap() >= 0.8);
    let orders = endpoint("GET /users/{userId}/orders/{orderId}");
    assert_eq!(orders["path_parameters"][0]["schema"]["format"], "uuid");
    assert_eq!(orders["path_parameters"][1]["schema"]["type"], "integer");
    let create = endpoint("POST /api/v1/items");
    assert_eq!(
        create["request"]["schema"]["required"],
        json!(["card_number", "owner_email", "price", "sku"])
    );
    assert_eq!(
        create["responses"]["201"]["content_types"],
        json!(["application/json"])
    );

    // OpenAPI 3.1, JSON and YAML, both valid for a real validator.
    let r = admin_get(
        &gw,
        "/uac/openapi?api=legacy&format=json&reason=publish",
        Some("alice"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let spec = r.bytes().await.unwrap();
    validate_openapi(&spec, "json").unwrap();
    let spec: Value = serde_json::from_slice(&spec).unwrap();
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(spec["paths"]["/users/{userId}/orders/{orderId}"]["get"].is_object());
    let r = admin_get(
        &gw,
        "/uac/openapi?api=legacy&format=yaml&reason=publish",
        Some("alice"),
    )
    .await;
    assert_eq!(r.headers()["content-type"], "application/yaml");
    validate_openapi(&r.bytes().await.unwrap(), "yaml").unwrap();

    // Reads need a caller and a reason.
    let r = admin_get(&gw, "/uac/contracts?reason=x", None).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let r = admin_get(&gw, "/uac/contracts", Some("alice")).await;
    assert_eq!(r.status(), 400);

    // Nothing exported before approval; the approval records the approver and exports.
    assert!(plane.lock().unwrap().is_empty());
    let r = admin_request(
        reqwest::Method::POST,
        gw.admin_url("/uac/contracts/legacy/approve"),
    )
    .header("x-stoa-actor", "alice")
    .json(&json!({"reason": "matches the vendor's manual"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["approved_by"], "alice");
    assert_eq!(approved["control_plane"]["exported"], true, "{approved}");
    {
        let got = plane.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["id"], "legacy");
        assert_eq!(got[0]["status"], "approved");
        assert_eq!(got[0]["approved_by"], "alice");
    }

    // The CLI exports through the admin API.
    let admin = format!("--admin-address=127.0.0.1:{}", gw.admin_port);
    let (status, out, err) = tokio::task::spawn_blocking(move || {
        run_to_end(
            &[
                "uac", "export", "--api", "legacy", "--format", "openapi", "--reason", "docs",
                "--actor", "bob", &admin,
            ],
            Duration::from_secs(20),
        )
    })
    .await
    .unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("openapi:") && out.contains("3.1.0"), "{out}");
    validate_openapi(out.as_bytes(), "yaml").unwrap();

    // Every read left an audit record: who, what, why.
    let audit = admin_json(&gw, "/uac/audit?reason=compliance").await;
    let records = audit["records"].as_array().unwrap();
    let has = |who: &str, action: &str, reason: &str| {
        records
            .iter()
            .any(|r| r["who"] == who && r["action"] == action && r["reason"] == reason)
    };
    assert!(has("alice", "read_observations", "debugging"), "{audit}");
    assert!(has("alice", "list_contracts", "weekly review"));
    assert!(has("alice", "read_contract", "weekly review"));
    assert!(has("alice", "export_openapi", "publish"));
    assert!(has("alice", "approve", "matches the vendor's manual"));
    assert!(has("bob", "export_openapi", "docs"));
    assert!(has("alice", "read_audit", "compliance"));

    // A restart keeps the observations and the approval.
    let before = admin_json(&gw, "/uac/observations?api=legacy&limit=1&reason=restart").await
        ["total"]
        .clone();
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(20)).await.is_some());
    let gw = Gateway::start(&yaml).await;
    let after = admin_json(&gw, "/uac/observations?api=legacy&limit=1&reason=restart").await;
    assert_eq!(after["total"], before);
    let c = admin_json(&gw, "/uac/contracts/legacy?reason=restart").await;
    assert_eq!(c["approved_by"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_mode_keeps_observing_and_enforces_an_approved_contract() {
    let legacy = legacy_api().await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("shadow.db");
    let yaml = format!(
        r#"
gateway:
  mode: proxy
listeners:
  - name: enforce
    address: "127.0.0.1:@PORT@"
    chains: [enforce]
  - name: observe
    address: "127.0.0.1:@PORT2@"
    chains: [observe]
chains:
  enforce:
    - type: uac_validation
      contract: legacy
    - type: router
      routes:
        - name: legacy
          match: {{ path_prefix: / }}
          cluster: legacy
  observe:
    - type: uac_validation
      contract: legacy
      mode: observe
    - type: router
      routes:
        - name: legacy
          match: {{ path_prefix: / }}
          cluster: legacy
clusters:
  legacy:
    endpoints: ["{legacy}"]
shadow:
  keep_observing: true
  retention: 3s
  store:
    path: "{store}"
  opt_in:
    - name: legacy
      path_prefix: /users/
    - name: legacy
      path_prefix: /api/
  reviewers:
    - name: carol
      token_env: STOA_TEST_REVIEWER_TOKEN
"#,
        store = store.display()
    );
    let gw = Gateway::builder()
        .config(&yaml)
        .env("STOA_TEST_REVIEWER_TOKEN", "reviewer-secret-token-1")
        .start()
        .await;
    // No approved contract yet: everything passes, and proxy mode captures (keep_observing).
    send_traffic(&gw).await;
    wait_stored(&gw, "bearer:reviewer-secret-token-1", 48).await;
    let c = client();
    let admin = |path: &str, token: &str| c.get(gw.admin_url(path)).bearer_auth(token.to_string());
    let r = admin("/uac/contracts?reason=review", "wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = admin("/uac/contracts?reason=review", "reviewer-secret-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["contracts"][0]["samples"], 48, "{list}");
    let r = c
        .post(gw.admin_url("/uac/contracts/legacy/approve"))
        .bearer_auth("reviewer-secret-token-1")
        .json(&json!({"reason": "week 3: human review done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["approved_by"], "carol");
    assert_eq!(approved["control_plane"]["exported"], false);

    // Enforce: requests that follow the contract pass, violations get 400 with the reason.
    let ok = c.get(gw.url("/users/7")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    // The traffic always carried `token` too, so the contract requires it.
    let ok = c
        .get(gw.url("/api/v1/items?page=3&token=t"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = c
        .post(gw.url("/api/v1/items"))
        .json(
            &json!({"sku": "S-9", "price": 1.0, "owner_email": "a@b.example", "card_number": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201, "a valid body still reaches the API whole");
    for (req, kind) in [
        (
            c.get(gw.url("/users/not-a-number")),
            "path parameter `userId`",
        ),
        (
            c.get(gw.url("/api/v1/items?token=t")),
            "query parameter `page` is required",
        ),
        (
            c.get(gw.url("/api/v1/items?page=two&token=t")),
            "query parameter `page`",
        ),
        (
            c.delete(gw.url("/users/7")),
            "not an operation of the contract",
        ),
        (
            c.post(gw.url("/api/v1/items")).json(&json!({"sku": "S-9"})),
            "body",
        ),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["contract"], "legacy");
        assert!(
            body["violations"].to_string().contains(kind),
            "{kind}: {body}"
        );
    }
    assert!(gw
        .metric(
            "stoa_uac_validation_total",
            &[("contract", "legacy"), ("result", "body_schema")]
        )
        .await
        .is_some_and(|v| v >= 1.0));
    // Observe: the same violation is counted and passed on.
    let r = c.get(gw.url2("/users/not-a-number")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Retention (3 s here): the samples are purged; the approved contract stays.
    gw.wait_metric(
        "stoa_shadow_purged_samples_total",
        &[],
        Duration::from_secs(15),
        |v| v.is_some_and(|n| n >= 48.0),
    )
    .await;
    let r = admin(
        "/uac/observations?api=legacy&reason=retention+check",
        "reviewer-secret-token-1",
    )
    .send()
    .await
    .unwrap();
    let obs: Value = r.json().await.unwrap();
    let old = obs["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["path"] == "/users/100")
        .count();
    assert_eq!(old, 0, "{obs}");
    let r = c.get(gw.url("/users/not-a-number")).send().await.unwrap();
    assert_eq!(r.status(), 400, "the approved contract is still enforced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_line_start_and_a_full_queue() {
    let legacy = legacy_api().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("one-line.db");
    // The one-line start: `stoa-gateway --mode=shadow --target=http://legacy-erp:8080`.
    let gw = Gateway::builder()
        .no_config_flag()
        .arg("--mode=shadow")
        .arg(format!("--target=http://{legacy}"))
        .arg("--port=@PORT@")
        .arg("--admin-address=127.0.0.1:@ADMIN@")
        .arg(format!("--shadow-store={}", store.display()))
        .start()
        .await;
    let r = client().get(gw.url("/users/5")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "stoa_shadow_captures_total",
        &[("api", "127.0.0.1"), ("result", "queued")],
        Duration::from_secs(10),
        |v| v == Some(1.0),
    )
    .await;
    assert!(store.exists());

    // A queue of one: a burst is served whole; what the queue cannot take is dropped and
    // counted, never waited for.
    let legacy2 = legacy_api().await;
    let yaml = shadow_config(
        legacy2,
        &dir.path().join("burst.db"),
        "  capture:\n    queue: 1\n",
    );
    let gw = Gateway::start(&yaml).await;
    let url = gw.url("/users/1");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 200);
    }
    let counted = |result: &'static str| {
        let gw = &gw;
        async move {
            gw.metric(
                "stoa_shadow_captures_total",
                &[("api", "legacy"), ("result", result)],
            )
            .await
            .unwrap_or(0.0)
        }
    };
    let (queued, dropped) = (counted("queued").await, counted("dropped_queue_full").await);
    assert_eq!(
        queued + dropped,
        200.0,
        "queued {queued}, dropped {dropped}"
    );
}

#[test]
fn bad_shadow_settings_are_config_errors_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Retention beyond the 30-day maximum.
        (
            "shadow:\n  retention: 40d\n  opt_in: [{ name: erp }]\n",
            "shadow.retention",
            ":11:",
        ),
        // Shadow mode with nothing to say what may be captured.
        ("", "`mode: shadow` needs a `shadow:` section", ""),
        // An unknown key.
        ("shadow:\n  retension: 7d\n", "retension", ":11:"),
    ];
    for (i, (shadow, expected, line)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.yaml"));
        std::fs::write(
            &file,
            format!(
                "gateway:\n  mode: shadow\nlisteners:\n  - {{ name: l, address: \"127.0.0.1:1\", chains: [c] }}\nchains:\n  c: [{{ type: router, routes: [{{ name: r, match: {{ path_prefix: / }}, cluster: b }}] }}]\nclusters:\n  b: {{ endpoints: [\"127.0.0.1:2\"] }}\n\n{shadow}"
            ),
        )
        .unwrap();
        let (status, out, err) = run_to_end(
            &["--check", "-c", file.to_str().unwrap()],
            Duration::from_secs(20),
        );
        assert!(!status.success(), "{out}");
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(err.contains(line), "{line}: {err}");
    }
}

/// `--check` validates the store path without creating anything: a store under a regular file
/// is refused, a store in a directory that does not exist yet is fine and is not created.
#[test]
fn check_validates_the_store_path_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let config = |store: &std::path::Path| {
        format!(
            "gateway:\n  mode: shadow\nlisteners:\n  - {{ name: l, address: \"127.0.0.1:1\", chains: [c] }}\nchains:\n  c: [{{ type: router, routes: [{{ name: r, match: {{ path_prefix: / }}, cluster: b }}] }}]\nclusters:\n  b: {{ endpoints: [\"127.0.0.1:2\"] }}\nshadow:\n  opt_in: [{{ name: erp }}]\n  store: {{ path: \"{}\" }}\n",
            store.display()
        )
    };
    let file = dir.path().join("good.yaml");
    let fresh = dir.path().join("later").join("shadow.db");
    std::fs::write(&file, config(&fresh)).unwrap();
    let (status, out, err) = run_to_end(
        &["--check", "-c", file.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(status.success(), "{out}{err}");
    assert!(
        !dir.path().join("later").exists(),
        "--check created the store"
    );

    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, config(&not_a_dir.join("shadow.db"))).unwrap();
    let (status, out, err) = run_to_end(
        &["--check", "-c", file.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "{out}");
    assert!(err.contains("is not a directory"), "{err}");
}
