//! Baseline for the load benchmark (benches/load.sh): the smallest possible
//! Pingora reverse proxy, with no filters, proxying every request to one
//! plaintext HTTP/1.1 upstream. Same allocator (mimalloc) and thread count
//! (1) as stoa-gateway in the benchmark, so the difference between the two is
//! the cost of stoa's own machinery.
//!
//! Usage: bare_pingora [UPSTREAM [LISTEN]]
//!   or   BARE_UPSTREAM=127.0.0.1:9000 BARE_LISTEN=127.0.0.1:6188 bare_pingora
//! Defaults: upstream 127.0.0.1:9000, listen 127.0.0.1:6188.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn arg_or_env(pos: usize, env: &str, default: &str) -> String {
    std::env::args()
        .nth(pos)
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_string())
}

fn main() {
    let upstream: SocketAddr = arg_or_env(1, "BARE_UPSTREAM", "127.0.0.1:9000")
        .parse()
        .expect("BARE_UPSTREAM must be IP:PORT");
    let listen = arg_or_env(2, "BARE_LISTEN", "127.0.0.1:6188");

    let pid = std::process::id();
    let conf = ServerConf {
        threads: 1,
        pid_file: format!("/tmp/bare_pingora.{pid}.pid"),
        upgrade_sock: format!("/tmp/bare_pingora.{pid}.sock"),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    eprintln!("bare_pingora: listening on {listen}, upstream {upstream}");
    server.run_forever();
}
