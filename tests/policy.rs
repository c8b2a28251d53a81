//! The `opa` filter end to end through the real binary: embedded Rego policies (boolean and
//! decision-object rules, the shipped `conf/policies` example), the input document a policy
//! sees, fail-closed / fail-open on evaluation errors, startup errors, an external OPA server
//! (an OPA-REST-compatible axum server in this file), decision sampling in the access log and
//! `--test-policies`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use common::auth::{claims, JwksServer, TestKey};
use common::*;

const SHIPPED_POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/policies");
const ISSUER: &str = "https://issuer.stoa.test";
const AUDIENCE: &str = "stoa-api";
const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A gateway config: one listener, chain `access_log, router (one route `api` on /, auth
/// optional), [jwt], opa` with the given opa settings (YAML lines indented by 6 spaces).
fn config(up: &Upstream, jwt: Option<&JwksServer>, opa: &str) -> String {
    let jwt = match jwt {
        Some(j) => format!(
            "    - type: jwt\n      issuer: \"{ISSUER}\"\n      audiences: [{AUDIENCE}]\n      jwks_url: \"{}\"\n      tenant_claim: tenant\n",
            j.jwks_url()
        ),
        None => String::new(),
    };
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
        - name: api
          match: {{ path_prefix: / }}
          cluster: backend
          auth: optional
{jwt}    - type: opa
{opa}
clusters:
  backend: {{ endpoints: ["{up}"] }}
"#,
        up = up.address()
    )
}

/// A signing key and a JWKS server that serves it.
async fn issuer() -> (TestKey, JwksServer) {
    let key = TestKey::ec_p256("policy-key");
    let jwks = JwksServer::with_keys(&[&key]).await;
    (key, jwks)
}

/// A token for `sub` of `tenant` with these `roles`.
fn token(key: &TestKey, sub: &str, tenant: &str, roles: &[&str]) -> String {
    let mut c = claims(ISSUER, AUDIENCE, sub);
    c["tenant"] = json!(tenant);
    c["roles"] = json!(roles);
    key.sign(&c)
}

/// Send a request and return (status, headers, body JSON or the raw text as a JSON string).
async fn send(rb: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

/// Assert a policy refusal: 403 JSON `{"error":"forbidden","reason":..,"status":403}`;
/// returns the reason.
fn assert_forbidden(status: u16, headers: &reqwest::header::HeaderMap, body: &Value) -> String {
    assert_eq!(
        status, 403,
        "expected a policy refusal, got {status}: {body}"
    );
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{headers:?}"
    );
    assert_eq!(body["error"], "forbidden", "{body}");
    assert_eq!(body["status"], 403, "{body}");
    body["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {body}"))
        .to_string()
}

async fn opa_metric(gw: &Gateway, engine: &str, result: &str) -> f64 {
    gw.metric(
        "stoa_opa_decisions_total",
        &[("engine", engine), ("result", result)],
    )
    .await
    .unwrap_or(0.0)
}

/// Wait (bounded) until `stoa_filter_rejections_total{filter="opa",reason}` is `want` (it is
/// counted when the request is logged, after the answer went out).
async fn wait_opa_rejections(gw: &Gateway, reason: &str, want: f64) {
    gw.wait_metric(
        "stoa_filter_rejections_total",
        &[("filter", "opa"), ("reason", reason)],
        WAIT,
        |v| v == Some(want),
    )
    .await;
}

/// The access-log lines (JSON objects with `"type":"access"`) on the gateway's stdout.
fn access_lines(gw: &Gateway) -> Vec<Value> {
    gw.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "access")
        .collect()
}

