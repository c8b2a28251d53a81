//! Contract inference from captured samples: HTTP parsing and heuristics, no ML.
//!
//! - **Path templates**: per method, numeric, UUID, long hex and mixed letter-digit segments
//!   become parameters named after the segment before them (`/users/{userId}`); `api` and
//!   version segments (`v1`, `v2.1`) stay literal, and so do other words unless one position
//!   under the same prefix takes more than `LITERAL_LIMIT` distinct values (then it is a
//!   parameter too: `/users/alice`, `/users/bob`… → `/users/{userId}`).
//! - **Query parameters** with their type; required when present in every sample.
//! - **JSON schemas** of request and response bodies merged across samples (`SchemaBuilder`):
//!   properties present in every sample are required, `null` makes a type nullable, other mixes
//!   make type unions, strings get a `format` (date-time, date, email, uuid, uri, ipv4) when
//!   every sample has it, scalars keep one (masked) example.
//! - **Confidence** per endpoint: `(1 - e^(-samples/4)) × consistency`, where consistency is
//!   the share of samples whose response has the most common shape (status and top-level
//!   keys) for its status, lowered by the share of fields seen with conflicting types.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use once_cell::sync::Lazy;
use regex::Regex;
use serde_json::{json, Map, Value};

use super::pii;
use super::store::Sample;

/// Distinct literal values one path position may take under one prefix before it is taken for
/// a parameter.
pub const LITERAL_LIMIT: usize = 20;

static UUID_RE: Lazy<Regex> = Lazy::new(|| {
    Regex::new(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
        .unwrap()
});
static HEX_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^[0-9a-fA-F]{16,}$").unwrap());
static VERSION_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^[vV]\d+(\.\d+)*$").unwrap());
static DATE_TIME_RE: Lazy<Regex> = Lazy::new(|| {
    Regex::new(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})$")
        .unwrap()
});
static DATE_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^\d{4}-\d{2}-\d{2}$").unwrap());
static EMAIL_RE: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$").unwrap());
static URI_RE: Lazy<Regex> = Lazy::new(|| Regex::new(r"^[a-zA-Z][a-zA-Z0-9+.-]*://\S+$").unwrap());
static IPV4_RE: Lazy<Regex> = Lazy::new(|| {
    Regex::new(r"^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$")
        .unwrap()
});

/// What a path segment looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegmentKind {
    Integer,
    Uuid,
    Hex,
    /// Letters and digits mixed (`ord_9f8e7d`, `A12B34`).
    Mixed,
    Literal,
}

fn segment_kind(seg: &str) -> SegmentKind {
    if !seg.is_empty() && seg.chars().all(|c| c.is_ascii_digit()) {
        SegmentKind::Integer
    } else if UUID_RE.is_match(seg) {
        SegmentKind::Uuid
    } else if HEX_RE.is_match(seg) {
        SegmentKind::Hex
    } else if seg.eq_ignore_ascii_case("api") || VERSION_RE.is_match(seg) {
        SegmentKind::Literal
    } else if seg.len() >= 4
        && seg.chars().any(|c| c.is_ascii_digit())
        && seg.chars().any(|c| c.is_ascii_alphabetic())
        && seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
    {
        SegmentKind::Mixed
    } else {
        SegmentKind::Literal
    }
}

/// `users` → `user`, `categories` → `category`, `addresses` → `address`.
fn singular(word: &str) -> String {
    let w = word.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if let Some(stem) = w.strip_suffix("ies") {
        format!("{stem}y")
    } else if w.ends_with("sses") || w.ends_with("xes") || w.ends_with("ches") {
        w[..w.len() - 2].to_string()
    } else if w.ends_with('s') && !w.ends_with("ss") && w.len() > 1 {
        w[..w.len() - 1].to_string()
    } else {
        w.to_string()
    }
}

/// A parameter name from the literal before it: `users` → `userId`, else `id`.
fn param_name(previous: Option<&str>) -> String {
    match previous {
        Some(p) if !p.is_empty() => {
            let mut camel = String::new();
            let mut upper = false;
            for c in singular(p).chars() {
                if c == '-' || c == '_' || c == '.' {
                    upper = true;
                } else if upper {
                    camel.extend(c.to_uppercase());
                    upper = false;
                } else {
                    camel.push(c);
                }
            }
            format!("{camel}Id")
        }
        _ => "id".into(),
    }
}

fn split_path(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_string())
}

