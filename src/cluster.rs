//! `Cluster`: one upstream pool built from a `clusters:` entry — endpoint selection through
//! pingora-load-balancing (round robin with weights, random, Ketama consistent hashing), active
//! HTTP/TCP health checks, passive ejection of endpoints that refuse connections, and the peer
//! settings (timeouts, TLS with SNI and verification, HTTP/2) used for every attempt.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use pingora_load_balancing::discovery;
use pingora_load_balancing::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora_load_balancing::selection::{Consistent, Random, RoundRobin};
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use pingora_proxy::Session;

use crate::config::{ClusterConfig, HashOn, HealthCheckKind, Selection};

/// What the config said about one endpoint, kept beside the load balancer's `Backend`.
#[derive(Clone, Debug)]
pub struct EndpointMeta {
    /// `host:port` as written in the config (sent as `Host` unless the route preserves it).
    pub authority: Arc<str>,
    /// The host part, used as the default TLS SNI.
    pub host: String,
    /// `authority` as a header value, built once (it is sent on every request).
    pub host_header: http::HeaderValue,
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Consistent(LoadBalancer<Consistent>),
}

macro_rules! with_lb {
    ($b:expr, $lb:ident => $e:expr) => {
        match $b {
            Balancer::RoundRobin($lb) => $e,
            Balancer::Random($lb) => $e,
            Balancer::Consistent($lb) => $e,
        }
    };
}

pub struct Cluster {
    pub name: Arc<str>,
    balancer: Balancer,
    endpoints: HashMap<SocketAddr, EndpointMeta>,
    hash_on: Option<HashOn>,
    pub retries: u32,
    pub health_interval: Option<Duration>,
    health_checked_once: AtomicBool,
    ejection: Duration,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    ejected_count: AtomicUsize,
    peer_template: HttpPeer,
    /// The endpoint of a one-endpoint cluster (most are): picking it needs no balancer walk
    /// and no copy of the `Backend` per request.
    only: Option<Backend>,
    tls: bool,
    sni: Option<String>,
    pub breaker: Option<crate::circuit::CircuitBreaker>,
}

