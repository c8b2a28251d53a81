//! What the mirror filters compared, for the admin API's `GET /shadow/report`: per route the
//! copies sent (ok, error, timeout), matches and mismatches with the match rate, the fields
//! that differed most, and the latest mismatches (masked, as logged). `DELETE /shadow/report`
//! starts over. With a noise baseline, each route also shows the baseline's outcomes and its
//! noisy fields (see `noise`). A shared resource, so it survives config reloads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::{json, Value};

use async_trait::async_trait;

use super::compare::{generalise, Difference};
use super::noise::Noise;
use crate::admin::{AdminEndpoint, AdminReply, AdminRequest};

/// Mismatches kept per route.
const RECENT: usize = 20;
/// Fields shown per route.
const TOP_FIELDS: usize = 10;
/// Distinct fields counted per route (more are counted as `other`).
const MAX_FIELDS: usize = 500;

#[derive(Default)]
struct RouteReport {
    ok: u64,
    error: u64,
    timeout: u64,
    matched: u64,
    mismatched: u64,
    fields: HashMap<String, u64>,
    recent: VecDeque<Value>,
}

/// The mirrors' report: one per process while mirror filters exist (a shared resource, so it
/// survives reloads), served at `/shadow/report`.
#[derive(Default)]
pub struct Report {
    routes: Mutex<BTreeMap<String, RouteReport>>,
    pub noise: Noise,
}

impl Report {
    /// A copy's outcome: `ok`, `error` or `timeout`.
    pub fn record_outcome(&self, route: &str, status: &str) {
        let mut report = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = report.entry(route.to_string()).or_default();
        match status {
            "ok" => r.ok += 1,
            "error" => r.error += 1,
            _ => r.timeout += 1,
        }
    }

    /// A comparison: a match when `differences` is empty.
    pub fn record_comparison(
        &self,
        route: &str,
        method: &str,
        path: &str,
        request_id: &str,
        differences: &[Difference],
    ) {
        let mut report = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = report.entry(route.to_string()).or_default();
        if differences.is_empty() {
            r.matched += 1;
            return;
        }
        r.mismatched += 1;
        for d in differences {
            let field = generalise(&d.field);
            let known = r.fields.len() < MAX_FIELDS || r.fields.contains_key(&field);
            *r.fields
                .entry(if known { field } else { "other".into() })
                .or_default() += 1;
        }
        r.recent.push_back(json!({
            "method": method,
            "path": path,
            "request_id": request_id,
            "at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "diff": differences.iter().take(10).collect::<Vec<_>>(),
        }));
        if r.recent.len() > RECENT {
            r.recent.pop_front();
        }
    }

    /// The report as JSON: totals and one entry per route.
    pub fn snapshot(&self) -> Value {
        let report = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut noise = self.noise.snapshot();
        let (mut matched, mut compared) = (0u64, 0u64);
        let routes: BTreeMap<&String, Value> = report
            .iter()
            .map(|(route, r)| {
                let total = r.matched + r.mismatched;
                matched += r.matched;
                compared += total;
                let mut fields: Vec<(&String, &u64)> = r.fields.iter().collect();
                fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
                let top: Vec<Value> = fields
                    .iter()
                    .take(TOP_FIELDS)
                    .map(|(f, n)| json!({"field": f, "count": n}))
                    .collect();
                let mut entry = json!({
                    "requests": {"ok": r.ok, "error": r.error, "timeout": r.timeout},
                    "compared": total,
                    "match": r.matched,
                    "mismatch": r.mismatched,
                    "match_rate": rate(r.matched, total),
                    "top_fields": top,
                    "recent_mismatches": r.recent.iter().rev().cloned().collect::<Vec<_>>(),
                });
                if let Some(n) = noise.remove(route.as_str()) {
                    entry["noise"] = n;
                }
                (route, entry)
            })
            .collect();
        json!({"compared": compared, "match_rate": rate(matched, compared), "routes": routes})
    }

    /// Forget everything (`DELETE /shadow/report`), the learned noise included.
    pub fn reset(&self) {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        self.noise.reset();
    }
}

fn rate(matched: u64, total: u64) -> Value {
    if total == 0 {
        Value::Null
    } else {
        json!(matched as f64 / total as f64)
    }
}

#[async_trait]
impl AdminEndpoint for Report {
    fn path(&self) -> &'static str {
        "/shadow/report"
    }

    async fn handle(&self, req: &AdminRequest<'_>) -> AdminReply {
        match req.method {
            "GET" => AdminReply::pretty(200, &self.snapshot()),
            "DELETE" => {
                self.reset();
                AdminReply::empty(204)
            }
            _ => AdminReply::error(405, "GET reads the report, DELETE resets it"),
        }
    }
}