/// Wait (bounded) until at least `n` access-log lines were written.
async fn wait_access_lines(gw: &Gateway, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = access_lines(gw);
        if lines.len() >= n {
            return lines;
        }
        if Instant::now() > deadline {
            panic!(
                "expected {n} access-log lines, got {}:\n{}",
                lines.len(),
                gw.stdout()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run the binary in `dir` to completion (bounded).
fn run_in(dir: &Path, args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let out_dir = TempDir::new().unwrap();
    let (out_path, err_path) = (out_dir.path().join("out"), out_dir.path().join("err"));
    let mut child = gateway_command()
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn stoa-gateway");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stoa-gateway {args:?} did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status,
        std::fs::read_to_string(out_path).unwrap_or_default(),
        std::fs::read_to_string(err_path).unwrap_or_default(),
    )
}

// ------------------------------------------------------------------------------------------
// A fake external OPA (REST API: POST /v1/data/<path> {"input": ...} -> {"result": ...})
// ------------------------------------------------------------------------------------------

type Decide = Arc<dyn Fn(&Value) -> Option<Value> + Send + Sync>;

#[derive(Clone)]
struct FakeOpaState {
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    delay_ms: Arc<AtomicU64>,
    decide: Decide,
}

/// Answers every `POST /v1/data/...` with `{"result": decide(body.input)}` (no `result` key
/// when `decide` returns None, as OPA does for an undefined rule), after `delay_ms`. Records
/// the path and the JSON body of each call.
struct FakeOpa {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
    delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FakeOpa {
    async fn start(decide: impl Fn(&Value) -> Option<Value> + Send + Sync + 'static) -> FakeOpa {
        let st = FakeOpaState {
            calls: Arc::new(Mutex::new(Vec::new())),
            delay_ms: Arc::new(AtomicU64::new(0)),
            decide: Arc::new(decide),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(fake_opa_handler)
            .with_state(st.clone());
        FakeOpa {
            addr,
            calls: st.calls,
            delay_ms: st.delay_ms,
            task: tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            }),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeOpa {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn fake_opa_handler(
    State(st): State<FakeOpaState>,
    method: axum::http::Method,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    if method != axum::http::Method::POST || !uri.path().starts_with("/v1/data/") {
        return (StatusCode::NOT_FOUND, "not an OPA data API call").into_response();
    }
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not JSON").into_response();
    };
    st.calls
        .lock()
        .unwrap()
        .push((uri.path().to_string(), doc.clone()));
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match (st.decide)(&doc["input"]) {
        Some(result) => axum::Json(json!({ "result": result })).into_response(),
        None => axum::Json(json!({})).into_response(),
    }
}

/// The closure standing in for `allow if input.request.method == "GET"`.
fn allow_get(input: &Value) -> Option<Value> {
    Some(json!(input["request"]["method"] == "GET"))
}

// ------------------------------------------------------------------------------------------
// 1. Embedded boolean policy
// ------------------------------------------------------------------------------------------

const GET_ONLY: &str = r#"package test.authz

import rego.v1

default allow := false

allow if input.request.method == "GET"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_boolean_policy_allows_and_denies() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(dir.path(), "authz.rego", GET_ONLY);
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.allow",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    let v = get_echo(&cl, &gw.url("/items/1")).await;
    assert_eq!(v["server_id"], "up");
    assert_eq!(v["method"], "GET");
    assert_eq!(up.hits(), 1);

    let (status, headers, body) = send(cl.delete(gw.url("/items/1"))).await;
    let reason = assert_forbidden(status, &headers, &body);
    assert_eq!(reason, "denied by policy");
    let (status, headers, body) = send(cl.post(gw.url("/items")).body("{}")).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "denied by policy"
    );
    assert_eq!(up.hits(), 1, "a denied request must not reach the upstream");

    let v = get_echo(&cl, &gw.url("/items/2")).await;
    assert_eq!(v["path"], "/items/2");
    assert_eq!(up.hits(), 2);

    wait_opa_rejections(&gw, "deny", 2.0).await;
    assert_eq!(opa_metric(&gw, "embedded", "allow").await, 2.0);
    assert_eq!(opa_metric(&gw, "embedded", "deny").await, 2.0);
    assert_eq!(opa_metric(&gw, "embedded", "error").await, 0.0);
    assert_eq!(opa_metric(&gw, "external", "allow").await, 0.0);
}

/// A boolean rule without a default is undefined when no body matches: that is a deny, with
/// the reason saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_decision_is_a_deny() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(
        dir.path(),
        "authz.rego",
        "package test.authz\n\nimport rego.v1\n\nallow if input.request.method == \"GET\"\n",
    );
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.allow",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    get_echo(&cl, &gw.url("/a")).await;
    let (status, headers, body) = send(cl.put(gw.url("/a")).body("x")).await;
    let reason = assert_forbidden(status, &headers, &body);
    assert_eq!(reason, "the policy's decision is undefined");
    assert_eq!(up.hits(), 1);
    wait_opa_rejections(&gw, "deny", 1.0).await;
    assert_eq!(opa_metric(&gw, "embedded", "deny").await, 1.0);
}

// ------------------------------------------------------------------------------------------
// 2. Decision objects: the shipped conf/policies with jwt, and headers of a decision
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_policy_decision_with_jwt() {
    let up = echo("up").await;
    let (key, jwks) = issuer().await;
    let opa =
        format!("      policy: \"{SHIPPED_POLICIES}\"\n      query: data.stoa.authz.decision");
    let gw = Gateway::start(&config(&up, Some(&jwks), &opa)).await;
    let cl = fresh_client();
    let viewer = token(&key, "alice", "acme", &["viewer"]);

    // A viewer of acme reads: allowed, and the decision's headers reach the upstream.
    let (status, _, v) = send(
        cl.get(gw.url("/api/orders"))
            .bearer_auth(&viewer)
            .header("x-policy-decision", "forged-by-client"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["path"], "/api/orders");
    assert_eq!(
        v["headers"]["x-policy-decision"], "allow",
        "the decision's header replaces the client's: {v}"
    );
    assert_eq!(up.hits(), 1);

    // A viewer writes: denied, the reason names the writer roles.
    let (status, headers, body) = send(
        cl.post(gw.url("/api/orders"))
            .bearer_auth(&viewer)
            .body("{}"),
    )
    .await;
    let reason = assert_forbidden(status, &headers, &body);
    assert!(
        reason.starts_with("POST needs one of the roles")
            && reason.contains("editor")
            && reason.contains("admin"),
        "{reason}"
    );
    assert!(headers.get("x-policy-decision").is_none(), "{headers:?}");

    // An editor may write.
    let editor = token(&key, "bob", "acme", &["editor"]);
    let (status, _, v) = send(
        cl.post(gw.url("/api/orders"))
            .bearer_auth(&editor)
            .body("{}"),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["method"], "POST");

    // Another tenant's path.
    let (status, headers, body) = send(
        cl.get(gw.url("/api/tenants/globex/orders"))
            .bearer_auth(&viewer),
    )
    .await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "this path belongs to another tenant"
    );

    // A blocked tenant.
    let suspended = token(&key, "carol", "suspended-co", &["admin"]);
    let (status, headers, body) = send(cl.get(gw.url("/api/orders")).bearer_auth(&suspended)).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "tenant suspended-co is blocked"
    );

    // Anonymous: public paths only.
    let v = get_echo(&cl, &gw.url("/public/x")).await;
    assert_eq!(v["path"], "/public/x");
    let (status, headers, body) = send(cl.get(gw.url("/api/orders"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "no identity: a token is required"
    );

    assert_eq!(
        up.hits(),
        3,
        "only the allowed requests reached the upstream"
    );
    wait_opa_rejections(&gw, "deny", 4.0).await;
    assert_eq!(opa_metric(&gw, "embedded", "allow").await, 3.0);
    assert_eq!(opa_metric(&gw, "embedded", "deny").await, 4.0);

    // The access log: denies carry the decision and the verified caller.
    let lines = wait_access_lines(&gw, 7).await;
    let blocked = lines
        .iter()
        .find(|l| l["policy"]["reason"] == "tenant suspended-co is blocked")
        .unwrap_or_else(|| panic!("no access line for the blocked tenant: {lines:?}"));
    assert_eq!(blocked["policy"]["allow"], false);
    assert_eq!(blocked["status"], 403);
    assert_eq!(blocked["sub"], "carol");
    assert_eq!(blocked["tenant"], "suspended-co");
    assert_eq!(blocked["rejected_by"]["filter"], "opa");
    let anonymous = lines
        .iter()
        .find(|l| l["policy"]["reason"] == "no identity: a token is required")
        .unwrap_or_else(|| panic!("no access line for the anonymous deny: {lines:?}"));
    assert!(anonymous.get("sub").is_none(), "{anonymous}");
    assert!(anonymous.get("tenant").is_none(), "{anonymous}");
}

/// A decision object's `headers` go to the upstream on allow and onto the 403 on deny; its
/// `reason` is the 403's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_object_headers_and_reason() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(
        dir.path(),
        "authz.rego",
        r#"package test.authz

import rego.v1

decision := {"allow": true, "headers": {"x-policy-path": input.request.path, "x-policy-n": "1"}} if {
	input.request.method == "GET"
}

decision := {"allow": false, "reason": sprintf("%s is read-only", [input.request.path]), "headers": {"x-denied-by": "test-policy"}} if {
	input.request.method != "GET"
}
"#,
    );
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.decision",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    let v = get_echo(&cl, &gw.url("/docs/a?x=1")).await;
    assert_eq!(v["headers"]["x-policy-path"], "/docs/a");
    assert_eq!(v["headers"]["x-policy-n"], "1");

    let (status, headers, body) = send(cl.patch(gw.url("/docs/a")).body("x")).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "/docs/a is read-only"
    );
    assert_eq!(headers["x-denied-by"], "test-policy");
    assert_eq!(up.hits(), 1);
}