/// The template of each path: `Some(kind)` for parameter positions, with their literal values.
fn templates(paths: &[Vec<String>]) -> Vec<Vec<Option<SegmentKind>>> {
    let mut out: Vec<Vec<Option<SegmentKind>>> = paths
        .iter()
        .map(|p| {
            p.iter()
                .map(|s| match segment_kind(s) {
                    SegmentKind::Literal => None,
                    k => Some(k),
                })
                .collect()
        })
        .collect();
    let depth = paths.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..depth {
        // Distinct literals at position i under each prefix (parameters as `{}`).
        let mut seen: HashMap<String, BTreeSet<&str>> = HashMap::new();
        let prefix = |p: &[String], t: &[Option<SegmentKind>]| -> String {
            p.iter()
                .zip(t)
                .take(i)
                .map(|(s, k)| if k.is_some() { "{}" } else { s.as_str() })
                .collect::<Vec<_>>()
                .join("/")
        };
        for (p, t) in paths.iter().zip(&out) {
            if p.len() > i && t[i].is_none() {
                seen.entry(prefix(p, t)).or_default().insert(&p[i]);
            }
        }
        let crowded: BTreeSet<String> = seen
            .into_iter()
            .filter(|(_, values)| values.len() > LITERAL_LIMIT)
            .map(|(k, _)| k)
            .collect();
        if crowded.is_empty() {
            continue;
        }
        let keys: Vec<String> = paths.iter().zip(&out).map(|(p, t)| prefix(p, t)).collect();
        for ((p, t), key) in paths.iter().zip(out.iter_mut()).zip(keys) {
            if p.len() > i && t[i].is_none() && crowded.contains(&key) {
                t[i] = Some(SegmentKind::Literal);
            }
        }
    }
    out
}

/// A JSON schema built up from sample values.
#[derive(Clone, Debug, Default)]
pub struct SchemaBuilder {
    /// How many values were added.
    count: u64,
    types: BTreeSet<&'static str>,
    /// The string format every string value had so far (`None` once they disagreed).
    format: Option<Option<&'static str>>,
    objects: u64,
    properties: BTreeMap<String, (u64, SchemaBuilder)>,
    items: Option<Box<SchemaBuilder>>,
    example: Option<Value>,
}

fn string_format(s: &str) -> Option<&'static str> {
    if s == pii::EMAIL || EMAIL_RE.is_match(s) {
        Some("email")
    } else if DATE_TIME_RE.is_match(s) {
        Some("date-time")
    } else if DATE_RE.is_match(s) {
        Some("date")
    } else if UUID_RE.is_match(s) {
        Some("uuid")
    } else if IPV4_RE.is_match(s) {
        Some("ipv4")
    } else if URI_RE.is_match(s) {
        Some("uri")
    } else {
        None
    }
}

impl SchemaBuilder {
    pub fn add(&mut self, v: &Value) {
        self.count += 1;
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        self.types.insert(kind);
        match v {
            Value::String(s) => {
                let f = string_format(s);
                self.format = match self.format {
                    None => Some(f),
                    Some(prev) if prev == f => Some(prev),
                    Some(_) => Some(None),
                };
            }
            Value::Object(m) => {
                self.objects += 1;
                for (k, child) in m {
                    let entry = self.properties.entry(k.clone()).or_default();
                    entry.0 += 1;
                    entry.1.add(child);
                }
            }
            Value::Array(a) => {
                let items = self.items.get_or_insert_with(Default::default);
                for child in a {
                    items.add(child);
                }
            }
            _ => {}
        }
        if self.example.is_none() && !matches!(v, Value::Null | Value::Object(_) | Value::Array(_))
        {
            self.example = Some(v.clone());
        }
    }

    /// Fields (this one and those below) seen with more than one non-null type, and all fields.
    fn conflicts(&self) -> (u64, u64) {
        let non_null: Vec<&&str> = self.types.iter().filter(|t| **t != "null").collect();
        let numeric =
            non_null.len() == 2 && non_null.contains(&&"integer") && non_null.contains(&&"number");
        let mut conflicts = u64::from(non_null.len() > 1 && !numeric);
        let mut fields = 1;
        for (_, p) in self.properties.values() {
            let (c, f) = p.conflicts();
            conflicts += c;
            fields += f;
        }
        if let Some(items) = &self.items {
            let (c, f) = items.conflicts();
            conflicts += c;
            fields += f;
        }
        (conflicts, fields)
    }

