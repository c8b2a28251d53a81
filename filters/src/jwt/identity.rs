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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::BuildContext;
    use serde_json::{json, Value};

    /// A filter with local keys only (no network), the defaults otherwise plus `extra`.
    fn filter(extra: Value) -> Jwt {
        let mut cfg = json!({
            "issuer": "https://idp.example",
            "audiences": ["stoa-api"],
            "algorithms": ["HS256"],
            "hmac_secret": "test-secret-0123456789abcdef",
        });
        if let (Some(c), Value::Object(e)) = (cfg.as_object_mut(), extra) {
            c.extend(e);
        }
        Jwt::build(
            &serde_json::from_value(cfg).expect("a valid jwt config"),
            &mut BuildContext::standalone(),
        )
        .expect("builds")
    }

    #[test]
    fn subject_and_expiry() {
        let id = filter(json!({})).identity(json!({"sub": "alice", "exp": 1_900_000_000u64}));
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.expires_at, 1_900_000_000);
        assert_eq!(id.claims.get("sub"), Some(&json!("alice")));
    }

    #[test]
    fn missing_claims_give_an_empty_identity() {
        let id = filter(json!({})).identity(json!({}));
        assert_eq!(id.subject, None);
        assert_eq!(id.tenant, None);
        assert_eq!(id.expires_at, 0);
        assert!(id.roles.is_empty());
        assert!(id.scopes.is_empty());
        // Claims of the wrong type count as missing.
        let id = filter(json!({})).identity(json!({
            "sub": 7, "exp": "soon", "tenant": {"id": "x"}, "roles": "admin", "scope": 3,
        }));
        assert_eq!(id.subject, None);
        assert_eq!(id.expires_at, 0);
        assert_eq!(id.tenant, None);
        assert!(id.roles.is_empty());
        assert!(id.scopes.is_empty());
    }

    #[test]
    fn the_tenant_claim_is_configurable_and_may_be_a_path() {
        let default = filter(json!({}));
        assert_eq!(
            default
                .identity(json!({"tenant": "acme"}))
                .tenant
                .as_deref(),
            Some("acme")
        );
        assert_eq!(
            default.identity(json!({"tenant": 42})).tenant.as_deref(),
            Some("42")
        );
        assert_eq!(default.identity(json!({"tenant": true})).tenant, None);
        assert_eq!(default.identity(json!({"org": "acme"})).tenant, None);

        let nested = filter(json!({"tenant_claim": "org.id"}));
        let id = nested.identity(json!({"tenant": "ignored", "org": {"id": "globex"}}));
        assert_eq!(id.tenant.as_deref(), Some("globex"));
        assert_eq!(nested.identity(json!({"org": "flat"})).tenant, None);
    }

    #[test]
    fn scopes_from_a_string_or_an_array() {
        let jwt = filter(json!({}));
        let scopes = |claims| jwt.identity(claims).scopes;
        assert_eq!(
            scopes(json!({"scope": "read  write\tadmin"})),
            ["read", "write", "admin"]
        );
        assert_eq!(
            scopes(json!({"scope": ["read", 1, "write"]})),
            ["read", "write"]
        );
        assert_eq!(scopes(json!({"scp": ["mcp:tools"]})), ["mcp:tools"]);
        assert_eq!(scopes(json!({"scp": "a b"})), ["a", "b"]);
        // `scope` wins over `scp`.
        assert_eq!(scopes(json!({"scope": "one", "scp": ["two"]})), ["one"]);
        assert!(scopes(json!({"scope": ""})).is_empty());
    }

    #[test]
    fn roles_from_the_roles_claim_and_keycloak() {
        let claims = json!({
            "roles": ["writer", "reader"],
            "realm_access": {"roles": ["reader", "offline_access"]},
            "resource_access": {
                "stoa-api": {"roles": ["api-admin"]},
                "other-client": {"roles": ["not-ours"]},
            },
        });
        // Without `client_id`, each audience's client roles count.
        let id = filter(json!({})).identity(claims.clone());
        assert_eq!(
            id.roles,
            ["api-admin", "offline_access", "reader", "writer"]
        );
        let id = filter(json!({"client_id": "other-client"})).identity(claims);
        assert_eq!(id.roles, ["not-ours", "offline_access", "reader", "writer"]);
    }

    #[test]
    fn forwarded_claims() {
        let id = filter(json!({"tenant_claim": "org"})).identity(json!({
            "sub": "alice", "org": "acme", "roles": ["b", "a"], "scope": "read write",
            "email": "alice@example.com", "level": 3, "gone": null, "obj": {"k": "v"},
        }));
        let value = |claim: &str| {
            ForwardedClaim {
                header: HeaderName::from_static("x-test"),
                claim: claim.into(),
            }
            .value(&id)
        };
        assert_eq!(value("tenant").as_deref(), Some("acme"));
        assert_eq!(value("sub").as_deref(), Some("alice"));
        assert_eq!(value("roles").as_deref(), Some("a,b"));
        assert_eq!(value("scopes").as_deref(), Some("read write"));
        assert_eq!(value("email").as_deref(), Some("alice@example.com"));
        assert_eq!(value("level").as_deref(), Some("3"));
        assert_eq!(value("obj").as_deref(), Some(r#"{"k":"v"}"#));
        assert_eq!(value("obj.k").as_deref(), Some("v"));
        assert_eq!(value("gone"), None);
        assert_eq!(value("absent"), None);
    }

    #[test]
    fn requirements_need_every_item() {
        let have = ["read".to_string(), "write".to_string()];
        assert!(has_all(&have, &[]));
        assert!(has_all(&have, &["write".into()]));
        assert!(!has_all(&have, &["write".into(), "admin".into()]));
        assert!(!has_all(&[], &["read".into()]));
    }
}
