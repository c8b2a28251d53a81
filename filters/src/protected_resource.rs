//! OAuth 2.0 Protected Resource Metadata (RFC 9728) for a resource the `jwt` filter guards: the
//! metadata document (which authorization servers issue tokens for this resource, which scopes
//! it knows), the well-known paths it is served at, and the metadata URL that every
//! `WWW-Authenticate` challenge names in `resource_metadata` so that clients (MCP agents among
//! them) can discover how to get a token.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProtectedResourceConfig {
    /// The resource identifier: its public URL, e.g. `https://mcp.example.com/mcp`.
    pub resource: String,
    /// Issuers of tokens for this resource (default: the `jwt` filter's `issuer`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    /// Scopes the resource understands (default: the `jwt` filter's `required_scopes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

/// The metadata, ready to serve.
pub struct ProtectedResource {
    /// The absolute URL of the metadata (`resource_metadata` in challenges).
    pub metadata_url: String,
    /// Request paths answered with the document.
    paths: Vec<String>,
    pub document: Bytes,
}

impl ProtectedResource {
    pub fn build(
        cfg: &ProtectedResourceConfig,
        issuer: &str,
        required_scopes: &[String],
    ) -> Result<Self, String> {
        let r = &cfg.resource;
        let rest = r
            .strip_prefix("https://")
            .or_else(|| r.strip_prefix("http://"))
            .ok_or("resource: must be an http(s) URL")?;
        if r.contains('#') || r.contains('?') {
            return Err("resource: must have no query or fragment (RFC 9728 §1.2)".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err("resource: has no host".into());
        }
        let origin = &r[..r.len() - rest.len() + authority.len()];
        let path = path.trim_end_matches('/');
        // RFC 9728 §3.1: the well-known path is inserted between the origin and the resource's
        // path; the bare well-known path is served too, for clients that only know the origin.
        let metadata_path = format!("{WELL_KNOWN}{path}");
        let mut paths = vec![metadata_path.clone()];
        if !path.is_empty() {
            paths.push(WELL_KNOWN.to_string());
        }
        let servers = if cfg.authorization_servers.is_empty() {
            vec![issuer.to_string()]
        } else {
            cfg.authorization_servers.clone()
        };
        let scopes = if cfg.scopes_supported.is_empty() {
            required_scopes.to_vec()
        } else {
            cfg.scopes_supported.clone()
        };
        let mut doc = json!({
            "resource": r,
            "authorization_servers": servers,
            "bearer_methods_supported": ["header"],
        });
        if !scopes.is_empty() {
            doc["scopes_supported"] = json!(scopes);
        }
        if let Some(n) = &cfg.resource_name {
            doc["resource_name"] = json!(n);
        }
        Ok(ProtectedResource {
            metadata_url: format!("{origin}{metadata_path}"),
            paths,
            document: Bytes::from(doc.to_string()),
        })
    }

    /// Whether a request path is one the metadata is served at.
    pub fn serves(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(resource: &str) -> ProtectedResourceConfig {
        ProtectedResourceConfig {
            resource: resource.into(),
            authorization_servers: vec![],
            scopes_supported: vec![],
            resource_name: None,
        }
    }

    #[test]
    fn metadata_url_inserts_the_well_known_path_before_the_resource_path() {
        let pr = ProtectedResource::build(&cfg("https://mcp.example.com/mcp"), "https://idp", &[])
            .unwrap();
        assert_eq!(
            pr.metadata_url,
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        assert!(pr.serves("/.well-known/oauth-protected-resource/mcp"));
        assert!(pr.serves("/.well-known/oauth-protected-resource"));
        let doc: serde_json::Value = serde_json::from_slice(&pr.document).unwrap();
        assert_eq!(doc["authorization_servers"], json!(["https://idp"]));
        let root =
            ProtectedResource::build(&cfg("http://127.0.0.1:3001"), "i", &["read".into()]).unwrap();
        assert_eq!(
            root.metadata_url,
            "http://127.0.0.1:3001/.well-known/oauth-protected-resource"
        );
        let doc: serde_json::Value = serde_json::from_slice(&root.document).unwrap();
        assert_eq!(doc["scopes_supported"], json!(["read"]));
        assert!(ProtectedResource::build(&cfg("mcp.example.com"), "i", &[]).is_err());
        assert!(ProtectedResource::build(&cfg("https://x/mcp#f"), "i", &[]).is_err());
    }
}
