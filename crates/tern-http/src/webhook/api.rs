//! `/api/v1/webhooks`, for admins:
//!
//! | endpoint | |
//! |---|---|
//! | `GET /api/v1/webhooks` | every webhook, with its health: delivered, failed, retries, retrying, last error, outbox depth |
//! | `POST /api/v1/webhooks` | adds one (a JSON [`WebhookDef`]); kept in the broker's store, so it outlives a restart (201; 409 if one of the configuration file has that name; 429 beyond 1,000 webhooks) |
//! | `DELETE /api/v1/webhooks/{name}` | removes one added here, and its outbox (204) |
//!
//! A webhook added here is kept as a retained message on
//! `$tern/webhooks/NAME`, which only the broker's own connections may
//! read or write: durable with `--data` like any retained message.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use tern_codec::{Message, QoS, TopicFilter, TopicName};
use tracing::warn;

use super::{WebhookDef, STORED};
use crate::error::ApiError;
use crate::listen::Peer;
use crate::manage::admin;
use crate::State;

/// Webhooks at most (each is a task and a connection of its own).
const MAX_WEBHOOKS: usize = 1000;

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(e.to_string())
}

/// `GET /api/v1/webhooks`.
pub(crate) async fn list(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let hooks: Vec<(WebhookDef, bool, super::Status)> = {
        let running = state
            .webhooks
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = running
            .values()
            .map(|r| {
                let status = r.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (r.def.clone(), r.configured, status)
            })
            .collect();
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    };
    let mut out = Vec::new();
    for (def, configured, status) in hooks {
        // What waits in the broker (the outbox's durable part).
        let queued = state
            .broker
            .session(def.client_id())
            .await
            .map_err(unavailable)?
            .map_or(0, |s| s.queued + s.inflight);
        out.push(json!({
            "name": def.name,
            "filter": def.filter,
            "url": def.url,
            "method": def.method,
            "qos": def.qos,
            "body": def.body,
            "signed": def.secret.is_some(),
            "source": if configured { "config" } else { "api" },
            "delivered": status.counts.delivered,
            "failed": status.counts.failed,
            "retries": status.counts.retries,
            "retrying": status.retrying,
            "paused": def.paused,
            "last_error": status.counts.last_error,
            "outbox": queued.max(status.pending),
        }));
    }
    Ok(Json(json!({ "webhooks": out })))
}

/// `POST /api/v1/webhooks`.
pub(crate) async fn add(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    headers: HeaderMap,
    body: Result<Json<WebhookDef>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    admin(&state, &headers, peer).await?;
    let Json(def) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    def.check().map_err(ApiError::bad_request)?;
    let configured = state
        .webhooks
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&def.name)
        .is_some_and(|r| r.configured);
    if configured {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{:?} is defined in the configuration file", def.name),
        ));
    }
    let (count, replaces) = {
        let running = state
            .webhooks
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (running.len(), running.contains_key(&def.name))
    };
    if count >= MAX_WEBHOOKS && !replaces {
        return Err(ApiError::refused(
            tern_codec::ReasonCode::QuotaExceeded,
            format!("at most {MAX_WEBHOOKS} webhooks"),
        ));
    }
    let stored = serde_json::to_vec(&def).map_err(unavailable)?;
    let _storing = state.webhooks.storing.lock().await;
    store(&state, &def.name, stored).await?;
    state
        .webhooks
        .start(def.clone(), false)
        .map_err(ApiError::bad_request)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": def.name, "filter": def.filter, "url": def.url })),
    ))
}

/// `DELETE /api/v1/webhooks/{name}`.
pub(crate) async fn remove(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    admin(&state, &headers, peer).await?;
    let Path(name) = name.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let _storing = state.webhooks.storing.lock().await;
    let configured = match state
        .webhooks
        .running
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
    {
        None => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such webhook")),
        Some(r) => r.configured,
    };
    if configured {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{name:?} is defined in the configuration file"),
        ));
    }
    let def = state.webhooks.stop(&name);
    store(&state, &name, Vec::new()).await?;
    if let Some(def) = def {
        // Its outbox goes with it.
        state
            .broker
            .kick(def.client_id(), true)
            .await
            .map_err(unavailable)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pause {
    paused: bool,
}

/// `PATCH /api/v1/webhooks/{name}` with `{"paused": bool}`: a paused
/// webhook delivers nothing and holds what comes in its outbox. Kept with
/// the definition of a webhook added through the API (so across
/// restarts); for one of the configuration file, until the broker stops.
pub(crate) async fn pause(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Json<Pause>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    admin(&state, &headers, peer).await?;
    let Json(p) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let _storing = state.webhooks.storing.lock().await;
    let stored = {
        let mut running = state
            .webhooks
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let r = running
            .get_mut(&name)
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such webhook"))?;
        r.def.paused = p.paused;
        r.paused.send_replace(p.paused);
        (!r.configured).then(|| r.def.clone())
    };
    if let Some(def) = stored {
        let json = serde_json::to_vec(&def).map_err(unavailable)?;
        store(&state, &name, json).await?;
    }
    Ok(Json(json!({ "name": name, "paused": p.paused })))
}

/// Keeps (or, empty, forgets) a webhook's definition, durably: a retained
/// QoS 1 message from the broker's own connection.
async fn store(state: &State, name: &str, def: Vec<u8>) -> Result<(), ApiError> {
    let topic = TopicName::new(&format!("{STORED}{name}")).map_err(unavailable)?;
    let client = state.trusted_client().await?;
    let m = Message::new(topic, def)
        .with_qos(QoS::AtLeastOnce)
        .with_retain(true);
    match client.publish(m).await {
        Ok(code) if !code.is_error() => Ok(()),
        other => Err(unavailable(format!(
            "the webhook was not stored: {other:?}"
        ))),
    }
}

/// Starts the webhooks added through the API in an earlier run.
pub(crate) async fn restore(state: Arc<State>) {
    let filter = TopicFilter::new(&format!("{STORED}+")).expect("a valid filter");
    let stored = match state.broker.retained_trusted(filter, 10_000).await {
        Ok(a) => a.messages,
        Err(e) => {
            warn!(error = %e, "webhooks added through the API cannot be read");
            return;
        }
    };
    for m in stored {
        match serde_json::from_slice::<WebhookDef>(&m.payload) {
            Ok(def) => {
                let taken = state
                    .webhooks
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(&def.name);
                if taken {
                    warn!(webhook = %def.name, "a webhook of the configuration file has this name: the one added through the API is not started");
                } else if let Err(e) = state.webhooks.start(def, false) {
                    warn!(error = %e, "a stored webhook cannot start");
                }
            }
            Err(e) => {
                warn!(topic = %m.topic.as_str(), error = %e, "a stored webhook cannot be read")
            }
        }
    }
}
