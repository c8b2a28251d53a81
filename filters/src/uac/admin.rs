//! The admin API's `/uac/…` endpoints: contracts (inferred drafts and approved versions), their
//! OpenAPI 3.1 rendering, the masked observations, review (approve, reject) and the audit log.
//! Every call names its caller and a reason, and leaves an audit record before anything is
//! returned: the caller is the reviewer whose bearer token was presented (`shadow.reviewers`),
//! or, when no reviewers are configured, the self-declared `X-Stoa-Actor` header; the reason is
//! the `reason` query parameter (or `X-Stoa-Reason`, or a POST body's `reason`).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::contract;
use super::observatory::ShadowVersion;
use crate::admin::{AdminEndpoint, AdminReply as Reply, AdminRequest};

fn json_reply(status: u16, v: &Value) -> Reply {
    Reply::pretty(status, v)
}

fn error(status: u16, message: &str) -> Reply {
    json_reply(status, &json!({"error": message, "status": status}))
}

/// The reason a caller gives: the `reason` query parameter, `X-Stoa-Reason`, or a POST body's
/// `reason`.
fn reason(req: &AdminRequest) -> Option<String> {
    req.param("reason")
        .or_else(|| req.header("x-stoa-reason").map(String::from))
        .or_else(|| {
            serde_json::from_slice::<Value>(req.body)
                .ok()
                .and_then(|v| v["reason"].as_str().map(String::from))
        })
        .filter(|r| !r.trim().is_empty())
}

/// Who is calling: a reviewer's name, or a 401.
fn caller(obs: &ShadowVersion, req: &AdminRequest) -> Result<String, Reply> {
    let unauthorized = |msg: &str| {
        let mut r = error(401, msg);
        r.headers.push((
            "www-authenticate",
            "Bearer realm=\"stoa-admin\", error=\"invalid_token\"".into(),
        ));
        r
    };
    if obs.has_reviewers() {
        let token = req
            .header("authorization")
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .map(str::trim);
        return match token {
            None => Err(unauthorized("a reviewer's bearer token is required")),
            Some(t) => obs
                .reviewer(t)
                .ok_or_else(|| unauthorized("the token is not a reviewer's")),
        };
    }
    req.header("x-stoa-actor")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| {
            unauthorized("name yourself: X-Stoa-Actor (or configure shadow.reviewers for tokens)")
        })
}

/// `/uac/…` of one config version (registered by `prepare`).
pub struct UacEndpoint(pub(super) Arc<ShadowVersion>);

#[async_trait]
impl AdminEndpoint for UacEndpoint {
    fn path(&self) -> &'static str {
        "/uac"
    }

    /// With `shadow.reviewers`, callers present a reviewer's token (checked in `caller`).
    fn authenticates_callers(&self) -> bool {
        self.0.has_reviewers()
    }

    async fn handle(&self, req: &AdminRequest<'_>) -> Reply {
        handle(&self.0, req).await
    }
}

