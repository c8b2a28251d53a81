//! The `mcp` filter end to end: the real binary terminating MCP's Streamable HTTP transport,
//! tools calling a real REST API written here, the official Python SDK (`mcp`) as the client,
//! raw JSON-RPC for the error paths, and sessions shared by two gateway processes behind a
//! third one used as a plain round-robin load balancer.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post as post_route};
use axum::Json;
use common::mcp::*;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "test-session-secret-0123456789";

/// The REST API the tools call: users by id, a search, and order creation (which records the
/// bodies it received).
struct Api {
    addr: std::net::SocketAddr,
    orders: Arc<Mutex<Vec<Value>>>,
    /// `/users/{id}` requests served.
    user_hits: Arc<AtomicUsize>,
    /// `/slow` requests started, and those whose handler was dropped (client went away).
    slow_started: Arc<AtomicUsize>,
    slow_dropped: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

/// Counts a drop: the handler future went away before finishing.
struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn api() -> Api {
    let orders: Arc<Mutex<Vec<Value>>> = Arc::default();
    let user_hits = Arc::new(AtomicUsize::new(0));
    let slow_started = Arc::new(AtomicUsize::new(0));
    let slow_dropped = Arc::new(AtomicUsize::new(0));
    let (hits, started, dropped) = (
        user_hits.clone(),
        slow_started.clone(),
        slow_dropped.clone(),
    );
    let app = axum::Router::new()
        .route(
            "/slow",
            get(move || async move {
                started.fetch_add(1, Ordering::SeqCst);
                let flag = DropFlag(dropped);
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                std::mem::forget(flag);
                Json(json!({"slow": true}))
            }),
        )
        .route(
            "/users/{id}",
            get(move |Path(id): Path<u64>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                if id == 404 {
                    (
                        StatusCode::NOT_FOUND,
                        Json(json!({"error": "no such user"})),
                    )
                } else {
                    (
                        StatusCode::OK,
                        Json(json!({"id": id, "name": format!("user-{id}")})),
                    )
                }
            }),
        )
        .route(
            "/search",
            get(
                |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                    Json(json!([{"name": q.get("q").cloned().unwrap_or_default()}]))
                },
            ),
        )
        .route(
            "/tenants/{tenant}/orders",
            post_route(
                |State(orders): State<Arc<Mutex<Vec<Value>>>>,
                 Path(tenant): Path<String>,
                 Json(body): Json<Value>| async move {
                    orders.lock().unwrap().push(body.clone());
                    Json(json!({"tenant": tenant, "order": body, "status": "created"}))
                },
            ),
        )
        .with_state(orders.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    Api {
        addr,
        orders,
        user_hits,
        slow_started,
        slow_dropped,
        _task: tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }),
    }
}

