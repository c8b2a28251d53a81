//! The one canonical form of a request, computed before any filter runs, so that the router,
//! the policy, rate-limit keys, templates, captures and the upstream all judge the same thing:
//!
//! - the **target**: origin-form (`/p?q`) or `http(s)://authority/p?q` absolute-form (whose
//!   authority then replaces `Host`); anything else (`foo:bar://h/x`, `x:/admin`, `*`, a
//!   fragment) is refused;
//! - the **path**, RFC 3986 §6.2.2 normalised: percent-encoded unreserved characters decoded,
//!   other escapes uppercased, raw non-ASCII bytes percent-encoded, dot segments resolved
//!   (§5.2.4), `//` merged (Envoy's `merge_slashes`, on by default), `%2F`/`%5C` refused or
//!   kept per `escaped_slashes`; backslashes, `%00` and malformed escapes refused;
//! - the **authority** (`Host`, or HTTP/2's `:authority`): one host, an optional port, no
//!   userinfo, lowercased; a missing `Host` on HTTP/1.1 or two of them are refused;
//! - the **method and framing**: lowercase methods and `TRACE` refused; on HTTP/1.x a
//!   `Content-Length` that is not one plain number, or a `Transfer-Encoding` other than
//!   `chunked` (or next to a `Content-Length`, or on HTTP/1.0), refused.
//!
//! Client bytes are parsed here without indexing or slicing at unchecked offsets (the lints
//! below make the compiler hold us to it).
#![deny(
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{Method, Version};
use pingora_http::RequestHeader;
use serde::{Deserialize, Serialize};

/// What to do with `%2F` and `%5C` (an encoded `/` or `\`) in a path, which upstreams
/// disagree about (Envoy's `path_with_escaped_slashes_action`).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// 400 (the default).
    #[default]
    Reject,
    /// Keep them encoded (uppercased): they are not separators, for the router or upstream.
    Keep,
}

/// How a listener canonicalises request paths.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathOptions {
    /// Merge runs of `/` into one (`//admin` is `/admin`). Default true.
    #[serde(default = "yes")]
    pub merge_slashes: bool,
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
}

