//! The request/response pattern WHIP and WHEP share: POST an SDP offer, get `201 Created` with
//! the answer and a `Location`; DELETE the `Location` to end; PATCH is answered `405`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cascade_protocol::StreamId;
use cascade_roles::RoleError;
use cascade_roles::webrtc::NegotiatedSession;

use super::{ApiError, AppState};
use crate::access::{Action, Denied};

/// Which of the two protocols a request speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    /// `"whip"` or `"whep"`: the path prefix and the metric label.
    pub endpoint: &'static str,
    pub action: Action,
}

impl Exchange {
    pub(crate) fn stream_id(&self, raw: &str) -> Result<StreamId, ApiError> {
        StreamId::parse(raw).map_err(|e| {
            ApiError::new(
                self.endpoint,
                StatusCode::BAD_REQUEST,
                "invalid_stream_id",
                e.to_string(),
            )
        })
    }

    /// Checks everything about a POST before the offer is negotiated.
    pub(crate) fn admit_offer(
        &self,
        state: &AppState,
        raw_stream: &str,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<(StreamId, String), ApiError> {
        let stream = self.stream_id(raw_stream)?;
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        state
            .access
            .check(&stream, self.action, bearer)
            .map_err(|denied| {
                let message = match denied {
                    Denied::MissingToken => format!(
                        "{} to stream {stream} needs an Authorization: Bearer token",
                        self.endpoint.to_uppercase()
                    ),
                    Denied::WrongToken => format!(
                        "the Bearer token is not valid for {} to stream {stream}",
                        self.endpoint.to_uppercase()
                    ),
                };
                ApiError::new(
                    self.endpoint,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    message,
                )
            })?;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .trim()
            .to_ascii_lowercase()
            .starts_with("application/sdp")
        {
            return Err(ApiError::new(
                self.endpoint,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "wrong_content_type",
                format!(
                    "send the SDP offer with Content-Type: application/sdp (got {content_type:?})"
                ),
            ));
        }
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    self.endpoint,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the offer is larger than {} bytes", super::MAX_BODY_BYTES),
                )
            } else {
                ApiError::new(
                    self.endpoint,
                    rejection.status(),
                    "unreadable_body",
                    rejection.body_text(),
                )
            }
        })?;
        let offer = String::from_utf8(body.to_vec()).map_err(|_| {
            ApiError::from_role(
                self.endpoint,
                RoleError::BadOffer("the offer is not UTF-8 text".into()),
            )
        })?;
        Ok((stream, offer))
    }

    /// `201 Created` with the answer and where the session lives.
    pub(crate) fn created(&self, stream: &StreamId, negotiated: NegotiatedSession) -> Response {
        let location = format!("/{}/{}/{}", self.endpoint, stream, negotiated.session);
        let mut response = (StatusCode::CREATED, negotiated.answer_sdp).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/sdp"),
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            headers.insert(header::LOCATION, value);
        }
        response
    }

    pub(crate) fn delete(
        &self,
        state: &AppState,
        raw_stream: &str,
        session: &str,
    ) -> Result<StatusCode, ApiError> {
        let stream = self.stream_id(raw_stream)?;
        state
            .registry
            .end_session(&stream, session)
            .map_err(|e| ApiError::from_role(self.endpoint, e))?;
        Ok(StatusCode::OK)
    }

    /// Trickle ICE and ICE restarts are not needed with an ICE-lite server: RFC 9725 lets us say 405.
    pub(crate) fn patch(&self) -> ApiError {
        ApiError::new(
            self.endpoint,
            StatusCode::METHOD_NOT_ALLOWED,
            "patch_not_supported",
            "trickle ICE is not needed: this server is ICE-lite and lists its candidate in the answer",
        )
        .with_allow("DELETE")
    }
}

/// `OPTIONS` on the POST resource: advertise what a client may send.
pub(crate) fn options() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("accept-post", HeaderValue::from_static("application/sdp"));
    response
}

/// The routes of one exchange: POST/OPTIONS on the stream, DELETE/PATCH on the session.
pub(crate) fn routes(exchange: &'static Exchange) -> axum::Router<AppState> {
    use axum::extract::{ConnectInfo, Path, State};
    use axum::routing::{delete, post};
    let post_offer = move |State(state): State<AppState>,
                           Path(stream): Path<String>,
                           ConnectInfo(remote): ConnectInfo<SocketAddr>,
                           headers: HeaderMap,
                           body: Result<Bytes, BytesRejection>| async move {
        let (stream, offer) = exchange.admit_offer(&state, &stream, &headers, body)?;
        let remote = Some(remote);
        let negotiated = match exchange.action {
            Action::Publish => {
                cascade_roles::origin::whip::publish(&state.registry, &stream, &offer, remote).await
            }
            Action::Play => {
                cascade_roles::edge::whep::play(&state.registry, &stream, &offer, remote).await
            }
        }
        .map_err(|e| ApiError::from_role(exchange.endpoint, e))?;
        Ok::<_, ApiError>(exchange.created(&stream, negotiated))
    };
    let delete_session =
        move |State(state): State<AppState>, Path((stream, session)): Path<(String, String)>| async move {
            exchange.delete(&state, &stream, &session)
        };
    axum::Router::new()
        .route(
            &format!("/{}/{{stream}}", exchange.endpoint),
            post(post_offer).options(|| async { options() }),
        )
        .route(
            &format!("/{}/{{stream}}/{{session}}", exchange.endpoint),
            delete(delete_session).patch(move || async move { exchange.patch() }),
        )
}