    /// The JSON Schema (2020-12, as OpenAPI 3.1 uses it).
    pub fn schema(&self) -> Value {
        let mut types: Vec<&str> = self.types.iter().copied().collect();
        if types.contains(&"integer") && types.contains(&"number") {
            types.retain(|t| *t != "integer");
        }
        let mut out = Map::new();
        match types.as_slice() {
            [] => {}
            [one] => {
                out.insert("type".into(), json!(one));
            }
            many => {
                out.insert("type".into(), json!(many));
            }
        }
        if let Some(Some(f)) = self.format {
            out.insert("format".into(), json!(f));
        }
        if self.types.contains("object") {
            let props: Map<String, Value> = self
                .properties
                .iter()
                .map(|(k, (_, b))| (k.clone(), b.schema()))
                .collect();
            let required: Vec<&String> = self
                .properties
                .iter()
                .filter(|(_, (n, _))| *n == self.objects)
                .map(|(k, _)| k)
                .collect();
            out.insert("properties".into(), Value::Object(props));
            if !required.is_empty() {
                out.insert("required".into(), json!(required));
            }
        }
        if self.types.contains("array") {
            out.insert(
                "items".into(),
                self.items
                    .as_ref()
                    .map(|i| i.schema())
                    .unwrap_or_else(|| json!({})),
            );
        }
        if let Some(e) = &self.example {
            out.insert("examples".into(), json!([e]));
        }
        Value::Object(out)
    }
}

/// A scalar's schema from text (query and path values).
fn text_schema(values: &[&str]) -> Value {
    let all = |f: &dyn Fn(&str) -> bool| !values.is_empty() && values.iter().all(|v| f(v));
    let mut s = if all(&|v| v.parse::<i64>().is_ok()) {
        json!({"type": "integer"})
    } else if all(&|v| v.parse::<f64>().is_ok()) {
        json!({"type": "number"})
    } else if all(&|v| v == "true" || v == "false") {
        json!({"type": "boolean"})
    } else {
        let mut s = json!({"type": "string"});
        let formats: BTreeSet<Option<&str>> = values.iter().map(|v| string_format(v)).collect();
        if let [Some(f)] = formats.iter().copied().collect::<Vec<_>>().as_slice() {
            s["format"] = json!(f);
        }
        s
    };
    if let Some(first) = values.first() {
        s["examples"] = json!([first]);
    }
    s
}

fn media_type(ct: Option<&str>) -> Option<String> {
    ct.map(|c| c.split(';').next().unwrap_or(c).trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty())
}

#[derive(Default)]
struct BodyStats {
    count: u64,
    content_types: BTreeMap<String, u64>,
    schema: SchemaBuilder,
    json_bodies: u64,
    /// Top-level shape → samples, for consistency.
    shapes: HashMap<String, u64>,
}

impl BodyStats {
    fn add(&mut self, ct: Option<&str>, body: Option<&str>) {
        self.count += 1;
        if let Some(ct) = media_type(ct) {
            *self.content_types.entry(ct).or_default() += 1;
        }
        let parsed = body.and_then(|b| serde_json::from_str::<Value>(b).ok());
        let shape = match &parsed {
            Some(Value::Object(m)) => m.keys().cloned().collect::<Vec<_>>().join(","),
            Some(Value::Array(_)) => "[]".into(),
            Some(_) => "scalar".into(),
            None => body.map(|_| "text").unwrap_or("empty").into(),
        };
        *self.shapes.entry(shape).or_default() += 1;
        if let Some(v) = parsed {
            self.json_bodies += 1;
            self.schema.add(&v);
        }
    }

    fn document(&self) -> Value {
        let content_types: Vec<&String> = {
            let mut v: Vec<(&String, &u64)> = self.content_types.iter().collect();
            v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            v.into_iter().map(|(k, _)| k).collect()
        };
        let mut d = json!({"count": self.count, "content_types": content_types});
        if self.json_bodies > 0 {
            d["schema"] = self.schema.schema();
        } else if content_types.iter().any(|c| c.starts_with("text/")) {
            d["schema"] = json!({"type": "string"});
        }
        d
    }
}

#[derive(Default)]
struct EndpointStats {
    samples: u64,
    /// Per path parameter position: its name and observed values.
    path_params: Vec<(String, Vec<String>)>,
    query: BTreeMap<String, Vec<String>>,
    request: BodyStats,
    responses: BTreeMap<u16, BodyStats>,
    tenants: BTreeSet<String>,
}

