//! The packager's side of HLS fetches from other nodes (ALPN `cascade-hls/1`): each request
//! on a QUIC stream is answered by this node's own HLS routes, marked [`InternalFetch`] so
//! that they serve only what is packaged here (never forward it again) and skip the play
//! token (the edge checked it; the connection is mutual TLS under the cluster CA).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, header};
use cascade_protocol::hls::fetch::{MAX_BODY, MAX_REQUEST, ResponseHead, decode_request};
use tower::ServiceExt;

/// Marks a request that came from another node's HLS edge.
#[derive(Debug, Clone, Copy)]
pub struct InternalFetch;

/// Serves HLS fetches on `connection` until it closes.
pub async fn serve(connection: quinn::Connection, router: Arc<OnceLock<Router>>) {
    let remote = connection.remote_address();
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "HLS fetch connection closed");
                return;
            }
        };
        let router = router.clone();
        tokio::spawn(async move {
            let (head, body) = match recv.read_to_end(MAX_REQUEST + 2).await {
                Ok(bytes) => match decode_request(&bytes) {
                    Ok(path) => answer(&router, &path).await,
                    Err(e) => refusal(400, &e.to_string()),
                },
                Err(e) => refusal(400, &e.to_string()),
            };
            metrics::counter!("cascade_hls_upstream_requests_total", "status" => head.status.to_string())
                .increment(1);
            let _ = send.write_all(&head.encode()).await;
            let _ = send.write_all(&body).await;
            let _ = send.finish();
        });
    }
}

async fn answer(router: &OnceLock<Router>, path: &str) -> (ResponseHead, bytes::Bytes) {
    let Some(router) = router.get() else {
        return refusal(503, "the node is starting");
    };
    let Ok(mut request) = Request::get(path).body(Body::empty()) else {
        return refusal(400, "not a request path");
    };
    request.extensions_mut().insert(InternalFetch);
    let Ok(response) = router.clone().oneshot(request).await;
    let (parts, body) = response.into_parts();
    let text = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let head = ResponseHead {
        status: parts.status.as_u16(),
        content_type: text(header::CONTENT_TYPE),
        cache_control: text(header::CACHE_CONTROL),
    };
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => (head, body),
        Err(e) => refusal(500, &e.to_string()),
    }
}

fn refusal(status: u16, message: &str) -> (ResponseHead, bytes::Bytes) {
    (
        ResponseHead {
            status,
            content_type: "application/json".into(),
            cache_control: "max-age=1".into(),
        },
        bytes::Bytes::from(
            serde_json::json!({"error": "hls_fetch", "message": message}).to_string(),
        ),
    )
}
