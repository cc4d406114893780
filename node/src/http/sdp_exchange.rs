//! The request/response pattern WHIP and WHEP share: POST an SDP offer, get `201 Created` with
//! the answer and a `Location`; DELETE the `Location` to end; PATCH is answered `405`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cascade_protocol::StreamId;
use cascade_roles::RoleError;
use cascade_roles::session::{Client, Ender, SessionKind};
use cascade_roles::webrtc::NegotiatedSession;

use super::{ApiError, AppState};
use crate::access::{Action, Denied};
use crate::cluster::{Route, RouteError, format_id};
use cascade_protocol::cluster::NodeId;
use cascade_protocol::route_pass;

/// Which of the two protocols a request speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    /// `"whip"` or `"whep"`: the path prefix and the metric label.
    pub endpoint: &'static str,
    pub action: Action,
}

impl Exchange {
    fn session_kind(&self) -> SessionKind {
        match self.action {
            Action::Publish => SessionKind::Publisher,
            Action::Play => SessionKind::Viewer,
        }
    }

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
        let bearer = super::bearer(headers);
        state
            .access
            .authorize(&stream, self.action, bearer, self.endpoint)
            .map_err(|denied| {
                // Why a token is not valid is in the node's log and metrics, not here.
                let message = match denied {
                    Denied::MissingToken => format!(
                        "{} to stream {stream} needs an Authorization: Bearer token",
                        self.endpoint.to_uppercase()
                    ),
                    Denied::WrongToken | Denied::Token(_) => format!(
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

    /// The publish callback's verdict on a WHIP publisher: `403` when the platform says no,
    /// `503` when it does not answer and the policy is fail-closed.
    async fn ask_platform(
        &self,
        state: &AppState,
        stream: &StreamId,
        remote: std::net::SocketAddr,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let Some(callback) = &state.on_publish else {
            return Ok(());
        };
        let claims = state.access.claims(super::bearer(headers));
        callback
            .ask(stream, self.endpoint, Some(remote), claims.as_ref())
            .await
            .map_err(|refusal| match refusal {
                crate::webhooks::on_publish::Refusal::Denied(_) => ApiError::new(
                    self.endpoint,
                    StatusCode::FORBIDDEN,
                    "publish_denied",
                    format!("the platform did not authorise publishing stream {stream}"),
                ),
                crate::webhooks::on_publish::Refusal::NoAnswer(_) => ApiError::new(
                    self.endpoint,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "publish_callback_unavailable",
                    "publishing cannot be authorised now; try again later",
                ),
            })
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

    /// Ends a session for whoever holds its `Location` (with the token that opened it, if
    /// one did) or for an operator.
    pub(crate) fn delete(
        &self,
        state: &AppState,
        raw_stream: &str,
        session: &str,
        headers: &HeaderMap,
    ) -> Result<StatusCode, ApiError> {
        let stream = self.stream_id(raw_stream)?;
        let ender = if super::is_operator(state, headers) {
            Ender::Operator
        } else {
            Ender::Holder(super::bearer(headers))
        };
        state
            .registry
            .end_session(&stream, self.session_kind(), session, ender)
            .map_err(|e| ApiError::from_role(self.endpoint, e))?;
        Ok(StatusCode::OK)
    }

    /// Decides where the request is served: `Some` is a `307` to another node. A viewer
    /// served here of a stream whose origin is elsewhere gets the stream pulled first.
    pub(crate) async fn route(
        &self,
        state: &AppState,
        stream: &StreamId,
        query: &RouteQuery,
    ) -> Result<Option<Response>, ApiError> {
        let cluster = &state.cluster;
        let refuse = |error: RouteError| match error {
            RouteError::LiveElsewhere(origin) => ApiError::new(
                self.endpoint,
                StatusCode::CONFLICT,
                "publisher_already_live",
                format!(
                    "stream {stream} already has a live publisher on node {}; end that session first or use another stream id",
                    format_id(origin)
                ),
            ),
            RouteError::NotLive => {
                ApiError::from_role(self.endpoint, RoleError::StreamNotFound(stream.clone()))
            }
            RouteError::Pulled => ApiError::new(
                self.endpoint,
                StatusCode::CONFLICT,
                "stream_is_pulled",
                format!(
                    "stream {stream} is pulled from a camera; remove the pull first (DELETE /api/v1/streams/{stream}) or use another stream id"
                ),
            ),
            RouteError::Unavailable(why) => ApiError::new(
                self.endpoint,
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("the cluster cannot place this request now: {why}"),
            ),
        };
        let route = match self.action {
            Action::Publish => cluster.route_publish(stream).await.map_err(refuse)?,
            Action::Play if self.holds_route_pass(state, stream, query) => Route::Local,
            Action::Play => cluster
                .route_play(stream, query.region.as_deref())
                .map_err(refuse)?,
        };
        if let Route::Redirect { node, addr } = route {
            return Ok(Some(self.redirect(state, stream, query, node, addr)));
        }
        if self.action == Action::Publish {
            // This node may have been pulling the stream as an edge: its viewers stay and
            // now watch the publisher here.
            state.relay.release(stream).await;
        }
        if self.action == Action::Play && cluster.remote_origin(stream).is_some() {
            state
                .relay
                .ensure_pulled(stream)
                .await
                .map_err(|e| ApiError::from_role(self.endpoint, e))?;
        }
        Ok(None)
    }

    /// `307` to `addr` (node `target`), with a route pass so that it serves the request.
    fn redirect(
        &self,
        state: &AppState,
        stream: &StreamId,
        query: &RouteQuery,
        target: NodeId,
        addr: std::net::SocketAddr,
    ) -> Response {
        ::metrics::counter!("cascade_http_redirects_total", "endpoint" => self.endpoint)
            .increment(1);
        let pass = state
            .cluster
            .route_pass_key()
            .map(|key| route_pass::issue(&key, self.endpoint, stream, target, unix_now()))
            .unwrap_or_default();
        let mut location = format!(
            "{}://{addr}/{}/{stream}?routed={pass}",
            state.scheme, self.endpoint
        );
        if let Some(region) = &query.region {
            location.push_str(&format!("&region={region}"));
        }
        if let Some(rendition) = &query.rendition {
            location.push_str(&format!("&rendition={rendition}"));
        }
        let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }

    /// A viewer this node is too full for goes to another edge with room (`307`); with none,
    /// the refusal stands (`503` with `Retry-After`).
    pub(crate) fn elsewhere_when_full(
        &self,
        state: &AppState,
        stream: &StreamId,
        query: &RouteQuery,
        refusal: RoleError,
    ) -> Result<Response, ApiError> {
        if let (Action::Play, RoleError::Overloaded(_)) = (self.action, &refusal)
            && let Some(Route::Redirect { node, addr }) =
                state.cluster.edge_with_room(query.region.as_deref())
        {
            return Ok(self.redirect(state, stream, query, node, addr));
        }
        Err(ApiError::from_role(self.endpoint, refusal))
    }

    /// Whether the request followed a redirect this cluster issued to this node. A missing,
    /// stale or forged pass is counted and the request is routed as any other.
    fn holds_route_pass(&self, state: &AppState, stream: &StreamId, query: &RouteQuery) -> bool {
        let Some(pass) = query.routed.as_deref() else {
            return false;
        };
        let cluster = &state.cluster;
        let verdict = match cluster.route_pass_key() {
            Some(key) => {
                route_pass::verify(&key, self.endpoint, stream, cluster.id(), unix_now(), pass)
            }
            None => Err(route_pass::PassRefused::BadSignature),
        };
        match verdict {
            Ok(()) => true,
            Err(refused) => {
                ::metrics::counter!("cascade_route_pass_refused_total", "reason" => refused.label())
                    .increment(1);
                tracing::info!(%stream, reason = refused.label(), "a routed request's pass was refused; routing it again");
                false
            }
        }
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

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Query parameters of a POST: `region` asks for an edge there; `routed` carries the signed
/// pass of a redirect another node issued (`cascade_protocol::route_pass`), so it is served here.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct RouteQuery {
    region: Option<String>,
    routed: Option<String>,
    /// WHEP: the video rendition the viewer wants (`video/360p`) instead of the default.
    rendition: Option<String>,
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
    use axum::extract::Query;
    use axum::extract::{ConnectInfo, Path, State};
    use axum::routing::{delete, post};
    let post_offer =
        move |State(state): State<AppState>,
              Path(stream): Path<String>,
              Query(route): Query<RouteQuery>,
              ConnectInfo(super::tls::ClientAddr(remote)): ConnectInfo<super::tls::ClientAddr>,
              headers: HeaderMap,
              body: Result<Bytes, BytesRejection>| async move {
            let (stream, offer) = exchange.admit_offer(&state, &stream, &headers, body)?;
            if let Some(redirect) = exchange.route(&state, &stream, &route).await? {
                return Ok(redirect);
            }
            if exchange.action == Action::Publish {
                exchange
                    .ask_platform(&state, &stream, remote, &headers)
                    .await?;
            }
            let client = Client::new(Some(remote), super::bearer(&headers));
            let negotiated = match exchange.action {
                Action::Publish => {
                    cascade_roles::origin::whip::publish(
                        &state.registry,
                        &state.engines,
                        &stream,
                        &offer,
                        client,
                    )
                    .await
                }
                Action::Play => {
                    cascade_roles::edge::whep::play(
                        &state.registry,
                        &state.engines,
                        &stream,
                        &offer,
                        client,
                        route.rendition.clone(),
                    )
                    .await
                }
            };
            match negotiated {
                Ok(negotiated) => Ok(exchange.created(&stream, negotiated)),
                Err(refusal) => exchange.elsewhere_when_full(&state, &stream, &route, refusal),
            }
        };
    let delete_session = move |State(state): State<AppState>,
                               Path((stream, session)): Path<(String, String)>,
                               headers: HeaderMap| async move {
        exchange.delete(&state, &stream, &session, &headers)
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
