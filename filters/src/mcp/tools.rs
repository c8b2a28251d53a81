//! The MCP tool registry: tools declared in config, each calling an HTTP API. A tool has a name,
//! a description, an `inputSchema` (JSON Schema 2020-12) that arguments are validated against
//! before any backend call, optional annotations and output schema, and a backend: method, a URL
//! template filled from the arguments (`/users/{id}`), static headers, arguments sent as query
//! parameters, the rest as a JSON body, and a timeout. Backend answers become tool results:
//! JSON as `structuredContent` plus its text, HTTP errors as `isError` results.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::units::HumanDuration;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the arguments (default: any object).
    #[serde(default = "any_object", alias = "inputSchema")]
    pub input_schema: Value,
    /// JSON Schema of `structuredContent`, advertised to clients.
    #[serde(
        default,
        alias = "outputSchema",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_schema: Option<Value>,
    /// MCP tool annotations (`readOnlyHint`, `idempotentHint`, ...), passed to clients as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Value>,
    pub backend: HttpBackendConfig,
}

fn any_object() -> Value {
    json!({"type": "object"})
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum BodyMapping {
    /// No body.
    None,
    /// The arguments not used by the URL template or `query`, as a JSON object.
    Remaining,
    /// All arguments, as a JSON object.
    All,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpBackendConfig {
    #[serde(default = "default_method")]
    pub method: String,
    /// `http(s)://host/path/{argument}`: each `{name}` is replaced by that argument,
    /// percent-encoded.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Arguments sent as query parameters (when present).
    #[serde(default)]
    pub query: Vec<String>,
    /// Default: `remaining` for POST, PUT and PATCH, `none` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyMapping>,
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

fn default_method() -> String {
    "GET".into()
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// One piece of a URL template.
#[derive(Debug)]
enum UrlPart {
    Literal(String),
    Argument(String),
}

pub struct Tool {
    pub name: String,
    /// Annotated `idempotentHint: true`: its results may be reused (`result_cache`).
    pub idempotent: bool,
    /// The tool as `tools/list` shows it.
    pub descriptor: Value,
    validator: jsonschema::Validator,
    method: reqwest::Method,
    url: Vec<UrlPart>,
    headers: Vec<(String, String)>,
    query: Vec<String>,
    body: BodyMapping,
    timeout: Duration,
}

/// What a tool call produced: always a result for the client (errors included).
#[derive(Debug)]
pub struct ToolOutcome {
    pub is_error: bool,
    pub text: String,
    pub structured: Option<Value>,
}

impl ToolOutcome {
    fn error(text: String) -> Self {
        ToolOutcome {
            is_error: true,
            text,
            structured: None,
        }
    }
}

fn parse_url_template(url: &str) -> Result<Vec<UrlPart>, String> {
    let mut parts = Vec::new();
    let mut rest = url;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in `{url}`"))?
            + open;
        if open > 0 {
            parts.push(UrlPart::Literal(rest[..open].to_string()));
        }
        let name = &rest[open + 1..close];
        if name.is_empty() {
            return Err(format!("empty `{{}}` in `{url}`"));
        }
        parts.push(UrlPart::Argument(name.to_string()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(UrlPart::Literal(rest.to_string()));
    }
    Ok(parts)
}

/// An argument as text for a URL: strings as they are, anything else as JSON.
fn arg_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Tool {
    pub fn build(cfg: &ToolConfig) -> Result<Self, String> {
        if cfg.name.is_empty()
            || cfg.name.len() > 128
            || !cfg
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(format!(
                "name: `{}` must be 1-128 characters of A-Z, a-z, 0-9, `_`, `-`, `.`",
                cfg.name
            ));
        }
        if cfg.input_schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(format!(
                "tool `{}`: input_schema: must be an object schema (`type: object`)",
                cfg.name
            ));
        }
        let validator = jsonschema::validator_for(&cfg.input_schema)
            .map_err(|e| format!("tool `{}`: input_schema: {e}", cfg.name))?;
        let method =
            reqwest::Method::from_bytes(cfg.backend.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("tool `{}`: backend.method: not an HTTP method", cfg.name))?;
        let b = &cfg.backend;
        if !(b.url.starts_with("http://") || b.url.starts_with("https://")) {
            return Err(format!(
                "tool `{}`: backend.url: must start with http:// or https://",
                cfg.name
            ));
        }
        let url = parse_url_template(&b.url)
            .map_err(|e| format!("tool `{}`: backend.url: {e}", cfg.name))?;
        let properties = cfg
            .input_schema
            .get("properties")
            .and_then(Value::as_object);
        let declared = |n: &str| properties.is_none_or(|p| p.contains_key(n));
        for part in &url {
            if let UrlPart::Argument(n) = part {
                if !declared(n) {
                    return Err(format!(
                        "tool `{}`: backend.url: `{{{n}}}` is not a property of input_schema",
                        cfg.name
                    ));
                }
            }
        }
        for n in &b.query {
            if !declared(n) {
                return Err(format!(
                    "tool `{}`: backend.query: `{n}` is not a property of input_schema",
                    cfg.name
                ));
            }
        }
        let body = b.body.unwrap_or(
            if matches!(
                method,
                reqwest::Method::POST | reqwest::Method::PUT | reqwest::Method::PATCH
            ) {
                BodyMapping::Remaining
            } else {
                BodyMapping::None
            },
        );
        let mut descriptor = json!({
            "name": cfg.name,
            "description": cfg.description,
            "inputSchema": cfg.input_schema,
        });
        if let Some(t) = &cfg.title {
            descriptor["title"] = json!(t);
        }
        if let Some(o) = &cfg.output_schema {
            descriptor["outputSchema"] = o.clone();
        }
        if let Some(a) = &cfg.annotations {
            descriptor["annotations"] = a.clone();
        }
        let idempotent = cfg
            .annotations
            .as_ref()
            .and_then(|a| a.get("idempotentHint"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Tool {
            name: cfg.name.clone(),
            idempotent,
            descriptor,
            validator,
            method,
            url,
            headers: b.headers.clone().into_iter().collect(),
            query: b.query.clone(),
            body,
            timeout: b.timeout.0,
        })
    }

    /// The schema violations of `arguments`, if any (each with where it is).
    pub fn violations(&self, arguments: &Value) -> Vec<String> {
        self.validator
            .iter_errors(arguments)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect()
    }

    /// Call the backend with (already validated) arguments; traced, in a client span of `span`
    /// whose context the backend receives in its headers.
    pub async fn call(
        &self,
        client: &reqwest::Client,
        arguments: &Map<String, Value>,
        span: Option<&crate::telemetry::SpanRef>,
    ) -> ToolOutcome {
        let mut used: Vec<&str> = Vec::new();
        let mut url = String::new();
        for part in &self.url {
            match part {
                UrlPart::Literal(s) => url.push_str(s),
                UrlPart::Argument(n) => {
                    let Some(v) = arguments.get(n) else {
                        return ToolOutcome::error(format!("missing argument `{n}` for the URL"));
                    };
                    used.push(n);
                    url.extend(utf8_percent_encode(&arg_text(v), NON_ALPHANUMERIC));
                }
            }
        }
        let query: Vec<(String, String)> = self
            .query
            .iter()
            .filter_map(|n| arguments.get(n).map(|v| (n.clone(), arg_text(v))))
            .collect();
        used.extend(self.query.iter().map(String::as_str));
        let mut req = client
            .request(self.method.clone(), &url)
            .timeout(self.timeout)
            .header("accept", "application/json, text/plain;q=0.9, */*;q=0.5");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if !query.is_empty() {
            req = req.query(&query);
        }
        match self.body {
            BodyMapping::None => {}
            BodyMapping::All => req = req.json(arguments),
            BodyMapping::Remaining => {
                let rest: Map<String, Value> = arguments
                    .iter()
                    .filter(|(k, _)| !used.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                req = req.json(&rest);
            }
        }
        let resp = match crate::telemetry::outbound::send(req, span, "mcp_tool").await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return ToolOutcome::error(format!(
                    "the backend did not answer within {:?}",
                    self.timeout
                ))
            }
            Err(e) => return ToolOutcome::error(format!("the backend could not be reached: {e}")),
        };
        let status = resp.status();
        let is_json = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return ToolOutcome::error(format!("reading the backend's answer: {e}")),
        };
        if !status.is_success() {
            return ToolOutcome::error(format!("the backend answered {status}: {text}"));
        }
        let structured = is_json
            .then(|| serde_json::from_str::<Value>(&text).ok())
            .flatten()
            .map(|v| match v {
                Value::Object(_) => v,
                // structuredContent must be an object: other JSON is wrapped.
                other => json!({ "result": other }),
            });
        ToolOutcome {
            is_error: false,
            text,
            structured,
        }
    }
}

/// The tools one `mcp` filter serves, in declared order.
pub struct ToolRegistry {
    pub tools: Vec<Arc<Tool>>,
}

impl ToolRegistry {
    pub fn build(configs: &[ToolConfig]) -> Result<Self, String> {
        let mut tools: Vec<Arc<Tool>> = Vec::new();
        for (i, cfg) in configs.iter().enumerate() {
            let tool = Tool::build(cfg).map_err(|e| format!("tools[{i}]: {e}"))?;
            if tools.iter().any(|t| t.name == tool.name) {
                return Err(format!(
                    "tools[{i}]: the name `{}` is used twice",
                    tool.name
                ));
            }
            tools.push(Arc::new(tool));
        }
        Ok(ToolRegistry { tools })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tool>> {
        self.tools.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(yaml: Value) -> Result<Tool, String> {
        Tool::build(&serde_json::from_value(yaml).unwrap())
    }

    #[test]
    fn url_templates_must_name_declared_arguments() {
        let ok = tool(
            json!({"name": "get_user", "input_schema": {"type": "object",
            "properties": {"id": {"type": "integer"}}}, "backend": {"url": "http://h/users/{id}"}}),
        );
        assert!(ok.is_ok());
        let bad = tool(
            json!({"name": "get_user", "input_schema": {"type": "object",
            "properties": {"id": {"type": "integer"}}}, "backend": {"url": "http://h/users/{uid}"}}),
        );
        assert!(bad.err().unwrap().contains("`{uid}` is not a property"));
        let bad = tool(json!({"name": "bad name", "backend": {"url": "http://h/"}}));
        assert!(bad.err().unwrap().contains("name"));
    }

    #[test]
    fn arguments_are_validated_against_the_schema() {
        let t = tool(json!({"name": "t", "input_schema": {"type": "object", "required": ["id"],
            "properties": {"id": {"type": "integer", "minimum": 1}}}, "backend": {"url": "http://h/{id}"}}))
        .unwrap();
        assert!(t.violations(&json!({"id": 3})).is_empty());
        assert!(!t.violations(&json!({})).is_empty());
        let v = t.violations(&json!({"id": 0}));
        assert!(v[0].starts_with("/id"), "{v:?}");
    }
}