/// A gateway whose one listener serves MCP at /mcp with three tools over `api`.
fn mcp_config(api: &Api, extra: &str) -> String {
    let a = api.addr;
    format!(
        r#"
listeners:
  - name: mcp
    address: "127.0.0.1:@PORT@"
    chains: [mcp]
chains:
  mcp:
    - type: mcp
      page_size: 2
      session_secret: "{SECRET}"
      allowed_origins: ["https://agent.example"]
{extra}      tools:
        - name: get_user
          description: Look a user up by id
          input_schema:
            type: object
            required: [id]
            properties: {{ id: {{ type: integer, minimum: 1 }} }}
          annotations: {{ readOnlyHint: true }}
          backend: {{ url: "http://{a}/users/{{id}}" }}
        - name: search_users
          description: Search users by name
          input_schema:
            type: object
            required: [q]
            properties: {{ q: {{ type: string }} }}
          backend: {{ url: "http://{a}/search", query: [q] }}
        - name: create_order
          description: Create an order for a tenant
          input_schema:
            type: object
            required: [tenant, item]
            properties:
              tenant: {{ type: string }}
              item: {{ type: string }}
              quantity: {{ type: integer }}
          backend: {{ method: POST, url: "http://{a}/tenants/{{tenant}}/orders", timeout: 2s }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_lists_and_calls_rest_tools() {
    let api = api().await;
    let gw = Gateway::start(&mcp_config(&api, "")).await;
    let out = tokio::task::spawn_blocking({
        let url = gw.url("/mcp");
        move || {
            python_client(
                &url,
                "tools",
                &[
                    r#"get_user={"id": 42}"#,
                    r#"get_user={"id": 404}"#,
                    r#"get_user={"id": 0}"#,
                    r#"search_users={"q": "ada lovelace"}"#,
                    r#"create_order={"tenant": "acme corp", "item": "book", "quantity": 2}"#,
                ],
            )
        }
    })
    .await
    .unwrap();

    assert_eq!(out["initialize"]["protocolVersion"], "2025-11-25", "{out}");
    assert_eq!(out["initialize"]["serverInfo"]["name"], "stoa-gateway");
    // Three tools over two pages of two (cursor pagination).
    assert_eq!(out["pages"], 2, "{out}");
    let names: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["get_user", "search_users", "create_order"]);
    assert_eq!(out["tools"][0]["annotations"]["readOnlyHint"], true);
    assert_eq!(out["tools"][0]["inputSchema"]["required"], json!(["id"]));

    let calls = out["calls"].as_array().unwrap();
    // Backend JSON -> structuredContent + its text.
    assert_eq!(calls[0]["isError"], false, "{}", calls[0]);
    assert_eq!(
        calls[0]["structuredContent"],
        json!({"id": 42, "name": "user-42"})
    );
    let text: Value =
        serde_json::from_str(calls[0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text["name"], "user-42");
    // A backend HTTP error is a tool error, not a transport error.
    assert_eq!(calls[1]["isError"], true, "{}", calls[1]);
    let t = calls[1]["content"][0]["text"].as_str().unwrap();
    assert!(t.contains("404") && t.contains("no such user"), "{t}");
    // Arguments violating the schema never reach the backend.
    assert_eq!(calls[2]["isError"], true, "{}", calls[2]);
    assert!(
        calls[2]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("minimum"),
        "{}",
        calls[2]
    );
    // Query mapping, and a JSON array wrapped as structured content.
    assert_eq!(
        calls[3]["structuredContent"],
        json!({"result": [{"name": "ada lovelace"}]})
    );
    // Path argument percent-encoded, the rest as the JSON body.
    assert_eq!(
        calls[4]["structuredContent"]["tenant"], "acme corp",
        "{}",
        calls[4]
    );
    assert_eq!(
        *api.orders.lock().unwrap(),
        vec![json!({"item": "book", "quantity": 2})]
    );

    let m = gw.metrics().await;
    let count = |tool: &str, status: &str| {
        metric_value(
            &m,
            "mcp_requests_total",
            &[("method", "tools/call"), ("tool", tool), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("get_user", "ok"), 1.0, "{m}");
    assert_eq!(count("get_user", "tool_error"), 1.0);
    assert_eq!(count("get_user", "invalid_arguments"), 1.0);
    assert!(
        m.contains("mcp_tool_call_duration_seconds_count{tool=\"create_order\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_lists_calls_and_ends_its_session() {
    let api = api().await;
    let gw = Gateway::start(&mcp_config(&api, "")).await;
    let out = tokio::task::spawn_blocking({
        let url = gw.url("/mcp");
        move || {
            typescript_client(
                &url,
                &[
                    r#"get_user={"id": 7}"#,
                    r#"create_order={"tenant": "t1", "item": "pen"}"#,
                    "get_user={}",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out["protocolVersion"], "2025-11-25", "{out}");
    assert_eq!(out["serverInfo"]["name"], "stoa-gateway");
    assert_eq!(
        (out["pages"].clone(), out["tools"].as_array().unwrap().len()),
        (json!(2), 3)
    );
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(
        calls[0]["structuredContent"],
        json!({"id": 7, "name": "user-7"}),
        "{out}"
    );
    assert_eq!(calls[1]["structuredContent"]["status"], "created", "{out}");
    assert_eq!(
        calls[2]["isError"], true,
        "a missing required argument: {out}"
    );
    assert_eq!(*api.orders.lock().unwrap(), vec![json!({"item": "pen"})]);
    // The client ended its session with DELETE: the id is no longer accepted.
    let sid = out["sessionId"].as_str().unwrap();
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert_eq!(post(&gw.url("/mcp"), ping, Some(sid), &[]).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_errors_and_transport_rules() {
    let api = api().await;
    let gw = Gateway::start(&mcp_config(&api, "      max_body: 4KiB\n")).await;
    let url = gw.url("/mcp");

    // Version negotiation: a version we speak is kept, an unknown one gets our latest.
    assert_eq!(initialize(&url, "2024-11-05").await.0, "2024-11-05");
    assert_eq!(initialize(&url, "2025-06-18").await.0, "2025-06-18");
    assert_eq!(initialize(&url, "1999-01-01").await.0, "2025-11-25");
    let (_, sid) = initialize(&url, "2025-06-18").await;

    // Invalid JSON -> -32700, id null.
    let (status, _, text) = post(&url, "{not json", Some(&sid), &[]).await;
    let v = json_of(&text);
    assert_eq!(
        (status, v["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{text}"
    );
    assert_eq!(v["id"], Value::Null);
    // Unknown method -> -32601 with the request's id.
    let (status, _, text) = post(
        &url,
        r#"{"jsonrpc":"2.0","id":"a7","method":"nope/nope"}"#,
        Some(&sid),
        &[],
    )
    .await;
    let v = json_of(&text);
    assert_eq!(
        (status, v["error"]["code"].as_i64(), v["id"].clone()),
        (200, Some(-32601), json!("a7"))
    );
    // Not JSON-RPC 2.0 -> -32600 with the id.
    let (_, _, text) = post(
        &url,
        r#"{"jsonrpc":"1.0","id":9,"method":"ping"}"#,
        Some(&sid),
        &[],
    )
    .await;
    let v = json_of(&text);
    assert_eq!(
        (v["error"]["code"].as_i64(), v["id"].clone()),
        (Some(-32600), json!(9))
    );
    // Unknown tool and missing name -> -32602.
    let (_, _, text) = post(
        &url,
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"ghost"}}"#,
        Some(&sid),
        &[],
    )
    .await;
    assert_eq!(json_of(&text)["error"]["code"], -32602, "{text}");
    let (_, _, text) = post(
        &url,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{}}"#,
        Some(&sid),
        &[],
    )
    .await;
    assert_eq!(json_of(&text)["error"]["code"], -32602, "{text}");
    // ping works; a notification and a client response get 202 with no body.
    let (status, _, text) = post(
        &url,
        r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
        Some(&sid),
        &[],
    )
    .await;
    assert_eq!((status, json_of(&text)["result"].clone()), (200, json!({})));
    let (status, _, text) = post(
        &url,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        Some(&sid),
        &[],
    )
    .await;
    assert_eq!((status, text.as_str()), (202, ""));
    let (status, _, _) = post(
        &url,
        r#"{"jsonrpc":"2.0","id":"srv-1","result":{}}"#,
        Some(&sid),
        &[],
    )
    .await;
    assert_eq!(status, 202);

    // Sessions: none -> 400, forged -> 404, wrong version header -> 400.
    let ping = r#"{"jsonrpc":"2.0","id":6,"method":"ping"}"#;
    assert_eq!(post(&url, ping, None, &[]).await.0, 400);
    assert_eq!(post(&url, ping, Some("forged.session"), &[]).await.0, 404);
    let (status, _, text) = post(
        &url,
        ping,
        Some(&sid),
        &[("mcp-protocol-version", "2031-01-01")],
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(
        post(
            &url,
            ping,
            Some(&sid),
            &[("mcp-protocol-version", "2025-03-26")]
        )
        .await
        .0,
        400
    );
    assert_eq!(
        post(
            &url,
            ping,
            Some(&sid),
            &[("mcp-protocol-version", "2025-06-18")]
        )
        .await
        .0,
        200
    );

    // Batches only where the version has them (2025-03-26).
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":2,"method":"nope"}]"#;
    let (status, _, text) = post(&url, batch, Some(&sid), &[]).await;
    assert_eq!(status, 400, "{text}");
    let (_, old) = initialize(&url, "2025-03-26").await;
    let (status, _, text) = post(&url, batch, Some(&old), &[]).await;
    let v = json_of(&text);
    assert_eq!(status, 200, "{text}");
    assert_eq!(v[0]["id"], 1);
    assert_eq!(
        (v[1]["id"].clone(), v[1]["error"]["code"].clone()),
        (json!(2), json!(-32601))
    );
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "no reply for the notification"
    );
    // structuredContent only from 2025-06-18 on.
    let call = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"get_user","arguments":{"id":5}}}"#;
    let v = json_of(&post(&url, call, Some(&old), &[]).await.2);
    assert!(v["result"].get("structuredContent").is_none(), "{v}");
    let v = json_of(&post(&url, call, Some(&sid), &[]).await.2);
    assert_eq!(v["result"]["structuredContent"]["id"], 5, "{v}");

    // Origin: a foreign one is refused, localhost and configured ones pass.
    assert_eq!(
        post(&url, ping, Some(&sid), &[("origin", "http://evil.example")])
            .await
            .0,
        403
    );
    assert_eq!(
        post(
            &url,
            ping,
            Some(&sid),
            &[("origin", "http://localhost:5173")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(
            &url,
            ping,
            Some(&sid),
            &[("origin", "https://agent.example")]
        )
        .await
        .0,
        200
    );
    // Oversized body -> 413.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":8,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(5000)
    );
    assert_eq!(post(&url, &big, Some(&sid), &[]).await.0, 413);
    // GET opens the server's SSE stream (406 without text/event-stream, 400 without a session).
    let get = |accept: &'static str, session: Option<String>| {
        let mut rb = client().get(&url).header("accept", accept);
        if let Some(s) = session {
            rb = rb.header("mcp-session-id", s);
        }
        rb.send()
    };
    assert_eq!(
        get("application/json", Some(sid.clone()))
            .await
            .unwrap()
            .status(),
        406
    );
    assert_eq!(get("text/event-stream", None).await.unwrap().status(), 400);
    assert_eq!(
        get("text/event-stream", Some("forged".into()))
            .await
            .unwrap()
            .status(),
        404
    );
    let mut stream = get("text/event-stream", Some(sid.clone())).await.unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let first = stream.chunk().await.unwrap().unwrap();
    assert_eq!(&first[..], b": stream open\n\n");
    // PUT is not a transport method.
    let r = client().put(&url).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST, DELETE");
    // DELETE ends the session; it is then unknown (404).
    let r = client()
        .delete(&url)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(post(&url, ping, Some(&sid), &[]).await.0, 404);
    // ... and ends its stream (a hang guard, not a performance bound).
    let rest = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut rest = Vec::new();
        while let Some(chunk) = stream.chunk().await.unwrap() {
            rest.extend_from_slice(&chunk);
        }
        rest
    })
    .await
    .expect("the stream ends after DELETE");
    assert!(
        rest.iter().all(|b| b.is_ascii()),
        "only keep-alive comments were left"
    );
    let r = client().delete(&url).send().await.unwrap();
    assert_eq!(r.status(), 400, "DELETE without a session id");
}

/// Two gateways sharing the session secret behind a third one balancing round robin (no
/// stickiness): the SDK's session opened on one works on the other, and survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_work_across_replicas_and_restarts() {
    let api = api().await;
    let a = Gateway::start(&mcp_config(&api, "")).await;
    let b = Gateway::start(&mcp_config(&api, "")).await;
    let lb = Gateway::start(&format!(
        r#"
listeners:
  - name: lb
    address: "127.0.0.1:@PORT@"
    chains: [lb]
chains:
  lb:
    - type: router
      routes:
        - {{ name: mcp, match: {{ path_prefix: / }}, cluster: replicas }}
clusters:
  replicas:
    endpoints: [127.0.0.1:{}, 127.0.0.1:{}]
    selection: round_robin
"#,
        a.port, b.port
    ))
    .await;

    let url = lb.url("/mcp");
    let out = tokio::task::spawn_blocking(move || {
        python_client(
            &url,
            "tools",
            &[
                r#"get_user={"id": 1}"#,
                r#"get_user={"id": 2}"#,
                r#"get_user={"id": 3}"#,
            ],
        )
    })
    .await
    .unwrap();
    for call in out["calls"].as_array().unwrap() {
        assert_eq!(call["isError"], false, "{out}");
    }
    // Both replicas answered requests of the one session.
    for gw in [&a, &b] {
        let n = gw
            .metric(
                "mcp_requests_total",
                &[
                    ("method", "tools/call"),
                    ("tool", "get_user"),
                    ("status", "ok"),
                ],
            )
            .await
            .unwrap_or(0.0);
        assert!(n >= 1.0, "a replica served no tools/call");
    }

    // A session opened on `a` keeps working on a fresh process started after `a` is gone.
    let (_, sid) = initialize(&a.url("/mcp"), "2025-11-25").await;
    drop(a);
    let c = Gateway::start(&mcp_config(&api, "")).await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_user","arguments":{"id":9}}}"#;
    let (status, _, text) = post(&c.url("/mcp"), call, Some(&sid), &[]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        json_of(&text)["result"]["structuredContent"]["id"],
        9,
        "{text}"
    );
    // A gateway with another secret does not know the session.
    let other =
        Gateway::start(&mcp_config(&api, "").replace(SECRET, "another-secret-0123456789")).await;
    assert_eq!(post(&other.url("/mcp"), call, Some(&sid), &[]).await.0, 404);
}

/// `conf/edge-mcp.yaml` as shipped (its ports moved to free ones): the Python SDK lists its
/// example tools and calls each against the demo API the same process serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_edge_mcp_config_serves_its_example_tools() {
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/edge-mcp.yaml"))
            .unwrap();
    let yaml = shipped
        .replace("0.0.0.0:3001", "127.0.0.1:@PORT@")
        .replace("127.0.0.1:3002", "127.0.0.1:@PORT2@")
        .replace("127.0.0.1:3003", &format!("127.0.0.1:{}", free_port()))
        .replace("127.0.0.1:9901", "127.0.0.1:@ADMIN@");
    assert_ne!(yaml, shipped);
    let gw = Gateway::start(&yaml).await;
    let url = gw.url("/mcp");
    let out = tokio::task::spawn_blocking(move || {
        python_client(
            &url,
            "tools",
            &[
                r#"get_order={"order_id": "1001"}"#,
                r#"list_products={"category": "books"}"#,
                r#"create_ticket={"order_id": "1001", "subject": "late delivery"}"#,
                r#"get_order={"order_id": "abc"}"#,
                r#"catalog_products_by_category={"category": "tools"}"#,
            ],
        )
    })
    .await
    .unwrap();
    let names: Vec<&str> = out["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // The federated upstream's tool follows the gateway's own.
    assert_eq!(
        names,
        [
            "get_order",
            "list_products",
            "create_ticket",
            "catalog_products_by_category"
        ]
    );
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[0]["structuredContent"]["status"], "shipped", "{out}");
    assert_eq!(
        calls[1]["structuredContent"]["result"][0]["sku"], "BK-1",
        "{out}"
    );
    assert_eq!(calls[2]["structuredContent"]["ticket"], "T-1", "{out}");
    assert_eq!(
        calls[3]["isError"], true,
        "the pattern refuses a non-numeric id: {out}"
    );
    assert_eq!(
        calls[4]["structuredContent"]["result"][1]["sku"], "TL-7",
        "{out}"
    );
}

const MCP_POLICY: &str = r#"package stoa.mcp

import rego.v1

default allow := false

# Admins may call every tool.
allow if "admin" in input.roles

# Everyone signed in may read.
allow if {
	input.token != null
	input.mcp.tool in {"get_user", "search_users"}
}

# Orders: listed for everyone signed in, callable only for the caller's own tenant.
allow if {
	input.token != null
	input.mcp.tool == "create_order"
	input.mcp.arguments == null
}

allow if {
	input.mcp.tool == "create_order"
	input.mcp.arguments.tenant == input.tenant
}

arg_tenant := t if {
	t := input.mcp.arguments.tenant
} else := null

reason := sprintf("%s may not call %s for tenant %v", [input.subject, input.mcp.tool, arg_tenant])

decision := {"allow": allow, "reason": reason}
"#;

/// Per-tool governance: the `jwt` filter in front, a Rego policy deciding per tool and tenant.
/// A tool the caller may not call is absent from `tools/list` and refused on `tools/call`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_decides_per_tool_and_tenant() {
    use common::auth::{claims, JwksServer, TestKey};
    let api = api().await;
    let key = TestKey::ec_p256("mcp-key");
    let jwks = JwksServer::with_keys(&[&key]).await;
    let dir = tempfile::TempDir::new().unwrap();
    let policy = dir.path().join("mcp.rego");
    std::fs::write(&policy, MCP_POLICY).unwrap();
    let mut yaml = mcp_config(
        &api,
        &format!(
            "      policy:\n        policy: \"{}\"\n        query: data.stoa.mcp.decision\n",
            policy.display()
        ),
    );
    // The admin-only tool, and the jwt filter in front of mcp.
    yaml.push_str(&format!(
        r#"        - name: delete_user
          description: Delete a user
          input_schema: {{ type: object, required: [id], properties: {{ id: {{ type: integer }} }} }}
          backend: {{ method: DELETE, url: "http://{}/users/{{id}}" }}
"#,
        api.addr
    ));
    let yaml = yaml.replace(
        "  mcp:\n    - type: mcp\n",
        &format!(
            "  mcp:\n    - type: jwt\n      issuer: \"https://issuer.mcp.test\"\n      audiences: [stoa-mcp]\n      jwks_url: \"{}\"\n      protected_resource: {{ resource: \"http://127.0.0.1:@PORT@/mcp\" }}\n    - type: mcp\n",
            jwks.jwks_url()
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let token = |sub: &str, tenant: &str, roles: &[&str]| {
        let mut c = claims("https://issuer.mcp.test", "stoa-mcp", sub);
        c["tenant"] = json!(tenant);
        c["roles"] = json!(roles);
        key.sign(&c)
    };
    let run = |bearer: String| {
        let url = gw.url("/mcp");
        async move {
            tokio::task::spawn_blocking(move || {
                python_client_as(
                    Some(&bearer),
                    &url,
                    "tools",
                    &[
                        r#"get_user={"id": 1}"#,
                        r#"create_order={"tenant": "acme", "item": "pen"}"#,
                        r#"create_order={"tenant": "globex", "item": "pen"}"#,
                        r#"delete_user={"id": 1}"#,
                    ],
                )
            })
            .await
            .unwrap()
        }
    };
    let names = |out: &Value| -> Vec<String> {
        out["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };

    let user = run(token("ann", "acme", &["viewer"])).await;
    assert_eq!(
        names(&user),
        ["get_user", "search_users", "create_order"],
        "{user}"
    );
    let calls = user["calls"].as_array().unwrap();
    assert_eq!(calls[0]["isError"], false, "{user}");
    assert_eq!(calls[1]["structuredContent"]["tenant"], "acme", "{user}");
    assert_eq!(
        calls[2]["error"]["code"], -32003,
        "another tenant's order: {user}"
    );
    let msg = calls[2]["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("ann may not call create_order for tenant globex"),
        "{msg}"
    );
    assert_eq!(calls[3]["error"]["code"], -32003, "admin-only tool: {user}");
    assert_eq!(
        *api.orders.lock().unwrap(),
        vec![json!({"item": "pen"})],
        "refused calls never reach the API"
    );

    let admin = run(token("root", "ops", &["admin"])).await;
    assert_eq!(
        names(&admin),
        ["get_user", "search_users", "create_order", "delete_user"],
        "{admin}"
    );
    assert!(admin["calls"][3].get("error").is_none(), "{admin}");

    // Without a token the jwt filter answers 401 before MCP starts.
    let r = client()
        .post(gw.url("/mcp"))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // ... naming the RFC 9728 metadata, which is served without a token.
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let metadata = gw.url("/.well-known/oauth-protected-resource/mcp");
    assert!(
        challenge.starts_with("Bearer")
            && challenge.contains(&format!("resource_metadata=\"{metadata}\"")),
        "{challenge}"
    );
    let doc: Value = client()
        .get(&metadata)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["resource"], gw.url("/mcp"));
    assert_eq!(
        doc["authorization_servers"],
        json!(["https://issuer.mcp.test"])
    );
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    let denied = gw
        .metric(
            "mcp_requests_total",
            &[
                ("method", "tools/call"),
                ("tool", "create_order"),
                ("status", "denied"),
            ],
        )
        .await;
    assert_eq!(denied, Some(1.0));
}

/// Results of idempotent tools are reused per tool, arguments and tenant; others are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_tool_results_are_cached() {
    let api = api().await;
    let yaml = mcp_config(&api, "      result_cache: { ttl: 60s }\n").replace(
        "annotations: { readOnlyHint: true }",
        "annotations: { readOnlyHint: true, idempotentHint: true }",
    );
    let gw = Gateway::start(&yaml).await;
    let url = gw.url("/mcp");
    let (_, sid) = initialize(&url, "2025-11-25").await;
    let call = |id: u64, user: u64| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": "get_user", "arguments": {"id": user}}})
        .to_string()
    };
    let first = json_of(&post(&url, &call(1, 5), Some(&sid), &[]).await.2);
    let second = json_of(&post(&url, &call(2, 5), Some(&sid), &[]).await.2);
    assert_eq!(
        first["result"], second["result"],
        "the cached result is the same"
    );
    assert_eq!(second["id"], 2, "with this request's id");
    assert_eq!(
        api.user_hits.load(Ordering::SeqCst),
        1,
        "the second call was served from the cache"
    );
    post(&url, &call(3, 6), Some(&sid), &[]).await;
    assert_eq!(
        api.user_hits.load(Ordering::SeqCst),
        2,
        "other arguments: a miss"
    );
    // A tool not marked idempotent is never cached.
    let search = r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"search_users","arguments":{"q":"x"}}}"#;
    post(&url, search, Some(&sid), &[]).await;
    post(&url, search, Some(&sid), &[]).await;
    let m = gw.metrics().await;
    let cache = |result: &str| {
        metric_value(
            &m,
            "mcp_tool_cache_total",
            &[("tool", "get_user"), ("result", result)],
        )
    };
    assert_eq!((cache("hit"), cache("miss")), (Some(1.0), Some(2.0)), "{m}");
    assert!(metric_value(
        &m,
        "mcp_tool_cache_total",
        &[("tool", "search_users"), ("result", "miss")]
    )
    .is_none());
    // Errors are not cached: the 404 user is asked twice.
    post(&url, &call(5, 404), Some(&sid), &[]).await;
    post(&url, &call(6, 404), Some(&sid), &[]).await;
    assert_eq!(api.user_hits.load(Ordering::SeqCst), 4);
}

/// `notifications/cancelled` aborts the call in flight and its backend request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_stop_their_backend_request() {
    let api = api().await;
    let yaml = mcp_config(&api, "").replace(
        "      tools:\n",
        &format!(
            "      tools:\n        - name: slow\n          description: never answers in time\n          backend: {{ url: \"http://{}/slow\", timeout: 60s }}\n",
            api.addr
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let url = gw.url("/mcp");
    let (_, sid) = initialize(&url, "2025-11-25").await;
    let call = tokio::spawn({
        let (url, sid) = (url.clone(), sid.clone());
        async move {
            post(
                &url,
                r#"{"jsonrpc":"2.0","id":"slow-1","method":"tools/call","params":{"name":"slow"}}"#,
                Some(&sid),
                &[],
            )
            .await
        }
    });
    // Wait until the backend has the request, then cancel it.
    for _ in 0..200 {
        if api.slow_started.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(api.slow_started.load(Ordering::SeqCst), 1);
    let cancel = r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow-1","reason":"user gave up"}}"#;
    assert_eq!(post(&url, cancel, Some(&sid), &[]).await.0, 202);
    // A hang guard, not a performance bound: the backend would take 30 s.
    let (status, _, text) = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("the cancelled call answers")
        .unwrap();
    let v = json_of(&text);
    assert_eq!(
        (status, v["id"].clone(), v["error"]["code"].clone()),
        (200, json!("slow-1"), json!(-32800)),
        "{text}"
    );
    for _ in 0..200 {
        if api.slow_dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        api.slow_dropped.load(Ordering::SeqCst),
        1,
        "the backend request was closed"
    );
}

/// `tool_rate_limit` counts per caller and tool: a busy tool is refused (-32004) while the
/// caller's other tools still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_rate_limits_count_per_caller_and_tool() {
    let api = api().await;
    let gw = Gateway::start(&mcp_config(
        &api,
        "      tool_rate_limit: { requests_per_minute: 2 }\n",
    ))
    .await;
    let url = gw.url("/mcp");
    let (_, sid) = initialize(&url, "2025-11-25").await;
    let call = |id: u64, tool: &str, args: Value| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}})
            .to_string()
    };
    let mut codes = Vec::new();
    for i in 0..3 {
        let v = json_of(
            &post(
                &url,
                &call(i, "get_user", json!({"id": 1})),
                Some(&sid),
                &[],
            )
            .await
            .2,
        );
        codes.push(v["error"]["code"].as_i64());
    }
    assert_eq!(codes, [None, None, Some(-32004)]);
    assert_eq!(
        api.user_hits.load(Ordering::SeqCst),
        2,
        "the refused call never reached the API"
    );
    let v = json_of(
        &post(
            &url,
            &call(9, "search_users", json!({"q": "a"})),
            Some(&sid),
            &[],
        )
        .await
        .2,
    );
    assert_eq!(
        v["result"]["isError"], false,
        "another tool has its own budget: {v}"
    );
    let limited = gw
        .metric(
            "mcp_requests_total",
            &[
                ("method", "tools/call"),
                ("tool", "get_user"),
                ("status", "rate_limited"),
            ],
        )
        .await;
    assert_eq!(limited, Some(1.0));
}

fn tool_resource(name: &str, api: &Api) -> String {
    format!(
        r#"apiVersion: gostoa.dev/v1alpha1
kind: Tool
metadata:
  name: {name}
  namespace: default
  labels: {{ app: users }}
spec:
  description: Look a user up (from a Tool resource)
  inputSchema:
    type: object
    required: [id]
    properties: {{ id: {{ type: integer }} }}
  backend:
    url: "http://{}/users/{{id}}"
"#,
        api.addr
    )
}

/// Tools from a directory of `kind: Tool` resources; a reload picks up a new file, and a
/// session opened before the reload lists and calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_resources_from_a_directory_and_reload() {
    let api = api().await;
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("a-user.yaml"),
        tool_resource("crd-user", &api),
    )
    .unwrap();
    std::fs::write(dir.path().join("README.txt"), "not a tool").unwrap();
    let yaml = mcp_config(
        &api,
        &format!("      tools_dir: \"{}\"\n", dir.path().display()),
    );
    let gw = Gateway::start(&yaml).await;
    let url = gw.url("/mcp");
    let (_, sid) = initialize(&url, "2025-11-25").await;
    let list = |cursor: Option<String>| {
        let params = cursor.map_or(json!({}), |c| json!({"cursor": c}));
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}).to_string()
    };
    let names = || async {
        let (mut names, mut cursor) = (Vec::new(), None);
        loop {
            let v = json_of(&post(&url, &list(cursor.take()), Some(&sid), &[]).await.2);
            for t in v["result"]["tools"].as_array().unwrap() {
                names.push(t["name"].as_str().unwrap().to_string());
            }
            match v["result"]["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return names,
            }
        }
    };
    assert_eq!(
        names().await,
        ["get_user", "search_users", "create_order", "crd-user"]
    );

    // A session ended before the reload stays ended after it.
    let (_, ended) = initialize(&url, "2025-11-25").await;
    let r = client()
        .delete(&url)
        .header("mcp-session-id", &ended)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    std::fs::write(
        dir.path().join("b-user.yaml"),
        tool_resource("crd-user-2", &api),
    )
    .unwrap();
    // The directory is watched: the new file reloads the config (no SIGHUP).
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "ok")],
        std::time::Duration::from_secs(10),
        |v| v >= Some(1.0),
    )
    .await;
    assert_eq!(
        names().await,
        [
            "get_user",
            "search_users",
            "create_order",
            "crd-user",
            "crd-user-2"
        ],
        "the session opened before the reload sees the new tool"
    );
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"crd-user-2","arguments":{"id":3}}}"#;
    let v = json_of(&post(&url, call, Some(&sid), &[]).await.2);
    assert_eq!(v["result"]["structuredContent"]["name"], "user-3", "{v}");
    assert_eq!(
        post(&url, call, Some(&ended), &[]).await.0,
        404,
        "terminated before the reload"
    );

    // A broken resource is refused naming the file; the old tools keep serving.
    std::fs::write(dir.path().join("c-bad.yaml"), "apiVersion: gostoa.dev/v1alpha1\nkind: Prompt\nmetadata: { name: x }\nspec: { backend: { url: \"http://x/\" } }\n").unwrap();
    gw.wait_metric(
        "stoa_config_reloads_total",
        &[("result", "error")],
        std::time::Duration::from_secs(10),
        |v| v >= Some(1.0),
    )
    .await;
    assert!(gw.stderr().contains("c-bad.yaml"), "{}", gw.stderr());
    assert_eq!(names().await.len(), 5);
}