// ------------------------------------------------------------------------------------------
// 3. The input document
// ------------------------------------------------------------------------------------------

const ECHO_INPUT: &str = r#"package test.authz

import rego.v1

decision := {"allow": false, "reason": json.marshal(input)}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_document_as_the_policy_sees_it() {
    let up = echo("up").await;
    let (key, jwks) = issuer().await;
    let dir = TempDir::new().unwrap();
    let policy = write(dir.path(), "echo.rego", ECHO_INPUT);
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.decision",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, Some(&jwks), &opa)).await;
    let cl = fresh_client();

    let mut c = claims(ISSUER, AUDIENCE, "alice");
    c["tenant"] = json!("acme");
    c["roles"] = json!(["viewer", "auditor"]);
    c["realm_access"] = json!({"roles": ["realm-user"]});
    c["email"] = json!("alice@acme.example");
    let tok = key.sign(&c);

    let (status, headers, body) = send(
        cl.post(gw.url("/orders/42?page=2&sort=desc&flag"))
            .bearer_auth(&tok)
            .header("X-Custom-Thing", "Mixed Case Value")
            .header("Cookie", "session=secret-cookie")
            .header("X-Api-Key", "secret-api-key")
            .header("X-Auth-Token", "secret-auth-token")
            .header("Proxy-Authorization", "Basic c2VjcmV0")
            .body("payload"),
    )
    .await;
    let reason = assert_forbidden(status, &headers, &body);
    let input: Value =
        serde_json::from_str(&reason).unwrap_or_else(|e| panic!("not JSON ({e}): {reason}"));

    let req = &input["request"];
    assert_eq!(req["method"], "POST", "{input}");
    assert_eq!(req["path"], "/orders/42", "{input}");
    assert_eq!(
        req["query"],
        json!({"page": "2", "sort": "desc", "flag": ""}),
        "{input}"
    );
    assert_eq!(req["client_ip"], "127.0.0.1", "{input}");
    let h = req["headers"].as_object().expect("headers object");
    for name in h.keys() {
        assert_eq!(
            name,
            &name.to_ascii_lowercase(),
            "header names are lower-case"
        );
    }
    assert_eq!(h["x-custom-thing"], "Mixed Case Value", "{input}");
    for secret in [
        "authorization",
        "cookie",
        "x-api-key",
        "x-auth-token",
        "proxy-authorization",
    ] {
        assert_eq!(
            h[secret], "[redacted]",
            "{secret} must be redacted: {input}"
        );
    }
    for leaked in [
        tok.as_str(),
        "secret-cookie",
        "secret-api-key",
        "secret-auth-token",
        "c2VjcmV0",
    ] {
        assert!(!reason.contains(leaked), "{leaked:?} leaked into the input");
    }
    assert!(h.contains_key("host"), "{input}");

    assert_eq!(input["token"]["sub"], "alice", "{input}");
    assert_eq!(input["token"]["iss"], ISSUER, "{input}");
    assert_eq!(input["token"]["email"], "alice@acme.example", "{input}");
    assert_eq!(input["subject"], "alice");
    assert_eq!(input["tenant"], "acme");
    assert_eq!(
        input["roles"],
        json!(["auditor", "realm-user", "viewer"]),
        "roles from `roles` and `realm_access.roles`: {input}"
    );
    assert_eq!(input["scopes"], json!(["read", "write"]), "{input}");
    assert_eq!(input["route"], "api");

    // The same token again (its identity, and the identity's part of the input, now come from
    // the token cache), with a repeated header: the values are joined as HTTP joins them.
    let (status, headers, body) = send(
        cl.get(gw.url("/orders/43?tag=a&tag=b"))
            .bearer_auth(&tok)
            .header("X-Multi", "first")
            .header("X-Multi", "second"),
    )
    .await;
    let reason = assert_forbidden(status, &headers, &body);
    let again: Value = serde_json::from_str(&reason).unwrap();
    for field in ["token", "subject", "tenant", "roles", "scopes"] {
        assert_eq!(
            again[field], input[field],
            "{field} from the cached identity"
        );
    }
    assert_eq!(
        again["request"]["headers"]["x-multi"], "first, second",
        "{again}"
    );
    assert_eq!(
        again["request"]["query"],
        json!({"tag": ["a", "b"]}),
        "{again}"
    );
    assert_eq!(again["request"]["path"], "/orders/43", "{again}");

    // Anonymous: no token, no identity fields.
    let (status, headers, body) = send(cl.get(gw.url("/anon"))).await;
    let reason = assert_forbidden(status, &headers, &body);
    let input: Value = serde_json::from_str(&reason).unwrap();
    assert_eq!(input["token"], Value::Null, "{input}");
    assert_eq!(input["subject"], Value::Null, "{input}");
    assert_eq!(input["tenant"], Value::Null, "{input}");
    assert_eq!(input["roles"], json!([]), "{input}");
    assert_eq!(input["scopes"], json!([]), "{input}");
    assert_eq!(input["request"]["query"], json!({}), "{input}");
    assert_eq!(input["request"]["method"], "GET", "{input}");
    assert_eq!(up.hits(), 0);
}

