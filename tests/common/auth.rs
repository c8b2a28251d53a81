//! JWT test support: fresh signing keys (openssl) with their public JWKs, token helpers (signed,
//! `alg: none`, HS256 with an arbitrary secret for key-confusion attacks) and a JWKS / OpenID
//! discovery server (axum) on a 127.0.0.1 ephemeral port.
//!
//! Tokens are signed with `jsonwebtoken` (feature `rust_crypto` only, so its process-wide
//! crypto provider is picked automatically).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

// ------------------------------------------------------------------------------------------
// Keys and tokens
// ------------------------------------------------------------------------------------------

/// base64url without padding, as JWS/JWK use it.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A freshly generated signing key: the private half signs tokens, `jwk` / `public_pem` are the
/// public half as a JWKS entry and as an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// Public JWK: `kid`, `kty`, `alg`, `use: "sig"` and `n`/`e` (RSA), `crv`/`x`/`y` (EC) or
    /// `crv`/`x` (OKP).
    pub jwk: Value,
    pub public_pem: String,
}

impl TestKey {
    /// A 2048-bit RSA key for `alg` (RS256/384/512, PS256/384/512).
    pub fn rsa(kid: &str, alg: Algorithm) -> TestKey {
        assert!(
            matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            "TestKey::rsa: {alg:?} is not an RSA algorithm"
        );
        let rsa = Rsa::generate(2048).expect("generate RSA key");
        let jwk = json!({
            "kid": kid,
            "kty": "RSA",
            "alg": alg_name(alg),
            "use": "sig",
            "n": b64url(&rsa.n().to_vec()),
            "e": b64url(&rsa.e().to_vec()),
        });
        // PKCS#1 DER: what jsonwebtoken's RSA signer reads.
        let encoding = EncodingKey::from_rsa_der(&rsa.private_key_to_der().unwrap());
        let public_pem = public_pem(&PKey::from_rsa(rsa).unwrap());
        TestKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk,
            public_pem,
        }
    }

    /// A P-256 key for ES256.
    pub fn ec_p256(kid: &str) -> TestKey {
        Self::ec(kid, Nid::X9_62_PRIME256V1, "P-256", 32, Algorithm::ES256)
    }

    /// A P-384 key for ES384.
    pub fn ec_p384(kid: &str) -> TestKey {
        Self::ec(kid, Nid::SECP384R1, "P-384", 48, Algorithm::ES384)
    }

    fn ec(kid: &str, nid: Nid, crv: &str, size: i32, alg: Algorithm) -> TestKey {
        let group = EcGroup::from_curve_name(nid).unwrap();
        let ec = EcKey::generate(&group).expect("generate EC key");
        let mut ctx = BigNumContext::new().unwrap();
        let (mut x, mut y) = (
            openssl::bn::BigNum::new().unwrap(),
            openssl::bn::BigNum::new().unwrap(),
        );
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let jwk = json!({
            "kid": kid,
            "kty": "EC",
            "alg": alg_name(alg),
            "use": "sig",
            "crv": crv,
            "x": b64url(&x.to_vec_padded(size).unwrap()),
            "y": b64url(&y.to_vec_padded(size).unwrap()),
        });
        let pkey = PKey::from_ec_key(ec).unwrap();
        // PKCS#8 DER: what jsonwebtoken's ECDSA signer reads.
        let encoding = EncodingKey::from_ec_der(&pkey.private_key_to_pkcs8().unwrap());
        TestKey {
            kid: kid.to_string(),
            alg,
            encoding,
            jwk,
            public_pem: public_pem(&pkey),
        }
    }

    /// An Ed25519 key for EdDSA (JWK `kty: OKP`, `crv: Ed25519`).
    pub fn ed25519(kid: &str) -> TestKey {
        let pkey = PKey::generate_ed25519().expect("generate Ed25519 key");
        let jwk = json!({
            "kid": kid,
            "kty": "OKP",
            "alg": "EdDSA",
            "use": "sig",
            "crv": "Ed25519",
            "x": b64url(&pkey.raw_public_key().unwrap()),
        });
        let encoding = EncodingKey::from_ed_der(&pkey.private_key_to_pkcs8().unwrap());
        TestKey {
            kid: kid.to_string(),
            alg: Algorithm::EdDSA,
            encoding,
            jwk,
            public_pem: public_pem(&pkey),
        }
    }

    /// A token for `claims`; the header has `typ: JWT`, this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(Some(self.kid.as_str()), claims)
    }

    /// A token for `claims` whose header has no `kid`.
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        self.sign_with_kid(None, claims)
    }

    /// A token for `claims` with any `kid` in the header (e.g. one the JWKS does not have).
    pub fn sign_with_kid(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign JWT")
    }
}

