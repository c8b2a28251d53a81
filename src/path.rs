//! Request path hygiene, applied before any filter runs so the router, the policy and the
//! upstream all judge the same path: dot segments (`/a/../b`, `/./`, and their `%2e` forms)
//! are resolved as RFC 3986 §5.2.4 says, and encoded slashes or backslashes (`%2F`, `%5C`, `\`)
//! — which upstreams disagree about — are refused with 400.

/// `Ok(None)`: the path is fine as is; `Ok(Some(p))`: use `p` instead; `Err`: refuse.
pub fn normalize(path: &str) -> Result<Option<String>, &'static str> {
    let bytes = path.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(None);
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return Err("encoded slashes and backslashes are not allowed in the path");
    }
    let decoded = if lower.contains("%2e") {
        let mut s = String::with_capacity(path.len());
        let mut i = 0;
        while i < path.len() {
            if path[i..].len() >= 3 && path[i..i + 3].eq_ignore_ascii_case("%2e") {
                s.push('.');
                i += 3;
            } else {
                let c = path[i..].chars().next().unwrap_or('\0');
                s.push(c);
                i += c.len_utf8();
            }
        }
        s
    } else {
        path.to_string()
    };
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normalized = format!("/{}", out.join("/"));
    if trailing_slash && !normalized.ends_with('/') {
        normalized.push('/');
    }
    if normalized == path {
        Ok(None)
    } else {
        Ok(Some(normalized))
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize("/a/b"), Ok(None));
        assert_eq!(normalize("/v1.2/file.txt"), Ok(None));
        assert_eq!(
            normalize("/public/../api/orders"),
            Ok(Some("/api/orders".into()))
        );
        assert_eq!(normalize("/public/%2e%2E/api"), Ok(Some("/api".into())));
        assert_eq!(normalize("/a/./b/."), Ok(Some("/a/b/".into())));
        assert_eq!(normalize("/../../etc"), Ok(Some("/etc".into())));
        assert_eq!(normalize("/a/.."), Ok(Some("/".into())));
        assert_eq!(normalize("/a%20b"), Ok(None));
    }

    #[test]
    fn encoded_separators_are_refused() {
        assert!(normalize("/public/..%2Fapi").is_err());
        assert!(normalize("/a%5cb").is_err());
        assert!(normalize("/a\\b").is_err());
    }
}
