//! The HTTP surface of a node.
//!
//! | path | file |
//! |---|---|
//! | `POST/OPTIONS /whip/{stream}`, `DELETE/PATCH /whip/{stream}/{session}` | [`whip`] |
//! | `POST/OPTIONS /whep/{stream}`, `DELETE/PATCH /whep/{stream}/{session}` | [`whep`] |
//! | `GET /api/v1/streams[/{stream}]` | [`api`] |
//! | `GET /api/v1/streams/{stream}/snapshot.jpg` | [`snapshot`] |
//! | `GET /hls/{stream}/…` (LL-HLS) | [`hls`] |
//! | `GET /metrics` | [`metrics`] |
//! | `/api/v1/cluster...` | [`cluster`] |
//! | `GET /`, `GET /healthz` | [`page`] |
//!
//! Every refusal is an [`ApiError`]: a status, a plain-text reason, and a count in
//! `cascade_http_rejections_total{endpoint,reason}`.

pub mod api;
pub mod cluster;
pub mod hls;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod recordings;
mod sdp_exchange;
pub mod snapshot;
pub mod tls;
pub mod whep;
pub mod whip;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cascade_protocol::media::WebRtcUnfit;
use cascade_roles::RoleError;
use cascade_roles::origin::StreamRegistry;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::cors::{Any, CorsLayer};

use crate::access::AccessPolicy;

/// Largest request body accepted (an SDP offer is a few KiB).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Streams and sessions.
    pub registry: StreamRegistry,
    /// Renditions of the streams published here, when this node may transcode.
    pub transcoders: Option<cascade_roles::transcoder::Transcoders>,
    /// LL-HLS of the streams published here, packaged on demand.
    pub packagers: cascade_roles::packager::Packagers,
    /// The recordings this node makes and holds.
    pub recordings: cascade_roles::packager::recording::Recordings,
    /// The HLS cache of this node as an edge, fetching from packagers on other nodes.
    pub hls_edge: Arc<hls::edge::HlsEdge>,
    /// Which transcoder on another node feeds each rendition of this node's streams.
    pub rendition_feeds: cascade_roles::origin::renditions::RenditionFeeds,
    /// The WebRTC engines (WHIP and WHEP sessions).
    pub engines: cascade_roles::webrtc::Engines,
    /// Who may publish and play.
    pub access: Arc<AccessPolicy>,
    /// Where events go, and how their delivery is doing.
    pub webhooks: crate::webhooks::Webhooks,
    /// Stream runs and sessions that ended on this node.
    pub history: crate::history::History,
    /// The integrator's publish callback, asked before a WHIP publisher is admitted.
    pub on_publish: Option<Arc<crate::webhooks::on_publish::OnPublish>>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// This node's membership in the cluster: routing and placement.
    pub cluster: crate::cluster::Cluster,
    /// Pulls streams whose origin is another node.
    pub relay: cascade_roles::relay::Relay,
    /// Bearer token of the admin routes, if set.
    pub admin_token: Option<Arc<str>>,
    /// `http` or `https`: what this node serves, and what its redirects to other nodes say
    /// (a cluster's nodes are set up alike).
    pub scheme: &'static str,
}