fn public_pem<T: openssl::pkey::HasPublic>(pkey: &PKey<T>) -> String {
    String::from_utf8(pkey.public_key_to_pem().unwrap()).unwrap()
}

/// The JOSE name of an algorithm (`"RS256"`, `"EdDSA"`, ...).
pub fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

static JTI: AtomicU64 = AtomicU64::new(0);

/// Valid claims: `iss`, `aud`, `sub`, `iat = nbf = now`, `exp = now + 300`, a unique `jti` and
/// `scope: "read write"`. Change or remove fields with `claims["exp"] = ...` /
/// `claims.as_object_mut().unwrap().remove("aud")`.
pub fn claims(iss: &str, aud: &str, sub: &str) -> Value {
    let now = now();
    json!({
        "iss": iss,
        "aud": aud,
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": format!("test-{}-{}", std::process::id(), JTI.fetch_add(1, Ordering::Relaxed)),
        "scope": "read write",
    })
}

/// An unsigned token: header `{"alg":"none","typ":"JWT"}`, the claims, an empty signature
/// (`"h.p."`).
pub fn unsigned_alg_none_token(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An HS256 token with `secret` as the HMAC key, e.g. an RSA key's `public_pem` bytes for the
/// classic RS256 → HS256 key-confusion attack. `kid` goes in the header when given.
pub fn hs256_token_with_secret(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign HS256")
}

// ------------------------------------------------------------------------------------------
// JWKS / discovery server
// ------------------------------------------------------------------------------------------

#[derive(Clone)]
struct JwksState {
    keys: Arc<Mutex<Vec<Value>>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    port: u16,
}

/// A JWKS + OpenID discovery server on `127.0.0.1:<port>`:
///
/// * `GET /jwks` → `{"keys": [...]}` (the current `keys`);
/// * `GET /realms/{realm}/.well-known/openid-configuration` → issuer `<base>/realms/<realm>`;
/// * `GET /.well-known/openid-configuration` → issuer `<base>`;
///
/// where `<base>` is `http://` + the request's `Host` (so the issuer is exactly the prefix the
/// document was fetched under), and `jwks_uri` is `<base>/jwks`. While `set_down(true)`, every
/// request (still counted) is answered 503.
///
/// `stop()` / drop closes the listener and every open connection (kept-alive ones included),
/// so clients see the server gone, not a pooled connection that still works.
pub struct JwksServer {
    pub addr: SocketAddr,
    /// The served JWKs; replace them with `set_keys` or edit in place (any JSON, e.g. a
    /// malformed key).
    pub keys: Arc<Mutex<Vec<Value>>>,
    jwks_hits: Arc<AtomicUsize>,
    discovery_hits: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
    kill: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl JwksServer {
    /// Start on an ephemeral port, serving no keys yet.
    pub async fn start() -> JwksServer {
        Self::start_on(0).await
    }

    /// Start on `port` (0: any), with fresh state. Binding is retried for up to 5 s so that a
    /// server can be started again on the port of one just stopped.
    pub async fn start_on(port: u16) -> JwksServer {
        let state = JwksState {
            keys: Arc::new(Mutex::new(Vec::new())),
            jwks_hits: Arc::new(AtomicUsize::new(0)),
            discovery_hits: Arc::new(AtomicUsize::new(0)),
            down: Arc::new(AtomicBool::new(false)),
            port,
        };
        let (kill, _) = watch::channel(false);
        let mut srv = JwksServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            keys: state.keys.clone(),
            jwks_hits: state.jwks_hits.clone(),
            discovery_hits: state.discovery_hits.clone(),
            down: state.down.clone(),
            kill,
            task: None,
        };
        srv.serve(state).await;
        srv
    }

    /// Start with these keys.
    pub async fn with_keys(keys: &[&TestKey]) -> JwksServer {
        let srv = Self::start().await;
        srv.set_keys(keys);
        srv
    }

    async fn serve(&mut self, mut state: JwksState) {
        let listener = bind_retry(self.addr.port()).await;
        self.addr = listener.local_addr().unwrap();
        state.port = self.addr.port();
        let (kill, kill_rx) = watch::channel(false);
        self.kill = kill;
        let app = Router::new()
            .route("/jwks", get(jwks_handler))
            .route("/.well-known/openid-configuration", get(root_discovery))
            .route(
                "/realms/{realm}/.well-known/openid-configuration",
                get(realm_discovery),
            )
            .fallback(|| async { StatusCode::NOT_FOUND })
            .with_state(state);
        let listener = KillableListener {
            tcp: listener,
            kill: kill_rx,
        };
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    /// Close the listener and all connections; returns once the port is free.
    pub async fn stop(&mut self) {
        let _ = self.kill.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Stop, then serve again on the same port with the same keys, counters and down flag.
    pub async fn restart(&mut self) {
        self.stop().await;
        let state = JwksState {
            keys: self.keys.clone(),
            jwks_hits: self.jwks_hits.clone(),
            discovery_hits: self.discovery_hits.clone(),
            down: self.down.clone(),
            port: self.addr.port(),
        };
        self.serve(state).await;
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// `http://127.0.0.1:PORT/jwks`
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.url())
    }

    /// `http://127.0.0.1:PORT/realms/<realm>`: the issuer of that realm's discovery document.
    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.url())
    }

    /// Serve exactly these keys' public JWKs.
    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    /// Requests to `/jwks` so far (those answered 503 included).
    pub fn jwks_hits(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }

    /// Requests to either discovery path so far (those answered 503 included).
    pub fn discovery_hits(&self) -> usize {
        self.discovery_hits.load(Ordering::SeqCst)
    }

    /// While `true`, every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        let _ = self.kill.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn bind_retry(port: u16) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(_) if port != 0 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
        }
    }
}

