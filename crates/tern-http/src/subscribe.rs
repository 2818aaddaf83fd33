//! `GET /api/v1/subscribe?filter=...` (repeatable): a Server-Sent Events
//! stream of the messages matching the filters, from an MQTT subscription
//! of the stream's own (a clean session, acting as the user, so the ACL
//! applies as to any client).
//!
//! Query: `filter` (1 to 32 of them), `qos` (0, the default, 1 or 2: the
//! subscription's maximum QoS), `retained` (`true`, the default: the
//! retained values come first, flagged `"retain": true`; `false`: live
//! messages only).
//!
//! Events:
//! - `event: message`, `data:` the message as JSON ([`crate::json`]);
//! - `event: skipped`, `data: {"skipped": N}`: the reader fell behind by
//!   more than the stream's buffer (`stream_buffer` messages), and the N
//!   oldest messages it had not read were skipped. A slow reader loses
//!   messages, never the stream: it is told how many, before the next
//!   message it gets. (At QoS 1 and 2 nothing is skipped: the broker holds
//!   back, and its queue limit for the session applies. Before the stream's
//!   buffer, the broker's own limit for a connection that does not read,
//!   `max_unwritten_bytes`, applies as to any client: what it drops is
//!   counted in its statistics, not in `skipped`.)
//! - `event: end`, `data: {"reason": ...}`: the last event, when the
//!   broker ends the stream (shutdown, a kick).
//!
//! A comment line every 15 s keeps proxies from closing a quiet stream
//! (the crate's `sse` module writes the events).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State as AxState};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{self, Stream};
use serde_json::json;
use std::collections::VecDeque;
use std::net::SocketAddr;
use tern_broker::policy::ClientInfo;
use tern_codec::{
    QoS, ReasonCode, RetainHandling, SubscribeFilter, SubscriptionOptions, TopicFilter,
};
use tern_tokio::{AsyncClient, AsyncEvent, Events};

use crate::hub::Hub;
use tokio::sync::{broadcast, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use crate::auth::User;
use crate::conn;
use crate::error::ApiError;
use crate::history::api::time_of;
use crate::history::{wall_now, Recorded};
use crate::json::JsonMessage;
use crate::listen::Peer;
use crate::replay::{self, Replay};
use crate::sse;
use crate::State;

/// Filters one stream may have at most.
const MAX_FILTERS: usize = 32;

/// The handler.
pub(crate) async fn subscribe(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(Peer(peer, _)): ConnectInfo<Peer>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = state.authenticate(&headers, peer).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (filters, since) = filters(&query)?;
    let plain: Vec<TopicFilter> = filters.iter().map(|f| f.filter.clone()).collect();
    let history = state.history.clone().filter(|h| h.covers(&plain));
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = match (&history, last_id, since) {
        (Some(_), Some(id), _) => replay::From::After(id),
        (Some(_), None, Some(t)) => replay::From::Time(
            time_of(&t, wall_now()).map_err(|e| ApiError::bad_request(format!("since: {e}")))?,
        ),
        (Some(_), None, None) => replay::From::Now,
        (None, _, Some(_)) => {
            return Err(ApiError::bad_request(
                "since= needs filters whose topics are recorded ([[history]])",
            ))
        }
        (None, _, None) => replay::From::Now,
    };
    let permit = state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::refused(
            ReasonCode::QuotaExceeded,
            format!(
                "too many subscribe streams (at most {})",
                state.config.max_streams
            ),
        )
    })?;
    if let Some(rec) = history {
        return replayed(&state, &user, rec, filters, from, permit).await;
    }
    if filters.iter().all(|f| f.options.qos == QoS::AtMostOnce) {
        return shared(&state, &user, peer, filters, permit).await;
    }
    let (client, events) = conn::open(&state, &user, peer, state.config.stream_buffer, 100).await?;
    let codes = client
        .subscribe(filters)
        .await
        .map_err(|e| conn::connect_error(&e))?;
    if let Some(&code) = codes.iter().find(|c| (**c as u8) >= 0x80) {
        return Err(ApiError::refused(
            code,
            "the broker refused the subscription",
        ));
    }
    let live = Live {
        client,
        events,
        skipped: 0,
        pending: None,
        done: false,
        stop: state.stop.clone(),
        _permit: permit,
    };
    Ok(sse::response(live.into_stream()))
}