/// The endpoints of one API inferred from its samples, best first by path then method.
pub fn infer_endpoints(samples: &[Sample]) -> Vec<Value> {
    let paths: Vec<Vec<String>> = samples.iter().map(|s| split_path(&s.path)).collect();
    // Templates are decided per method, so `/users/{userId}` under GET does not depend on
    // what POST saw.
    let mut by_method: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_method.entry(s.method.as_str()).or_default().push(i);
    }
    let mut endpoints: BTreeMap<(String, String), EndpointStats> = BTreeMap::new();
    for (method, idx) in by_method {
        let method_paths: Vec<Vec<String>> = idx.iter().map(|&i| paths[i].clone()).collect();
        let tpls = templates(&method_paths);
        for ((&i, p), t) in idx.iter().zip(&method_paths).zip(&tpls) {
            let s = &samples[i];
            let mut names: Vec<String> = Vec::new();
            let mut segs: Vec<String> = Vec::new();
            for (j, (seg, kind)) in p.iter().zip(t).enumerate() {
                if kind.is_some() {
                    let previous = (j > 0 && t[j - 1].is_none()).then(|| p[j - 1].as_str());
                    let mut name = param_name(previous);
                    let mut n = 2;
                    while names.contains(&name) {
                        name = format!("{}{n}", param_name(previous));
                        n += 1;
                    }
                    segs.push(format!("{{{name}}}"));
                    names.push(name);
                } else {
                    segs.push(seg.clone());
                }
            }
            let template = format!("/{}", segs.join("/"));
            let e = endpoints.entry((template, method.to_string())).or_default();
            e.samples += 1;
            let values: Vec<&String> = p
                .iter()
                .zip(t)
                .filter(|(_, k)| k.is_some())
                .map(|(s, _)| s)
                .collect();
            if e.path_params.is_empty() {
                e.path_params = names.iter().map(|n| (n.clone(), Vec::new())).collect();
            }
            for ((_, seen), v) in e.path_params.iter_mut().zip(values) {
                seen.push(v.clone());
            }
            for (k, v) in form_urlencoded::parse(s.query.as_deref().unwrap_or("").as_bytes()) {
                e.query
                    .entry(k.into_owned())
                    .or_default()
                    .push(v.into_owned());
            }
            if let Some(t) = &s.tenant {
                e.tenants.insert(t.clone());
            }
            e.request
                .add(s.request_content_type.as_deref(), s.request_body.as_deref());
            e.responses.entry(s.status).or_default().add(
                s.response_content_type.as_deref(),
                s.response_body.as_deref(),
            );
        }
    }
    endpoints
        .into_iter()
        .map(|((path, method), e)| endpoint_document(&path, &method, &e))
        .collect()
}

fn endpoint_document(path: &str, method: &str, e: &EndpointStats) -> Value {
    let path_parameters: Vec<Value> = e
        .path_params
        .iter()
        .map(|(name, values)| {
            let v: Vec<&str> = values.iter().map(String::as_str).collect();
            json!({"name": name, "schema": text_schema(&v)})
        })
        .collect();
    let query_parameters: Vec<Value> = e
        .query
        .iter()
        .map(|(name, values)| {
            let v: Vec<&str> = values.iter().map(String::as_str).collect();
            json!({"name": name, "required": values.len() as u64 >= e.samples,
                   "schema": text_schema(&v)})
        })
        .collect();
    let request = (e.request.json_bodies > 0 || !e.request.content_types.is_empty())
        .then(|| e.request.document());
    let responses: Map<String, Value> = e
        .responses
        .iter()
        .map(|(status, b)| (status.to_string(), b.document()))
        .collect();
    json!({
        "id": format!("{method} {path}"),
        "method": method,
        "path": path,
        "path_parameters": path_parameters,
        "query_parameters": query_parameters,
        "request": request,
        "responses": responses,
        "samples": e.samples,
        "confidence": confidence(e),
    })
}

