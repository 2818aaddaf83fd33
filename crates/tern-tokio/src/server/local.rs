//! The broker from its own process: in-process connections (MQTT over an
//! in-memory pipe) and direct questions to the core. For adapters that
//! live in the broker's process (the HTTP gateway, a rules engine): a
//! connection is like any other (a CONNECT, the ACL, limits, a session), so
//! an adapter reaches the core through the same inputs and outputs as a
//! client on the network; a question (the retained messages of a filter)
//! is answered by a shard's core, with its policies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tern_broker::policy::ClientInfo;
use tern_broker::{Broker, RetainedAnswer, SessionInfo, Stats};
use tern_codec::{ReasonCode, TopicFilter, TopicName};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};

/// How many bytes each direction of an in-process pipe holds.
const PIPE: usize = 64 * 1024;

/// What the handle asks of the running server.
pub(super) enum Request {
    /// A new in-process connection.
    Connect {
        io: DuplexStream,
        identity: Option<String>,
        trusted: bool,
        peer: SocketAddr,
    },
    /// Something to run on the core of the shards `target` names.
    Run { target: Target, f: OnShard },
    /// The retained messages of a filter.
    Retained {
        client: ClientInfo,
        filter: TopicFilter,
        limit: usize,
        reply: oneshot::Sender<Result<RetainedAnswer, ReasonCode>>,
    },
}

/// What runs on a shard's core, with its clock.
pub(super) type OnShard = Arc<dyn Fn(&mut Broker, Instant) + Send + Sync>;

/// Which shards.
pub(super) enum Target {
    /// Every one.
    All,
    /// The first (every shard keeps every retained message, and passes
    /// changes to them on to the others).
    First,
    /// The one a client id lives on.
    ClientId(String),
}

/// The broker, from its own process: see [`Server::handle`](super::Server::handle).
/// Cheap to clone. Requests made before the server runs wait for it.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerHandle")
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the server has stopped")
}

impl BrokerHandle {
    // Unbounded: requests come from the process itself, each bounded by
    // its caller (an HTTP request, a stream slot), and are taken at once.
    pub(super) fn new() -> (BrokerHandle, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (BrokerHandle { tx }, rx)
    }

    /// A new connection's byte stream: write a CONNECT to it, as to a
    /// socket. `identity`, when given, is the connection's user name,
    /// already authenticated by the caller (as a client certificate's
    /// common name is): the CONNECT's user name and password are not
    /// checked, and the ACL applies to that user. `peer` is the address
    /// logged for it (an HTTP adapter passes its client's).
    ///
    /// The stream ends at once if the server has stopped or is at its
    /// connection limit.
    pub fn connect(&self, identity: Option<String>, peer: SocketAddr) -> io::Result<DuplexStream> {
        self.open(identity, false, peer)
    }

    /// A connection for the server's own adapters (a history recorder):
    /// as [`BrokerHandle::connect`] with `name` as its identity, and
    /// trusted: neither authenticated nor authorized (the ACL does not
    /// apply to it).
    pub fn connect_trusted(&self, name: &str, peer: SocketAddr) -> io::Result<DuplexStream> {
        self.open(Some(name.to_owned()), true, peer)
    }

    fn open(
        &self,
        identity: Option<String>,
        trusted: bool,
        peer: SocketAddr,
    ) -> io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        self.tx
            .send(Request::Connect {
                io: theirs,
                identity,
                trusted,
                peer,
            })
            .map_err(|_| stopped())?;
        Ok(ours)
    }

    /// The retained messages matching `filter` that `client` may read (the
    /// ACL's verdict on subscribing to it), at most `limit`, by topic.
    ///
    /// # Errors
    ///
    /// `Ok(Err(code))`: refused by the ACL. `Err`: the server has stopped.
    pub async fn retained(
        &self,
        client: ClientInfo,
        filter: TopicFilter,
        limit: usize,
    ) -> io::Result<Result<RetainedAnswer, ReasonCode>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Retained {
                client,
                filter,
                limit,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// Runs `f` on the cores of `target` and gathers what each returns.
    async fn ask<T: Send + 'static>(
        &self,
        target: Target,
        f: impl Fn(&mut Broker, Instant) -> T + Send + Sync + 'static,
    ) -> io::Result<Vec<T>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Each shard drops its copy once it ran it: the answers end when
        // the last shard is done.
        let f: OnShard = Arc::new(move |b: &mut Broker, now: Instant| {
            let _ = tx.send(f(b, now));
        });
        self.tx
            .send(Request::Run { target, f })
            .map_err(|_| stopped())?;
        let mut out = Vec::new();
        while let Some(v) = rx.recv().await {
            out.push(v);
        }
        Ok(out)
    }

    /// The sessions by client id, from the first after `after`, at most
    /// `limit`, over every shard.
    pub async fn sessions(
        &self,
        after: Option<String>,
        limit: usize,
    ) -> io::Result<Vec<SessionInfo>> {
        let parts = self
            .ask(Target::All, move |b, now| {
                b.sessions(after.as_deref(), limit, now)
            })
            .await?;
        let mut all: Vec<SessionInfo> = parts.into_iter().flatten().collect();
        all.sort_unstable_by(|a, b| a.client_id.cmp(&b.client_id));
        all.truncate(limit);
        Ok(all)
    }

    /// One session, by client id.
    pub async fn session(&self, client_id: String) -> io::Result<Option<SessionInfo>> {
        let id = client_id.clone();
        let found = self
            .ask(Target::ClientId(client_id), move |b, now| {
                b.session(&id, now)
            })
            .await?;
        Ok(found.into_iter().flatten().next())
    }

    /// Disconnects a client (5.0: DISCONNECT 0x98), and with `discard`
    /// ends its session. Whether it had a session.
    pub async fn kick(&self, client_id: String, discard: bool) -> io::Result<bool> {
        let id = client_id.clone();
        let done = self
            .ask(Target::ClientId(client_id), move |b, now| {
                b.kick(&id, discard, now)
            })
            .await?;
        Ok(done.into_iter().any(|d| d))
    }

    /// Clears a topic's retained message everywhere (as publishing an
    /// empty retained message would, without the ACL). Whether there was
    /// one.
    pub async fn clear_retained(&self, topic: TopicName) -> io::Result<bool> {
        let done = self
            .ask(Target::First, move |b, now| b.clear_retained(&topic, now))
            .await?;
        Ok(done.into_iter().any(|d| d))
    }

    /// The retained messages matching `filter`, with no policy asked: for
    /// the server's own adapters (their configuration under `$tern/`).
    pub async fn retained_trusted(
        &self,
        filter: TopicFilter,
        limit: usize,
    ) -> io::Result<RetainedAnswer> {
        let mut answers = self
            .ask(Target::First, move |b, now| {
                b.retained_matching(&filter, limit, now)
            })
            .await?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// The counters of every shard, summed.
    pub async fn stats(&self) -> io::Result<Stats> {
        let parts = self.ask(Target::All, |b, _| b.stats()).await?;
        Ok(parts.into_iter().fold(Stats::default(), |a, b| a + b))
    }
}