/// A QoS 0 stream: the retained values first (its own), then the hub's
/// messages.
async fn shared(
    state: &Arc<State>,
    user: &User,
    peer: SocketAddr,
    filters: Vec<SubscribeFilter>,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let hub = state.hubs.join(state, user, &filters, peer).await?;
    let rx = hub.subscribe();
    let first = retained_events(state, user, &filters).await?;
    let stream = Shared {
        _hub: hub,
        rx,
        pending: first.into(),
        stop: state.stop.clone(),
        done: false,
        _permit: permit,
    };
    Ok(sse::response(stream::unfold(stream, |mut s| async move {
        let e = s.next().await?;
        Some((e, s))
    })))
}

/// The retained values of the filters that ask for them, as events.
async fn retained_events(
    state: &State,
    user: &User,
    filters: &[SubscribeFilter],
) -> Result<Vec<Bytes>, ApiError> {
    let mut first = Vec::new();
    for f in filters {
        if f.options.retain_handling != RetainHandling::SendAtSubscribe {
            continue;
        }
        let client = ClientInfo {
            client_id: String::new(),
            username: user.name.clone(),
        };
        let answer = state
            .broker
            .retained(client, f.filter.clone(), state.config.max_retained)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|code| ApiError::refused(code, "not allowed to read this"))?;
        for m in &answer.messages {
            let data = serde_json::to_string(&JsonMessage::new(&m.message)).unwrap_or_default();
            first.push(sse::frame("message", None, &data));
        }
    }
    Ok(first)
}

/// A stream reading a hub.
struct Shared {
    _hub: Arc<Hub>,
    rx: broadcast::Receiver<Bytes>,
    pending: VecDeque<Bytes>,
    stop: CancellationToken,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

/// At most this many bytes of a hub's messages are taken at a time.
const SHARED_BATCH: usize = 32 * 1024;

impl Shared {
    /// The next events: waits for one, then takes every one that is there
    /// already (so a stream that fell behind waits and is woken once, not
    /// once per message).
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        if self.done {
            return None;
        }
        let got = tokio::select! {
            () = self.stop.cancelled() => return Some(self.end("the broker is shutting down")),
            got = self.rx.recv() => got,
        };
        let first = self.event(got);
        let mut batch: Option<BytesMut> = None;
        while !self.done && batch.as_ref().map_or(first.len(), BytesMut::len) < SHARED_BATCH {
            let more = match self.rx.try_recv() {
                Ok(data) => Ok(data),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    Err(broadcast::error::RecvError::Lagged(n))
                }
                Err(broadcast::error::TryRecvError::Closed) => {
                    Err(broadcast::error::RecvError::Closed)
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
            };
            let e = self.event(more);
            let b = batch.get_or_insert_with(|| {
                let mut b = BytesMut::with_capacity(SHARED_BATCH);
                b.put_slice(&first);
                b
            });
            b.put_slice(&e);
        }
        Some(batch.map_or(first, BytesMut::freeze))
    }

    fn event(&mut self, got: Result<Bytes, broadcast::error::RecvError>) -> Bytes {
        match got {
            Ok(data) => data,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let data = json!({ "skipped": n }).to_string();
                sse::frame("skipped", None, &data)
            }
            Err(broadcast::error::RecvError::Closed) => self.end("the broker ended the stream"),
        }
    }

    fn end(&mut self, reason: &str) -> Bytes {
        self.done = true;
        sse::frame("end", None, &json!({ "reason": reason }).to_string())
    }
}

