//! The cluster's HTTP surface.
//!
//! | route | who | what |
//! |---|---|---|
//! | `POST /api/v1/cluster/join` | a joining node, with the join token | signs its certificate, adds it as a Raft learner |
//! | `GET /api/v1/cluster` | anyone | nodes, roles, leader, voters/learners, health, load, placements |
//! | `POST /api/v1/cluster/tokens` | admin | issues another join token |
//! | `POST /api/v1/cluster/nodes/{id}/drain` | admin | no new viewers or streams on the node |
//! | `DELETE /api/v1/cluster/nodes/{id}` | admin | takes the node out of the cluster |
//!
//! Admin routes need `Authorization: Bearer <admin-token>` when `admin-token` is set.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};

use super::{ApiError, AppState};
use crate::cluster::identity::{JoinReply, JoinRequest, generate_token};
use crate::cluster::state::{Command, token_hash};
use crate::cluster::{format_id, parse_id};

const ENDPOINT: &str = "cluster";

pub(crate) fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/api/v1/cluster", get(overview))
        .route("/api/v1/cluster/join", post(join))
        .route("/api/v1/cluster/tokens", post(new_token))
        .route("/api/v1/cluster/nodes/{id}/drain", post(drain))
        .route("/api/v1/cluster/nodes/{id}", delete(remove))
}

async fn overview(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(state.cluster.overview())
}

fn unavailable(message: String) -> ApiError {
    ApiError::new(
        ENDPOINT,
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster_unavailable",
        message,
    )
}

async fn join(
    State(state): State<AppState>,
    body: Result<Json<JoinRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<JoinReply>, ApiError> {
    let Json(request) = body.map_err(|e| {
        ApiError::new(
            ENDPOINT,
            StatusCode::BAD_REQUEST,
            "malformed_join",
            e.body_text(),
        )
    })?;
    let cluster_state = state.cluster.state();
    if !cluster_state
        .join_token_hashes
        .contains(&token_hash(&request.token))
    {
        ::metrics::counter!("cascade_cluster_refusals_total", "reason" => "token").increment(1);
        tracing::warn!(node = %format_id(request.node.id), http = %request.node.http_addr, "refused a join: wrong join token");
        return Err(ApiError::new(
            ENDPOINT,
            StatusCode::FORBIDDEN,
            "wrong_join_token",
            "the join token is not one this cluster accepts",
        ));
    }
    let ca = cluster_state
        .ca
        .as_ref()
        .ok_or_else(|| unavailable("the cluster is still bootstrapping; try again".into()))?;
    let cert_pem = ca.sign(&request.csr_pem, request.node.id).map_err(|e| {
        ApiError::new(
            ENDPOINT,
            StatusCode::BAD_REQUEST,
            "malformed_csr",
            e.to_string(),
        )
    })?;
    let mut record = request.node;
    record.draining = false;
    state.cluster.admit(record).await.map_err(unavailable)?;
    Ok(Json(JoinReply {
        ca_cert_pem: ca.cert_pem.clone(),
        cert_pem,
    }))
}

fn node_id(raw: &str) -> Result<u64, ApiError> {
    parse_id(raw).ok_or_else(|| {
        ApiError::new(
            ENDPOINT,
            StatusCode::BAD_REQUEST,
            "invalid_node_id",
            format!("{raw:?} is not a node id (16 hex digits, as `cascade node list` shows)"),
        )
    })
}

/// The node an admin request names: the caller is an admin, and the node exists.
fn admin_target(state: &AppState, headers: &HeaderMap, raw: &str) -> Result<u64, ApiError> {
    super::require_admin(state, headers, ENDPOINT)?;
    let id = node_id(raw)?;
    if state.cluster.state().nodes.contains_key(&id) {
        Ok(id)
    } else {
        Err(ApiError::new(
            ENDPOINT,
            StatusCode::NOT_FOUND,
            "unknown_node",
            format!("no node {} in this cluster", format_id(id)),
        ))
    }
}

async fn new_token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    super::require_admin(&state, &headers, ENDPOINT)?;
    let token = generate_token();
    state
        .cluster
        .write(Command::AddJoinToken {
            hash: token_hash(&token),
        })
        .await
        .map_err(unavailable)?;
    Ok(Json(serde_json::json!({ "token": token })))
}

async fn drain(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = admin_target(&state, &headers, &raw)?;
    state.cluster.drain(id).await.map_err(unavailable)?;
    tracing::info!(node = %format_id(id), "node draining: no new viewers or streams go to it");
    Ok(Json(
        serde_json::json!({ "node": format_id(id), "draining": true }),
    ))
}

async fn remove(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = admin_target(&state, &headers, &raw)?;
    state
        .cluster
        .remove(id)
        .await
        .map_err(|e| ApiError::new(ENDPOINT, StatusCode::CONFLICT, "cannot_remove", e))?;
    tracing::info!(node = %format_id(id), "node removed from the cluster");
    Ok(Json(
        serde_json::json!({ "node": format_id(id), "removed": true }),
    ))
}