fn yes() -> bool {
    true
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a request is refused: its status, a short label (the `reason` of
/// `gateway_rejections_total`) and the message the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub message: &'static str,
}

const fn bad(reason: &'static str, message: &'static str) -> Refusal {
    Refusal {
        status: 400,
        reason,
        message,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A character a path segment may hold literally (RFC 3986 §3.3 `pchar`, escapes aside).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || b"!$&'()*+,;=:@".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    for nibble in [b >> 4, b & 0x0f] {
        if let Some(&h) = HEX.get(usize::from(nibble)) {
            out.push(char::from(h));
        }
    }
}

/// The canonical form of a raw path (bytes as received, starting with `/`).
pub fn canonical_path(raw: &[u8], opts: &PathOptions) -> Result<String, Refusal> {
    let Some((b'/', rest)) = raw.split_first() else {
        return Err(bad("bad_path", "the path must start with `/`"));
    };
    // Decode into segments: only a literal `/` separates them.
    let mut segments: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut bytes = rest.iter().copied();
    while let Some(b) = bytes.next() {
        match b {
            b'/' => segments.push(std::mem::take(&mut current)),
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.next().and_then(hex_value),
                    bytes.next().and_then(hex_value),
                ) else {
                    return Err(bad("bad_path", "malformed percent-encoding in the path"));
                };
                match hi * 16 + lo {
                    0 => return Err(bad("bad_path", "an encoded NUL (%00) is not allowed")),
                    b'/' | b'\\' if opts.escaped_slashes == EscapedSlashes::Reject => {
                        return Err(bad(
                            "bad_path",
                            "encoded slashes and backslashes are not allowed in the path",
                        ))
                    }
                    v if is_unreserved(v) => current.push(char::from(v)),
                    v => push_escape(&mut current, v),
                }
            }
            b'\\' => {
                return Err(bad(
                    "bad_path",
                    "encoded slashes and backslashes are not allowed in the path",
                ))
            }
            b if b < 0x21 || b == 0x7f => {
                return Err(bad("bad_path", "control characters are not allowed"))
            }
            b'#' => return Err(bad("bad_target", "a fragment is not part of a request")),
            b if is_pchar(b) => current.push(char::from(b)),
            // Raw non-ASCII, and ASCII a URI path may not hold (`"<>^`{|}[]`): encoded.
            b => push_escape(&mut current, b),
        }
    }
    segments.push(current);
    let count = segments.len();
    let mut out: Vec<String> = Vec::with_capacity(count);
    let mut trailing_slash = false;
    for (i, seg) in segments.into_iter().enumerate() {
        let last = i + 1 == count;
        match seg.as_str() {
            "" if last => trailing_slash = true,
            "" if opts.merge_slashes => {}
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(raw.len() + 1);
    for seg in &out {
        path.push('/');
        path.push_str(seg);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// The query as it may go upstream: raw non-ASCII bytes percent-encoded, nothing else changed;
/// control characters refused.
pub fn canonical_query(raw: &[u8]) -> Result<String, Refusal> {
    let mut q = String::with_capacity(raw.len());
    for &b in raw {
        match b {
            b if b < 0x20 || b == 0x7f => {
                return Err(bad("bad_target", "control characters are not allowed"))
            }
            b'#' => return Err(bad("bad_target", "a fragment is not part of a request")),
            b if b >= 0x80 => push_escape(&mut q, b),
            b => q.push(char::from(b)),
        }
    }
    Ok(q)
}

/// An authority split into host and port, borrowed from the text it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// A reg-name, an IPv4 address, or an IPv6 literal with its brackets.
    pub host: &'a str,
    pub port: Option<u16>,
}

/// Split and check `host[:port]` (RFC 3986 §3.2.2–3.2.3; no userinfo, RFC 9110 §4.2.4).
pub fn split_authority(s: &str) -> Result<HostPort<'_>, Refusal> {
    const BAD_HOST: Refusal = bad(
        "bad_host",
        "the Host (authority) is not a valid host[:port]",
    );
    if s.contains('@') {
        return Err(bad("bad_host", "userinfo is not allowed in the authority"));
    }
    let (host, port) = if let Some(inner) = s.strip_prefix('[') {
        let (literal, rest) = inner.split_once(']').ok_or(BAD_HOST)?;
        literal
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| BAD_HOST)?;
        let host = s.get(..literal.len() + 2).ok_or(BAD_HOST)?;
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':').ok_or(BAD_HOST)?),
        };
        (host, port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| BAD_HOST)?)
        }
        Some(_) => return Err(BAD_HOST),
    };
    if host.is_empty()
        || (!host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')))
    {
        return Err(BAD_HOST);
    }
    Ok(HostPort { host, port })
}

/// The canonical `Host` value: the host lowercased, and the port when one was given.
fn canonical_authority(hp: HostPort<'_>) -> String {
    let mut s = hp.host.to_ascii_lowercase();
    if let Some(p) = hp.port {
        s.push(':');
        s.push_str(&p.to_string());
    }
    s
}

/// A request target split into its parts (RFC 9112 §3.2).
struct Target<'a> {
    /// The authority of an absolute-form target.
    authority: Option<&'a [u8]>,
    path: &'a [u8],
    query: Option<&'a [u8]>,
}

