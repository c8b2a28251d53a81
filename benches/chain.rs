//! Criterion micro-benchmarks: route matching (`Router::find` over small and large route tables)
//! and one request's trip through a typical chain (request_id, headers with a template, cors,
//! router: request, upstream-request and response-header phases) on a real Pingora session.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;
use stoa_filters::router::{Router, RouterConfig};
use stoa_filters::{build_filter, BuildContext, FilterAction, FilterConfig, RequestCtx};
use tokio::io::AsyncWriteExt;

/// A build context that does not check cluster names (the benchmark declares none).
fn bctx() -> BuildContext<'static> {
    BuildContext::standalone()
}

fn router(n: usize) -> Router {
    let mut routes = Vec::new();
    for i in 0..n {
        routes.push(serde_json::json!({
            "name": format!("r{i}"),
            "match": { "path_prefix": format!("/svc{i}/"), "methods": ["GET", "POST"] },
            "cluster": "a", "strip_path": true
        }));
    }
    routes.push(
        serde_json::json!({ "name": "fallback", "match": { "path_prefix": "/" }, "cluster": "b" }),
    );
    let cfg: RouterConfig =
        serde_json::from_value(serde_json::json!({ "routes": routes })).unwrap();
    Router::build(&cfg, &bctx()).unwrap()
}

fn route_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_matching");
    for n in [1usize, 10, 100] {
        let r = router(n);
        let last = RequestHeader::build("GET", format!("/svc{}/items?x=1", n - 1).as_bytes(), None)
            .unwrap();
        let miss = RequestHeader::build("GET", b"/other/path", None).unwrap();
        g.bench_function(format!("{n}_routes_last_match"), |b| {
            b.iter(|| {
                black_box(
                    r.find(black_box(&last))
                        .map(|(route, p)| (route.name.len(), p)),
                )
            })
        });
        g.bench_function(format!("{n}_routes_fallback"), |b| {
            b.iter(|| {
                black_box(
                    r.find(black_box(&miss))
                        .map(|(route, p)| (route.name.len(), p)),
                )
            })
        });
    }
    g.finish();
}

fn chain_filters() -> Vec<std::sync::Arc<dyn stoa_filters::Filter>> {
    let yaml = r#"
- type: request_id
- type: headers
  request: { set: { x-client: "{{ client_ip }}", x-tenant: "{{ header.x-tenant }}" }, remove: [x-debug] }
  response: { remove: [x-internal-secret], set: { x-served-by: stoa } }
- type: cors
  allow_origins: ["https://app.example"]
- type: router
  routes:
    - { name: api, match: { path_prefix: /api }, cluster: a, strip_path: true }
    - { name: rest, match: { path_prefix: / }, cluster: b }
"#;
    let cfgs: Vec<FilterConfig> = serde_saphyr::from_str(yaml).unwrap();
    cfgs.iter()
        .map(|c| build_filter(c, &mut bctx()).unwrap())
        .collect()
}

async fn session() -> Session {
    let (mut client, server) = tokio::io::duplex(4096);
    client
        .write_all(b"GET /api/users?page=2 HTTP/1.1\r\nHost: api.example\r\nOrigin: https://app.example\r\nX-Tenant: acme\r\nUser-Agent: bench\r\n\r\n")
        .await
        .unwrap();
    let mut s = Session::new_h1(Box::new(server));
    assert!(s.read_request().await.unwrap());
    // Keep the client end alive for the session's lifetime.
    std::mem::forget(client);
    s
}

fn chain_execution(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let filters = chain_filters();
    let mut s = rt.block_on(session());
    let listener: std::sync::Arc<str> = "bench".into();
    c.bench_function("chain_execution/4_filters_all_phases", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut ctx = RequestCtx::new(listener.clone());
                    for f in &filters {
                        if let FilterAction::Respond(r) =
                            f.on_request(&mut s, &mut ctx).await.unwrap()
                        {
                            black_box(r);
                        }
                    }
                    let mut up = s.req_header().clone();
                    for f in &filters {
                        f.on_upstream_request(&s, &mut up, &mut ctx).unwrap();
                    }
                    let mut resp = ResponseHeader::build(200, Some(4)).unwrap();
                    resp.insert_header("x-internal-secret", "1").unwrap();
                    for f in filters.iter().rev() {
                        f.on_response_headers(&s, &mut resp, &mut ctx).unwrap();
                    }
                    black_box((up, resp));
                }
                start.elapsed()
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = route_matching, chain_execution
}
criterion_main!(benches);
