//! MCP sessions sealed into the `Mcp-Session-Id` itself: the negotiated protocol version, the
//! issue time and (when upstreams are federated) the client's capabilities, signed with HMAC-SHA256 under a secret the replicas share. Any gateway process
//! holding the secret accepts the session, so sessions survive a restart and need neither
//! sticky load balancing nor a shared store. A `DELETE` is remembered (until the session would
//! have expired anyway) by the process that received it.
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::state::session_key;

type HmacSha256 = Hmac<Sha256>;

/// What a session id carries.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionState {
    /// The protocol version negotiated by `initialize`.
    pub protocol_version: String,
    /// Unix seconds when the session was created.
    pub issued_at: u64,
    /// The client's `initialize` capabilities, when sealed (`Null` otherwise).
    pub client_capabilities: serde_json::Value,
}

/// Why a session id is refused.
#[derive(Debug, PartialEq)]
pub enum SessionError {
    /// Not ours: malformed, or signed with another secret.
    Unknown,
    /// Older than the session TTL.
    Expired,
    /// Ended by a `DELETE`.
    Terminated,
}

pub struct SessionSealer {
    key: Vec<u8>,
    ttl: Duration,
    /// Sessions ended by `DELETE` (shared through `McpState`, so reloads keep them ended).
    terminated: moka::sync::Cache<[u8; 32], ()>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl SessionSealer {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        SessionSealer {
            key: secret.to_vec(),
            ttl,
            terminated: moka::sync::Cache::new(1_000),
        }
    }

    /// The same sealer, recording ended sessions in `terminated` (the shared table).
    pub fn with_terminated(mut self, terminated: moka::sync::Cache<[u8; 32], ()>) -> Self {
        self.terminated = terminated;
        self
    }

    fn mac(&self, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// A new session id for `protocol_version` (visible ASCII, as the spec requires), carrying
    /// the client's capabilities when given.
    pub fn seal(
        &self,
        protocol_version: &str,
        client_capabilities: Option<&serde_json::Value>,
    ) -> String {
        let mut payload = format!(
            "v1|{protocol_version}|{}|{}",
            unix_now(),
            uuid::Uuid::new_v4().simple()
        );
        if let Some(caps) = client_capabilities {
            payload.push('|');
            payload.push_str(&B64.encode(caps.to_string()));
        }
        let tag = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}.{}", B64.encode(payload), B64.encode(tag))
    }

    /// The state a session id carries, if it is ours, live and not terminated.
    pub fn open(&self, id: &str) -> Result<SessionState, SessionError> {
        let (payload, tag) = id.split_once('.').ok_or(SessionError::Unknown)?;
        let payload = B64.decode(payload).map_err(|_| SessionError::Unknown)?;
        let tag = B64.decode(tag).map_err(|_| SessionError::Unknown)?;
        self.mac(&payload)
            .verify_slice(&tag)
            .map_err(|_| SessionError::Unknown)?;
        let payload = String::from_utf8(payload).map_err(|_| SessionError::Unknown)?;
        let mut parts = payload.split('|');
        let (Some("v1"), Some(version), Some(issued), Some(_nonce), caps, None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(SessionError::Unknown);
        };
        let client_capabilities = match caps {
            None => serde_json::Value::Null,
            Some(c) => B64
                .decode(c)
                .ok()
                .and_then(|j| serde_json::from_slice(&j).ok())
                .ok_or(SessionError::Unknown)?,
        };
        let issued_at: u64 = issued.parse().map_err(|_| SessionError::Unknown)?;
        if issued_at + self.ttl.as_secs() < unix_now() {
            return Err(SessionError::Expired);
        }
        if self.terminated.contains_key(&session_key(id)) {
            return Err(SessionError::Terminated);
        }
        Ok(SessionState {
            protocol_version: version.to_string(),
            issued_at,
            client_capabilities,
        })
    }

