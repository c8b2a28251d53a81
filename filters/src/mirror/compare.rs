//! The shadow comparator: does a candidate's response match the primary's? Status, chosen
//! headers and the body; JSON bodies structurally (object key order never matters), with
//! ignored JSON paths, arrays compared without order at chosen paths, a float tolerance and
//! timestamps normalised (ISO-8601 strings anywhere; epoch seconds or milliseconds under
//! time-like keys); other bodies byte for byte. The differences name their field (`status`,
//! `header.<name>`, `$.a.b[0]`, `body`) with both values masked for logs.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    /// Response headers compared (names, any case).
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// JSON paths left out (`$.meta.request_id`, `$.items[*].etag`; `*` any key or index).
    #[serde(default)]
    pub ignore_paths: Vec<String>,
    /// JSON paths of arrays compared without regard to order.
    #[serde(default)]
    pub unordered_arrays: Vec<String>,
    /// Numbers this close are equal.
    #[serde(default = "default_tolerance")]
    pub float_tolerance: f64,
    /// Timestamps compare equal to each other: ISO-8601 strings anywhere, and epoch seconds
    /// or milliseconds under time-like keys (`*time*`, `*date*`, `ts`, `*_at`, `created`…).
    #[serde(default = "yes")]
    pub normalize_timestamps: bool,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig {
            headers: default_headers(),
            ignore_paths: Vec::new(),
            unordered_arrays: Vec::new(),
            float_tolerance: default_tolerance(),
            normalize_timestamps: true,
        }
    }
}

fn default_headers() -> Vec<String> {
    vec!["content-type".into()]
}
fn default_tolerance() -> f64 {
    1e-9
}
fn yes() -> bool {
    true
}

/// One response as the comparator sees it.
pub struct Observed<'a> {
    pub status: u16,
    /// Header names in lower case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// A field that differs, with both values masked and capped for logs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    pub field: String,
    pub primary: String,
    pub candidate: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq)]
enum PatternSeg {
    Key(String),
    AnyKey,
    Index(usize),
    AnyIndex,
}

/// A JSON path pattern: `$.a.b`, `$.a[0]`, `$.a[*].b`, `$.*.id`.
#[derive(Clone, Debug)]
struct PathPattern(Vec<PatternSeg>);

impl PathPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix('$').unwrap_or(text);
        let mut segs = Vec::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '.' => {
                    let mut key = String::new();
                    while let Some(&n) = chars.peek() {
                        if n == '.' || n == '[' {
                            break;
                        }
                        key.push(n);
                        chars.next();
                    }
                    if key.is_empty() {
                        return Err(format!("`{text}`: empty key"));
                    }
                    segs.push(if key == "*" {
                        PatternSeg::AnyKey
                    } else {
                        PatternSeg::Key(key)
                    });
                }
                '[' => {
                    let inner: String = chars.by_ref().take_while(|c| *c != ']').collect();
                    segs.push(match inner.as_str() {
                        "*" => PatternSeg::AnyIndex,
                        n => PatternSeg::Index(
                            n.parse()
                                .map_err(|_| format!("`{text}`: `[{n}]` is not an index"))?,
                        ),
                    });
                }
                _ if segs.is_empty() && !text.starts_with('$') => {
                    // `a.b` without the leading `$.`.
                    return PathPattern::parse(&format!("$.{text}"));
                }
                other => return Err(format!("`{text}`: unexpected `{other}`")),
            }
        }
        Ok(PathPattern(segs))
    }

    fn matches(&self, path: &[Seg]) -> bool {
        self.0.len() == path.len()
            && self.0.iter().zip(path).all(|(p, s)| match (p, s) {
                (PatternSeg::AnyKey, Seg::Key(_)) | (PatternSeg::AnyIndex, Seg::Index(_)) => true,
                (PatternSeg::Key(a), Seg::Key(b)) => a == b,
                (PatternSeg::Index(a), Seg::Index(b)) => a == b,
                _ => false,
            })
    }
}

