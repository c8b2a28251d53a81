//! Criterion micro-benchmarks of the proxy security chain's building blocks: one JWT
//! verification (RS256 and ES256, uncached and through the token cache); one OPA evaluation of
//! the shipped example policy (regorus' bytecode VM, which the filter uses, and its
//! interpreter), and the filter's whole per-request work (input document plus VM evaluation);
//! one rate-limit check (local governor, and Redis when `redis-server` is installed: one Lua
//! GCRA round trip).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use stoa_filters::jwt::{Jwt, JwtConfig};
use stoa_filters::rate_limit::{RateLimit, RateLimitConfig};
use stoa_filters::BuildContext;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A key pair in PEM (private for signing, public for the filter), made with openssl.
fn keypair(dir: &std::path::Path, alg: &str) -> (Vec<u8>, std::path::PathBuf) {
    let (private, public) = match alg {
        "RS256" => {
            let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
            let k = openssl::pkey::PKey::from_rsa(rsa).unwrap();
            (
                k.private_key_to_pem_pkcs8().unwrap(),
                k.public_key_to_pem().unwrap(),
            )
        }
        _ => {
            let group =
                openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
            let ec = openssl::ec::EcKey::generate(&group).unwrap();
            let k = openssl::pkey::PKey::from_ec_key(ec).unwrap();
            (
                k.private_key_to_pem_pkcs8().unwrap(),
                k.public_key_to_pem().unwrap(),
            )
        }
    };
    let path = dir.join(format!("{alg}.pub"));
    std::fs::write(&path, public).unwrap();
    (private, path)
}

fn jwt_verify(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("jwt_verify");
    for (alg, algorithm) in [("RS256", Algorithm::RS256), ("ES256", Algorithm::ES256)] {
        let (private, public) = keypair(dir.path(), alg);
        let enc = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
            _ => EncodingKey::from_ec_pem(&private).unwrap(),
        };
        let exp = jsonwebtoken::get_current_timestamp() + 3600;
        let claims = serde_json::json!({"iss": "https://bench", "aud": "stoa", "sub": "u", "tenant": "acme", "exp": exp,
            "realm_access": {"roles": ["user"]}, "scope": "read write"});
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &enc).unwrap();
        for cache in [0u64, 10_000] {
            let cfg: JwtConfig = serde_json::from_value(serde_json::json!({
                "issuer": "https://bench", "audiences": ["stoa"], "algorithms": [alg],
                "public_key_file": public, "cache_size": cache,
            }))
            .unwrap();
            let jwt = Jwt::build(&cfg, &mut BuildContext::standalone()).unwrap();
            assert!(rt.block_on(jwt.verify_token(&token)).is_ok());
            let name = format!("{alg}_{}", if cache == 0 { "uncached" } else { "cached" });
            g.bench_function(name, |b| {
                b.iter(|| rt.block_on(jwt.verify_token(black_box(&token))).unwrap())
            });
        }
    }
    g.finish();
}

fn opa_eval(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/policies");
    let mut g = c.benchmark_group("opa_eval");
    for query in ["data.stoa.authz.allow", "data.stoa.authz.decision"] {
        let policy = stoa_filters::opa::Policy::load(&dir, None, query).unwrap();
        let interpreter = stoa_filters::opa::compile(&dir, None, query).unwrap();
        let input = serde_json::json!({
            "request": {"method": "GET", "path": "/api/orders/42", "query": {"page": "2"},
                        "headers": {"host": "api.example", "user-agent": "bench", "authorization": "[redacted]"},
                        "client_ip": "10.0.0.1"},
            "token": {"sub": "u", "tenant": "acme"}, "subject": "u", "tenant": "acme",
            "roles": ["user"], "scopes": ["read"], "route": "orders"});
        let out = policy.evaluate(input.clone()).unwrap();
        assert!(
            stoa_filters::opa::Decision::from_result(&out)
                .unwrap()
                .allow
        );
        let name = query.trim_start_matches("data.stoa.authz.");
        g.bench_function(format!("{name}_vm"), |b| {
            b.iter(|| policy.evaluate(black_box(input.clone())).unwrap())
        });
        g.bench_function(format!("{name}_interpreter"), |b| {
            b.iter(|| stoa_filters::opa::evaluate(&interpreter, black_box(input.clone())).unwrap())
        });
        // What the filter does per request: the input built from the request and a (token
        // cached) identity, then one VM evaluation.
        let (req, ctx) = policy_request();
        g.bench_function(format!("{name}_request_input_and_vm"), |b| {
            b.iter(|| {
                let input = stoa_filters::opa::input_document(black_box(&req), &ctx);
                policy.evaluate(input).unwrap()
            })
        });
    }
    g.finish();
}

/// A request as the `opa` filter sees it, with the identity the `jwt` filter left.
fn policy_request() -> (pingora_http::RequestHeader, stoa_filters::RequestCtx) {
    let mut req =
        pingora_http::RequestHeader::build("GET", b"/api/orders/42?page=2", None).unwrap();
    req.insert_header("host", "api.example").unwrap();
    req.insert_header("user-agent", "bench").unwrap();
    req.insert_header("authorization", "Bearer x.y.z").unwrap();
    let mut ctx = stoa_filters::RequestCtx::new("bench".into());
    ctx.client_ip = Some("10.0.0.1".parse().unwrap());
    ctx.identity = Some(std::sync::Arc::new(stoa_filters::context::Identity {
        subject: Some("u".into()),
        tenant: Some("acme".into()),
        roles: vec!["user".into()],
        scopes: vec!["read".into()],
        claims: serde_json::json!({"sub": "u", "tenant": "acme"}),
        ..Default::default()
    }));
    (req, ctx)
}

struct RedisProcess(Child);
impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(RedisProcess, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let p = RedisProcess(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((p, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn rate_limit_check(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("rate_limit_check");
    let limits = serde_json::json!({"requests_per_second": 1_000_000_000u64 as u32, "requests_per_minute": 2_000_000_000u32});
    let local = RateLimit::new(
        &serde_json::from_value::<RateLimitConfig>(limits.clone()).unwrap(),
        &mut BuildContext::standalone(),
    )
    .unwrap();
    g.bench_function("local_2_limits", |b| {
        b.iter(|| assert!(rt.block_on(local.admit(black_box("tenant-acme")))))
    });
    match start_redis() {
        Some((_redis, port)) => {
            let mut cfg = limits;
            cfg["redis"] = serde_json::json!({"url": format!("redis://127.0.0.1:{port}"), "timeout": "1s", "failure_mode": "fail_closed"});
            let redis = RateLimit::new(
                &serde_json::from_value::<RateLimitConfig>(cfg).unwrap(),
                &mut BuildContext::standalone(),
            )
            .unwrap();
            assert!(rt.block_on(redis.admit("tenant-acme")));
            g.bench_function("redis_2_limits", |b| {
                b.iter(|| assert!(rt.block_on(redis.admit(black_box("tenant-acme")))))
            });
        }
        None => eprintln!("redis-server not available: skipping rate_limit_check/redis_2_limits"),
    }
    g.finish();
}

criterion_group!(benches, jwt_verify, opa_eval, rate_limit_check);
criterion_main!(benches);