/// The node's routes.
pub fn router(state: AppState) -> Router {
    // Browser pages on other origins publish and play: allow them, and let them read Location.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::IF_MATCH,
        ])
        .expose_headers([header::LOCATION, header::LINK, header::ETAG]);
    Router::new()
        .merge(page::routes())
        .merge(whip::routes())
        .merge(whep::routes())
        .merge(api::routes())
        .merge(snapshot::routes())
        .merge(hls::routes())
        .merge(recordings::routes())
        .merge(cluster::routes())
        .merge(metrics::routes())
        .merge(openapi::routes())
        .fallback(openapi::not_found)
        .layer(axum::middleware::map_response(openapi::json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(cors)
        .with_state(state)
}

/// The token of an `Authorization: Bearer` header, if the request carries one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Refuses (`401`) a GET of `stream`'s media (snapshot, HLS, recording) without a play
/// token, taken from `Authorization: Bearer` or `?token=`.
pub(crate) fn require_play(
    state: &AppState,
    stream: &cascade_protocol::StreamId,
    headers: &HeaderMap,
    query_token: Option<&str>,
    endpoint: &'static str,
) -> Result<(), ApiError> {
    let token = bearer(headers).or(query_token);
    state
        .access
        .authorize(stream, crate::access::Action::Play, token, endpoint)
        .map_err(|_| {
            ApiError::new(
                endpoint,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!(
                    "stream {stream} needs a play token: Authorization: Bearer <token> or ?token=<token>"
                ),
            )
        })
}

/// Whether the request presents the admin token. False when no admin token is set: an open
/// node has administration open to all, but that never makes anyone an operator who may end
/// other people's sessions.
pub(crate) fn is_operator(state: &AppState, headers: &HeaderMap) -> bool {
    match (state.admin_token.as_deref(), bearer(headers)) {
        (Some(expected), Some(presented)) => {
            cascade_protocol::secret::constant_time_eq(expected.as_bytes(), presented.as_bytes())
        }
        _ => false,
    }
}

/// Refuses an admin route without the admin token (when one is set).
pub(crate) fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
    endpoint: &'static str,
) -> Result<(), ApiError> {
    if state.admin_token.is_none() || is_operator(state, headers) {
        Ok(())
    } else {
        Err(ApiError::new(
            endpoint,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this route needs Authorization: Bearer <admin-token>",
        ))
    }
}

/// A refused request: status, reason for the client, and labels for the rejection metric.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    message: String,
    endpoint: &'static str,
    allow: Option<&'static str>,
}

impl ApiError {
    /// A refusal with a status, a metric reason label and a message for the client.
    pub fn new(
        endpoint: &'static str,
        status: StatusCode,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            endpoint,
            allow: None,
        }
    }

    /// Maps a role's refusal onto HTTP.
    pub fn from_role(endpoint: &'static str, error: RoleError) -> Self {
        let (status, reason) = match &error {
            RoleError::BadOffer(_) => (StatusCode::BAD_REQUEST, "malformed_sdp"),
            RoleError::NoSupportedCodec(_) => (StatusCode::NOT_ACCEPTABLE, "no_supported_codec"),
            RoleError::StreamNotFound(_) => (StatusCode::NOT_FOUND, "unknown_stream"),
            RoleError::PublisherAlreadyLive(_) | RoleError::LiveElsewhere { .. } => {
                (StatusCode::CONFLICT, "publisher_already_live")
            }
            RoleError::BadIngest(_) => (StatusCode::BAD_REQUEST, "bad_ingest"),
            RoleError::UnknownRendition { .. } => (StatusCode::BAD_REQUEST, "unknown_rendition"),
            RoleError::NotAuthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            RoleError::NotForWebRtc { unfit, .. } => match unfit {
                WebRtcUnfit::BFrames => (StatusCode::CONFLICT, "source_has_b_frames"),
                WebRtcUnfit::Codec(_) => {
                    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "codec_needs_transcoder")
                }
            },
            RoleError::SessionNotFound { .. } => (StatusCode::NOT_FOUND, "unknown_session"),
            RoleError::NotSessionOwner { .. } => (StatusCode::FORBIDDEN, "not_session_owner"),
            RoleError::Overloaded(overload) => (StatusCode::SERVICE_UNAVAILABLE, overload.label()),
            RoleError::RecordingConflict(_) => (StatusCode::CONFLICT, "recording_conflict"),
            RoleError::Unavailable(_)
            | RoleError::RecordingStorage(_)
            | RoleError::Bind { .. }
            | RoleError::Trust(_)
            | RoleError::Relay(_)
            | RoleError::Transcoder(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        Self::new(endpoint, status, reason, error.to_string())
    }

    fn with_allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        ::metrics::counter!("cascade_http_rejections_total", "endpoint" => self.endpoint, "reason" => self.reason)
            .increment(1);
        tracing::info!(endpoint = self.endpoint, status = self.status.as_u16(), reason = self.reason, message = %self.message, "request refused");
        let mut response = openapi::error_body(self.status, self.reason, &self.message);
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Overload and a cluster without a leader both pass: try again shortly.
            let seconds = cascade_roles::admission::RETRY_AFTER.as_secs().to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