    /// End a session (`DELETE`): later requests with this id get 404 from this process.
    pub fn terminate(&self, id: &str) {
        self.terminated.insert(session_key(id), ());
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sealed_ids_open_on_any_sealer_with_the_same_secret() {
        let a = SessionSealer::new(b"shared", Duration::from_secs(60));
        let b = SessionSealer::new(b"shared", Duration::from_secs(60));
        let id = a.seal("2025-06-18", None);
        assert!(id.bytes().all(|c| (0x21..=0x7e).contains(&c)));
        assert_eq!(b.open(&id).unwrap().protocol_version, "2025-06-18");
        let other = SessionSealer::new(b"other", Duration::from_secs(60));
        assert_eq!(other.open(&id), Err(SessionError::Unknown));
        assert_eq!(a.open("nonsense"), Err(SessionError::Unknown));
        // Tampering with the payload breaks the signature.
        let (_, tag) = id.split_once('.').unwrap();
        let forged = format!("{}.{tag}", B64.encode("v1|2025-06-18|9999999999|x"));
        assert_eq!(a.open(&forged), Err(SessionError::Unknown));
    }

    #[test]
    fn client_capabilities_travel_in_the_id() {
        let s = SessionSealer::new(b"k", Duration::from_secs(60));
        let caps = serde_json::json!({"sampling": {}, "roots": {"listChanged": true}});
        let id = s.seal("2025-11-25", Some(&caps));
        assert!(id.bytes().all(|c| (0x21..=0x7e).contains(&c)));
        assert_eq!(s.open(&id).unwrap().client_capabilities, caps);
    }

    #[test]
    fn terminated_and_expired_sessions_are_refused() {
        let s = SessionSealer::new(b"k", Duration::from_secs(60));
        let id = s.seal("2025-03-26", None);
        s.terminate(&id);
        assert_eq!(s.open(&id), Err(SessionError::Terminated));
        let short = SessionSealer::new(b"k", Duration::from_secs(0));
        let payload = format!("v1|2025-03-26|{}|n", unix_now() - 5);
        let tag = short.mac(payload.as_bytes()).finalize().into_bytes();
        let old = format!("{}.{}", B64.encode(&payload), B64.encode(tag));
        assert_eq!(short.open(&old), Err(SessionError::Expired));
    }

    #[test]
    fn any_altered_character_is_refused() {
        let s = SessionSealer::new(b"secret", Duration::from_secs(60));
        let caps = serde_json::json!({"sampling": {}});
        let id = s.seal("2025-06-18", Some(&caps));
        assert!(s.open(&id).is_ok());
        for (i, c) in id.char_indices() {
            let other = if c == 'A' { 'B' } else { 'A' };
            let mut forged = id.clone();
            forged.replace_range(i..i + c.len_utf8(), &other.to_string());
            assert_eq!(s.open(&forged), Err(SessionError::Unknown), "at {i}");
        }
        // Cut short, extended, or with payload and tag of two different ids.
        let mut cut = id.clone();
        cut.pop();
        assert_eq!(s.open(&cut), Err(SessionError::Unknown));
        assert_eq!(s.open(&format!("{id}A")), Err(SessionError::Unknown));
        let second = s.seal("2025-06-18", Some(&caps));
        let (payload, _) = id.split_once('.').unwrap();
        let (_, tag) = second.split_once('.').unwrap();
        assert_eq!(
            s.open(&format!("{payload}.{tag}")),
            Err(SessionError::Unknown)
        );
        assert_eq!(s.open(""), Err(SessionError::Unknown));
        assert_eq!(s.open("."), Err(SessionError::Unknown));
    }

    #[test]
    fn signed_payloads_of_another_shape_are_refused() {
        let s = SessionSealer::new(b"k", Duration::from_secs(60));
        let signed = |payload: &str| {
            let tag = s.mac(payload.as_bytes()).finalize().into_bytes();
            format!("{}.{}", B64.encode(payload), B64.encode(tag))
        };
        let now = unix_now();
        assert!(s.open(&signed(&format!("v1|2025-06-18|{now}|n"))).is_ok());
        for payload in [
            format!("v2|2025-06-18|{now}|n"),
            format!("v1|2025-06-18|{now}"),
            "v1|2025-06-18|soon|n".to_string(),
            format!("v1|2025-06-18|{now}|n|{}|extra", B64.encode("{}")),
            // Capabilities that are not base64 of JSON.
            format!("v1|2025-06-18|{now}|n|!!"),
            format!("v1|2025-06-18|{now}|n|{}", B64.encode("not json")),
        ] {
            assert_eq!(
                s.open(&signed(&payload)),
                Err(SessionError::Unknown),
                "{payload}"
            );
        }
    }

    #[test]
    fn seals_are_unique_and_dated() {
        let s = SessionSealer::new(b"k", Duration::from_secs(60));
        let (a, b) = (s.seal("2025-06-18", None), s.seal("2025-06-18", None));
        assert_ne!(a, b);
        let issued = s.open(&a).unwrap().issued_at;
        assert!(issued.abs_diff(unix_now()) <= 1);
        // Ending one session leaves the other open.
        s.terminate(&a);
        assert_eq!(s.open(&a), Err(SessionError::Terminated));
        assert!(s.open(&b).is_ok());
    }
}
