//! Shared subscriptions for QoS 0 streams: the streams of one user on the
//! same filters share one in-process MQTT subscription (a hub). Each
//! message is delivered by the broker once, turned into JSON and an SSE
//! event once, and broadcast to the hub's streams; a thousand dashboards on one topic cost
//! the broker one subscriber, not a thousand.
//!
//! A stream behind by more than the broadcast's capacity (`stream_buffer`
//! messages) skips the oldest and is told how many. The hub's connection
//! acts as the user, so the ACL applies as for a stream of its own; it
//! goes when its last stream does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use tern_codec::{RetainHandling, SubscribeFilter};
use tern_tokio::{AsyncClient, AsyncEvent};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::User;
use crate::conn;
use crate::error::ApiError;
use crate::json::JsonMessage;
use crate::sse;
use crate::State;

/// Messages the hub's connection may hold for its task (which only turns
/// them into JSON): the broker's own limits come first.
const HUB_CAPACITY: usize = 10_000;

/// Who and what a hub subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    user: Option<String>,
    filters: Vec<String>,
}

/// One shared subscription.
pub(crate) struct Hub {
    /// Never read: new readers are made from it. The hub's task holds the
    /// only sender, so its readers see the end when the task ends.
    template: broadcast::Receiver<Bytes>,
    _client: AsyncClient,
    stop: CancellationToken,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Hub {
    /// A new reader of the hub's messages (each an SSE `message` event).
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Bytes> {
        self.template.resubscribe()
    }
}

/// The hubs, by user and filters.
#[derive(Default)]
pub(crate) struct Hubs {
    hubs: Mutex<HashMap<Key, Weak<Hub>>>,
}

impl Hubs {
    /// The hub of `user` on `filters` (QoS 0), made if there is none.
    pub(crate) async fn join(
        &self,
        state: &State,
        user: &User,
        filters: &[SubscribeFilter],
        peer: SocketAddr,
    ) -> Result<Arc<Hub>, ApiError> {
        let mut names: Vec<String> = filters
            .iter()
            .map(|f| f.filter.as_str().to_owned())
            .collect();
        names.sort();
        names.dedup();
        let key = Key {
            user: user.name.clone(),
            filters: names,
        };
        if let Some(hub) = self.lock().get(&key).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        let (client, mut events) = conn::open(state, user, peer, HUB_CAPACITY, 100).await?;
        // Retained values go to each stream as it starts, not through the
        // hub (whose subscription may be older than the stream).
        let subs: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| {
                let mut f = f.clone();
                f.options.retain_handling = RetainHandling::DoNotSend;
                f
            })
            .collect();
        let codes = client
            .subscribe(subs)
            .await
            .map_err(|e| conn::connect_error(&e))?;
        if let Some(&code) = codes.iter().find(|c| c.is_error()) {
            return Err(ApiError::refused(
                code,
                "the broker refused the subscription",
            ));
        }
        let (tx, template) = broadcast::channel(state.config.stream_buffer.max(1));
        let stop = CancellationToken::new();
        let hub = Arc::new(Hub {
            template,
            _client: client,
            stop: stop.clone(),
        });
        tokio::spawn(async move {
            loop {
                let e = tokio::select! {
                    () = stop.cancelled() => return,
                    e = events.recv() => e,
                };
                match e {
                    Some(AsyncEvent::Message(d)) => {
                        let data = serde_json::to_string(&JsonMessage::new(&d.message))
                            .unwrap_or_default();
                        let _ = tx.send(sse::frame("message", None, &data));
                    }
                    Some(AsyncEvent::Disconnected(_)) | None => return,
                    Some(_) => {}
                }
            }
        });
        let mut hubs = self.lock();
        hubs.retain(|_, w| w.strong_count() > 0);
        hubs.insert(key, Arc::downgrade(&hub));
        Ok(hub)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Weak<Hub>>> {
        self.hubs.lock().unwrap_or_else(|e| e.into_inner())
    }
}
