//! Criterion benchmark of shadow mode's contract inference: the UAC document (templates,
//! parameters, merged schemas, confidence) of one API from 100,000 captured samples spread
//! over 8 endpoints, with JSON bodies like a legacy ERP's (ids numeric and UUID, nested
//! objects, arrays, nulls, timestamps). The samples are built in memory: this measures the
//! inference, not SQLite.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serde_json::json;
use stoa_filters::uac::contract::uac_document;
use stoa_filters::uac::store::Sample;

fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let uuid = format!("7f3c9a2e-1b4d-4c8e-9f0a-{:012x}", i);
            let (method, path, query, request, status, response) = match i % 8 {
                0 => ("GET", format!("/users/{i}"), None, None, 200, json!({"id": i, "name": format!("User {i}"), "email": "<email>", "created_at": "2026-11-23T10:00:00Z", "manager": if i % 3 == 0 { json!(null) } else { json!({"id": i / 2}) }})),
                1 => ("GET", format!("/users/{uuid}/orders/{}", i % 1000), None, None, 200, json!({"order_id": i % 1000, "total": 12.5, "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 1}], "status": "paid"})),
                2 => ("GET", "/api/v1/items".to_string(), Some(format!("page={}&size=50", i % 40)), None, 200, json!({"page": i % 40, "items": [{"sku": "A-1", "price": 1.5}, {"sku": "B-2", "price": 3}]})),
                3 => ("POST", "/api/v1/items".to_string(), None, Some(json!({"sku": format!("S-{i}"), "price": 2.5, "tags": ["x"]})), 201, json!({"id": i, "sku": format!("S-{i}")})),
                4 => ("GET", format!("/api/v1/invoices/INV{i:08}"), None, None, 200, json!({"number": format!("INV{i:08}"), "amount": 99.9, "due": "2026-12-01", "paid": i % 2 == 0})),
                5 => ("DELETE", format!("/api/v1/items/{i}"), None, None, 204, json!(null)),
                6 => ("GET", format!("/users/{i}"), None, None, 404, json!({"error": "not found"})),
                _ => ("PUT", format!("/users/{i}/address"), None, Some(json!({"line1": "12 Rue de la Paix", "city": "Paris", "zip": "75002"})), 200, json!({"ok": true})),
            };
            Sample {
                api: "erp".into(),
                at: 1_763_900_000_000 + i as i64,
                method: method.into(),
                path,
                query,
                request_content_type: request.as_ref().map(|_| "application/json".into()),
                request_body: request.map(|r| r.to_string()),
                status,
                response_content_type: (status != 204).then(|| "application/json".into()),
                response_body: (status != 204).then(|| response.to_string()),
                ..Sample::default()
            }
        })
        .collect()
}

fn inference(c: &mut Criterion) {
    let all = samples(100_000);
    let doc = uac_document("erp", &all, 0.8);
    assert_eq!(doc["endpoints"].as_array().map(Vec::len), Some(7), "{doc}");
    let mut group = c.benchmark_group("uac_inference");
    group.sample_size(10);
    group.bench_function("100k_samples_8_endpoints", |b| {
        b.iter(|| black_box(uac_document("erp", &all, 0.8)))
    });
    group.finish();
}

criterion_group!(benches, inference);
criterion_main!(benches);
