//! The REST contract and the one shape of every error.
//!
//! `node/assets/openapi.json` (OpenAPI 3.1) describes every route, served at
//! `/api/v1/openapi.json`; a unit test reads the routes out of this directory's sources and
//! requires the document to have exactly those (method, path) pairs, so that neither can move
//! without the other. Errors are `{"error": code, "message": text}`: [`super::ApiError`]
//! renders that, and [`json_errors`] rewraps what axum itself refuses in plain text (an unknown
//! path, a wrong method, a query or body it cannot parse).

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;

/// The contract, as served.
pub const OPENAPI_JSON: &str = include_str!("../../assets/openapi.json");

/// The largest plain-text refusal [`json_errors`] reads to rewrap (axum's own are short).
const MOST_REWRAPPED: usize = 64 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/openapi.json",
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON) }),
    )
}

/// The error body every refusal has.
pub(crate) fn error_body(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

/// What no route answers.
pub(crate) async fn not_found() -> Response {
    ::metrics::counter!("cascade_http_rejections_total", "endpoint" => "http", "reason" => "not_found")
        .increment(1);
    error_body(StatusCode::NOT_FOUND, "not_found", "no such path")
}

/// Rewraps a refusal that is not JSON (axum's plain-text rejections: 405, a query or body it
/// could not parse) into the error shape, counted as a rejection.
pub(crate) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MOST_REWRAPPED)
        .await
        .unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let code = rejection_code(status);
    ::metrics::counter!("cascade_http_rejections_total", "endpoint" => "http", "reason" => code)
        .increment(1);
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        message
    };
    let mut rewrapped = error_body(status, code, &message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewrapped.headers_mut().append(name, value.clone());
        }
    }
    rewrapped
}

/// The code of a refusal that came without one.
fn rejection_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNAUTHORIZED => "unauthorized",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// (METHOD, path) of every `.route(...)` in this directory's sources (but this file, whose
    /// own route is counted below), with the WHIP and WHEP routes (built with `format!`)
    /// spelled out.
    fn routed() -> BTreeSet<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        let mut sources = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("openapi.rs")
                {
                    sources.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut found = BTreeSet::from([("GET".to_owned(), "/api/v1/openapi.json".to_owned())]);
        for source in &sources {
            for call in source.split(".route(").skip(1) {
                let call = call.trim_start();
                // The route's own parentheses: up to the `)` that closes `.route(`.
                let mut depth = 1;
                let end = call
                    .char_indices()
                    .find(|(_, c)| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map_or(call.len(), |(i, _)| i);
                let call = &call[..end];
                let paths: Vec<String> = if let Some(rest) = call.strip_prefix('"') {
                    vec![rest[..rest.find('"').unwrap()].to_owned()]
                } else if call.starts_with("&format!(\"/{}/{{stream}}/{{session}}\"") {
                    vec![
                        "/whip/{stream}/{session}".into(),
                        "/whep/{stream}/{session}".into(),
                    ]
                } else if call.starts_with("&format!(\"/{}/{{stream}}\"") {
                    vec!["/whip/{stream}".into(), "/whep/{stream}".into()]
                } else if call.starts_with("&format!") {
                    panic!("a route this test cannot read: .route({call})");
                } else {
                    // Another type's `route` method (the SDP exchange's placement), not axum's.
                    continue;
                };
                for method in ["get", "post", "put", "patch", "delete", "options"] {
                    let called = [
                        format!(" {method}("),
                        format!(".{method}("),
                        format!("\n{method}("),
                        format!("({method}("),
                    ];
                    if called.iter().any(|c| call.contains(c.as_str()))
                        || call.contains(&format!("routing::{method}("))
                    {
                        for path in &paths {
                            found.insert((method.to_uppercase(), path.clone()));
                        }
                    }
                }
            }
        }
        found
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                found.insert((method.to_uppercase(), path.clone()));
            }
        }
        found
    }

    #[test]
    fn the_contract_lists_exactly_the_routes_the_node_serves() {
        let routed = routed();
        let documented = documented();
        assert!(routed.len() > 30, "the route reader found {routed:?}");
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty() && unrouted.is_empty(),
            "routes missing from node/assets/openapi.json: {undocumented:?}; documented but not routed: {unrouted:?}"
        );
    }

    #[test]
    fn every_documented_error_is_the_one_error_shape() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI_JSON).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["$ref"], "#/components/responses/Error",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        let error = &doc["components"]["schemas"]["Error"];
        assert_eq!(error["required"], serde_json::json!(["error", "message"]));
    }

    #[tokio::test]
    async fn a_plain_text_refusal_becomes_the_error_shape_with_its_headers() {
        let refused = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET")],
            "Method Not Allowed",
        )
            .into_response();
        let rewrapped = json_errors(refused).await;
        assert_eq!(rewrapped.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(rewrapped.headers()[header::ALLOW], "GET");
        assert_eq!(
            rewrapped.headers()[header::CONTENT_TYPE],
            "application/json"
        );
        let body = axum::body::to_bytes(rewrapped.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "method_not_allowed", "message": "Method Not Allowed"})
        );
        let fine = json_errors((StatusCode::OK, "ok").into_response()).await;
        assert_eq!(
            fine.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
    }
}