/// `route` is null when no router ran before the opa filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_route_is_null_without_a_router() {
    let dir = TempDir::new().unwrap();
    let policy = write(dir.path(), "echo.rego", ECHO_INPUT);
    let yaml = format!(
        r#"
listeners:
  - name: pub
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: opa
      policy: "{}"
      query: data.test.authz.decision
    - type: router
      routes:
        - name: api
          match: {{ path_prefix: / }}
          respond: {{ status: 200, body: "ok" }}
"#,
        policy.display()
    );
    let gw = Gateway::start(&yaml).await;
    let (status, headers, body) = send(fresh_client().get(gw.url("/x"))).await;
    let reason = assert_forbidden(status, &headers, &body);
    let input: Value = serde_json::from_str(&reason).unwrap();
    assert_eq!(input["route"], Value::Null, "{input}");
    assert_eq!(input["request"]["path"], "/x", "{input}");
}

/// The router's `strip_path` rewrites only the upstream path: the policy sees the path the
/// client asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_path_is_the_clients_path_with_strip_path() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(
        dir.path(),
        "authz.rego",
        r#"package test.authz

import rego.v1

decision := {"allow": true, "headers": {"x-seen-path": input.request.path}}
"#,
    );
    let yaml = config(
        &up,
        None,
        &format!(
            "      policy: \"{}\"\n      query: data.test.authz.decision",
            policy.display()
        ),
    )
    .replace(
        "          match: { path_prefix: / }\n          cluster: backend\n",
        "          match: { path_prefix: /svc }\n          cluster: backend\n          strip_path: true\n",
    );
    assert!(yaml.contains("strip_path: true"));
    let gw = Gateway::start(&yaml).await;
    let v = get_echo(&fresh_client(), &gw.url("/svc/items")).await;
    assert_eq!(v["path"], "/items", "{v}");
    assert_eq!(v["headers"]["x-seen-path"], "/svc/items", "{v}");
}

/// A policy must judge the query values the upstream acts on. Upstreams percent-decode query
/// values (`%74rue` is `true`), so the input's `query` map must hold decoded values, or a
/// policy that refuses `debug=true` is bypassed by `debug=%74rue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_query_values_are_percent_decoded() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(
        dir.path(),
        "authz.rego",
        r#"package test.authz

import rego.v1

default allow := false

allow if not debug_requested