async fn handle(obs: &ShadowVersion, req: &AdminRequest<'_>) -> Reply {
    let rest = req.path.strip_prefix("/uac").unwrap_or_default();
    let who = match caller(obs, req) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(reason) = reason(req) else {
        return error(
            400,
            "a reason is required (the `reason` query parameter): every read is audited",
        );
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let audit = |action: &str, target: &str| obs.store.audit(&who, action, target, &reason);
    let result = match (req.method, segments.as_slice()) {
        ("GET", ["contracts"]) => audit("list_contracts", "*").and_then(|_| list(obs)),
        ("GET", ["contracts", id]) => audit("read_contract", id).and_then(|_| read(obs, id)),
        ("POST", ["contracts", id, verb @ ("approve" | "reject")]) => match audit(verb, id) {
            Ok(()) => review(obs, id, *verb == "approve", &who, &reason).await,
            Err(e) => Err(e),
        },
        ("GET", ["openapi"]) => match req.param("api") {
            None => Ok(error(400, "the `api` query parameter names the contract")),
            Some(api) => audit("export_openapi", &api).and_then(|_| {
                openapi(
                    obs,
                    &api,
                    req.param("format").as_deref(),
                    req.param("source").as_deref(),
                )
            }),
        },
        ("GET", ["observations"]) => match req.param("api") {
            None => Ok(error(400, "the `api` query parameter names the API")),
            Some(api) => audit("read_observations", &api).and_then(|_| {
                let limit = req
                    .param("limit")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(50usize)
                    .min(1000);
                observations(obs, &api, limit)
            }),
        },
        ("GET", ["audit"]) => audit("read_audit", "*").and_then(|_| {
            Ok(json_reply(200, &json!({"records": obs.store.audit_log(200)?})))
        }),
        _ => Ok(error(
            404,
            "UAC endpoints: GET /uac/contracts, GET /uac/contracts/{id}, POST /uac/contracts/{id}/approve|reject, GET /uac/openapi?api=, GET /uac/observations?api=, GET /uac/audit",
        )),
    };
    result.unwrap_or_else(|e| error(500, &e))
}

fn list(obs: &ShadowVersion) -> Result<Reply, String> {
    let apis = if obs.uac_generation().enabled {
        obs.refresh_drafts()?
    } else {
        obs.store.contract_apis()?
    };
    let counts = obs.store.apis()?;
    let mut out = Vec::new();
    for api in apis {
        let row = obs.store.contract(&api)?.unwrap_or_default();
        let draft = row.draft.clone().unwrap_or(Value::Null);
        out.push(json!({
            "id": api,
            "status": if row.draft.is_some() { row.draft_status.clone() } else { "none".into() },
            "samples": counts.iter().find(|c| c.0 == api).map(|c| c.1).unwrap_or(0),
            "endpoints": draft["endpoints"].as_array().map(Vec::len).unwrap_or(0),
            "below_threshold": draft["below_threshold"].as_array().map(Vec::len).unwrap_or(0),
            "approved": row.approved.is_some(),
            "approved_by": row.approved_by,
        }));
    }
    Ok(json_reply(200, &json!({"contracts": out})))
}

fn contract_document(row: &super::store::ContractRow) -> Value {
    let mut draft = row.draft.clone().unwrap_or(Value::Null);
    if draft.is_object() {
        draft["status"] = json!(row.draft_status);
    }
    let mut approved = row.approved.clone().unwrap_or(Value::Null);
    if approved.is_object() {
        approved["status"] = json!("approved");
    }
    json!({
        "id": row.api,
        "status": row.draft_status,
        "draft": draft,
        "review": {"by": row.reviewed_by, "at": row.reviewed_at, "reason": row.review_reason},
        "approved": approved,
        "approved_by": row.approved_by,
        "approved_at": row.approved_at,
    })
}

fn read(obs: &ShadowVersion, id: &str) -> Result<Reply, String> {
    if obs.uac_generation().enabled {
        obs.refresh_drafts()?;
    }
    match obs.store.contract(id)? {
        None => Ok(error(404, &format!("no contract `{id}`"))),
        Some(row) => Ok(json_reply(200, &contract_document(&row))),
    }
}

async fn review(
    obs: &ShadowVersion,
    id: &str,
    approve: bool,
    who: &str,
    reason: &str,
) -> Result<Reply, String> {
    if obs.store.contract(id)?.and_then(|r| r.draft).is_none() {
        return Ok(error(404, &format!("no draft contract `{id}` to review")));
    }
    obs.store.review(id, approve, who, reason)?;
    obs.refresh_approved();
    let row = obs.store.contract(id)?.unwrap_or_default();
    let mut doc = contract_document(&row);
    if approve {
        doc["control_plane"] = export(obs, &row).await;
    }
    Ok(json_reply(200, &doc))
}

/// POST an approved contract to the control plane, when configured.
async fn export(obs: &ShadowVersion, row: &super::store::ContractRow) -> Value {
    let gen = obs.uac_generation();
    let (true, Some(url), Some(doc)) = (
        gen.export_to_control_plane,
        gen.control_plane_url.as_deref(),
        row.approved.as_ref(),
    ) else {
        return json!({"exported": false});
    };
    let mut body = doc.clone();
    body["status"] = json!("approved");
    body["approved_by"] = json!(row.approved_by);
    body["approved_at"] = json!(row.approved_at);
    let sent = reqwest::Client::new()
        .post(url)
        .timeout(std::time::Duration::from_secs(10))
        .json(&body)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => {
            json!({"exported": true, "status": r.status().as_u16()})
        }
        Ok(r) => json!({"exported": false, "status": r.status().as_u16()}),
        Err(e) => json!({"exported": false, "error": e.without_url().to_string()}),
    }
}

fn openapi(
    obs: &ShadowVersion,
    api: &str,
    format: Option<&str>,
    source: Option<&str>,
) -> Result<Reply, String> {
    if obs.uac_generation().enabled {
        obs.refresh_drafts()?;
    }
    let Some(row) = obs.store.contract(api)? else {
        return Ok(error(404, &format!("no contract `{api}`")));
    };
    let doc = match source {
        Some("draft") => row.draft,
        Some("approved") => row.approved,
        None => row.approved.or(row.draft),
        Some(other) => {
            return Ok(error(
                400,
                &format!("source: `draft` or `approved`, not `{other}`"),
            ))
        }
    };
    let Some(doc) = doc else {
        return Ok(error(404, &format!("contract `{api}` has no such version")));
    };
    let spec = contract::openapi(&doc);
    Ok(match format.unwrap_or("json") {
        "json" => json_reply(200, &spec),
        "yaml" => Reply {
            status: 200,
            content_type: "application/yaml",
            headers: Vec::new(),
            body: serde_saphyr::to_string(&spec)
                .map_err(|e| e.to_string())?
                .into_bytes(),
        },
        other => error(400, &format!("format: `json` or `yaml`, not `{other}`")),
    })
}

fn observations(obs: &ShadowVersion, api: &str, limit: usize) -> Result<Reply, String> {
    let samples = obs.store.samples(api)?;
    let skip = samples.len().saturating_sub(limit);
    Ok(json_reply(
        200,
        &json!({"api": api, "total": samples.len(), "samples": &samples[skip..]}),
    ))
}
