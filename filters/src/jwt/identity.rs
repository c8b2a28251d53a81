//! From verified claims to the caller's identity: subject, tenant (the configured claim, a
//! dotted path), roles (a `roles` claim and Keycloak's realm and client roles), scopes (the `scope`
//! claim, else `scp`: a space-separated string or an array); the scope and role requirements;
//! and the claims forwarded upstream as headers.

use http::HeaderName;

use super::Jwt;
use crate::context::Identity;

/// An upstream header filled from a claim (`forward_claims`).
pub(super) struct ForwardedClaim {
    pub(super) header: HeaderName,
    pub(super) claim: String,
}

impl ForwardedClaim {
    /// The header value this claim gives for a caller (`None`: the header is not set).
    pub(super) fn value(&self, identity: &Identity) -> Option<String> {
        match self.claim.as_str() {
            "tenant" => identity.tenant.clone(),
            "sub" => identity.subject.clone(),
            "roles" => Some(identity.roles.join(",")),
            "scopes" => Some(identity.scopes.join(" ")),
            path => match identity.claim(path) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Null) | None => None,
                Some(v) => Some(v.to_string()),
            },
        }
    }
}

impl Jwt {
    /// The caller's identity from a verified token's claims.
    pub(super) fn identity(&self, claims: serde_json::Value) -> Identity {
        let string_list = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut identity = Identity {
            subject: claims.get("sub").and_then(|v| v.as_str()).map(String::from),
            expires_at: claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0),
            claims,
            ..Identity::default()
        };
        identity.tenant = match identity.claim(&self.tenant_claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let mut roles = string_list(identity.claims.get("roles"));
        roles.extend(string_list(identity.claim("realm_access.roles")));
        for client in &self.role_clients {
            roles.extend(string_list(
                identity
                    .claims
                    .get("resource_access")
                    .and_then(|r| r.get(client))
                    .and_then(|c| c.get("roles")),
            ));
        }
        roles.sort();
        roles.dedup();
        identity.roles = roles;
        identity.scopes = match identity.claims.get("scope").or(identity.claims.get("scp")) {
            Some(serde_json::Value::String(s)) => s.split_whitespace().map(String::from).collect(),
            other => string_list(other),
        };
        identity
    }
}

/// Whether `have` holds every one of `need`.
pub(super) fn has_all(have: &[String], need: &[String]) -> bool {
    need.iter().all(|n| have.contains(n))
}