fn split_query(pq: &[u8]) -> (&[u8], Option<&[u8]>) {
    match pq.iter().position(|&b| b == b'?') {
        Some(i) => {
            let (p, q) = pq.split_at(i);
            (p, q.get(1..))
        }
        None => (pq, None),
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

fn parse_target(raw: &[u8]) -> Result<Target<'_>, Refusal> {
    if raw.first() == Some(&b'/') {
        let (path, query) = split_query(raw);
        return Ok(Target {
            authority: None,
            path,
            query,
        });
    }
    let rest = strip_prefix_ignore_case(raw, b"http://")
        .or_else(|| strip_prefix_ignore_case(raw, b"https://"))
        .ok_or(bad(
            "bad_target",
            "the request target must be a path or an http(s):// URL",
        ))?;
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let (authority, pq) = rest.split_at(end);
    let (path, query) = split_query(pq);
    Ok(Target {
        authority: Some(authority),
        path: if path.is_empty() { b"/" } else { path },
        query,
    })
}

fn one_header<'a>(req: &'a RequestHeader, name: &http::HeaderName) -> Result<Option<&'a [u8]>, ()> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next().map(|v| v.as_bytes());
    if values.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// The common request needs no rewriting: an HTTP/1 origin-form target that is a plain path
/// (letters, digits, `-_~.` and single `/`s, no dot segment, no `%`, no query) and one `Host`
/// that is already canonical (a lower-case name, an optional port without leading zero).
/// Checked byte by byte, so such a request skips the decode-and-rebuild of `canonicalize`,
/// which would give back the same bytes (see the tests).
fn already_canonical(req: &RequestHeader, opts: &PathOptions) -> bool {
    if !matches!(req.version, Version::HTTP_10 | Version::HTTP_11) {
        return false;
    }
    let raw = req.raw_path();
    if !is_plain_path(raw, opts) || req.uri.query().is_some() || req.uri.path().as_bytes() != raw {
        return false;
    }
    match one_header(req, &HOST) {
        Ok(Some(host)) => is_canonical_authority(host),
        // No Host: HTTP/1.1 refuses it, HTTP/1.0 may omit it; the full path decides.
        _ => false,
    }
}

/// A path `canonical_path` leaves as it is (see `already_canonical`).
fn is_plain_path(raw: &[u8], opts: &PathOptions) -> bool {
    raw.first() == Some(&b'/')
        && raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'~' | b'.'))
        && !raw
            .windows(2)
            .any(|w| w == b"/." || (opts.merge_slashes && w == b"//"))
}

/// A `Host` value `canonical_authority` leaves as it is: a lower-case registered name or IPv4
/// address, and a port of 1 to 5 digits without a leading zero that fits in 16 bits.
fn is_canonical_authority(host: &[u8]) -> bool {
    let (name, port) = match host.iter().position(|&b| b == b':') {
        Some(i) => (host.get(..i).unwrap_or_default(), host.get(i + 1..)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.iter().all(|&b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_' | b'~')
        });
    let port_ok = match port {
        None => true,
        Some(p) => {
            (1..=5).contains(&p.len())
                && p.first() != Some(&b'0')
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p).is_ok_and(|t| t.parse::<u16>().is_ok())
        }
    };
    name_ok && port_ok
}