debug_requested if input.request.query.debug == "true"
"#,
    );
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.allow",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    get_echo(&cl, &gw.url("/q?debug=false")).await;
    let (status, headers, body) = send(cl.get(gw.url("/q?debug=true"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "denied by policy"
    );

    let (status, _, body) = send(cl.get(gw.url("/q?debug=%74rue"))).await;
    assert_eq!(
        status, 403,
        "`debug=%74rue` is `debug=true` to the upstream (it saw query {:?}), but the policy \
         saw the raw `%74rue` and allowed it",
        body["query"]
    );
    assert_eq!(up.hits(), 1);
}

/// Dot segments: `/public/../api/orders` is `/api/orders` to any upstream that normalizes the
/// path (RFC 3986 remove_dot_segments; most frameworks and proxies do). The shipped policy
/// allows anonymous access to `/public...` by prefix, so the gateway must not let an anonymous
/// request for `/public/../api/orders` through to an upstream path that resolves outside
/// `/public` (either refuse it, or normalize it before the policy and upstream see it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_do_not_bypass_a_path_prefix_policy() {
    let up = echo("up").await;
    let opa =
        format!("      policy: \"{SHIPPED_POLICIES}\"\n      query: data.stoa.authz.decision");
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let port = gw.port;
    for target in [
        "/public/../api/orders",
        "/public/%2e%2e/api/orders",
        "/public/..%2Fapi/orders",
    ] {
        // reqwest would resolve the dot segments itself: send the request line raw.
        let raw = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(
                s,
                "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            buf
        })
        .await
        .unwrap();
        let status_line = raw.lines().next().unwrap_or_default().to_string();
        if status_line.contains(" 200 ") {
            let body = &raw[raw.find("\r\n\r\n").expect("a body") + 4..];
            let body = body.trim();
            // Chunked bodies: the JSON is the line that starts with `{`.
            let json_line = body
                .lines()
                .find(|l| l.starts_with('{'))
                .unwrap_or_else(|| panic!("no echo JSON in {raw}"));
            let v: Value = serde_json::from_str(json_line).unwrap();
            let seen = v["path"].as_str().unwrap().to_string();
            let resolved = remove_dot_segments(&seen);
            assert!(
            resolved.starts_with("/public"),
            "an anonymous request was allowed as a public path, but the upstream got `{seen}`, \
             which resolves to `{resolved}`"
        );
        } else {
            assert!(status_line.contains(" 4"), "{raw}");
            assert_eq!(up.hits(), 0);
        }
    }
}

/// RFC 3986 section 5.2.4 for an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

// ------------------------------------------------------------------------------------------
// 4. Evaluation errors
// ------------------------------------------------------------------------------------------

/// Two complete definitions of `allow` that disagree for GET /conflict: a runtime conflict.
const CONFLICT: &str = r#"package test.authz

import rego.v1

allow := true if input.request.method == "GET"

allow := false if input.request.path == "/conflict"
"#;

/// A decision object without `allow`: the gateway treats it as an evaluation error.
const NO_ALLOW: &str = r#"package test.authz

import rego.v1

decision := {"reason": "forgot allow"}
"#;

