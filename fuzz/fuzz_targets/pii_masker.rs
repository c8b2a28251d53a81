//! The PII masker on arbitrary text, query strings, header values and JSON bodies: never a
//! panic, and masking is stable (masking a masked text changes nothing more).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stoa_filters::uac::pii::{mask_text, Masker};

fuzz_target!(|data: &[u8]| {
    let masker = Masker::new(
        &["$.user.ssn".into(), "$.items[*].card".into()],
        &["x-api-key".into()],
    );
    let _ = masker.body(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let once = mask_text(text);
    assert_eq!(mask_text(&once), once, "masking is not stable");
    let _ = masker.query(text);
    let _ = masker.header("authorization", text);
    let _ = masker.header("x-note", text);
});
