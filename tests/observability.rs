//! The Prometheus rules and Grafana dashboard that watch a migration (mirror, then canary,
//! then cut over; `docker/observability/`):
//! `promtool check rules` (Debian's prometheus package, installed by the test command) accepts
//! them, and every metric they use is one the real gateway exports once it runs the `mirror`
//! and `canary` filters with a health-checked candidate cluster.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn observability() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker/observability")
}

/// The gateway metric names an expression uses (recording rules, with colons, are not ours);
/// histogram series map to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b((?:stoa|mcp)_[a-z0-9_]+)").unwrap();
    re.captures_iter(text)
        .map(|c| {
            let name = c[1].to_string();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).map(str::to_string))
                .unwrap_or(name)
        })
        .collect()
}

#[test]
fn promtool_accepts_the_rules() {
    let dir = observability().join("prometheus");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(dir.join("recording-rules.yml"))
        .arg(dir.join("alerts.yml"))
        .output()
        .expect("promtool runs (the test command installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
    assert!(text.contains("SUCCESS: 6 rules found"), "{text}");
    let rules = std::fs::read_to_string(dir.join("recording-rules.yml")).unwrap();
    for record in [
        "mcp:rust_gateway_error_rate:5m",
        "mcp:rust_gateway_p99_latency:5m",
        "mcp:python_gateway_p99_latency:5m",
        "mcp:rust_gateway_ready_for_traffic",
    ] {
        assert!(rules.contains(&format!("record: {record}")), "{record}");
    }
    let alerts = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for alert in [
        "MCPShadowMismatchRateHigh",
        "MCPShadowErrorRateHigh",
        "MCPShadowTimeoutRateHigh",
        "MCPRustGatewayErrorRateHigh",
        "MCPRustGatewayLatencyHigh",
        "MCPRustGatewayDown",
    ] {
        assert!(alerts.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// The runbook's thresholds, checked by Prometheus' own rule evaluator on synthetic series: the
/// shadow timeout alert fires at 10% timeouts and stays quiet at 2%.
#[test]
fn the_shadow_alerts_fire_at_their_thresholds() {
    let dir = observability().join("prometheus");
    let out = Command::new("promtool")
        .current_dir(&dir)
        .args(["test", "rules", "rules-test.yml"])
        .output()
        .expect("promtool runs (the test command installs Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_use_is_exported() {
    let python = echo("python").await;
    let rust = echo("rust").await;
    let yaml = format!(
        r#"
listeners:
  - name: main
    address: "127.0.0.1:@PORT@"
    chains: [main]
chains:
  main:
    - type: router
      routes:
        - name: mcp
          match: {{ path_prefix: / }}
          cluster: python
    - type: canary
      cluster: rust
      weight: 50
      sticky_key: "{{{{ header.x-user }}}}"
    - type: mirror
      url: "http://{rust}"
clusters:
  python:
    endpoints: ["{python}"]
  rust:
    endpoints: ["{rust}"]
    health_check: {{ type: http, path: /health, interval: 1s }}
"#,
        python = python.address(),
        rust = rust.address()
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for i in 0..40 {
        let r = c
            .get(gw.url("/tools"))
            .header("x-user", format!("u{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A POST is not mirrored (skipped); echo answers differ between the two (server_id), so
    // field differences are counted too.
    c.post(gw.url("/tools")).body("x").send().await.unwrap();
    gw.wait_metric(
        "mcp_shadow_match_total",
        &[("route", "mcp"), ("result", "mismatch")],
        Duration::from_secs(10),
        |v| v.is_some_and(|v| v >= 1.0),
    )
    .await;
    let exported = gw.metrics().await;
    let mut used = BTreeSet::new();
    for file in [
        "prometheus/recording-rules.yml",
        "prometheus/alerts.yml",
        "grafana/mcp-gateway-migration.json",
    ] {
        let text = std::fs::read_to_string(observability().join(file)).unwrap();
        used.extend(metric_names(&text));
    }
    assert!(used.len() >= 8, "{used:?}");
    for name in &used {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the rules or dashboard use `{name}`, which the gateway does not export"
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(observability().join("grafana/mcp-gateway-migration.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(dashboard["title"], "MCP Gateway Migration: Python to Rust");
}
