//! The path canonicaliser and the authority parser on arbitrary bytes: never a panic, and the
//! canonical form is a fixed point (canonicalising it again changes nothing).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stoa_filters::request_target::{canonical_path, split_authority, EscapedSlashes, PathOptions};

fuzz_target!(|data: &[u8]| {
    for opts in [
        PathOptions::default(),
        PathOptions {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Keep,
        },
    ] {
        if let Ok(path) = canonical_path(data, &opts) {
            assert!(path.is_ascii());
            assert_eq!(
                canonical_path(path.as_bytes(), &opts).as_deref(),
                Ok(path.as_str())
            );
            assert!(path.parse::<http::uri::PathAndQuery>().is_ok(), "{path}");
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(hp) = split_authority(text) {
            assert!(!hp.host.is_empty());
        }
    }
});