impl Cluster {
    pub fn build(name: &str, cfg: &ClusterConfig) -> Result<Self, String> {
        let mut backends = BTreeSet::new();
        let mut endpoints = HashMap::new();
        for (i, e) in cfg.endpoints.iter().enumerate() {
            let raw = e.address();
            let raw = raw
                .strip_prefix("http://")
                .or_else(|| raw.strip_prefix("https://"))
                .unwrap_or(raw)
                .trim_end_matches('/');
            let addr = raw
                .to_socket_addrs()
                .map_err(|err| format!("endpoints[{i}]: cannot resolve `{raw}`: {err}"))?
                .next()
                .ok_or_else(|| format!("endpoints[{i}]: `{raw}` resolves to no address"))?;
            let host = match raw.rsplit_once(':') {
                Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
                None => raw.to_string(),
            };
            let mut backend = Backend::new_with_weight(&addr.to_string(), e.weight())
                .map_err(|err| format!("endpoints[{i}]: {err}"))?;
            let meta = EndpointMeta {
                authority: raw.into(),
                host,
                host_header: http::HeaderValue::from_str(raw)
                    .map_err(|_| format!("endpoints[{i}]: `{raw}` is not a valid Host value"))?,
            };
            backend.ext.insert(meta.clone());
            endpoints.insert(addr, meta);
            backends.insert(backend);
        }

        let only = match backends.len() {
            1 => backends.first().cloned(),
            _ => None,
        };
        let mut ba = Backends::new(discovery::Static::new(backends));
        let mut health_interval = None;
        if let Some(hc) = &cfg.health_check {
            health_interval = Some(hc.interval.0);
            let check: Box<dyn HealthCheck + Send + Sync> = match hc.kind {
                HealthCheckKind::Tcp => {
                    let mut c = TcpHealthCheck::new();
                    c.consecutive_success = hc.healthy_threshold;
                    c.consecutive_failure = hc.unhealthy_threshold;
                    c.peer_template.options.connection_timeout = Some(hc.timeout.0);
                    c.peer_template.options.total_connection_timeout = Some(hc.timeout.0);
                    c
                }
                HealthCheckKind::Http => {
                    let host = hc.host.clone().unwrap_or_else(|| {
                        endpoints
                            .values()
                            .next()
                            .map(|m| m.host.clone())
                            .unwrap_or_else(|| "localhost".into())
                    });
                    let mut c = HttpHealthCheck::new(&host, cfg.tls.is_some());
                    let mut req = RequestHeader::build("GET", hc.path.as_bytes(), None)
                        .map_err(|e| format!("health_check.path: {e}"))?;
                    req.insert_header("host", host.as_str())
                        .map_err(|e| format!("health_check.host: {e}"))?;
                    req.insert_header("user-agent", "stoa-gateway-health-check")
                        .map_err(|e| format!("health_check: {e}"))?;
                    c.req = req;
                    c.consecutive_success = hc.healthy_threshold;
                    c.consecutive_failure = hc.unhealthy_threshold;
                    c.reuse_connection = false;
                    c.validator = Some(Box::new(|resp| {
                        if resp.status.is_success() {
                            Ok(())
                        } else {
                            pingora_core::Error::e_explain(
                                pingora_core::ErrorType::CustomCode(
                                    "unhealthy",
                                    resp.status.as_u16(),
                                ),
                                "health check status is not 2xx",
                            )
                        }
                    }));
                    let o = &mut c.peer_template.options;
                    o.connection_timeout = Some(hc.timeout.0);
                    o.total_connection_timeout = Some(hc.timeout.0);
                    o.read_timeout = Some(hc.timeout.0);
                    o.write_timeout = Some(hc.timeout.0);
                    if let Some(tls) = &cfg.tls {
                        o.verify_cert = tls.verify;
                        o.verify_hostname = tls.verify;
                    }
                    Box::new(c)
                }
            };
            ba.set_health_check(check);
        }

        let balancer = match cfg.selection {
            Selection::RoundRobin | Selection::Weighted => {
                Balancer::RoundRobin(LoadBalancer::from_backends(ba))
            }
            Selection::Random => Balancer::Random(LoadBalancer::from_backends(ba)),
            Selection::ConsistentHash => Balancer::Consistent(LoadBalancer::from_backends(ba)),
        };
        with_lb!(&balancer, lb => lb
            .update()
            .now_or_never()
            .ok_or("static discovery did not complete")?
            .map_err(|e| format!("endpoints: {e}"))?);

        let mut peer_template = HttpPeer::new("0.0.0.0:0", cfg.tls.is_some(), String::new());
        let o = &mut peer_template.options;
        o.connection_timeout = Some(cfg.timeouts.connect.0);
        o.total_connection_timeout = Some(cfg.timeouts.connect.0);
        o.read_timeout = Some(cfg.timeouts.read.0);
        o.write_timeout = Some(cfg.timeouts.write.0);
        o.idle_timeout = Some(cfg.timeouts.idle.0);
        o.alpn = if cfg.http2 { ALPN::H2 } else { ALPN::H1 };
        if cfg.tls.is_some() && cfg.http2 {
            o.alpn = ALPN::H2H1;
        }
        if cfg.http2 {
            o.max_h2_streams = 100;
        }
        let mut sni = None;
        if let Some(tls) = &cfg.tls {
            o.verify_cert = tls.verify;
            o.verify_hostname = tls.verify;
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("tls.ca_file `{ca}`: {e}"))?;
                let certs = pingora_core::tls::x509::X509::stack_from_pem(&pem)
                    .map_err(|e| format!("tls.ca_file `{ca}`: {e}"))?;
                if certs.is_empty() {
                    return Err(format!("tls.ca_file `{ca}`: no certificate found"));
                }
                o.ca = Some(Arc::new(certs.into_boxed_slice()));
            }
            sni = tls.sni.clone();
        }

        Ok(Cluster {
            name: name.into(),
            balancer,
            endpoints,
            hash_on: cfg.hash_on.clone(),
            retries: cfg.retries,
            health_interval,
            health_checked_once: AtomicBool::new(cfg.health_check.is_none()),
            ejection: cfg.passive_ejection.duration.0,
            ejected: Mutex::new(HashMap::new()),
            ejected_count: AtomicUsize::new(0),
            peer_template,
            only,
            tls: cfg.tls.is_some(),
            sni,
            breaker: match &cfg.circuit_breaker {
                Some(b) => {
                    b.validate()?;
                    Some(crate::circuit::CircuitBreaker::new(name, b.clone()))
                }
                None => None,
            },
        })
    }

    /// The hash key for consistent hashing, from the configured header, cookie or path.
    fn hash_key<'a>(&self, session: &'a Session) -> &'a [u8] {
        let req = session.req_header();
        match &self.hash_on {
            None | Some(HashOn::Path(false)) => b"",
            Some(HashOn::Path(true)) => req.uri.path().as_bytes(),
            Some(HashOn::Header(h)) => req.headers.get(h.as_str()).map_or(b"", |v| v.as_bytes()),
            Some(HashOn::Cookie(name)) => req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then_some(v.as_bytes())
                })
                .unwrap_or(b""),
        }
    }

    fn is_ejected(&self, addr: &SocketAddr) -> bool {
        if self.ejected_count.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let mut map = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(addr) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(addr);
                self.ejected_count.store(map.len(), Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Skip `addr` for the ejection duration after it refused a connection.
    pub fn eject(&self, addr: SocketAddr) {
        if self.ejection.is_zero() {
            return;
        }
        let mut map = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(addr, Instant::now() + self.ejection);
        self.ejected_count.store(map.len(), Ordering::Relaxed);
    }

    /// Pick a healthy, non-ejected endpoint not in `exclude`.
    pub fn select(
        &self,
        session: &Session,
        exclude: &[SocketAddr],
    ) -> Option<std::borrow::Cow<'_, Backend>> {
        if let Some(only) = &self.only {
            // One endpoint: ejected or not, it is the one to try while its health check passes.
            let healthy = with_lb!(&self.balancer, lb => lb.backends().ready(only));
            let excluded = only.addr.as_inet().is_some_and(|a| exclude.contains(a));
            return (healthy && !excluded).then_some(std::borrow::Cow::Borrowed(only));
        }
        let key = self.hash_key(session);
        let n = self.endpoints.len().max(1) * 4;
        let accept = |b: &Backend, healthy: bool| {
            let addr = b.addr.as_inet().copied();
            healthy && addr.is_none_or(|a| !exclude.contains(&a) && !self.is_ejected(&a))
        };
        let picked = with_lb!(&self.balancer, lb => lb.select_with(key, n, accept));
        // Everything ejected but still passing health checks: better to try than to fail.
        picked
            .or_else(|| {
                with_lb!(&self.balancer, lb => lb.select_with(key, n, |b, healthy| {
                    healthy && b.addr.as_inet().is_none_or(|a| !exclude.contains(a))
                }))
            })
            .map(std::borrow::Cow::Owned)
    }

    /// The peer for one attempt against `backend`, and what the config says of the endpoint.
    pub fn peer<'a>(&self, backend: &'a Backend) -> (Box<HttpPeer>, Option<&'a EndpointMeta>) {
        let meta = backend.ext.get::<EndpointMeta>();
        let mut peer = Box::new(self.peer_template.clone());
        peer._address = backend.addr.clone();
        if self.tls {
            peer.sni = self
                .sni
                .clone()
                .or_else(|| meta.map(|m| m.host.clone()))
                .unwrap_or_default();
        }
        (peer, meta)
    }

    /// One active health-check pass over every endpoint (no-op without a health check).
    pub async fn run_health_check(&self) {
        if self.health_interval.is_none() {
            return;
        }
        with_lb!(&self.balancer, lb => lb.backends().run_health_check(true).await);
        self.health_checked_once.store(true, Ordering::Release);
    }

    /// True once the first health-check pass is done (always true without health checks).
    pub fn health_known(&self) -> bool {
        self.health_checked_once.load(Ordering::Acquire)
    }

    /// Every endpoint with its current state: healthy by the active check and not ejected.
    pub fn endpoint_health(&self) -> Vec<(String, bool)> {
        let backends = with_lb!(&self.balancer, lb => lb.backends().get_backend());
        backends
            .iter()
            .map(|b| {
                let ready = with_lb!(&self.balancer, lb => lb.backends().ready(b));
                let ejected = b.addr.as_inet().is_some_and(|a| self.is_ejected(a));
                (b.addr.to_string(), ready && !ejected)
            })
            .collect()
    }
}