fn confidence(e: &EndpointStats) -> f64 {
    let n = e.samples as f64;
    let volume = 1.0 - (-n / 4.0).exp();
    let dominant: u64 = e
        .responses
        .values()
        .map(|b| b.shapes.values().copied().max().unwrap_or(0))
        .sum();
    let mut consistency = dominant as f64 / n.max(1.0);
    let (mut conflicts, mut fields) = (0, 0);
    for b in e.responses.values().chain([&e.request]) {
        if b.json_bodies > 0 {
            let (c, f) = b.schema.conflicts();
            conflicts += c;
            fields += f;
        }
    }
    if fields > 0 {
        consistency *= 1.0 - conflicts as f64 / fields as f64;
    }
    ((volume * consistency) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(method: &str, path: &str, query: Option<&str>, body: Value) -> Sample {
        Sample {
            api: "erp".into(),
            method: method.into(),
            path: path.into(),
            query: query.map(String::from),
            status: 200,
            response_content_type: Some("application/json; charset=utf-8".into()),
            response_body: Some(body.to_string()),
            ..Sample::default()
        }
    }

    #[test]
    fn segment_kinds_and_names() {
        assert_eq!(segment_kind("123"), SegmentKind::Integer);
        assert_eq!(
            segment_kind("7f3c9a2e-1b4d-4c8e-9f0a-123456789abc"),
            SegmentKind::Uuid
        );
        assert_eq!(
            segment_kind("9f86d081884c7d659a2feaa0c55ad015"),
            SegmentKind::Hex
        );
        assert_eq!(segment_kind("ord_9f8e7d"), SegmentKind::Mixed);
        for literal in ["api", "v1", "v2.1", "items", "health-check"] {
            assert_eq!(segment_kind(literal), SegmentKind::Literal, "{literal}");
        }
        assert_eq!(param_name(Some("users")), "userId");
        assert_eq!(param_name(Some("categories")), "categoryId");
        assert_eq!(param_name(Some("addresses")), "addressId");
        assert_eq!(param_name(Some("line-items")), "lineItemId");
        assert_eq!(param_name(None), "id");
    }

    #[test]
    fn templates_parameters_and_schemas() {
        let uuid = "7f3c9a2e-1b4d-4c8e-9f0a-123456789abc";
        let mut samples = vec![
            sample(
                "GET",
                "/users/123",
                None,
                json!({"id": 123, "email": "<email>", "nick": null, "created_at": "2026-01-02T03:04:05Z"}),
            ),
            sample(
                "GET",
                "/users/456",
                None,
                json!({"id": 456, "email": "<email>", "nick": "ada", "created_at": "2026-01-03T03:04:05Z", "score": 1.5}),
            ),
            sample(
                "GET",
                &format!("/users/{uuid}/orders/42"),
                None,
                json!({"total": 10}),
            ),
            sample(
                "GET",
                "/api/v1/items",
                Some("page=2"),
                json!([{"sku": "A1"}]),
            ),
            sample("GET", "/api/v1/items", Some("page=3&q=lamp"), json!([])),
        ];
        // Usernames: many distinct words at one position become a parameter too.
        for i in 0..25 {
            samples.push(sample(
                "GET",
                &format!("/profiles/name{}x", "a".repeat(i % 26 + 1)),
                None,
                json!({}),
            ));
        }
        let e = infer_endpoints(&samples);
        let ids: Vec<&str> = e.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            vec![
                "GET /api/v1/items",
                "GET /profiles/{profileId}",
                "GET /users/{userId}",
                "GET /users/{userId}/orders/{orderId}"
            ]
        );
        let users = &e[2];
        assert_eq!(users["samples"], 2);
        assert_eq!(users["path_parameters"][0]["schema"]["type"], "integer");
        let schema = &users["responses"]["200"]["schema"];
        assert_eq!(
            schema["required"],
            json!(["created_at", "email", "id", "nick"])
        );
        assert_eq!(
            schema["properties"]["nick"]["type"],
            json!(["null", "string"])
        );
        assert_eq!(schema["properties"]["email"]["format"], "email");
        assert_eq!(schema["properties"]["created_at"]["format"], "date-time");
        assert_eq!(schema["properties"]["score"]["type"], "number");
        assert_eq!(
            users["responses"]["200"]["content_types"],
            json!(["application/json"])
        );
        let orders = &e[3];
        assert_eq!(orders["path_parameters"][0]["schema"]["format"], "uuid");
        assert_eq!(orders["path_parameters"][1]["name"], "orderId");
        let items = &e[0];
        assert_eq!(
            items["query_parameters"][0],
            json!({"name": "page", "required": true, "schema": {"type": "integer", "examples": ["2"]}})
        );
        assert_eq!(items["query_parameters"][1]["required"], false);
    }

    #[test]
    fn confidence_grows_with_samples_and_falls_with_inconsistency() {
        let steady: Vec<Sample> = (0..12)
            .map(|i| sample("GET", &format!("/users/{i}"), None, json!({"id": i})))
            .collect();
        let c = infer_endpoints(&steady)[0]["confidence"].as_f64().unwrap();
        assert!(c >= 0.9, "{c}");
        let few = infer_endpoints(&steady[..2])[0]["confidence"]
            .as_f64()
            .unwrap();
        assert!(few < 0.5, "{few}");
        let mixed: Vec<Sample> = (0..12)
            .map(|i| {
                let body = if i % 2 == 0 {
                    json!({"id": i})
                } else {
                    json!({"id": "x", "other": 1})
                };
                sample("GET", &format!("/users/{i}"), None, body)
            })
            .collect();
        let m = infer_endpoints(&mixed)[0]["confidence"].as_f64().unwrap();
        assert!(m < 0.8, "{m}");
    }
}
