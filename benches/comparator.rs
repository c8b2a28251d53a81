//! Criterion benchmark of the shadow comparator (`mirror` filter) on realistic JSON answers:
//! an MCP `tools/list` result (25 tools with input schemas), an e-commerce order (nested
//! addresses, 12 line items, timestamps) and a page of 100 user records. Each is compared with
//! a copy whose keys are in another order and whose timestamps moved (a match), and with a
//! copy that differs in one deep field (a mismatch). Throughput counts both bodies' bytes, so
//! it reads as "bytes of answers compared per second", parsing included.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use stoa_filters::mirror::compare::{Comparator, CompareConfig, Observed};

fn tools_list() -> Value {
    let tools: Vec<Value> = (0..25)
        .map(|i| {
            json!({
                "name": format!("crm_tool_{i}"),
                "title": format!("CRM operation number {i}"),
                "description": "Looks up customer records in the CRM by id, email or account number and returns the matching records with their addresses and recent orders.",
                "inputSchema": {
                    "type": "object",
                    "required": ["customer_id"],
                    "properties": {
                        "customer_id": {"type": "string", "format": "uuid", "description": "The customer's id"},
                        "include_orders": {"type": "boolean", "default": false},
                        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
                        "fields": {"type": "array", "items": {"type": "string", "enum": ["name", "email", "address", "orders"]}}
                    }
                },
                "annotations": {"readOnlyHint": i % 2 == 0, "openWorldHint": false}
            })
        })
        .collect();
    json!({"jsonrpc": "2.0", "id": 42, "result": {"tools": tools, "nextCursor": null}})
}

fn order() -> Value {
    let items: Vec<Value> = (0..12)
        .map(|i| {
            json!({
                "sku": format!("SKU-{:06}", 1000 + i),
                "name": format!("Product {i} with a longer marketing name"),
                "quantity": 1 + i % 3,
                "unit_price": 19.99 + i as f64,
                "discount": 0.1,
                "tax_rate": 0.2,
                "added_at": "2026-11-23T09:15:00Z"
            })
        })
        .collect();
    let address = json!({"line1": "12 Rue de la Paix", "line2": null, "city": "Paris",
        "postal_code": "75002", "country": "FR"});
    json!({
        "id": "ord_9f8e7d6c5b4a", "status": "shipped", "currency": "EUR",
        "customer": {"id": "cus_123456", "name": "Ada Lovelace", "email": "ada@example.com",
            "phone": "+33 6 12 34 56 78", "created_at": "2024-01-02T03:04:05Z"},
        "billing_address": address.clone(), "shipping_address": address,
        "items": items,
        "totals": {"subtotal": 402.88, "tax": 80.58, "shipping": 4.9, "total": 488.36},
        "payment": {"method": "card", "last4": "4242", "captured": true, "captured_at": 1763889300},
        "created_at": "2026-11-23T09:14:00Z", "updated_at": "2026-11-23T09:20:11.512Z",
        "tags": ["priority", "gift"], "metadata": {"channel": "web", "campaign": "winter"}
    })
}

fn users_page() -> Value {
    let users: Vec<Value> = (0..100)
        .map(|i| {
            json!({
                "id": i, "username": format!("user{i}"), "email": format!("user{i}@example.com"),
                "active": i % 7 != 0, "score": i as f64 * 1.5,
                "roles": ["reader", "writer"],
                "profile": {"first_name": "Grace", "last_name": "Hopper", "locale": "en-GB"},
                "last_login": "2026-11-22T18:00:00Z", "created_ts": 1700000000 + i
            })
        })
        .collect();
    json!({"page": 1, "per_page": 100, "total": 4213, "users": users})
}

/// The same document written with every object's keys in reverse order and its timestamps
/// moved on (written by hand: `serde_json` may keep keys sorted).
fn reordered(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            out.push('{');
            for (i, (k, v)) in m.iter().rev().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                reordered(v, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                reordered(v, out);
            }
            out.push(']');
        }
        Value::String(s) if s.starts_with("2026-") || s.starts_with("2024-") => {
            out.push_str("\"2026-11-23T10:00:00.125Z\"")
        }
        other => out.push_str(&other.to_string()),
    }
}

fn compare(c: &mut Criterion) {
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    let mut group = c.benchmark_group("shadow_compare");
    let docs = [
        (
            "tools_list",
            tools_list(),
            "/result/tools/24/inputSchema/properties/limit/maximum",
        ),
        ("order", order(), "/items/11/quantity"),
        ("users_page", users_page(), "/users/99/profile/locale"),
    ];
    let cfg = CompareConfig {
        unordered_arrays: vec!["$.result.tools".into()],
        ..CompareConfig::default()
    };
    let plain = CompareConfig::default();
    for unordered in [false, true] {
        let comparator = Comparator::build(if unordered { &cfg } else { &plain }).unwrap();
        for (name, doc, pointer) in &docs {
            if unordered && *name != "tools_list" {
                continue;
            }
            let primary = serde_json::to_vec(doc).unwrap();
            let mut same = String::new();
            reordered(doc, &mut same);
            assert_ne!(same.as_bytes(), primary.as_slice());
            let mut changed = doc.clone();
            *changed.pointer_mut(pointer).unwrap() = json!("changed");
            let changed = serde_json::to_vec(&changed).unwrap();
            let observed = |body: &'static [u8]| Observed {
                status: 200,
                headers: &headers,
                body,
            };
            let primary: &'static [u8] = primary.leak();
            let same: &'static [u8] = same.leak().as_bytes();
            let changed: &'static [u8] = changed.leak();
            assert!(comparator
                .compare(&observed(primary), &observed(same))
                .is_empty());
            assert_eq!(
                comparator
                    .compare(&observed(primary), &observed(changed))
                    .len(),
                1
            );
            let suffix = if unordered { "_unordered" } else { "" };
            group.throughput(Throughput::Bytes((primary.len() + same.len()) as u64));
            group.bench_function(format!("{name}{suffix}_match_{}B", primary.len()), |b| {
                b.iter(|| black_box(comparator.compare(&observed(primary), &observed(same))))
            });
            group.throughput(Throughput::Bytes((primary.len() + changed.len()) as u64));
            group.bench_function(format!("{name}{suffix}_one_difference"), |b| {
                b.iter(|| black_box(comparator.compare(&observed(primary), &observed(changed))))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, compare);
criterion_main!(benches);
