//! Federation of upstream MCP servers end to end: the real binary in front of MCP servers
//! written with the official Python SDK (`tests/fixtures/mcp_upstream.py`, over Streamable HTTP
//! and over the 2024-11-05 SSE transport), used by the official Python and TypeScript SDK
//! clients: merged catalogs with prefixes and include/exclude lists, requests routed to the
//! owner, everything an upstream sends relayed (progress, logging, sampling, elicitation,
//! roots, resource updates), an upstream restart absorbed and a dead upstream degrading alone.

mod common;

use std::time::Duration;

use common::mcp::*;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "federation-session-secret-0123";

/// A gateway federating `a` (prefix `a_`) and `b` (prefix `b_`, without `touch` and the tools
/// that ask the client something), plus one tool of its own over the echo API `api`.
fn federation_config(a: &McpUpstream, b: &McpUpstream, api: &Upstream) -> String {
    format!(
        r#"
listeners:
  - name: mcp
    address: "127.0.0.1:@PORT@"
    chains: [mcp]
chains:
  mcp:
    - type: mcp
      session_secret: "{SECRET}"
      tools:
        - name: whoami
          description: Ask the REST API who is calling
          input_schema: {{ type: object }}
          backend: {{ url: "http://{api}/whoami" }}
      upstreams:
        - name: a
          url: "{a}"
          prefix: a_
        - name: b
          url: "{b}"
          prefix: b_
          exclude: [touch, "ask_*"]
          refresh: 1s
"#,
        a = a.url(),
        b = b.url(),
        api = api.address(),
    )
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

/// Run the Python SDK client in a blocking task.
async fn python(url: String, scenario: &'static str, args: Vec<String>) -> Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        python_client(&url, scenario, &args)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_catalogs_merge_and_requests_reach_their_owner() {
    let a = McpUpstream::start("alpha", "streamable");
    let b = McpUpstream::start("beta", "sse");
    let api = echo("api").await;
    let gw = Gateway::start(&federation_config(&a, &b, &api)).await;

    // Through prefix `a_` (Streamable HTTP upstream), from a Streamable HTTP client.
    let out = python(
        gw.url("/mcp"),
        "federation",
        vec!["--prefix".into(), "a_".into()],
    )
    .await;
    let tools = names(&out["tools"]);
    for t in [
        "whoami",
        "a_echo",
        "a_add",
        "a_touch",
        "a_ask_user",
        "b_echo",
        "b_add",
    ] {
        assert!(tools.contains(&t.to_string()), "{t} missing from {tools:?}");
    }
    for t in ["b_touch", "b_ask_user", "b_ask_model", "echo"] {
        assert!(!tools.contains(&t.to_string()), "{t} listed: {tools:?}");
    }
    assert_eq!(out["calls"]["echo"]["content"][0]["text"], "hi", "{out}");
    assert_eq!(out["calls"]["add"]["structuredContent"]["sum"], 5, "{out}");
    // Resources keep their URIs; the first upstream serving one answers it.
    assert_eq!(
        names(&out["resources"]),
        vec![
            "memo://greeting",
            "memo://alpha/status",
            "memo://beta/status"
        ]
    );
    assert_eq!(
        names(&out["resource_templates"]),
        vec!["memo://notes/{name}"]
    );
    assert_eq!(
        out["reads"]["memo://greeting"]["contents"][0]["text"],
        "hello from alpha"
    );
    assert_eq!(
        out["reads"]["memo://notes/x"]["contents"][0]["text"],
        "note alpha-x"
    );
    assert_eq!(names(&out["prompts"]), vec!["a_review", "b_review"]);
    assert_eq!(
        out["prompt"]["messages"][0]["content"]["text"],
        "Review this code: x=1"
    );
    assert_eq!(
        out["completions"]["prompt"],
        json!(["print(1)", "print(2)"])
    );
    assert_eq!(out["completions"]["template"], json!(["alpha"]));

    // Through prefix `b_` (the old SSE transport upstream), from an old-transport client.
    let out = python(
        gw.url("/sse"),
        "federation",
        vec!["--prefix".into(), "b_".into()],
    )
    .await;
    assert_eq!(out["calls"]["echo"]["content"][0]["text"], "hi", "{out}");
    assert_eq!(
        out["calls"]["add"]["content"][0]["text"]
            .as_str()
            .map(|t| t.contains('5')),
        Some(true),
        "{out}"
    );
    assert_eq!(
        out["prompt"]["messages"][0]["content"]["text"], "Review this code: x=1",
        "{out}"
    );

    // The TypeScript SDK sees the same server.
    let url = gw.url("/mcp");
    let ts = tokio::task::spawn_blocking(move || {
        typescript_client(&url, &[r#"b_echo={"text":"from ts"}"#, "whoami={}"])
    })
    .await
    .unwrap();
    let ts_tools: Vec<&str> = ts["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(ts_tools.contains(&"a_slow_progress") && ts_tools.contains(&"whoami"));
    assert_eq!(ts["calls"][0]["content"][0]["text"], "from ts", "{ts}");
    assert!(ts["calls"][1]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("/whoami"));

    gw.wait_metric(
        "mcp_upstream_requests_total",
        &[
            ("upstream", "b"),
            ("method", "tools/call"),
            ("status", "ok"),
        ],
        Duration::from_secs(5),
        |v| v.is_some_and(|v| v >= 3.0),
    )
    .await;
    assert_eq!(
        gw.metric("mcp_upstream_up", &[("upstream", "a")]).await,
        Some(1.0)
    );
    // Of the three sessions, the two Streamable HTTP ones ended with a DELETE; the old
    // transport's (which has no DELETE) is still counted as active.
    gw.wait_metric("mcp_active_sessions", &[], Duration::from_secs(15), |v| {
        v == Some(1.0)
    })
    .await;
    assert_eq!(
        gw.metric(
            "mcp_requests_total",
            &[
                ("method", "tools/call"),
                ("tool", "a_echo"),
                ("status", "ok")
            ]
        )
        .await,
        Some(1.0)
    );
}

fn assert_relayed(out: &Value, upstream: &str, with_elicitation: bool) {
    let results = &out["results"];
    assert_eq!(results["slow_progress"], "done", "{out}");
    assert_eq!(
        out["progress"],
        json!([
            {"progress": 1.0, "total": 3.0, "message": "step 1/3"},
            {"progress": 2.0, "total": 3.0, "message": "step 2/3"},
            {"progress": 3.0, "total": 3.0, "message": "step 3/3"}
        ]),
        "{out}"
    );
    let levels: Vec<&str> = out["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, vec!["info", "warning"], "{out}");
    assert_eq!(results["ask_model"], "sampled: 2+2?", "{out}");
    assert_eq!(out["sampling"], json!(["2+2?"]));
    assert_eq!(
        results["list_roots"], "file:///tmp/a,file:///tmp/b",
        "{out}"
    );
    assert_eq!(
        out["resource_updated"],
        json!([format!("memo://{upstream}/status")]),
        "{out}"
    );
    if with_elicitation {
        assert_eq!(results["ask_user"], "blue", "{out}");
        assert_eq!(out["elicitation"][0]["message"], "colour?");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_messages_and_requests_reach_the_client_and_back() {
    // Server-to-client requests on the POST's answer stream (a) and on the server stream (b).
    let a = McpUpstream::start("alpha", "streamable");
    let b = McpUpstream::start_on(
        free_port(),
        "beta",
        "streamable",
        &["--back-channel", "get"],
    );
    let legacy = McpUpstream::start("gamma", "sse");
    let api = echo("api").await;
    let yaml = federation_config(&a, &b, &api).replace(
        "          refresh: 1s\n",
        &format!(
            "          refresh: 1s\n        - name: c\n          url: \"{}\"\n          prefix: c_\n",
            legacy.url()
        ),
    );
    let yaml = yaml.replace("          exclude: [touch, \"ask_*\"]\n", "");
    let gw = Gateway::start(&yaml).await;
    for (prefix, upstream) in [("a_", "alpha"), ("b_", "beta"), ("c_", "gamma")] {
        let args = vec![
            "--prefix".into(),
            prefix.into(),
            "--upstream".into(),
            upstream.into(),
        ];
        let out = python(gw.url("/mcp"), "relay", args).await;
        assert_relayed(&out, upstream, true);
    }
    // An old-transport client (2024-11-05 has no elicitation).
    let args = vec![
        "--prefix".into(),
        "a_".into(),
        "--upstream".into(),
        "alpha".into(),
    ];
    let out = python(gw.url("/sse"), "relay", args).await;
    assert_relayed(&out, "alpha", false);
    gw.wait_metric(
        "mcp_upstream_requests_total",
        &[("upstream", "c"), ("method", "response"), ("status", "ok")],
        Duration::from_secs(5),
        |v| v.is_some_and(|v| v >= 3.0),
    )
    .await;
}

/// `tools/call` of `name` with raw JSON-RPC; the response.
async fn call(url: &str, session: &str, id: u64, name: &str, arguments: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": name, "arguments": arguments}});
    let (status, _, text) = post(url, &body.to_string(), Some(session), &[]).await;
    assert_eq!(status, 200, "{text}");
    answer_of(&text)
}

/// The JSON-RPC answer in a body: JSON, or the last event of an SSE stream.
fn answer_of(body: &str) -> Value {
    match body.lines().rev().find_map(|l| l.strip_prefix("data: ")) {
        Some(data) => json_of(data),
        None => json_of(body),
    }
}

async fn tool_names(url: &str, session: &str) -> Vec<String> {
    let body = json!({"jsonrpc": "2.0", "id": 99, "method": "tools/list"});
    let (_, _, text) = post(url, &body.to_string(), Some(session), &[]).await;
    answer_of(&text)["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_is_absorbed_and_a_dead_upstream_degrades_alone() {
    let a_port = free_port();
    let mut a = McpUpstream::start_on(a_port, "alpha", "streamable", &[]);
    let mut b = McpUpstream::start("beta", "streamable");
    let api = echo("api").await;
    let gw = Gateway::start(&federation_config(&a, &b, &api)).await;
    let url = gw.url("/mcp");
    let (_, session) = initialize(&url, "2025-11-25").await;
    let hi = call(&url, &session, 1, "a_echo", json!({"text": "one"})).await;
    assert_eq!(hi["result"]["content"][0]["text"], "one", "{hi}");

    // A restarted upstream has forgotten our session (404): the gateway opens a new one.
    a.stop();
    a = McpUpstream::start_on(a_port, "alpha", "streamable", &[]);
    let again = call(&url, &session, 2, "a_echo", json!({"text": "two"})).await;
    assert_eq!(again["result"]["content"][0]["text"], "two", "{again}");
    assert!(
        gw.stderr().contains("upstream session expired"),
        "{}",
        gw.stderr()
    );

    // b dies: its tools leave the listing, calls to them fail, a's and ours keep working.
    b.stop();
    gw.wait_metric(
        "mcp_upstream_up",
        &[("upstream", "b")],
        Duration::from_secs(15),
        |v| v == Some(0.0),
    )
    .await;
    let tools = tool_names(&url, &session).await;
    assert!(tools.iter().all(|t| !t.starts_with("b_")), "{tools:?}");
    assert!(tools.contains(&"a_echo".to_string()) && tools.contains(&"whoami".to_string()));
    let gone = call(&url, &session, 3, "b_echo", json!({"text": "x"})).await;
    assert_eq!(gone["error"]["code"], -32602, "{gone}");
    let still = call(&url, &session, 4, "a_echo", json!({"text": "three"})).await;
    assert_eq!(still["result"]["content"][0]["text"], "three", "{still}");
    let own = call(&url, &session, 5, "whoami", json!({})).await;
    assert_eq!(own["result"]["isError"], false, "{own}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_upstream_flag_federates_without_a_config_file() {
    let a = McpUpstream::start("alpha", "streamable");
    let b = McpUpstream::start("beta", "sse");
    let gw = Gateway::builder()
        .no_config_flag()
        .arg("--mode=edge-mcp")
        .arg("--port=@PORT@")
        .arg("--admin-address=127.0.0.1:@ADMIN@")
        .arg(format!("--mcp-upstream={}", a.url()))
        .arg(format!("--mcp-upstream=legacy={}", b.url()))
        .env("STOA_MCP_SESSION_SECRET", SECRET)
        .start()
        .await;
    let out = python(gw.url("/mcp"), "federation", vec![]).await;
    assert_eq!(out["calls"]["echo"]["content"][0]["text"], "hi", "{out}");
    // Same names from both: the first upstream's are listed and called.
    let tools = names(&out["tools"]);
    assert_eq!(
        tools.iter().filter(|t| *t == "echo").count(),
        1,
        "{tools:?}"
    );
    assert_eq!(
        out["reads"]["memo://greeting"]["contents"][0]["text"],
        "hello from alpha"
    );
    assert_eq!(
        gw.metric("mcp_upstream_up", &[("upstream", "legacy")])
            .await,
        Some(1.0)
    );
    assert_eq!(
        gw.metric("mcp_upstream_up", &[("upstream", "upstream1")])
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_revision_clients_discover_and_call_without_a_session() {
    let a = McpUpstream::start("alpha", "streamable");
    let b = McpUpstream::start("beta", "sse");
    let api = echo("api").await;
    let gw = Gateway::start(&federation_config(&a, &b, &api)).await;
    for mode in ["auto", "2026-07-28"] {
        let args = vec![
            "--prefix".into(),
            "a_".into(),
            "whoami={}".into(),
            r#"a_slow_progress={"steps": 2}"#.into(),
            r#"b_log_something={"message": "m"}"#.into(),
        ];
        let out = python(gw.url("/mcp"), mode, args).await;
        assert_eq!(out["protocol_version"], "2026-07-28", "{out}");
        if mode == "auto" {
            // Only `server/discover` says who the server is.
            assert_eq!(out["server_info"]["name"], "stoa-gateway", "{out}");
        }
        let tools = names(&out["tools"]);
        assert!(tools.contains(&"whoami".to_string()) && tools.contains(&"b_add".to_string()));
        assert!(
            out["calls"][0]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("/whoami")),
            "{out}"
        );
        assert_eq!(out["calls"][1]["content"][0]["text"], "done", "{out}");
        assert_eq!(out["calls"][2]["content"][0]["text"], "logged", "{out}");
        // Progress under the client's own token; logs at or above the level it asked for.
        assert_eq!(out["progress"].as_array().map(Vec::len), Some(2), "{out}");
        assert_eq!(
            out["logs"],
            json!([{"level": "info", "data": "info: m"}, {"level": "warning", "data": "warning: m"}]),
            "{out}"
        );
        if mode == "auto" {
            assert_eq!(
                out["read"]["contents"][0]["text"], "hello from alpha",
                "{out}"
            );
            assert_eq!(
                out["prompt"]["messages"][0]["content"]["text"], "Review this code: x=1",
                "{out}"
            );
        }
    }
    // The envelope's rules, with raw JSON-RPC.
    let url = gw.url("/mcp");
    let meta = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}});
    let raw = |method: &str, headers: Vec<(&'static str, String)>, params: Value| {
        let body = json!({"jsonrpc": "2.0", "id": 5, "method": method, "params": params});
        let url = url.clone();
        async move {
            let mut rb = client()
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(body.to_string());
            for (k, v) in headers {
                rb = rb.header(k, v);
            }
            let r = rb.send().await.unwrap();
            let status = r.status().as_u16();
            let allow = r
                .headers()
                .get("allow")
                .map(|v| v.to_str().unwrap().to_string());
            (status, allow, json_of(&r.text().await.unwrap()))
        }
    };
    let v = || ("mcp-protocol-version", "2026-07-28".to_string());
    let m = |s: &str| ("mcp-method", s.to_string());
    let (status, _, body) = raw(
        "tools/list",
        vec![v(), m("tools/list")],
        json!({"_meta": meta}),
    )
    .await;
    assert_eq!(
        (status, body["result"]["ttlMs"].as_i64()),
        (200, Some(0)),
        "{body}"
    );
    assert_eq!(body["result"]["resultType"], "complete");
    let (status, _, body) = raw(
        "tools/list",
        vec![v(), m("tools/call")],
        json!({"_meta": meta}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32020)),
        "{body}"
    );
    let call = json!({"name": "a_echo", "arguments": {"text": "x"}, "_meta": meta});
    let (status, _, body) = raw(
        "tools/call",
        vec![v(), m("tools/call"), ("mcp-name", "other".into())],
        call.clone(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32020)),
        "{body}"
    );
    let (status, _, body) = raw(
        "tools/call",
        vec![v(), m("tools/call"), ("mcp-name", "a_echo".into())],
        call,
    )
    .await;
    assert_eq!(
        (status, body["result"]["content"][0]["text"].as_str()),
        (200, Some("x")),
        "{body}"
    );
    assert_eq!(body["id"], 5);
    let (status, _, body) = raw("tools/list", vec![v(), m("tools/list")], json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32602)),
        "{body}"
    );
    let (status, _, body) = raw("ping", vec![v(), m("ping")], json!({"_meta": meta})).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (404, Some(-32601)),
        "{body}"
    );
    let mut future = meta.clone();
    future["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let (status, _, body) = raw(
        "tools/list",
        vec![
            ("mcp-protocol-version", "2099-01-01".into()),
            m("tools/list"),
        ],
        json!({"_meta": future}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (400, Some(-32022)),
        "{body}"
    );
    assert_eq!(
        body["error"]["data"]["supported"],
        json!([
            "2024-11-05",
            "2025-03-26",
            "2025-06-18",
            "2025-11-25",
            "2026-07-28"
        ])
    );
    let r = client()
        .get(gw.url("/mcp"))
        .header("mcp-protocol-version", "2026-07-28")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(
        gw.metric(
            "mcp_requests_total",
            &[
                ("method", "server/discover"),
                ("tool", ""),
                ("status", "ok")
            ]
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_over_websocket_with_relayed_progress_and_sampling() {
    let a = McpUpstream::start("alpha", "streamable");
    let b = McpUpstream::start("beta", "sse");
    let api = echo("api").await;
    let gw = Gateway::start(&federation_config(&a, &b, &api)).await;
    let url = gw.url("/ws").replacen("http://", "ws://", 1);
    let out = tokio::task::spawn_blocking(move || {
        typescript_client(
            &url,
            &[
                "whoami={}",
                r#"a_slow_progress={"steps":2}"#,
                r#"a_ask_model={"prompt":"over ws?"}"#,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out["serverInfo"]["name"], "stoa-gateway", "{out}");
    assert!(out["tools"].as_array().unwrap().len() > 10, "{out}");
    assert!(out["calls"][0]["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.contains("/whoami")));
    assert_eq!(out["calls"][1]["content"][0]["text"], "done", "{out}");
    assert_eq!(out["progress"].as_array().map(Vec::len), Some(2), "{out}");
    assert_eq!(
        out["calls"][2]["content"][0]["text"], "sampled: over ws?",
        "{out}"
    );
    assert_eq!(out["sampled"], json!(["over ws?"]));
    // Not a WebSocket handshake: 426 with the protocol to upgrade to.
    let r = client().get(gw.url("/ws")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 426);
    assert_eq!(r.headers()["upgrade"], "websocket");
}

/// A relayed call whose upstream sends nothing before its reply is answered as one JSON body;
/// one that brings progress first is a chunked SSE stream. Either way the client's connection
/// stays open for its next request (it used to be closed after every streamed answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_answers_keep_the_client_connection_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = McpUpstream::start("alpha", "streamable");
    let b = McpUpstream::start("beta", "streamable");
    let api = echo("api").await;
    let gw = Gateway::start(&federation_config(&a, &b, &api)).await;
    let (_, session) = initialize(&gw.url("/mcp"), "2025-11-25").await;
    let request = |id: u64, name: &str, arguments: Value, meta: Value| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments, "_meta": meta}})
        .to_string();
        format!(
            "POST /mcp HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nMcp-Session-Id: {session}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    for id in 1..=3 {
        let text = format!("call {id}");
        conn.write_all(request(id, "a_echo", json!({"text": text}), json!({})).as_bytes())
            .await
            .unwrap();
        let r = raw::read_response(&mut conn, Duration::from_secs(10)).await;
        assert_eq!(r.status, 200, "call {id} on the same connection: {r:?}");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json"),
            "{r:?}"
        );
        let answer = json_of(&r.body_text());
        assert_eq!(answer["result"]["content"][0]["text"], text, "{answer}");
    }
    // Progress before the reply: a stream, chunked, that ends without closing the connection.
    let progress = request(
        4,
        "a_slow_progress",
        json!({"steps": 2}),
        json!({"progressToken": "p4"}),
    );
    conn.write_all(progress.as_bytes()).await.unwrap();
    let mut r = raw::read_response(&mut conn, Duration::from_secs(10)).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(r.header("transfer-encoding").as_deref(), Some("chunked"));
    let mut chunk = [0u8; 4096];
    while !r.body.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("the stream ends")
            .unwrap();
        assert!(n > 0, "connection closed mid-stream: {}", r.body_text());
        r.body.extend_from_slice(&chunk[..n]);
    }
    let body = r.body_text();
    assert!(body.contains("notifications/progress"), "{body}");
    assert!(body.contains("done"), "{body}");
    conn.write_all(request(5, "a_echo", json!({"text": "after"}), json!({})).as_bytes())
        .await
        .unwrap();
    let r = raw::read_response(&mut conn, Duration::from_secs(10)).await;
    assert_eq!(
        r.status, 200,
        "the connection was not kept after the stream: {r:?}"
    );
}
