//! Header templates: parsing any text (config) and rendering against any request never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pingora_http::RequestHeader;
use stoa_filters::template::Template;
use stoa_filters::RequestCtx;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, value) = text.split_once('\u{0}').unwrap_or((text, ""));
    let Ok(t) = Template::parse(template) else {
        return;
    };
    let mut req = RequestHeader::build("GET", b"/p?q=1&x-tenant=a", None).expect("static request");
    if let Ok(v) = http::HeaderValue::from_str(value) {
        let _ = req.insert_header("x-tenant", v.clone());
        let _ = req.insert_header("host", v);
    }
    let ctx = RequestCtx::new("fuzz".into());
    let _ = t.render_request(&req, &ctx);
});