/// A stream served from the history (every filter names recorded topics):
/// the ACL's verdict on each filter first, then the retained values (on a
/// fresh start), then the records from where the stream starts.
async fn replayed(
    state: &State,
    user: &User,
    rec: Arc<Recorded>,
    filters: Vec<SubscribeFilter>,
    from: replay::From,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    for f in &filters {
        state.may_read(user, &f.filter).await?;
    }
    let first = if matches!(from, replay::From::Now) {
        retained_events(state, user, &filters).await?
    } else {
        Vec::new()
    };
    let plain = filters.into_iter().map(|f| f.filter).collect();
    let replay = Replay::start(rec, plain, from, first, state.stop.clone())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let stream = stream::unfold((replay, permit), |(mut r, permit)| async move {
        let e = r.next().await?;
        Some((e, (r, permit)))
    });
    Ok(sse::response(stream))
}

/// The subscriptions a query asks for.
fn filters(query: &[(String, String)]) -> Result<(Vec<SubscribeFilter>, Option<String>), ApiError> {
    let mut qos = QoS::AtMostOnce;
    let mut since = None;
    let mut retained = true;
    let mut names = Vec::new();
    for (k, v) in query {
        let bad = |what: &str| ApiError::bad_request(format!("{k}={v:?}: {what}"));
        match k.as_str() {
            "filter" => names.push(v),
            "since" => since = Some(v.clone()),
            "qos" => {
                qos = match v.as_str() {
                    "0" => QoS::AtMostOnce,
                    "1" => QoS::AtLeastOnce,
                    "2" => QoS::ExactlyOnce,
                    _ => return Err(bad("0, 1 or 2")),
                }
            }
            "retained" => {
                retained = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {k:?}"
                )))
            }
        }
    }
    if names.is_empty() || names.len() > MAX_FILTERS {
        return Err(ApiError::bad_request(format!(
            "give 1 to {MAX_FILTERS} filters (filter=...)"
        )));
    }
    names
        .into_iter()
        .map(|f| {
            let filter = TopicFilter::new(f).map_err(|e| {
                ApiError::refused(
                    ReasonCode::TopicFilterInvalid,
                    format!("{f:?} is not a topic filter: {e}"),
                )
            })?;
            let mut options = SubscriptionOptions::new(qos);
            if !retained {
                options.retain_handling = RetainHandling::DoNotSend;
            }
            Ok(SubscribeFilter { filter, options })
        })
        .collect::<Result<Vec<_>, ApiError>>()
        .map(|f| (f, since))
}

/// A stream's subscription, as it is read.
struct Live {
    client: AsyncClient,
    events: Events,
    /// Messages the client skipped, as last told.
    skipped: u64,
    /// An event that waits behind a `skipped` one.
    pending: Option<Bytes>,
    done: bool,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl Live {
    fn into_stream(self) -> impl Stream<Item = Bytes> + Send {
        stream::unfold(self, |mut live| async move {
            let event = live.next().await?;
            Some((event, live))
        })
    }

    async fn next(&mut self) -> Option<Bytes> {
        if let Some(e) = self.pending.take() {
            return Some(e);
        }
        if self.done {
            return None;
        }
        loop {
            let e = tokio::select! {
                () = self.stop.cancelled() => return Some(self.end("the broker is shutting down")),
                e = self.events.recv() => e,
            };
            match e {
                Some(AsyncEvent::Message(d)) => {
                    let data =
                        serde_json::to_string(&JsonMessage::new(&d.message)).unwrap_or_default();
                    let event = sse::frame("message", None, &data);
                    let dropped = self.client.dropped();
                    if dropped > self.skipped {
                        let n = dropped - self.skipped;
                        self.skipped = dropped;
                        self.pending = Some(event);
                        let data = json!({ "skipped": n }).to_string();
                        return Some(sse::frame("skipped", None, &data));
                    }
                    return Some(event);
                }
                Some(AsyncEvent::Disconnected(why)) => {
                    return Some(self.end(&format!("the broker ended the stream: {why:?}")));
                }
                Some(_) => {}
                None => return Some(self.end("the broker ended the stream")),
            }
        }
    }

    fn end(&mut self, reason: &str) -> Bytes {
        self.done = true;
        sse::frame("end", None, &json!({ "reason": reason }).to_string())
    }
}
