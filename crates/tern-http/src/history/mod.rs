//! The history: a recorder that keeps the messages of the configured
//! topics in the history file (`tern_store::history`), and what reads it
//! (the history endpoint, streams that resume).
//!
//! The recorder is an in-process MQTT client of the broker's own: a
//! trusted connection (the ACL does not limit what it records; readers
//! are checked when they read) with a persistent session, `$tern/history`,
//! subscribed at QoS 1 to every rule's filter. A message is acknowledged
//! once it is in the history file, so what the broker accepted while the
//! recorder was busy or away is recorded when it is back (its session and
//! subscriptions are restored with the broker's store, before the broker
//! listens; only at the very first start, or for a new rule, is there a
//! moment before its SUBACK when a message would not be recorded). Each
//! batch is one durable write; then its records go to the live streams.

pub mod api;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::FutureExt;
use tern_client::ClientConfig;
use tern_codec::{QoS, RetainHandling, SubscribeFilter, SubscriptionOptions, TopicFilter};
use tern_store::history::{covers, History, Record, Rule};
use tern_tokio::{
    AsyncClient, AsyncEvent, Backoff, BrokerHandle, ClientOptions, Events, Transport,
};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// Where the history is kept, and what is recorded.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// The history file (`history.redb` in the data directory).
    pub path: PathBuf,
    /// What is recorded, for how long.
    pub rules: Vec<Rule>,
}

/// The recorder's session.
const CLIENT_ID: &str = "$tern/history";
/// Messages written in one batch at most.
const BATCH: usize = 1000;
/// Records waiting for slow live streams (a stream further behind reads
/// the file instead).
const LIVE: usize = 4096;
/// How often old messages are forgotten.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// The history, shared by the recorder and its readers.
pub(crate) struct Recorded {
    pub(crate) file: Arc<RwLock<History>>,
    pub(crate) live: broadcast::Sender<Arc<Record>>,
}

impl Recorded {
    /// Opens the file. Outside a runtime's blocking pool: called at start.
    pub(crate) fn open(config: &HistoryConfig) -> std::io::Result<Recorded> {
        let h = History::open(&config.path, config.rules.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Recorded {
            file: Arc::new(RwLock::new(h)),
            live: broadcast::channel(LIVE).0,
        })
    }

    /// Whether every topic of every filter is recorded.
    pub(crate) fn covers(&self, filters: &[TopicFilter]) -> bool {
        let h = self.file.read().unwrap_or_else(|e| e.into_inner());
        filters
            .iter()
            .all(|f| h.rules().iter().any(|r| covers(&r.filter, f)))
    }

    /// Runs `f` on the file, off the runtime's threads.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&History) -> T + Send + 'static,
    ) -> std::io::Result<T> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&file.read().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(std::io::Error::other)
    }

    /// Starts recording: the recorder's connection and its task, and the
    /// expiry of old messages.
    pub(crate) fn start(self: &Arc<Self>, broker: &BrokerHandle) {
        let rules = self
            .file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .rules()
            .to_vec();
        if rules.is_empty() {
            return;
        }
        let mut config = ClientConfig::new(CLIENT_ID);
        config.clean_start = false;
        config.session_expiry_interval = u32::MAX;
        config.manual_ack = true;
        config.keep_alive = Duration::ZERO;
        let options = ClientOptions {
            config,
            transport: Transport::Local {
                broker: broker.clone(),
                identity: Some(CLIENT_ID.to_owned()),
                peer: SocketAddr::from(([127, 0, 0, 1], 0)),
                trusted: true,
            },
            reconnect: Some(Backoff::default()),
            capacity: BATCH,
            drop_oldest: false,
            connect_timeout: Duration::from_secs(10),
        };
        let (client, events) = match AsyncClient::start(options) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "history: the recorder cannot start");
                return;
            }
        };
        let filters: Vec<SubscribeFilter> = rules
            .iter()
            .map(|r| SubscribeFilter {
                filter: r.filter.clone(),
                options: SubscriptionOptions {
                    retain_handling: RetainHandling::DoNotSend,
                    ..SubscriptionOptions::new(QoS::AtLeastOnce)
                },
            })
            .collect();
        info!(rules = rules.len(), "history: recording");
        tokio::spawn(record(self.clone(), client, events, filters));
        let me = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EXPIRE_EVERY);
            loop {
                every.tick().await;
                let file = me.file.clone();
                let gone = tokio::task::spawn_blocking(move || {
                    file.write()
                        .unwrap_or_else(|e| e.into_inner())
                        .expire(wall_now())
                })
                .await;
                if let Ok(Err(e)) = gone {
                    warn!(error = %e, "history: expiry failed");
                }
            }
        });
    }
}

/// The wall clock, milliseconds since the Unix epoch: the adapter is where
/// it is read.
#[allow(clippy::disallowed_methods)]
pub(crate) fn wall_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The recorder's task: subscribe (again after every reconnection that
/// lost the session), then write what comes in batches.
async fn record(
    rec: Arc<Recorded>,
    client: AsyncClient,
    mut events: Events,
    filters: Vec<SubscribeFilter>,
) {
    loop {
        let Some(first) = events.recv().await else {
            return;
        };
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        take(first, &client, &filters, &mut batch, &mut acks);
        while batch.len() < BATCH {
            match events.recv().now_or_never() {
                Some(Some(e)) => take(e, &client, &filters, &mut batch, &mut acks),
                _ => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let file = rec.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            file.write()
                .unwrap_or_else(|e| e.into_inner())
                .append(batch)
        })
        .await;
        match written {
            Ok(Ok(records)) => {
                for r in records {
                    let _ = rec.live.send(Arc::new(r));
                }
            }
            Ok(Err(e)) => warn!(error = %e, "history: a batch was not recorded"),
            Err(e) => warn!(error = %e, "history: the writer failed"),
        }
        for id in acks {
            client.ack(id);
        }
    }
}

/// One event of the recorder's connection: a message joins the batch; a
/// (re)connection subscribes.
fn take(
    e: AsyncEvent,
    client: &AsyncClient,
    filters: &[SubscribeFilter],
    batch: &mut Vec<(tern_codec::Message, u64)>,
    acks: &mut Vec<tern_client::AckId>,
) {
    match e {
        AsyncEvent::Message(d) => {
            batch.push((d.message, wall_now()));
            acks.extend(d.ack);
        }
        AsyncEvent::Connected { .. } => {
            // Every time: the rules may have changed since the session
            // was made. Retained messages are not sent again for it.
            let (client, filters) = (client.clone(), filters.to_vec());
            tokio::spawn(async move {
                match client.subscribe(filters).await {
                    Ok(codes) if codes.iter().all(|c| !c.is_error()) => {
                        info!("history: subscribed");
                    }
                    other => warn!(?other, "history: cannot subscribe"),
                }
            });
        }
        _ => {}
    }
}
