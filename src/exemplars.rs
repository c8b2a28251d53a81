//! Exemplars on the request latency histogram (`stoa_request_duration_seconds`): for each
//! bucket of each `(listener, route)` series, the trace and span id of the latest sampled
//! request that fell in it, its duration and when. The Prometheus text format (0.0.4) has no
//! place for them; the OpenMetrics text format (1.0.0) has, so `/metrics` serves it, exemplars
//! included, to a scraper that asks for it (`Accept: application/openmetrics-text`), converted
//! from the same registries: counter families named without their `_total` suffix, exemplars
//! after the bucket samples, `# EOF` at the end.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use once_cell::sync::Lazy;

/// The histogram's bucket bounds (the `+Inf` bucket follows them).
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The histogram's family name.
const FAMILY: &str = "stoa_request_duration_seconds";

/// Series kept at most: listener and route names come from the config, but reloads can rename
/// them, so the store is bounded anyway.
const MAX_SERIES: usize = 4096;

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Exemplar {
    trace_id: String,
    span_id: String,
    value: f64,
    /// Seconds since the Unix epoch.
    at: f64,
}

type Series = [Option<Exemplar>; BUCKETS.len() + 1];

/// Series by listener, then route (looked up without allocating).
type Store = HashMap<String, HashMap<String, Series>>;

static STORE: Lazy<Mutex<Store>> = Lazy::new(Default::default);

/// Record a sampled request's duration as its bucket's exemplar; `ids` gives its trace and
/// span id. Best effort on the request path: when another request holds the store, this one is
/// not recorded (an exemplar is a sample, and the next request will do), so no request waits.
pub fn record(listener: &str, route: &str, seconds: f64, ids: impl FnOnce() -> (String, String)) {
    let Ok(mut store) = STORE.try_lock() else {
        return;
    };
    let bucket = BUCKETS
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(BUCKETS.len());
    if !store.get(listener).is_some_and(|r| r.contains_key(route)) {
        if store.values().map(HashMap::len).sum::<usize>() >= MAX_SERIES {
            return;
        }
        store
            .entry(listener.to_string())
            .or_default()
            .insert(route.to_string(), Default::default());
    }
    let Some(series) = store.get_mut(listener).and_then(|r| r.get_mut(route)) else {
        return;
    };
    let (trace_id, span_id) = ids();
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    series[bucket] = Some(Exemplar {
        trace_id,
        span_id,
        value: seconds,
        at,
    });
}

/// The labels of a sample line (`name{k="v",...} value`), values unescaped; `None` when the
/// line has no label block or a malformed one.
fn labels(line: &str) -> Option<Vec<(String, String)>> {
    let open = line.find('{')?;
    let mut chars = line.get(open + 1..)?.chars();
    let mut out = Vec::new();
    loop {
        let mut name = String::new();
        for c in chars.by_ref() {
            match c {
                '=' => break,
                '}' if name.is_empty() => return Some(out),
                ',' if name.is_empty() => {}
                c => name.push(c),
            }
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name, value));
    }
}

/// The exemplar suffix for a bucket sample line of the histogram, if one was recorded.
fn exemplar_for(line: &str, store: &Store) -> Option<String> {
    let labels = labels(line)?;
    let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let (listener, route, le) = (get("listener")?, get("route")?, get("le")?);
    let bucket = if le == "+Inf" {
        BUCKETS.len()
    } else {
        let le: f64 = le.parse().ok()?;
        BUCKETS.iter().position(|b| (b - le).abs() < 1e-12)?
    };
    let e = store.get(listener)?.get(route)?.get(bucket)?.as_ref()?;
    Some(format!(
        " # {{trace_id=\"{}\",span_id=\"{}\"}} {} {:.3}",
        e.trace_id, e.span_id, e.value, e.at
    ))
}

/// The Prometheus text exposition `text` in the OpenMetrics text format, with exemplars.
pub fn openmetrics(text: &str) -> String {
    // counter families: OpenMetrics names the family without `_total`, its sample with it
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let store = STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let bucket_prefix = format!("{FAMILY}_bucket{{");
    let mut out = String::with_capacity(text.len() + 1024);
    for line in text.lines() {
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|kind| line.strip_prefix(kind).map(|rest| (kind, rest)));
        if let Some((kind, rest)) = meta {
            let name = rest.split(' ').next().unwrap_or("");
            match counters.contains(&name) {
                true => {
                    let family = name.strip_suffix("_total").unwrap_or(name);
                    out.push_str(kind);
                    out.push_str(family);
                    out.push_str(rest.get(name.len()..).unwrap_or(""));
                }
                false => out.push_str(line),
            }
        } else if line.starts_with('#') || line.is_empty() {
            continue;
        } else {
            let (name, rest) = line.split_at(line.find(['{', ' ']).unwrap_or(line.len()));
            if counters.contains(&name) && !name.ends_with("_total") {
                out.push_str(name);
                out.push_str("_total");
                out.push_str(rest);
            } else {
                out.push_str(line);
            }
            if line.starts_with(&bucket_prefix) {
                if let Some(e) = exemplar_for(line, &store) {
                    out.push_str(&e);
                }
            }
        }
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

/// Whether a scrape asks for OpenMetrics (its `Accept` names the media type).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            part.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/openmetrics-text")
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_blocks_are_read_with_their_escapes() {
        let l = labels(r#"x_bucket{listener="a",route="q\"u\\o,te",le="0.5"} 3"#).unwrap();
        assert_eq!(l[1], ("route".into(), "q\"u\\o,te".into()));
        assert_eq!(l[2], ("le".into(), "0.5".into()));
        assert_eq!(labels("x 3"), None);
        assert_eq!(labels(r#"x{a="unterminated} 3"#), None);
        assert_eq!(labels("x{} 3"), Some(vec![]));
    }

    #[test]
    fn counters_lose_total_in_their_family_name_and_buckets_get_exemplars() {
        record("pub", "r\"1", 0.003, || ("a".repeat(32), "b".repeat(16)));
        let text = "# HELP stoa_requests_total Requests\n# TYPE stoa_requests_total counter\nstoa_requests_total{route=\"x\"} 4\n\
            # HELP plain Plain counter\n# TYPE plain counter\nplain 2\n\
            # HELP stoa_request_duration_seconds Durations\n# TYPE stoa_request_duration_seconds histogram\n\
            stoa_request_duration_seconds_bucket{listener=\"pub\",route=\"r\\\"1\",le=\"0.0025\"} 0\n\
            stoa_request_duration_seconds_bucket{listener=\"pub\",route=\"r\\\"1\",le=\"0.005\"} 1\n\
            stoa_request_duration_seconds_sum{listener=\"pub\",route=\"r\\\"1\"} 0.003\n";
        let om = openmetrics(text);
        assert!(om.contains("# TYPE stoa_requests counter\n"), "{om}");
        assert!(om.contains("# HELP stoa_requests Requests\n"), "{om}");
        assert!(om.contains("stoa_requests_total{route=\"x\"} 4\n"), "{om}");
        assert!(om.contains("plain_total 2\n"), "{om}");
        assert!(om.contains(
            "le=\"0.005\"} 1 # {trace_id=\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",span_id=\"bbbbbbbbbbbbbbbb\"} 0.003 "
        ), "{om}");
        assert!(om.contains("le=\"0.0025\"} 0\n"), "{om}");
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn openmetrics_is_served_to_who_asks_for_it() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
