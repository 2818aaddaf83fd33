//! The rules over HTTP: `GET /api/v1/rules` (any user: each rule, on or
//! off, when it last fired, how many errors; admins also see its last
//! error, its state and what it waits for),
//! `POST /api/v1/rules/reload` and `PATCH /api/v1/rules/{name}` with
//! `{"enabled": bool}` (admins).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::listen::Peer;
use crate::manage::admin;
use crate::State;

fn rules(state: &State) -> Result<&super::Rules, ApiError> {
    state
        .rules
        .as_ref()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no rules are loaded ([rules] file)"))
}

/// `GET /api/v1/rules`.
pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = state.authenticate(&headers, peer.0).await?;
    let r = rules(&state)?;
    let mut list = serde_json::to_value(r.list()).unwrap_or_default();
    if !user.admin {
        // What the rules hold (topics, client ids, payloads in errors) may
        // be what the ACL keeps from this user: admins only.
        for rule in list.as_array_mut().into_iter().flatten() {
            if let Some(m) = rule.as_object_mut() {
                m.remove("state");
                m.remove("pending");
                if let Some(stats) = m.get_mut("stats").and_then(Value::as_object_mut) {
                    stats.remove("last_error");
                }
            }
        }
    }
    Ok(Json(json!({
        "file": r.file().display().to_string(),
        "admin": user.admin,
        "rules": list,
    })))
}

/// `POST /api/v1/rules/reload`: 200 with the count, or 422 with the error
/// (its file and line) while the old rules go on.
pub(crate) async fn reload(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let r = rules(&state)?;
    match r.reload() {
        Ok(n) => Ok(Json(json!({ "loaded": n }))),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Toggle {
    enabled: bool,
}

/// `PATCH /api/v1/rules/{name}`.
pub(crate) async fn toggle(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Toggle>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let Json(t) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let r = rules(&state)?;
    if !r.set_enabled(&name, t.enabled) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no rule named {name:?}"),
        ));
    }
    Ok(Json(json!({ "name": name, "enabled": t.enabled })))
}
