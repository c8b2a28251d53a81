//! Continuous load against the gateway (workers sending one request after another until told
//! to stop) and the report of what it saw, for reload, upgrade and failover tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::client::{client, fresh_client};

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub ok: usize,
    pub failed: usize,
    /// Requests that failed at the transport level on a kept-alive connection and succeeded
    /// when sent again (only with `LoadOptions::retry_once`).
    pub retried: usize,
    /// The first few failures, for the assertion message.
    pub errors: Vec<String>,
    /// Successful answers by `x-upstream-id`.
    pub by_upstream: BTreeMap<String, usize>,
}

impl LoadReport {
    fn merge(&mut self, r: LoadReport) {
        self.ok += r.ok;
        self.failed += r.failed;
        self.retried += r.retried;
        self.errors.extend(r.errors);
        for (k, v) in r.by_upstream {
            *self.by_upstream.entry(k).or_insert(0) += v;
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub workers: usize,
    /// A new connection for every request (no keep-alive).
    pub fresh_connections: bool,
    /// Send a GET once more after a transport error, as browsers do for idempotent requests
    /// on a kept-alive connection the server closed meanwhile.
    pub retry_once: bool,
}

impl LoadOptions {
    pub fn keepalive(workers: usize) -> Self {
        LoadOptions {
            workers,
            fresh_connections: false,
            retry_once: false,
        }
    }
}

/// Continuous load on `url` until `stop` is set: `workers` tasks, each sending requests one
/// after another. Every answer other than a complete 200 is a failure.
pub fn start_load(url: String, opts: LoadOptions, stop: Arc<AtomicBool>) -> JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..opts.workers {
            let (url, stop) = (url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let cl = if opts.fresh_connections {
                    fresh_client()
                } else {
                    client()
                };
                let mut rep = LoadReport::default();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let url = format!("{url}?w={w}&i={i}");
                    let mut res = one_request(&cl, &url).await;
                    if opts.retry_once && matches!(res, Err((true, _))) {
                        res = one_request(&cl, &url).await;
                        if res.is_ok() {
                            rep.retried += 1;
                        }
                    }
                    match res {
                        Ok(id) => {
                            rep.ok += 1;
                            *rep.by_upstream.entry(id).or_insert(0) += 1;
                        }
                        Err((_, e)) => {
                            rep.failed += 1;
                            rep.errors.push(e);
                        }
                    }
                }
                rep
            }));
        }
        let mut total = LoadReport::default();
        for t in tasks {
            total.merge(t.await.unwrap());
        }
        total.errors.truncate(10);
        total
    })
}

/// One GET; Ok(upstream id) or Err((transport error?, description)).
async fn one_request(cl: &reqwest::Client, url: &str) -> Result<String, (bool, String)> {
    let r = cl
        .get(url)
        .header("x-no-echo", "1")
        .send()
        .await
        .map_err(|e| (true, format!("{e:?}")))?;
    let status = r.status();
    let id = r
        .headers()
        .get("x-upstream-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let body = r
        .bytes()
        .await
        .map_err(|e| (true, format!("body: {e:?}")))?;
    if status != 200 {
        return Err((
            false,
            format!("status {status}: {}", String::from_utf8_lossy(&body)),
        ));
    }
    Ok(id)
}
