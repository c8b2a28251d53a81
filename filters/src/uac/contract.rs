//! The UAC document (one per API, format in the README) and its OpenAPI 3.1 rendering.
//! Endpoints at or above the confidence threshold are the contract; the others are listed
//! under `below_threshold` for the reviewer and left out of OpenAPI and of enforcement.

use serde_json::{json, Map, Value};

use super::infer::infer_endpoints;
use super::store::Sample;

pub const UAC_VERSION: &str = "1.0";

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The UAC document of `api` inferred from its samples.
pub fn uac_document(api: &str, samples: &[Sample], threshold: f64) -> Value {
    let (mut endpoints, mut below) = (Vec::new(), Vec::new());
    for e in infer_endpoints(samples) {
        if e["confidence"].as_f64().unwrap_or(0.0) >= threshold {
            endpoints.push(e);
        } else {
            below.push(e);
        }
    }
    let tenants: std::collections::BTreeSet<&str> =
        samples.iter().filter_map(|s| s.tenant.as_deref()).collect();
    let first = samples.iter().map(|s| s.at).min().unwrap_or(0);
    let last = samples.iter().map(|s| s.at).max().unwrap_or(0);
    json!({
        "uac_version": UAC_VERSION,
        "id": api,
        "title": format!("{api} (observed)"),
        "observation": {
            "samples": samples.len(),
            "first_seen": rfc3339(first),
            "last_seen": rfc3339(last),
            "tenants": tenants,
        },
        "confidence_threshold": threshold,
        "endpoints": endpoints,
        "below_threshold": below,
    })
}

fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            seg.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_'),
        );
    }
    id
}

/// The OpenAPI 3.1 document of a UAC document (its `endpoints`).
pub fn openapi(uac: &Value) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for e in uac["endpoints"].as_array().into_iter().flatten() {
        let path = e["path"].as_str().unwrap_or("/");
        let method = e["method"].as_str().unwrap_or("GET").to_ascii_lowercase();
        let mut parameters: Vec<Value> = Vec::new();
        for p in e["path_parameters"].as_array().into_iter().flatten() {
            parameters.push(json!({"name": p["name"], "in": "path", "required": true,
                "schema": p["schema"]}));
        }
        for p in e["query_parameters"].as_array().into_iter().flatten() {
            parameters.push(
                json!({"name": p["name"], "in": "query", "required": p["required"],
                "schema": p["schema"]}),
            );
        }
        let content = |body: &Value| -> Option<Value> {
            let types = body["content_types"].as_array()?;
            let schema = body.get("schema").cloned().unwrap_or_else(|| json!({}));
            let map: Map<String, Value> = types
                .iter()
                .filter_map(|t| t.as_str())
                .map(|t| (t.to_string(), json!({"schema": schema})))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        };
        let mut responses: Map<String, Value> = Map::new();
        for (status, r) in e["responses"].as_object().into_iter().flatten() {
            let mut resp = json!({"description": format!("Observed {} times", r["count"])});
            if let Some(c) = content(r) {
                resp["content"] = c;
            }
            responses.insert(status.clone(), resp);
        }
        let mut op = json!({
            "operationId": operation_id(&method, path),
            "summary": format!("{} {}", method.to_ascii_uppercase(), path),
            "responses": responses,
            "x-stoa-confidence": e["confidence"],
            "x-stoa-samples": e["samples"],
        });
        if !parameters.is_empty() {
            op["parameters"] = json!(parameters);
        }
        if let Some(c) = e.get("request").filter(|r| !r.is_null()).and_then(content) {
            op["requestBody"] = json!({"content": c});
        }
        paths
            .entry(path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path item")
            .insert(method, op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": uac["title"],
            "version": uac["observation"]["last_seen"].as_str().unwrap_or("0").replace(':', ""),
            "description": format!(
                "Inferred by stoa-gateway shadow mode from {} observed requests (UAC {}).",
                uac["observation"]["samples"],
                uac["uac_version"].as_str().unwrap_or(UAC_VERSION)
            ),
        },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_has_paths_parameters_and_schemas() {
        let samples: Vec<Sample> = (0..12)
            .map(|i| Sample {
                api: "erp".into(),
                at: 1_700_000_000_000 + i,
                method: "GET".into(),
                path: format!("/users/{i}"),
                query: Some("expand=true".into()),
                status: 200,
                response_content_type: Some("application/json".into()),
                response_body: Some(json!({"id": i}).to_string()),
                ..Sample::default()
            })
            .collect();
        let uac = uac_document("erp", &samples, 0.8);
        assert_eq!(uac["endpoints"][0]["id"], "GET /users/{userId}");
        let doc = openapi(&uac);
        let op = &doc["paths"]["/users/{userId}"]["get"];
        assert_eq!(op["operationId"], "get_users_userId");
        assert_eq!(op["parameters"][0]["in"], "path");
        assert_eq!(op["parameters"][1]["schema"]["type"], "boolean");
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["id"]
                ["type"],
            "integer"
        );
        // Too few samples: below the threshold, not in OpenAPI.
        let few = uac_document("erp", &samples[..1], 0.8);
        assert_eq!(few["below_threshold"][0]["id"], "GET /users/{userId}");
        assert!(openapi(&few)["paths"].as_object().unwrap().is_empty());
    }
}
