//! HTTP clients for talking to the gateway (pooled, or a new connection per request) and the
//! small request helpers built on them (`get_echo`, `who`).

use std::time::Duration;

/// A reqwest client without proxies and with a generous overall timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// A client that opens a new connection per request: for requests answered with a gateway error
/// (the gateway closes those connections; see `error_response_keepalive` in routing.rs).
pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// GET `url` and parse its JSON answer, e.g. an echo upstream's (panics unless 200).
pub async fn get_echo(c: &reqwest::Client, url: &str) -> serde_json::Value {
    let r = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "GET {url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not echo JSON ({e}): {text}"))
}

/// Which upstream answered (`server_id` of the echo JSON), or the status as `status:N`.
pub async fn who(c: &reqwest::Client, url: &str) -> String {
    match c.get(url).send().await {
        Ok(r) if r.status() == 200 => {
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            v["server_id"].as_str().unwrap_or("?").to_string()
        }
        Ok(r) => format!("status:{}", r.status().as_u16()),
        Err(e) => format!("error:{e}"),
    }
}
