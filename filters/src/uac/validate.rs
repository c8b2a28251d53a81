//! The `uac_validation` filter: requests checked against an approved contract (the
//! step from observing an API in shadow mode to enforcing its contract in proxy mode). A request must match one of the contract's operations
//! (method and path template), its path parameters and query parameters must have their
//! types (required ones present), and a JSON body its schema. In `enforce` mode a violation
//! gets 400 with the violations; in `observe` mode it is only counted
//! (`stoa_uac_violations_total{contract,kind}`). Until the contract is approved, requests pass
//! (counted as `no_contract`). Bodies are read (up to 64 KiB, Pingora's replay buffer) only
//! for operations with a request schema.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::Result;
use pingora_proxy::Session;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::context::RequestCtx;
use crate::filter::{phase, Filter, FilterAction, LocalResponse};
use crate::uac::metrics::METRICS;

/// Bodies are checked up to Pingora's retry buffer, which replays them upstream.
const MAX_CHECKED_BODY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ValidationMode {
    /// Violations get 400.
    #[default]
    Enforce,
    /// Violations are counted only.
    Observe,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UacValidationConfig {
    /// The contract id (the API's name in `shadow.opt_in`).
    pub contract: String,
    #[serde(default)]
    pub mode: ValidationMode,
}

struct Param {
    name: String,
    required: bool,
    schema: Value,
    validator: jsonschema::Validator,
}

struct Operation {
    method: String,
    pattern: Regex,
    path_params: Vec<Param>,
    query: Vec<Param>,
    body: Option<jsonschema::Validator>,
}

/// An approved contract ready to check requests.
pub struct CompiledContract {
    operations: Vec<Operation>,
}

fn validator(schema: &Value) -> std::result::Result<jsonschema::Validator, String> {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

fn param(p: &Value, required: bool) -> std::result::Result<Param, String> {
    let schema = p["schema"].clone();
    Ok(Param {
        name: p["name"].as_str().unwrap_or_default().to_string(),
        required,
        validator: validator(&schema)?,
        schema,
    })
}

impl CompiledContract {
    pub fn compile(uac: &Value) -> std::result::Result<Self, String> {
        let mut operations = Vec::new();
        for e in uac["endpoints"].as_array().into_iter().flatten() {
            let template = e["path"].as_str().unwrap_or("/").to_string();
            let mut pattern = String::from("^");
            for seg in template.split('/').filter(|s| !s.is_empty()) {
                pattern.push('/');
                if seg.starts_with('{') && seg.ends_with('}') {
                    pattern.push_str("([^/]+)");
                } else {
                    pattern.push_str(&regex::escape(seg));
                }
            }
            pattern.push_str("/?$");
            let body = e["request"]["schema"]
                .as_object()
                .map(|_| validator(&e["request"]["schema"]))
                .transpose()?;
            operations.push(Operation {
                method: e["method"].as_str().unwrap_or("GET").to_string(),
                pattern: Regex::new(&pattern).map_err(|e| e.to_string())?,
                path_params: e["path_parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| param(p, true))
                    .collect::<std::result::Result<_, _>>()?,
                query: e["query_parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| param(p, p["required"].as_bool().unwrap_or(false)))
                    .collect::<std::result::Result<_, _>>()?,
                body,
            });
        }
        Ok(CompiledContract { operations })
    }

    /// The operation a request is for, and its path parameter values (a `HEAD` is its `GET`).
    fn operation(&self, method: &str, path: &str) -> Option<(&Operation, Vec<String>)> {
        let method = if method == "HEAD" { "GET" } else { method };
        self.operations.iter().find_map(|op| {
            if op.method != method {
                return None;
            }
            let caps = op.pattern.captures(path)?;
            Some((
                op,
                caps.iter()
                    .skip(1)
                    .flatten()
                    .map(|m| m.as_str().to_string())
                    .collect(),
            ))
        })
    }
}

/// A text value as JSON of the type its schema wants (so `"12"` checks as an integer).
fn typed(text: &str, schema: &Value) -> Value {
    let wants = |t: &str| {
        schema["type"] == t
            || schema["type"]
                .as_array()
                .is_some_and(|a| a.contains(&json!(t)))
    };
    if wants("integer") {
        if let Ok(n) = text.parse::<i64>() {
            return json!(n);
        }
    }
    if wants("number") {
        if let Ok(n) = text.parse::<f64>() {
            return json!(n);
        }
    }
    if wants("boolean") && (text == "true" || text == "false") {
        return json!(text == "true");
    }
    json!(text)
}

/// One violation: its kind (metric label) and what was wrong.
struct Violation {
    kind: &'static str,
    message: String,
}

fn check_param(p: &Param, value: Option<&str>, place: &str, out: &mut Vec<Violation>) {
    match value {
        None if p.required => out.push(Violation {
            kind: "missing_parameter",
            message: format!("{place} parameter `{}` is required", p.name),
        }),
        Some(v) if !p.validator.is_valid(&typed(v, &p.schema)) => out.push(Violation {
            kind: "parameter_type",
            message: format!(
                "{place} parameter `{}` does not match {}",
                p.name,
                json!({"type": p.schema["type"], "format": p.schema.get("format")})
            ),
        }),
        _ => {}
    }
}

pub struct UacValidation {
    contract: String,
    mode: ValidationMode,
    shadow: Arc<super::ShadowVersion>,
}

impl crate::build::BuildFilter for UacValidation {
    const TYPE: &'static str = "uac_validation";
    type Config = UacValidationConfig;

    fn build(
        cfg: &UacValidationConfig,
        bctx: &mut crate::build::BuildContext,
    ) -> std::result::Result<Self, String> {
        if cfg.contract.is_empty() {
            return Err("contract: the contract id (an API name of shadow.opt_in)".into());
        }
        let shadow = bctx
            .get_local::<super::ShadowVersion>()
            .ok_or(super::observatory::NEEDS_SHADOW_SECTION)?;
        Ok(UacValidation {
            contract: cfg.contract.clone(),
            mode: cfg.mode,
            shadow,
        })
    }

    fn register_metrics() {
        once_cell::sync::Lazy::force(&crate::uac::metrics::METRICS);
    }
}

impl UacValidation {
    fn count(&self, kind: &str) {
        METRICS
            .uac_violations
            .with_label_values(&[&self.contract, kind])
            .inc();
    }
}

#[async_trait]
impl Filter for UacValidation {
    fn name(&self) -> &'static str {
        "uac_validation"
    }

    fn phases(&self) -> u8 {
        phase::REQUEST
    }

    async fn on_request(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<FilterAction> {
        let contract: Option<Arc<CompiledContract>> = self.shadow.approved(&self.contract);
        let Some(contract) = contract else {
            self.count("no_contract");
            return Ok(FilterAction::Continue);
        };
        let req = session.req_header();
        let method = req.method.as_str().to_string();
        let path = req.uri.path().to_string();
        let query: Vec<(String, String)> = req
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let mut violations = Vec::new();
        match contract.operation(&method, &path) {
            None => violations.push(Violation {
                kind: "unknown_operation",
                message: format!("{method} {path} is not an operation of the contract"),
            }),
            Some((op, values)) => {
                for (p, v) in op.path_params.iter().zip(&values) {
                    check_param(p, Some(v), "path", &mut violations);
                }
                for p in &op.query {
                    let v = query
                        .iter()
                        .find(|(k, _)| *k == p.name)
                        .map(|(_, v)| v.as_str());
                    check_param(p, v, "query", &mut violations);
                }
                if let Some(schema) = &op.body {
                    let declared = req
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<usize>().ok());
                    if declared.is_some_and(|n| n > MAX_CHECKED_BODY) {
                        self.count("body_not_checked");
                    } else {
                        session.enable_retry_buffering();
                        let mut body = Vec::new();
                        while let Some(chunk) = session.read_request_body().await? {
                            body.extend_from_slice(&chunk);
                            if body.len() > MAX_CHECKED_BODY {
                                break;
                            }
                        }
                        if body.len() <= MAX_CHECKED_BODY {
                            match serde_json::from_slice::<Value>(&body) {
                                Ok(v) => {
                                    for e in schema.iter_errors(&v).take(5) {
                                        violations.push(Violation {
                                            kind: "body_schema",
                                            message: format!("body{}: {e}", e.instance_path()),
                                        });
                                    }
                                }
                                Err(e) => violations.push(Violation {
                                    kind: "body_not_json",
                                    message: format!("the body is not JSON: {e}"),
                                }),
                            }
                        } else {
                            self.count("body_not_checked");
                        }
                    }
                }
            }
        }
        if violations.is_empty() {
            self.count("none");
            return Ok(FilterAction::Continue);
        }
        for v in &violations {
            self.count(v.kind);
        }
        if self.mode == ValidationMode::Observe {
            return Ok(FilterAction::Continue);
        }
        let body = json!({
            "error": "the request violates the API contract",
            "status": 400,
            "contract": self.contract,
            "violations": violations.iter().map(|v| &v.message).collect::<Vec<_>>(),
        });
        Ok(FilterAction::Respond(LocalResponse {
            status: 400,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_match_templates_and_parameters_check_types() {
        let uac = json!({"endpoints": [{
            "method": "GET", "path": "/users/{userId}",
            "path_parameters": [{"name": "userId", "schema": {"type": "integer"}}],
            "query_parameters": [{"name": "page", "required": true, "schema": {"type": "integer"}}],
            "request": null, "responses": {}
        }]});
        let c = CompiledContract::compile(&uac).unwrap();
        let (op, values) = c.operation("GET", "/users/42").unwrap();
        assert_eq!(values, vec!["42"]);
        let mut v = Vec::new();
        check_param(&op.path_params[0], Some("42"), "path", &mut v);
        check_param(&op.query[0], Some("2"), "query", &mut v);
        assert!(v.is_empty());
        check_param(&op.path_params[0], Some("abc"), "path", &mut v);
        check_param(&op.query[0], None, "query", &mut v);
        assert_eq!(
            v.iter().map(|v| v.kind).collect::<Vec<_>>(),
            vec!["parameter_type", "missing_parameter"]
        );
        assert!(c.operation("HEAD", "/users/42").is_some());
        assert!(c.operation("POST", "/users/42").is_none());
        assert!(c.operation("GET", "/users/42/orders").is_none());
    }
}