/// `$.a.b[0]`.
fn render(path: &[Seg]) -> String {
    let mut out = String::from("$");
    for s in path {
        match s {
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A field path with indexes generalised (`$.items[*].price`): bounded metric labels.
pub fn generalise(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[*]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// A value for logs, masked: a string shows its length (and its first two characters when it
/// has eight or more), numbers of nine digits or more are hidden, containers show their size;
/// everything is capped at 64 characters.
pub fn mask(v: &Value) -> String {
    let text = match v {
        Value::String(s) => {
            let n = s.chars().count();
            let head: String = if n >= 8 {
                s.chars().take(2).collect()
            } else {
                String::new()
            };
            format!("\"{head}***\" ({n} chars)")
        }
        Value::Number(n) if n.to_string().chars().filter(char::is_ascii_digit).count() >= 9 => {
            "<number, 9+ digits>".to_string()
        }
        Value::Object(m) => format!("{{object, {} keys}}", m.len()),
        Value::Array(a) => format!("[array, {} items]", a.len()),
        other => other.to_string(),
    };
    text.chars().take(64).collect()
}

fn is_time_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("time")
        || k.contains("date")
        || k == "ts"
        || k.ends_with("_ts")
        || k.ends_with("_at")
        || key.ends_with("At")
        || ["created", "updated", "expires", "modified"]
            .iter()
            .any(|w| k.contains(w))
}

fn is_iso_timestamp(s: &str) -> bool {
    static ISO: once_cell::sync::Lazy<regex::Regex> = once_cell::sync::Lazy::new(|| {
        regex::Regex::new(
            r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|z|[+-]\d{2}:?\d{2})?)?$",
        )
        .expect("valid regex")
    });
    ISO.is_match(s)
}

fn is_epoch(n: f64) -> bool {
    (1e9..1e10).contains(&n) || (1e12..1e13).contains(&n)
}

pub struct Comparator {
    headers: Vec<String>,
    ignore: Vec<PathPattern>,
    unordered: Vec<PathPattern>,
    tolerance: f64,
    timestamps: bool,
}

/// Elements of arrays compared without order: beyond this many, they are compared in order.
const UNORDERED_LIMIT: usize = 1000;

impl Comparator {
    pub fn build(cfg: &CompareConfig) -> Result<Self, String> {
        let patterns = |key: &str, list: &[String]| {
            list.iter()
                .map(|p| PathPattern::parse(p).map_err(|e| format!("{key}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        if cfg.float_tolerance.is_nan() || cfg.float_tolerance < 0.0 {
            return Err("float_tolerance: must be 0 or more".into());
        }
        Ok(Comparator {
            headers: cfg.headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            ignore: patterns("ignore_paths", &cfg.ignore_paths)?,
            unordered: patterns("unordered_arrays", &cfg.unordered_arrays)?,
            tolerance: cfg.float_tolerance,
            timestamps: cfg.normalize_timestamps,
        })
    }

    /// The differences between two responses (none: they match).
    pub fn compare(&self, primary: &Observed, candidate: &Observed) -> Vec<Difference> {
        let mut out = Vec::new();
        if primary.status != candidate.status {
            out.push(Difference {
                field: "status".into(),
                primary: primary.status.to_string(),
                candidate: candidate.status.to_string(),
            });
        }
        for name in &self.headers {
            let get = |o: &Observed| {
                o.headers
                    .iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (a, b) = (get(primary), get(candidate));
            if a != b {
                out.push(Difference {
                    field: format!("header.{name}"),
                    primary: mask(&Value::String(a)),
                    candidate: mask(&Value::String(b)),
                });
            }
        }
        let json = |b: &[u8]| serde_json::from_slice::<Value>(b).ok();
        match (json(primary.body), json(candidate.body)) {
            (Some(a), Some(b)) => self.diff(&mut Vec::new(), &a, &b, &mut out),
            _ if primary.body != candidate.body => out.push(Difference {
                field: "body".into(),
                primary: format!("{} bytes", primary.body.len()),
                candidate: format!("{} bytes", candidate.body.len()),
            }),
            _ => {}
        }
        out
    }

    fn equal(&self, path: &mut Vec<Seg>, a: &Value, b: &Value) -> bool {
        let mut scratch = Vec::new();
        self.diff(path, a, b, &mut scratch);
        scratch.is_empty()
    }

    fn diff(&self, path: &mut Vec<Seg>, a: &Value, b: &Value, out: &mut Vec<Difference>) {
        if self.ignore.iter().any(|p| p.matches(path)) {
            return;
        }
        let differ = |out: &mut Vec<Difference>, path: &[Seg]| {
            out.push(Difference {
                field: render(path),
                primary: mask(a),
                candidate: mask(b),
            })
        };
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    path.push(Seg::Key(k.clone()));
                    match (x.get(k), y.get(k)) {
                        (Some(va), Some(vb)) => self.diff(path, va, vb, out),
                        (va, vb) if !self.ignore.iter().any(|p| p.matches(path)) => {
                            out.push(Difference {
                                field: render(path),
                                primary: va.map(mask).unwrap_or_else(|| "(absent)".into()),
                                candidate: vb.map(mask).unwrap_or_else(|| "(absent)".into()),
                            })
                        }
                        _ => {}
                    }
                    path.pop();
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                let unordered =
                    x.len() <= UNORDERED_LIMIT && self.unordered.iter().any(|p| p.matches(path));
                if unordered {
                    // Each primary element must match a distinct candidate element.
                    let mut left: Vec<&Value> = y.iter().collect();
                    let mut all = x.len() == y.len();
                    for item in x {
                        path.push(Seg::Index(0));
                        let at = left.iter().position(|c| self.equal(path, item, c));
                        path.pop();
                        match at {
                            Some(i) => {
                                left.swap_remove(i);
                            }
                            None => all = false,
                        }
                    }
                    if !all {
                        differ(out, path);
                    }
                    return;
                }
                if x.len() != y.len() {
                    out.push(Difference {
                        field: format!("{}.length", render(path)),
                        primary: x.len().to_string(),
                        candidate: y.len().to_string(),
                    });
                }
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    path.push(Seg::Index(i));
                    self.diff(path, va, vb, out);
                    path.pop();
                }
            }
            (Value::Number(x), Value::Number(y)) => {
                let (fx, fy) = (
                    x.as_f64().unwrap_or(f64::NAN),
                    y.as_f64().unwrap_or(f64::NAN),
                );
                let time_key = matches!(path.last(), Some(Seg::Key(k)) if is_time_key(k));
                let same = x == y
                    || (fx - fy).abs() <= self.tolerance
                    || (self.timestamps && time_key && is_epoch(fx) && is_epoch(fy));
                if !same {
                    differ(out, path);
                }
            }
            (Value::String(x), Value::String(y)) => {
                let same =
                    x == y || (self.timestamps && is_iso_timestamp(x) && is_iso_timestamp(y));
                if !same {
                    differ(out, path);
                }
            }
            _ if a == b => {}
            _ => differ(out, path),
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observed(body: &Value) -> Vec<u8> {
        serde_json::to_vec(body).unwrap()
    }

    fn fields(cfg: CompareConfig, a: Value, b: Value) -> Vec<String> {
        let c = Comparator::build(&cfg).unwrap();
        let (ba, bb) = (observed(&a), observed(&b));
        let h = vec![("content-type".to_string(), "application/json".to_string())];
        c.compare(
            &Observed {
                status: 200,
                headers: &h,
                body: &ba,
            },
            &Observed {
                status: 200,
                headers: &h,
                body: &bb,
            },
        )
        .into_iter()
        .map(|d| d.field)
        .collect()
    }

    #[test]
    fn key_order_timestamps_and_floats() {
        let a = json!({"a": 1, "b": {"x": [1, 2], "when": "2026-11-23T10:00:00Z", "created_at": 1763892000}, "p": 0.1 + 0.2});
        let b = json!({"b": {"created_at": 1763895600, "when": "2026-11-23T11:30:00.123+01:00", "x": [1, 2]}, "p": 0.3, "a": 1});
        assert!(fields(CompareConfig::default(), a.clone(), b.clone()).is_empty());
        let strict = CompareConfig {
            normalize_timestamps: false,
            float_tolerance: 0.0,
            ..Default::default()
        };
        assert_eq!(
            fields(strict, a, b),
            vec!["$.b.created_at", "$.b.when", "$.p"]
        );
        // An epoch-sized number under a plain key is a number, not a timestamp.
        assert_eq!(
            fields(
                CompareConfig::default(),
                json!({"id": 1763892000}),
                json!({"id": 1763892001})
            ),
            vec!["$.id"]
        );
    }

    #[test]
    fn differing_missing_and_ignored_fields() {
        let a = json!({"user": {"name": "Ada", "email": "ada@example.com"}, "meta": {"request_id": "r1"}, "items": [{"etag": "x", "n": 1}]});
        let b = json!({"user": {"name": "Bob"}, "meta": {"request_id": "r2"}, "items": [{"etag": "y", "n": 1}], "extra": true});
        assert_eq!(
            fields(CompareConfig::default(), a.clone(), b.clone()),
            vec![
                "$.extra",
                "$.items[0].etag",
                "$.meta.request_id",
                "$.user.email",
                "$.user.name"
            ]
        );
        let cfg = CompareConfig {
            ignore_paths: vec![
                "$.meta.request_id".into(),
                "$.items[*].etag".into(),
                "extra".into(),
            ],
            ..Default::default()
        };
        assert_eq!(fields(cfg, a, b), vec!["$.user.email", "$.user.name"]);
    }

    #[test]
    fn arrays_in_order_or_not() {
        let a = json!({"tags": ["a", "b", "c"], "list": [{"id": 1}, {"id": 2}]});
        let b = json!({"tags": ["c", "a", "b"], "list": [{"id": 2}, {"id": 1}]});
        assert_eq!(
            fields(CompareConfig::default(), a.clone(), b.clone()),
            vec![
                "$.list[0].id",
                "$.list[1].id",
                "$.tags[0]",
                "$.tags[1]",
                "$.tags[2]"
            ]
        );
        let cfg = CompareConfig {
            unordered_arrays: vec!["$.tags".into(), "$.list".into()],
            ..Default::default()
        };
        assert!(fields(cfg.clone(), a, b).is_empty());
        assert_eq!(
            fields(
                cfg,
                json!({"tags": ["a", "a"]}),
                json!({"tags": ["a", "b"]})
            ),
            vec!["$.tags"]
        );
        assert_eq!(
            fields(CompareConfig::default(), json!([1, 2]), json!([1])),
            vec!["$.length"]
        );
    }

    #[test]
    fn status_headers_and_raw_bodies() {
        let c = Comparator::build(&CompareConfig::default()).unwrap();
        let h1 = vec![("content-type".to_string(), "text/plain".to_string())];
        let h2 = vec![("content-type".to_string(), "text/html".to_string())];
        let d = c.compare(
            &Observed {
                status: 200,
                headers: &h1,
                body: b"hello",
            },
            &Observed {
                status: 500,
                headers: &h2,
                body: b"hellO",
            },
        );
        let f: Vec<&str> = d.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(f, vec!["status", "header.content-type", "body"]);
        assert!(c
            .compare(
                &Observed {
                    status: 200,
                    headers: &h1,
                    body: b"same"
                },
                &Observed {
                    status: 200,
                    headers: &h1,
                    body: b"same"
                },
            )
            .is_empty());
    }

    #[test]
    fn values_are_masked_and_paths_generalised() {
        assert_eq!(mask(&json!("ada@example.com")), "\"ad***\" (15 chars)");
        assert_eq!(mask(&json!("Bob")), "\"***\" (3 chars)");
        assert_eq!(mask(&json!(4111111111111111u64)), "<number, 9+ digits>");
        assert_eq!(mask(&json!(42)), "42");
        assert_eq!(generalise("$.items[12].price[3]"), "$.items[*].price[*]");
        assert!(PathPattern::parse("$.a[x]").is_err());
    }
}