fn base_url(st: &JwksState, headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("127.0.0.1:{}", st.port));
    format!("http://{host}")
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
}

async fn jwks_handler(State(st): State<JwksState>) -> Response {
    st.jwks_hits.fetch_add(1, Ordering::SeqCst);
    if st.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let keys = st.keys.lock().unwrap().clone();
    axum::Json(json!({ "keys": keys })).into_response()
}

fn discovery(st: &JwksState, headers: &HeaderMap, realm: Option<&str>) -> Response {
    st.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if st.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let base = base_url(st, headers);
    let issuer = match realm {
        Some(r) => format!("{base}/realms/{r}"),
        None => base.clone(),
    };
    axum::Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/jwks"),
        "authorization_endpoint": format!("{issuer}/protocol/openid-connect/auth"),
        "token_endpoint": format!("{issuer}/protocol/openid-connect/token"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported":
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
    }))
    .into_response()
}

async fn root_discovery(State(st): State<JwksState>, headers: HeaderMap) -> Response {
    discovery(&st, &headers, None)
}

async fn realm_discovery(
    State(st): State<JwksState>,
    Path(realm): Path<String>,
    headers: HeaderMap,
) -> Response {
    discovery(&st, &headers, Some(&realm))
}

/// axum `Listener` whose connections fail (and so are closed) once `kill` turns true, even
/// kept-alive ones idle in a read.
struct KillableListener {
    tcp: tokio::net::TcpListener,
    kill: watch::Receiver<bool>,
}

impl axum::serve::Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let mut rx = self.kill.clone();
            let killed = Box::pin(async move {
                let _ = rx.wait_for(|k| *k).await;
            });
            return (KillableStream { tcp, killed }, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

struct KillableStream {
    tcp: tokio::net::TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl KillableStream {
    /// Polls the kill signal (registering the waker, so an idle read is woken by it).
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.killed.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "test server stopped",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