async fn error_gateway(up: &Upstream, policy: &Path, query: &str, extra: &str) -> Gateway {
    let opa = format!(
        "      policy: \"{}\"\n      query: {query}\n{extra}",
        policy.display()
    );
    Gateway::start(&config(up, None, &opa)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluation_error_fails_closed_or_open() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let conflict = write(dir.path(), "conflict.rego", CONFLICT);
    let no_allow = write(dir.path(), "no_allow.rego", NO_ALLOW);
    let cl = fresh_client();

    // Conflicting outputs at runtime: refused, counted as an error (not a deny).
    let gw = error_gateway(&up, &conflict, "data.test.authz.allow", "").await;
    let v = get_echo(&cl, &gw.url("/fine")).await;
    assert_eq!(v["path"], "/fine", "no conflict for other paths");
    let (status, headers, body) = send(cl.get(gw.url("/conflict"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "the policy could not be evaluated"
    );
    assert_eq!(up.hits(), 1);
    wait_opa_rejections(&gw, "error", 1.0).await;
    assert_eq!(opa_metric(&gw, "embedded", "error").await, 1.0);
    assert_eq!(opa_metric(&gw, "embedded", "deny").await, 0.0);
    assert_eq!(opa_metric(&gw, "embedded", "allow").await, 1.0);
    // The error is logged (application log, stderr).
    gw.wait_stderr("policy evaluation failed", WAIT).await;
    // And recorded in the access log's policy field.
    let lines = wait_access_lines(&gw, 2).await;
    let line = lines
        .iter()
        .find(|l| l["path"] == "/conflict")
        .expect("access line of /conflict");
    assert_eq!(line["policy"]["allow"], false, "{line}");
    assert!(
        line["policy"]["reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("evaluation failed"),
        "{line}"
    );
    drop(gw);

    // A decision object without `allow`.
    let gw = error_gateway(&up, &no_allow, "data.test.authz.decision", "").await;
    let (status, headers, body) = send(cl.get(gw.url("/x"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "the policy could not be evaluated"
    );
    assert_eq!(up.hits(), 1);
    assert_eq!(opa_metric(&gw, "embedded", "error").await, 1.0);
    wait_opa_rejections(&gw, "error", 1.0).await;
    drop(gw);

    // status_on_error changes the refusal's status.
    let gw = error_gateway(
        &up,
        &no_allow,
        "data.test.authz.decision",
        "      status_on_error: 503",
    )
    .await;
    let (status, _, body) = send(cl.get(gw.url("/x"))).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], 503, "{body}");
    assert_eq!(
        body["reason"], "the policy could not be evaluated",
        "{body}"
    );
    drop(gw);

    // fail_open: both errors let the request through (still counted as errors).
    let gw = error_gateway(
        &up,
        &conflict,
        "data.test.authz.allow",
        "      fail_open: true",
    )
    .await;
    let v = get_echo(&cl, &gw.url("/conflict")).await;
    assert_eq!(v["path"], "/conflict");
    assert_eq!(up.hits(), 2);
    assert_eq!(opa_metric(&gw, "embedded", "error").await, 1.0);
    drop(gw);
    let gw = error_gateway(
        &up,
        &no_allow,
        "data.test.authz.decision",
        "      fail_open: true",
    )
    .await;
    let v = get_echo(&cl, &gw.url("/y")).await;
    assert_eq!(v["path"], "/y");
    assert_eq!(up.hits(), 3);
    assert_eq!(opa_metric(&gw, "embedded", "error").await, 1.0);
    assert_eq!(
        gw.metric(
            "stoa_filter_rejections_total",
            &[("filter", "opa"), ("reason", "error")]
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "fail_open lets it through: no rejection"
    );
}

// ------------------------------------------------------------------------------------------
// 5. Startup errors
// ------------------------------------------------------------------------------------------

fn startup_config(policy: &Path, extra: &str) -> String {
    format!(
        r#"
admin:
  address: "127.0.0.1:{admin}"
listeners:
  - name: pub
    address: "127.0.0.1:{port}"
    chains: [edge, authz]
chains:
  edge:
    - type: access_log
  authz:
    - type: router
      routes:
        - name: all
          match: {{ path_prefix: / }}
          cluster: backend
    - type: opa
      policy: "{policy}"
      query: data.test.authz.allow
{extra}
clusters:
  backend: {{ endpoints: ["127.0.0.1:9"] }}
"#,
        admin = free_port(),
        port = free_port(),
        policy = policy.display()
    )
}

#[test]
fn bad_policy_file_stops_startup_naming_entry_and_file() {
    let dir = TempDir::new().unwrap();
    let broken = write(
        dir.path(),
        "broken.rego",
        "package test.authz\n\nimport rego.v1\n\nallow if {\n\tinput.request.method == \n",
    );
    let cfg = write(dir.path(), "gw.yaml", &startup_config(&broken, ""));
    let cfg = cfg.to_str().unwrap();
    let broken = broken.to_str().unwrap();

    let (status, out, err) = run_to_end(&["--check", "-c", cfg], Duration::from_secs(20));
    assert!(!status.success(), "--check accepted a broken policy: {out}");
    assert!(err.contains("chains.authz[1] (opa)"), "{err}");
    assert!(err.contains(broken), "the error names the file: {err}");
    assert!(!out.contains("config OK"), "{out}");

    // Starting for real fails the same way, before listening.
    let (status, _, err) = run_to_end(&["-c", cfg], Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("chains.authz[1] (opa)"), "{err}");
    assert!(err.contains(broken), "{err}");

    // A policy path that does not exist.
    let missing = dir.path().join("nope").join("authz.rego");
    let cfg2 = write(dir.path(), "gw2.yaml", &startup_config(&missing, ""));
    let (status, _, err) = run_to_end(
        &["--check", "-c", cfg2.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(err.contains("chains.authz[1] (opa)"), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");

    // A broken data file.
    let good = write(dir.path(), "good.rego", GET_ONLY);
    let data = write(dir.path(), "data.json", "{\"stoa\": [1, 2,");
    let cfg3 = write(
        dir.path(),
        "gw3.yaml",
        &startup_config(&good, &format!("      data: \"{}\"", data.display())),
    );
    let (status, _, err) = run_to_end(
        &["--check", "-c", cfg3.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(err.contains("chains.authz[1] (opa)"), "{err}");
    assert!(err.contains(data.to_str().unwrap()), "{err}");

    // A query naming no rule of the policy.
    let cfg5 = write(
        dir.path(),
        "gw5.yaml",
        &startup_config(&good, "").replace(
            "query: data.test.authz.allow",
            "query: data.test.authz.nothing_here",
        ),
    );
    let (status, _, err) = run_to_end(
        &["--check", "-c", cfg5.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(!status.success());
    assert!(err.contains("chains.authz[1] (opa)"), "{err}");
    assert!(err.contains("data.test.authz.nothing_here"), "{err}");

    // The same file with a good policy passes --check (the failures above are the policy's).
    let cfg4 = write(dir.path(), "gw4.yaml", &startup_config(&good, ""));
    let (status, out, err) = run_to_end(
        &["--check", "-c", cfg4.to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert!(status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("config OK"), "{out}");
}

// ------------------------------------------------------------------------------------------
// 6. External OPA
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_opa_allow_and_deny() {
    let up = echo("up").await;
    let opa_srv = FakeOpa::start(allow_get).await;
    let opa = format!("      endpoint: \"{}\"", opa_srv.url());
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    let v = get_echo(&cl, &gw.url("/ext/a?k=v")).await;
    assert_eq!(v["path"], "/ext/a");
    let (status, headers, body) = send(
        cl.delete(gw.url("/ext/a"))
            .header("authorization", "Bearer not-for-opa"),
    )
    .await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "denied by policy"
    );
    assert_eq!(up.hits(), 1);

    let calls = opa_srv.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for (path, _) in &calls {
        assert_eq!(
            path, "/v1/data/stoa/authz/allow",
            "the default query's path"
        );
    }
    let (_, first) = &calls[0];
    let obj = first.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        vec!["input"],
        "the body is {{\"input\": ...}}: {first}"
    );
    let input = &first["input"];
    assert_eq!(input["request"]["method"], "GET");
    assert_eq!(input["request"]["path"], "/ext/a");
    assert_eq!(input["request"]["query"], json!({"k": "v"}));
    assert_eq!(input["request"]["client_ip"], "127.0.0.1");
    assert_eq!(input["route"], "api");
    assert_eq!(input["token"], Value::Null);
    let second = &calls[1].1["input"];
    assert_eq!(second["request"]["method"], "DELETE");
    assert_eq!(
        second["request"]["headers"]["authorization"], "[redacted]",
        "credentials are redacted for the external server too"
    );
    assert!(!calls[1].1.to_string().contains("not-for-opa"));

    wait_opa_rejections(&gw, "deny", 1.0).await;
    assert_eq!(opa_metric(&gw, "external", "allow").await, 1.0);
    assert_eq!(opa_metric(&gw, "external", "deny").await, 1.0);
    assert_eq!(opa_metric(&gw, "embedded", "allow").await, 0.0);
}

/// Decision objects from the external server: reason and headers, and an undefined result (no
/// `result` key) as a deny.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_opa_decision_objects() {
    let up = echo("up").await;
    let opa_srv = FakeOpa::start(|input| match input["request"]["method"].as_str() {
        Some("GET") => Some(json!({"allow": true, "headers": {"x-opa-said": "yes"}})),
        Some("POST") => {
            Some(json!({"allow": false, "reason": "no writes", "headers": {"x-opa-said": "no"}}))
        }
        _ => None,
    })
    .await;
    let opa = format!(
        "      endpoint: \"{}/\"\n      query: data.test.authz.decision",
        opa_srv.url()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    let v = get_echo(&cl, &gw.url("/d")).await;
    assert_eq!(v["headers"]["x-opa-said"], "yes");
    let (status, headers, body) = send(cl.post(gw.url("/d")).body("x")).await;
    assert_eq!(assert_forbidden(status, &headers, &body), "no writes");
    assert_eq!(headers["x-opa-said"], "no");
    let (status, headers, body) = send(cl.put(gw.url("/d")).body("x")).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "the policy's decision is undefined"
    );
    assert_eq!(up.hits(), 1);
    let paths: Vec<String> = opa_srv.calls().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, vec!["/v1/data/test/authz/decision"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_opa_from_proxy_opa_endpoint_env() {
    let up = echo("up").await;
    let opa_srv = FakeOpa::start(allow_get).await;
    // Neither `policy` nor `endpoint`: the filter uses PROXY_OPA_ENDPOINT.
    let opa = "      query: data.envtest.gate.allow";
    let gw = Gateway::builder()
        .config(&config(&up, None, opa))
        .env("PROXY_OPA_ENDPOINT", opa_srv.url())
        .start()
        .await;
    let cl = fresh_client();

    get_echo(&cl, &gw.url("/e")).await;
    let (status, headers, body) = send(cl.delete(gw.url("/e"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "denied by policy"
    );
    let paths: Vec<String> = opa_srv.calls().into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, vec!["/v1/data/envtest/gate/allow"; 2]);
    assert_eq!(opa_metric(&gw, "external", "allow").await, 1.0);
    assert_eq!(opa_metric(&gw, "external", "deny").await, 1.0);
}

/// Without `policy`, `endpoint` or PROXY_OPA_ENDPOINT the config is refused.
#[test]
fn opa_without_policy_endpoint_or_env_is_refused() {
    let dir = TempDir::new().unwrap();
    let cfg = write(
        dir.path(),
        "gw.yaml",
        &format!(
            r#"
admin:
  address: "127.0.0.1:{}"
listeners:
  - name: pub
    address: "127.0.0.1:{}"
    chains: [main]
chains:
  main:
    - type: opa
"#,
            free_port(),
            free_port()
        ),
    );
    let mut cmd = gateway_command();
    cmd.env_remove("PROXY_OPA_ENDPOINT")
        .args(["--check", "-c", cfg.to_str().unwrap()]);
    let out = cmd.output().expect("run stoa-gateway");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("chains.main[0] (opa)"), "{err}");
    assert!(err.contains("PROXY_OPA_ENDPOINT"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_opa_timeout_fails_closed_or_open() {
    let up = echo("up").await;
    let opa_srv = FakeOpa::start(|_| Some(json!(true))).await;
    opa_srv.delay_ms.store(5_000, Ordering::SeqCst);
    let cl = fresh_client();

    let opa = format!(
        "      endpoint: \"{}\"\n      timeout: 200ms",
        opa_srv.url()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let t = Instant::now();
    let (status, headers, body) = send(cl.get(gw.url("/slow"))).await;
    let took = t.elapsed();
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "the policy could not be evaluated"
    );
    assert!(
        took < Duration::from_secs(3),
        "the refusal must come after ~200ms, took {took:?}"
    );
    assert!(took >= Duration::from_millis(150), "took {took:?}");
    assert_eq!(opa_srv.calls().len(), 1, "the server was asked");
    assert_eq!(up.hits(), 0);
    assert_eq!(opa_metric(&gw, "external", "error").await, 1.0);
    wait_opa_rejections(&gw, "error", 1.0).await;
    drop(gw);

    let opa = format!(
        "      endpoint: \"{}\"\n      timeout: 200ms\n      fail_open: true",
        opa_srv.url()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let t = Instant::now();
    let v = get_echo(&cl, &gw.url("/slow")).await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(v["path"], "/slow");
    assert_eq!(up.hits(), 1);
    assert_eq!(opa_metric(&gw, "external", "error").await, 1.0);

    // Once the server answers in time again, its decision counts.
    opa_srv.delay_ms.store(0, Ordering::SeqCst);
    get_echo(&cl, &gw.url("/fast")).await;
    assert_eq!(opa_metric(&gw, "external", "allow").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_opa_down_fails_closed() {
    let up = echo("up").await;
    let cl = fresh_client();
    let opa = format!(
        "      endpoint: \"http://127.0.0.1:{}\"\n      timeout: 1s",
        closed_port()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let t = Instant::now();
    let (status, headers, body) = send(cl.get(gw.url("/down"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "the policy could not be evaluated"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(up.hits(), 0);
    assert_eq!(opa_metric(&gw, "external", "error").await, 1.0);
    wait_opa_rejections(&gw, "error", 1.0).await;
    drop(gw);

    // An OPA that answers an error status (404 here: wrong base path) is an evaluation error too.
    let bad = FakeOpa::start(|_| Some(json!(true))).await;
    let opa = format!(
        "      endpoint: \"{}/not-opa\"\n      fail_open: false",
        bad.url()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let (status, headers, body) = send(cl.get(gw.url("/x"))).await;
    assert_eq!(
        assert_forbidden(status, &headers, &body),
        "the policy could not be evaluated"
    );
    assert_eq!(opa_metric(&gw, "external", "error").await, 1.0);
    assert_eq!(up.hits(), 0);
}

// ------------------------------------------------------------------------------------------
// 7. Decision sampling in the access log
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_samples_allows_and_always_logs_denies() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(dir.path(), "authz.rego", GET_ONLY);
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.allow\n      log_sample: 0.5",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();

    for i in 0..10 {
        get_echo(&cl, &gw.url(&format!("/allowed/{i}"))).await;
    }
    for i in 0..3 {
        let (status, headers, body) = send(cl.delete(gw.url(&format!("/denied/{i}")))).await;
        assert_eq!(
            assert_forbidden(status, &headers, &body),
            "denied by policy"
        );
    }
    wait_access_lines(&gw, 13).await;
    // Give a late line (there should be none) the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = access_lines(&gw);
    assert_eq!(lines.len(), 13, "{lines:#?}");

    let allowed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["path"].as_str().unwrap().starts_with("/allowed/"))
        .collect();
    assert_eq!(allowed.len(), 10);
    let sampled: Vec<&&Value> = allowed
        .iter()
        .filter(|l| l.get("policy").is_some())
        .collect();
    assert_eq!(
        sampled.len(),
        5,
        "log_sample 0.5 of 10 allows: exactly 5 carry the decision: {allowed:#?}"
    );
    for l in &sampled {
        assert_eq!(l["policy"]["allow"], true, "{l}");
        assert_eq!(l["status"], 200, "{l}");
    }

    let denied: Vec<&Value> = lines
        .iter()
        .filter(|l| l["path"].as_str().unwrap().starts_with("/denied/"))
        .collect();
    assert_eq!(denied.len(), 3);
    for l in denied {
        assert_eq!(
            l["policy"],
            json!({"allow": false, "reason": "denied by policy"}),
            "{l}"
        );
        assert_eq!(l["status"], 403, "{l}");
        assert_eq!(
            l["rejected_by"],
            json!({"filter": "opa", "reason": "deny"}),
            "{l}"
        );
    }
}

/// `log_sample: 0` never logs allows; denies are still logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_sample_zero_logs_only_denies() {
    let up = echo("up").await;
    let dir = TempDir::new().unwrap();
    let policy = write(dir.path(), "authz.rego", GET_ONLY);
    let opa = format!(
        "      policy: \"{}\"\n      query: data.test.authz.allow\n      log_sample: 0",
        policy.display()
    );
    let gw = Gateway::start(&config(&up, None, &opa)).await;
    let cl = fresh_client();
    for _ in 0..5 {
        get_echo(&cl, &gw.url("/ok")).await;
    }
    let (status, _, _) = send(cl.delete(gw.url("/no"))).await;
    assert_eq!(status, 403);
    let lines = wait_access_lines(&gw, 6).await;
    let with_policy: Vec<&Value> = lines.iter().filter(|l| l.get("policy").is_some()).collect();
    assert_eq!(with_policy.len(), 1, "{lines:#?}");
    assert_eq!(with_policy[0]["path"], "/no");
}

// ------------------------------------------------------------------------------------------
// 8. --test-policies
// ------------------------------------------------------------------------------------------

#[test]
fn test_policies_runs_the_shipped_rego_tests() {
    let (status, out, err) = run_in(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["--test-policies", "conf/policies"],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("7 passed, 0 failed"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        7,
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        out.contains("PASS data.stoa.authz_test.test_blocked_tenant_is_denied_with_reason"),
        "{out}"
    );
}

#[test]
fn test_policies_reports_a_broken_test() {
    let dir = TempDir::new().unwrap();
    for f in ["authz.rego", "authz_test.rego", "data.json"] {
        std::fs::copy(Path::new(SHIPPED_POLICIES).join(f), dir.path().join(f)).unwrap();
    }
    let test_file = dir.path().join("authz_test.rego");
    let text = std::fs::read_to_string(&test_file).unwrap();
    let needle = "d.reason == \"tenant suspended-co is blocked\"";
    assert!(text.contains(needle), "the shipped test changed");
    std::fs::write(
        &test_file,
        text.replace(needle, "d.reason == \"tenant suspended-co is welcome\""),
    )
    .unwrap();

    let (status, out, err) = run_to_end(
        &["--test-policies", dir.path().to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(status.code(), Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("FAIL data.stoa.authz_test.test_blocked_tenant_is_denied_with_reason"),
        "{out}"
    );
    assert!(out.contains("6 passed, 1 failed"), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{out}"
    );
}
