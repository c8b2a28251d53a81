//! The shadow comparator on two arbitrary answers (bodies split at the first 0xff byte), with
//! every option on: never a panic, and an answer always matches itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stoa_filters::mirror::compare::{Comparator, CompareConfig, Observed};

fuzz_target!(|data: &[u8]| {
    let (a, b) = match data.iter().position(|&x| x == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let cfg = CompareConfig {
        ignore_paths: vec!["$.meta.*".into(), "$.items[*].etag".into()],
        unordered_arrays: vec!["$.items".into(), "$".into()],
        ..CompareConfig::default()
    };
    let comparator = Comparator::build(&cfg).expect("static config");
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    let primary = Observed {
        status: 200,
        headers: &headers,
        body: a,
    };
    let candidate = Observed {
        status: 200,
        headers: &headers,
        body: b,
    };
    let _ = comparator.compare(&primary, &candidate);
    assert!(
        comparator.compare(&primary, &primary).is_empty(),
        "an answer differs from itself"
    );
});