/// A reload that adds a tool: the SDK client, connected before it, receives
/// `notifications/tools/list_changed` on its GET stream and then lists the new tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_notifies_connected_clients_that_tools_changed() {
    let api = api().await;
    let dir = tempfile::TempDir::new().unwrap();
    let yaml = mcp_config(
        &api,
        &format!(
            "      tools_dir: \"{}\"\n      sse_keepalive: 200ms\n",
            dir.path().display()
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_client.py");
    let client = Command::new("python3")
        .args([script, &gw.url("/mcp"), "watch"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // Once the client's stream is open, add a tool and reload.
    let open = gw
        .wait_metric(
            "mcp_sse_streams",
            &[],
            std::time::Duration::from_secs(20),
            |v| v >= Some(1.0),
        )
        .await;
    assert!(open >= Some(1.0), "the SDK client opened no GET stream");
    // ... and it has listed the tools (two pages of two; its stream may open before that).
    gw.wait_metric(
        "mcp_requests_total",
        &[("method", "tools/list"), ("tool", ""), ("status", "ok")],
        std::time::Duration::from_secs(20),
        |v| v >= Some(2.0),
    )
    .await;
    std::fs::write(
        dir.path().join("new.yaml"),
        tool_resource("brand_new", &api),
    )
    .unwrap();
    gw.signal(libc::SIGHUP);
    let out = tokio::task::spawn_blocking(move || client.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_of(stdout.trim());
    assert_eq!(v["notified"], true, "{v}");
    assert_eq!(
        v["before"],
        json!(["get_user", "search_users", "create_order"])
    );
    assert_eq!(
        v["after"],
        json!(["get_user", "search_users", "create_order", "brand_new"])
    );
}

/// The 2024-11-05 HTTP+SSE transport: the Python SDK's `sse_client` gets the `endpoint`
/// event, POSTs its messages there and reads the answers from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_over_the_legacy_sse_transport() {
    let api = api().await;
    let gw = Gateway::start(&mcp_config(&api, "")).await;
    let url = gw.url("/sse");
    let out = tokio::task::spawn_blocking(move || {
        python_client(
            &url,
            "tools",
            &[r#"get_user={"id": 11}"#, r#"get_user={"id": 0}"#, "ghost="],
        )
    })
    .await
    .unwrap();
    assert_eq!(out["initialize"]["protocolVersion"], "2024-11-05", "{out}");
    assert_eq!(out["pages"], 2);
    assert_eq!(out["tools"].as_array().unwrap().len(), 3);
    let calls = out["calls"].as_array().unwrap();
    assert_eq!(calls[0]["isError"], false, "{out}");
    let text: Value =
        serde_json::from_str(calls[0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(text["name"], "user-11");
    assert!(
        calls[0].get("structuredContent").is_none(),
        "2024-11-05 has no structuredContent"
    );
    assert_eq!(calls[1]["isError"], true);
    assert_eq!(calls[2]["error"]["code"], -32602, "unknown tool: {out}");

    // Raw: an unknown session is 404; the POST answers 202 and the reply goes to the stream.
    let r = client()
        .post(gw.url("/messages?session_id=forged"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mut stream = client().get(gw.url("/sse")).send().await.unwrap();
    let first = String::from_utf8(stream.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let endpoint = first
        .strip_prefix("event: endpoint\ndata: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{first:?}"))
        .to_string();
    assert!(endpoint.starts_with("/messages?session_id="), "{endpoint}");
    let r = client()
        .post(gw.url(&endpoint))
        .body(r#"{"jsonrpc":"2.0","id":"p1","method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let event = String::from_utf8(stream.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let data = event
        .strip_prefix("id: 1\ndata: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("{event:?}"));
    assert_eq!(
        json_of(data),
        json!({"jsonrpc": "2.0", "id": "p1", "result": {}})
    );
}