/// Check the method and the HTTP/1 framing headers.
fn check_method_and_framing(req: &RequestHeader) -> Result<(), Refusal> {
    let method = req.method.as_str();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(bad(
            "bad_method",
            "methods are case-sensitive and upper case (RFC 9110 §9.1)",
        ));
    }
    if req.method == Method::TRACE || req.method == Method::CONNECT {
        return Err(Refusal {
            status: 405,
            reason: "method_not_allowed",
            message: "TRACE and CONNECT are not served",
        });
    }
    if !matches!(
        req.version,
        Version::HTTP_10 | Version::HTTP_11 | Version::HTTP_09
    ) {
        return Ok(());
    }
    let length = one_header(req, &CONTENT_LENGTH)
        .map_err(|_| bad("bad_framing", "more than one Content-Length"))?;
    if let Some(v) = length {
        if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
            return Err(bad(
                "bad_framing",
                "Content-Length must be one decimal number",
            ));
        }
    }
    let mut codings: Vec<String> = Vec::new();
    for v in req.headers.get_all(TRANSFER_ENCODING) {
        let text = std::str::from_utf8(v.as_bytes())
            .map_err(|_| bad("bad_framing", "Transfer-Encoding is not ASCII"))?;
        codings.extend(
            text.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty()),
        );
    }
    if req.headers.contains_key(TRANSFER_ENCODING) {
        if req.version != Version::HTTP_11 {
            return Err(bad("bad_framing", "Transfer-Encoding needs HTTP/1.1"));
        }
        if length.is_some() {
            return Err(bad(
                "bad_framing",
                "Transfer-Encoding and Content-Length together",
            ));
        }
        if codings.last().map(String::as_str) != Some("chunked") {
            return Err(bad(
                "bad_framing",
                "Transfer-Encoding must end with chunked (RFC 9112 §6.3)",
            ));
        }
        if codings.len() > 1 {
            return Err(Refusal {
                status: 501,
                reason: "bad_framing",
                message: "only the chunked transfer coding is supported",
            });
        }
    }
    Ok(())
}

