//! JSON-RPC 2.0 as MCP uses it: classifying an incoming message (request, notification,
//! response), the standard error codes, and building result and error objects with the right
//! `id` (`null` when the id could not be read).
#![deny(clippy::indexing_slicing, clippy::string_slice)]

use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;

/// One incoming JSON-RPC message.
#[derive(Debug)]
pub enum Incoming {
    /// A request: it expects a response carrying `id`.
    Request {
        id: Value,
        method: String,
        params: Value,
    },
    /// A notification: no id, no response.
    Notification { method: String, params: Value },
    /// A response (or error) the client sends back to a server-to-client request.
    Response,
}

/// Why a message is not valid JSON-RPC: the error object to answer with.
#[derive(Debug)]
pub struct Invalid(pub Value);

/// A valid id is a string or an integer (MCP: never null).
fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// Classify one message, or give the -32600 error object answering it.
pub fn classify(msg: &Value) -> Result<Incoming, Invalid> {
    let Some(obj) = msg.as_object() else {
        return Err(Invalid(error(
            Value::Null,
            INVALID_REQUEST,
            "a JSON-RPC message must be an object",
        )));
    };
    let id = obj.get("id");
    let reply_id = id.filter(|i| valid_id(i)).cloned().unwrap_or(Value::Null);
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(Invalid(error(
            reply_id,
            INVALID_REQUEST,
            "`jsonrpc` must be \"2.0\"",
        )));
    }
    match obj.get("method") {
        Some(Value::String(method)) => {
            let params = obj.get("params").cloned().unwrap_or(Value::Null);
            if !(params.is_null() || params.is_object()) {
                return Err(Invalid(error(
                    reply_id,
                    INVALID_REQUEST,
                    "`params` must be an object",
                )));
            }
            match id {
                None => Ok(Incoming::Notification {
                    method: method.clone(),
                    params,
                }),
                Some(i) if valid_id(i) => Ok(Incoming::Request {
                    id: i.clone(),
                    method: method.clone(),
                    params,
                }),
                Some(_) => Err(Invalid(error(
                    Value::Null,
                    INVALID_REQUEST,
                    "`id` must be a string or an integer",
                ))),
            }
        }
        Some(_) => Err(Invalid(error(
            reply_id,
            INVALID_REQUEST,
            "`method` must be a string",
        ))),
        None if id.is_some() && (obj.contains_key("result") || obj.contains_key("error")) => {
            Ok(Incoming::Response)
        }
        None => Err(Invalid(error(
            reply_id,
            INVALID_REQUEST,
            "neither a request, a notification nor a response",
        ))),
    }
}

/// A JSON-RPC error object.
pub fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// A JSON-RPC result object.
pub fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn code(v: &Value) -> i64 {
        v["error"]["code"].as_i64().unwrap()
    }

    #[test]
    fn classifies_messages() {
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
            Ok(Incoming::Request { .. })
        ));
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"})),
            Ok(Incoming::Notification { .. })
        ));
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "id": "s1", "result": {}})),
            Ok(Incoming::Response)
        ));
    }

    #[test]
    fn invalid_messages_get_32600_with_the_id_when_readable() {
        let e = classify(&json!({"jsonrpc": "1.0", "id": 7, "method": "ping"})).unwrap_err();
        assert_eq!((code(&e.0), e.0["id"].clone()), (INVALID_REQUEST, json!(7)));
        let e = classify(&json!({"jsonrpc": "2.0", "id": null, "method": "ping"})).unwrap_err();
        assert_eq!(
            (code(&e.0), e.0["id"].clone()),
            (INVALID_REQUEST, Value::Null)
        );
        let e = classify(&json!([1])).unwrap_err();
        assert_eq!(code(&e.0), INVALID_REQUEST);
        let e = classify(&json!({"jsonrpc": "2.0", "id": 2, "method": 5})).unwrap_err();
        assert_eq!((code(&e.0), e.0["id"].clone()), (INVALID_REQUEST, json!(2)));
        let e = classify(&json!({"jsonrpc": "2.0", "id": 3, "method": "x", "params": [1]}))
            .unwrap_err();
        assert_eq!(code(&e.0), INVALID_REQUEST);
    }

    #[test]
    fn requests_keep_their_id_and_params() {
        let Ok(Incoming::Request { id, method, params }) = classify(
            &json!({"jsonrpc": "2.0", "id": "a-1", "method": "tools/call", "params": {"name": "t"}}),
        ) else {
            panic!("a request");
        };
        assert_eq!(
            (id, method, params),
            (json!("a-1"), "tools/call".to_string(), json!({"name": "t"}))
        );
        let Ok(Incoming::Request { id, params, .. }) =
            classify(&json!({"jsonrpc": "2.0", "id": u64::MAX, "method": "ping"}))
        else {
            panic!("a request with a large id");
        };
        assert_eq!((id, params), (json!(u64::MAX), Value::Null));
        let Ok(Incoming::Notification { method, params }) = classify(
            &json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}),
        ) else {
            panic!("a notification");
        };
        assert_eq!(
            (method, params),
            (
                "notifications/cancelled".to_string(),
                json!({"requestId": 3})
            )
        );
        assert!(matches!(
            classify(&json!({"jsonrpc": "2.0", "id": 9, "error": {"code": 1, "message": "no"}})),
            Ok(Incoming::Response)
        ));
    }

    #[test]
    fn ids_other_than_strings_and_integers_are_refused() {
        for id in [json!(1.5), json!(true), json!({"a": 1}), json!([1])] {
            let e = classify(&json!({"jsonrpc": "2.0", "id": id, "method": "ping"})).unwrap_err();
            // The id cannot be echoed: it is not one.
            assert_eq!(
                (code(&e.0), e.0["id"].clone()),
                (INVALID_REQUEST, Value::Null),
                "{id}"
            );
        }
        // A response needs an id; a message without method, result or error is nothing.
        for message in [
            json!({"jsonrpc": "2.0", "result": {}}),
            json!({"jsonrpc": "2.0", "id": 4}),
            json!({"jsonrpc": 2.0, "id": 4, "method": "ping"}),
        ] {
            let e = classify(&message).unwrap_err();
            assert_eq!(code(&e.0), INVALID_REQUEST, "{message}");
        }
        let e = classify(&json!({"jsonrpc": "2.0", "id": 4})).unwrap_err();
        assert_eq!(e.0["id"], 4);
    }

    #[test]
    fn result_and_error_objects() {
        assert_eq!(
            result(json!(1), json!({"ok": true})),
            json!({"jsonrpc": "2.0", "id": 1, "result": {"ok": true}})
        );
        assert_eq!(
            error(json!("x"), METHOD_NOT_FOUND, "method not found: y"),
            json!({"jsonrpc": "2.0", "id": "x", "error": {"code": -32601, "message": "method not found: y"}})
        );
        assert_eq!(
            [
                PARSE_ERROR,
                INVALID_REQUEST,
                METHOD_NOT_FOUND,
                INVALID_PARAMS,
                INTERNAL_ERROR
            ],
            [-32700, -32600, -32601, -32602, -32603]
        );
    }
}
