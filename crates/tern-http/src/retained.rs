//! `GET /api/v1/retained/{filter...}`: the retained messages matching a
//! topic or a filter (`#` is written `%23` in a URL), as the user may read
//! them (the ACL's verdict on subscribing to the filter), by topic, at
//! most `limit` (default and most: the configured `max_retained`).
//!
//! ```json
//! {"messages": [{"topic": "home/hall/temp", "payload": "21.5", "qos": 1, "retain": true}],
//!  "truncated": false}
//! ```

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tern_broker::policy::ClientInfo;
use tern_codec::{ReasonCode, TopicFilter};

use crate::error::ApiError;
use crate::json::JsonMessage;
use crate::listen::Peer;
use crate::State;

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Params {
    limit: Option<usize>,
}

/// The handler.
pub(crate) async fn retained(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    filter: Result<Path<String>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = state.authenticate(&headers, peer).await?;
    let Path(filter) = filter.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(params) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = TopicFilter::new(&filter).map_err(|e| {
        ApiError::refused(
            ReasonCode::TopicFilterInvalid,
            format!("{filter:?} is not a topic filter: {e}"),
        )
    })?;
    let limit = params
        .limit
        .unwrap_or(state.config.max_retained)
        .min(state.config.max_retained);
    let client = ClientInfo {
        client_id: String::new(),
        username: user.name.clone(),
    };
    let answer = state
        .broker
        .retained(client, filter, limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|code| ApiError::refused(code, "not allowed to read this filter"))?;
    let messages: Vec<JsonMessage<'_>> = answer
        .messages
        .iter()
        .map(|m| JsonMessage::new(&m.message))
        .collect();
    Ok(Json(json!({
        "messages": messages,
        "truncated": answer.truncated,
    })))
}