/// Check `req` and rewrite it to its canonical form in place (target, path, query, `Host`).
/// What the client sent is refused rather than guessed at when it is invalid or ambiguous.
pub fn canonicalize(req: &mut RequestHeader, opts: &PathOptions) -> Result<(), Refusal> {
    check_method_and_framing(req)?;
    if already_canonical(req, opts) {
        return Ok(());
    }
    let h1 = matches!(
        req.version,
        Version::HTTP_10 | Version::HTTP_11 | Version::HTTP_09
    );
    let raw = req.raw_path().to_vec();
    // HTTP/2 puts the authority in the URI; HTTP/1 in the target (absolute-form) or `Host`.
    let (authority, path, query) = if h1 {
        let target = parse_target(&raw)?;
        (
            target.authority.map(<[u8]>::to_vec),
            canonical_path(target.path, opts)?,
            target.query.map(canonical_query).transpose()?,
        )
    } else {
        let (path, query) = split_query(&raw);
        let path = if raw.first() == Some(&b'/') {
            canonical_path(path, opts)?
        } else {
            return Err(bad("bad_target", "the :path must start with `/`"));
        };
        (
            req.uri.authority().map(|a| a.as_str().as_bytes().to_vec()),
            path,
            query.map(canonical_query).transpose()?,
        )
    };
    let host_header = one_header(req, &HOST)
        .map_err(|_| bad("bad_host", "more than one Host header"))?
        .map(<[u8]>::to_vec);
    let authority = match (authority, host_header) {
        // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2); on HTTP/2
        // a Host that disagrees with :authority is malformed (RFC 9113 §8.3.1).
        (Some(a), Some(h)) if !h1 && !a.eq_ignore_ascii_case(&h) => {
            return Err(bad("bad_host", "Host and :authority disagree"))
        }
        (Some(a), _) => Some(a),
        (None, Some(h)) => Some(h),
        (None, None) if req.version == Version::HTTP_11 => {
            return Err(bad("bad_host", "HTTP/1.1 requests need a Host header"))
        }
        (None, None) => None,
    };
    if let Some(a) = authority {
        let text = std::str::from_utf8(&a)
            .map_err(|_| bad("bad_host", "the Host (authority) is not ASCII"))?;
        let canonical = canonical_authority(split_authority(text)?);
        if req.headers.get(HOST).map(|h| h.as_bytes()) != Some(canonical.as_bytes()) {
            req.insert_header(HOST, canonical)
                .map_err(|_| bad("bad_host", "the Host (authority) is not valid"))?;
        }
    }
    let same_uri = req.uri.path() == path && req.uri.query() == query.as_deref();
    let mut pq = path;
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(&q);
    }
    // HTTP/1 also sends the raw target upstream (absolute-form verbatim), so both must agree.
    let unchanged = same_uri && (!h1 || raw == pq.as_bytes());
    if !unchanged {
        let bad_uri = |_| bad("bad_path", "the path has characters a URI may not have");
        let path_and_query = pq.parse::<http::uri::PathAndQuery>().map_err(bad_uri)?;
        // HTTP/2 keeps its scheme and authority; HTTP/1 goes upstream in origin-form.
        let mut parts = if h1 {
            http::uri::Parts::default()
        } else {
            req.uri.clone().into_parts()
        };
        parts.path_and_query = Some(path_and_query);
        let uri = http::Uri::from_parts(parts)
            .map_err(|_| bad("bad_path", "the path has characters a URI may not have"))?;
        req.set_uri(uri);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {

    #[test]
    fn the_fast_path_only_takes_what_the_full_path_would_leave_alone() {
        let opts = PathOptions::default();
        let keep = PathOptions {
            merge_slashes: false,
            ..PathOptions::default()
        };
        let paths = [
            "/",
            "/a",
            "/a/b",
            "/a/b/",
            "/a.b/c-d_e~f",
            "/A/Z/09",
            "/a//b",
            "/./a",
            "/a/./b",
            "/a/../b",
            "/a/..",
            "/a/.",
            "/.well-known/x",
            "/a%2Fb",
            "/a%41",
            "/a b",
            "/a?b",
            "/a\\b",
            "//",
            "/a..b",
            "/..a",
            "/a/.b",
        ];
        for p in paths {
            for o in [&opts, &keep] {
                if is_plain_path(p.as_bytes(), o) {
                    assert_eq!(
                        canonical_path(p.as_bytes(), o).ok().as_deref(),
                        Some(p),
                        "{p}"
                    );
                }
            }
        }
        assert!(is_plain_path(b"/a/b", &opts));
        assert!(!is_plain_path(b"/a//b", &opts) && is_plain_path(b"/a//b", &keep));
        let hosts = [
            "gw.test",
            "gw.test:8080",
            "127.0.0.1:1",
            "a:65535",
            "a:65536",
            "a:080",
            "a:0",
            "A",
            "a:",
            ":80",
            "",
            "[::1]:80",
            "a b",
            "a@b",
            "a:8x",
        ];
        for h in hosts {
            if is_canonical_authority(h.as_bytes()) {
                let canonical = split_authority(h).ok().map(canonical_authority);
                assert_eq!(canonical.as_deref(), Some(h), "{h}");
            }
        }
        assert!(is_canonical_authority(b"gw.test:8080"));
        assert!(!is_canonical_authority(b"GW.test") && !is_canonical_authority(b"a:080"));
    }

    use super::*;

    fn canon(p: &str) -> Result<String, Refusal> {
        canonical_path(p.as_bytes(), &PathOptions::default())
    }

    #[test]
    fn dot_segments_slashes_and_escapes() {
        for (input, want) in [
            ("/a/b", "/a/b"),
            ("/v1.2/file.txt", "/v1.2/file.txt"),
            ("/public/../api/orders", "/api/orders"),
            ("/public/%2e%2E/api", "/api"),
            ("/a/./b/.", "/a/b/"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a%20b", "/a%20b"),
            ("/a%7eb%7E", "/a~b~"),
            ("//admin", "/admin"),
            ("/%61dmin", "/admin"),
            ("/admi%6e/x", "/admin/x"),
            ("/internal/", "/internal/"),
            ("///a//b///", "/a/b/"),
            ("/a%3fb", "/a%3Fb"),
            (
                "/a>b{c}|d^e`f\"g[h]",
                "/a%3Eb%7Bc%7D%7Cd%5Ee%60f%22g%5Bh%5D",
            ),
            ("/a;b=c,d@e:f!$&'()*+", "/a;b=c,d@e:f!$&'()*+"),
            ("/中", "/%E4%B8%AD"),
            ("/中%2e", "/%E4%B8%AD."),
            ("/中/%2e%2e", "/"),
            ("/", "/"),
            ("//", "/"),
        ] {
            assert_eq!(canon(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn refusals() {
        for input in [
            "/public/..%2Fapi",
            "/a%5cb",
            "/a\\b",
            "/a%",
            "/a%4",
            "/a%zz",
            "/a%00",
            "x",
            "",
        ] {
            assert!(canon(input).is_err(), "{input}");
        }
    }

    #[test]
    fn options() {
        let keep = PathOptions {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        };
        assert_eq!(canonical_path(b"/a%2fb//c", &keep).unwrap(), "/a%2Fb//c");
        assert_eq!(canonical_path(b"/a//../b", &keep).unwrap(), "/a/b");
    }

    #[test]
    fn authorities() {
        fn ok(s: &str) -> HostPort<'_> {
            split_authority(s).unwrap()
        }
        assert_eq!(ok("Example.com:8080").host, "Example.com");
        assert_eq!(ok("example.com:8080").port, Some(8080));
        assert_eq!(ok("[::1]:80").host, "[::1]");
        assert_eq!(ok("[::1]").port, None);
        assert_eq!(ok("h:").port, None);
        for bad in [
            "[", "[::1", "[zz]", "a:b", "a:99999", "u@h", "", ":80", "a b", "h:1:2",
        ] {
            assert!(split_authority(bad).is_err(), "{bad}");
        }
    }

    fn req(raw: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", raw, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn targets_and_hosts() {
        let opts = PathOptions::default();
        let mut r = req(b"http://H.example//admin?x=1", &[("host", "other")]);
        canonicalize(&mut r, &opts).unwrap();
        assert_eq!(r.uri.path(), "/admin");
        assert_eq!(r.uri.query(), Some("x=1"));
        assert_eq!(r.raw_path(), b"/admin?x=1");
        assert_eq!(r.headers["host"], "h.example");
        for target in [&b"foo:bar://host/admin"[..], b"x:/admin", b"*"] {
            let mut r = req(target, &[("host", "h")]);
            assert!(canonicalize(&mut r, &opts).is_err());
        }
        let mut r = req(b"/", &[]);
        assert_eq!(canonicalize(&mut r, &opts).unwrap_err().reason, "bad_host");
        // An empty target (Pingora reads it as `/`) leaves a real `/` path.
        let mut r = req(b"", &[("host", "h")]);
        canonicalize(&mut r, &opts).unwrap();
        assert_eq!(r.uri.path(), "/");
        let mut r = req(b"/", &[("host", "a"), ("host", "b")]);
        assert!(canonicalize(&mut r, &opts).is_err());
        let mut r = req(b"/", &[("host", "[")]);
        assert!(canonicalize(&mut r, &opts).is_err());
    }

    #[test]
    fn framing() {
        let opts = PathOptions::default();
        let check = |h: &[(&str, &str)]| canonicalize(&mut req(b"/", h), &opts);
        assert!(check(&[("host", "h"), ("content-length", "5, 5")]).is_err());
        assert!(check(&[
            ("host", "h"),
            ("content-length", "5"),
            ("content-length", "5")
        ])
        .is_err());
        assert_eq!(
            check(&[("host", "h"), ("transfer-encoding", "gzip, chunked")])
                .unwrap_err()
                .status,
            501
        );
        assert!(check(&[("host", "h"), ("transfer-encoding", "chunked, gzip")]).is_err());
        assert!(check(&[("host", "h"), ("transfer-encoding", "chunked")]).is_ok());
        let mut lower = RequestHeader::build("delete", b"/", None).unwrap();
        lower.insert_header("host", "h").unwrap();
        assert!(canonicalize(&mut lower, &opts).is_err());
        let mut trace = RequestHeader::build("TRACE", b"/", None).unwrap();
        trace.insert_header("host", "h").unwrap();
        assert_eq!(canonicalize(&mut trace, &opts).unwrap_err().status, 405);
    }
}
