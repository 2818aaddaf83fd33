//! Management, for users named as admins (`[http] admins`):
//!
//! | endpoint | |
//! |---|---|
//! | `GET /api/v1/clients?after=ID&limit=N` | sessions by client id: connected, subscriptions, queued and in-flight counts, how long offline |
//! | `GET /api/v1/clients/{id}` | one session (404 if none) |
//! | `DELETE /api/v1/clients/{id}` | disconnect it (5.0: DISCONNECT 0x98); `?session=true` ends its session too |
//! | `DELETE /api/v1/retained/{topic...}` | clear a retained message (204; 404 if there was none) |
//! | `GET /api/v1/stats` | the broker's counters |
//! | `GET /metrics` | the same in the Prometheus text format, with the HTTP side's own |

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tern_broker::{SessionInfo, Stats};
use tern_codec::{ReasonCode, TopicName};

use crate::error::ApiError;
use crate::listen::Peer;
use crate::State;

/// Sessions one listing returns at most.
const MAX_LISTED: usize = 1000;

/// The caller, if an admin.
pub(crate) async fn admin(state: &State, headers: &HeaderMap, peer: Peer) -> Result<(), ApiError> {
    let user = state.authenticate(headers, peer.0).await?;
    if user.admin {
        return Ok(());
    }
    Err(match user.name {
        // Nobody known: ask who.
        None => ApiError::unauthorized("management needs an admin's credentials"),
        Some(_) => ApiError::refused(ReasonCode::NotAuthorized, "management is for admins"),
    })
}

fn unavailable(e: std::io::Error) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// The listing's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/clients`.
pub(crate) async fn clients(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    query: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let Query(p) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = p.limit.unwrap_or(MAX_LISTED).clamp(1, MAX_LISTED);
    let list = state
        .broker
        .sessions(p.after, limit)
        .await
        .map_err(unavailable)?;
    let next = (list.len() == limit).then(|| list.last().map(|s| s.client_id.clone()));
    let clients: Vec<Value> = list.iter().map(session_json).collect();
    Ok(Json(json!({ "clients": clients, "next": next.flatten() })))
}

/// `GET /api/v1/clients/{id}`.
pub(crate) async fn client(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match state.broker.session(id).await.map_err(unavailable)? {
        Some(s) => Ok(Json(session_json(&s))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "no such session")),
    }
}

/// The kick's query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KickParams {
    #[serde(default)]
    session: bool,
}

/// `DELETE /api/v1/clients/{id}`.
pub(crate) async fn kick(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<KickParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin(&state, &headers, peer).await?;
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(p) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match state
        .broker
        .kick(id, p.session)
        .await
        .map_err(unavailable)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::new(StatusCode::NOT_FOUND, "no such session")),
    }
}

/// `DELETE /api/v1/retained/{topic...}`.
pub(crate) async fn clear_retained(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    topic: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin(&state, &headers, peer).await?;
    let Path(topic) = topic.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let topic = TopicName::new(&topic).map_err(|e| {
        ApiError::refused(
            ReasonCode::TopicNameInvalid,
            format!("{topic:?} is not a topic: {e}"),
        )
    })?;
    match state
        .broker
        .clear_retained(topic)
        .await
        .map_err(unavailable)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::new(StatusCode::NOT_FOUND, "no retained message")),
    }
}

/// `GET /api/v1/stats`.
pub(crate) async fn stats(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let s = state.broker.stats().await.map_err(unavailable)?;
    Ok(Json(json!({
        "clients_connected": s.clients_connected,
        "sessions": s.sessions,
        "subscriptions": s.subscriptions,
        "retained": s.retained,
        "messages_received": s.messages_received,
        "messages_sent": s.messages_sent,
        "messages_dropped": s.messages_dropped,
        "bytes_received": s.bytes_received,
        "bytes_sent": s.bytes_sent,
        "http_streams": state.config.max_streams - state.streams.available_permits(),
        "memory_bytes": memory_bytes(),
        "store_bytes": state.config.data_dir.as_deref().map_or(0, dir_bytes),
    })))
}

/// The process's resident memory (Linux: `VmRSS` of /proc/self/status;
/// 0 elsewhere).
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The size of the files in a directory (not below it: the store and the
/// history are files of the data directory).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    })
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub(crate) async fn metrics(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&state, &headers, peer).await?;
    let s = state.broker.stats().await.map_err(unavailable)?;
    let body = prometheus(&s, &state);
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

fn prometheus(s: &Stats, state: &State) -> String {
    let streams = state.config.max_streams - state.streams.available_permits();
    let requests = state.requests.load(Ordering::Relaxed);
    let gauges: [(&str, &str, u64); 5] = [
        (
            "tern_clients_connected",
            "Connections that completed CONNECT.",
            s.clients_connected as u64,
        ),
        (
            "tern_sessions",
            "Sessions, connected or not.",
            s.sessions as u64,
        ),
        (
            "tern_subscriptions",
            "Subscriptions held.",
            s.subscriptions as u64,
        ),
        (
            "tern_retained_messages",
            "Retained messages held.",
            s.retained as u64,
        ),
        (
            "tern_http_streams",
            "Subscribe streams open.",
            streams as u64,
        ),
    ];
    let counters: [(&str, &str, u64); 6] = [
        (
            "tern_messages_received_total",
            "PUBLISH packets received.",
            s.messages_received,
        ),
        (
            "tern_messages_sent_total",
            "PUBLISH packets sent.",
            s.messages_sent,
        ),
        (
            "tern_messages_dropped_total",
            "Messages dropped because a queue was full.",
            s.messages_dropped,
        ),
        (
            "tern_bytes_received_total",
            "Bytes read from clients.",
            s.bytes_received,
        ),
        (
            "tern_bytes_sent_total",
            "Bytes written to clients.",
            s.bytes_sent,
        ),
        ("tern_http_requests_total", "HTTP API requests.", requests),
    ];
    let mut out = String::new();
    for (kind, list) in [("gauge", &gauges[..]), ("counter", &counters[..])] {
        for (name, help, value) in list {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        }
    }
    out
}

fn session_json(s: &SessionInfo) -> Value {
    let subs: Vec<Value> = s
        .subscriptions
        .iter()
        .map(|(f, q)| json!({ "filter": f.as_str(), "qos": *q as u8 }))
        .collect();
    json!({
        "client_id": s.client_id,
        "username": s.username,
        "connected": s.connected,
        "protocol": s.version.to_string(),
        "subscriptions": subs,
        "queued": s.queued,
        "inflight": s.inflight,
        "expires_in_s": s.expires_in.map(|d| d.as_secs()),
        "offline_for_s": s.offline_for.map(|d| d.as_secs()),
    })
}
