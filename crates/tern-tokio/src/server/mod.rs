//! The broker server: listeners, shards, and the TLS/WebSocket
//! connection tasks.
//!
//! ```text
//! plain TCP listeners --polled by every shard--> shard threads (a mio::Poll
//!     and a tern_broker::Broker each): a new connection is read until its
//!     CONNECT is whole, and its client id picks the shard; the accepting
//!     shard keeps it, or hands the socket and the bytes read to that
//!     shard's inbox
//! TLS / WebSocket listeners --> a tokio task per connection: handshake,
//!     first packet, then a small future sharing a Link with its shard
//! shard <--the Router's Forwards--> other shards
//! $SYS task: sums the shards' Stats, has each shard publish them
//! ```
//!
//! The rooms: `config` (what the server runs, the policies), `accept`
//! (admission: rate, connection limit, which shard; the CONNECT probe),
//! `inbox` (what crosses into a shard from other threads), `shard` (a
//! shard's thread: its poll loop, its core, the router; its plain TCP
//! connections in `shard::native`), `link` (TLS and WebSocket connection
//! tasks), `write` (vectored writes and what waits for a slow
//! reader), `sys` (`$SYS`).
//!
//! Backpressure both ways: a connection may have at most
//! `max_packet_size + READ_CHUNK` bytes handed to its shard and not yet
//! consumed by the core (its read credit, or for a plain TCP connection
//! its unconsumed input), so a connection whose input the core does not
//! read (a slow consumer, a pending decision) stops being read; and the
//! core stops producing for a connection whose writes are not reported
//! done (`Config::max_unwritten_bytes`).

mod accept;
mod config;
mod inbox;
mod link;
mod local;
mod persist;
mod shard;
mod sys;
mod write;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::transport::TlsSettings;

use accept::ConnConfig;
pub use config::{CredentialCheck, PolicyFactory, ServerConfig};
use inbox::{ShardTx, ToShard};
use link::ConnTask;
pub use local::BrokerHandle;
pub use persist::Persistence;

/// Bytes read from a socket at a time, at most.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// A bound, not yet running, broker server.
pub struct Server {
    pub(super) listeners: Vec<(TcpListener, Kind)>,
    pub(super) config: ServerConfig,
    local: BrokerHandle,
    local_rx: tokio::sync::mpsc::UnboundedReceiver<local::Request>,
}

/// What a listener speaks.
#[derive(Clone)]
pub(super) enum Kind {
    Tcp,
    Tls(TlsSettings),
    Ws(String),
}

impl Kind {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls(_) => "tls",
            Kind::Ws(_) => "ws",
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addrs", &self.local_addrs().ok())
            .finish_non_exhaustive()
    }
}

/// One shard per core but one: the kernel's network processing (half the
/// work of a broker, in the profiles) and the rest of the machine keep a
/// core, and a shard that forwards to another pays a thread wake-up per
/// message when load is light.
pub(super) fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The clock, for the core's `now`: the adapter is where it is read.
#[allow(clippy::disallowed_methods)]
pub(super) fn now() -> Instant {
    Instant::now()
}

/// The wall clock in milliseconds since the Unix epoch, for deadlines that
/// outlive the process.
#[allow(clippy::disallowed_methods)]
pub(super) fn wall_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Tells every shard to stop when dropped.
pub(super) struct StopShards(Arc<Vec<ShardTx>>);

impl Drop for StopShards {
    fn drop(&mut self) {
        for tx in self.0.iter() {
            let _ = tx.send(ToShard::Stop);
        }
    }
}

impl Server {
    /// Binds every listener of `config`.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        let mut listeners = Vec::new();
        let all = config
            .tcp
            .iter()
            .map(|a| (*a, Kind::Tcp))
            .chain(config.tls.iter().map(|(a, t)| (*a, Kind::Tls(t.clone()))))
            .chain(config.ws.iter().map(|(a, p)| (*a, Kind::Ws(p.clone()))));
        for (addr, kind) in all {
            let l = TcpListener::bind(addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr} ({}): {e}", kind.name()),
                )
            })?;
            listeners.push((l, kind));
        }
        let (local, local_rx) = BrokerHandle::new();
        Ok(Server {
            listeners,
            config,
            local,
            local_rx,
        })
    }

    /// Opens in-process connections to this server (once it runs; those
    /// opened before wait for it): for adapters in the same process, such
    /// as an HTTP gateway.
    pub fn handle(&self) -> BrokerHandle {
        self.local.clone()
    }

    /// The addresses listened on (with the ports the OS chose for port 0).
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|(l, _)| l.local_addr()).collect()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stop
    /// accepting, DISCONNECT 0x8B to 5.0 clients, wills published, writes
    /// flushed (up to `shutdown_grace`).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let n = self.shard_count();
        let live = Arc::new(Live::default());
        let (txs, inboxes) = shard::inboxes(n)?;
        let txs = Arc::new(txs);
        // Shards stop with the server, even when its future is dropped.
        let _stop = StopShards(txs.clone());
        let conn_cfg = Arc::new(ConnConfig::new(&self.config));
        // The stored state is back before anyone is told the broker listens.
        let (restored, writer) = self.restore(n, &txs, &conn_cfg)?;
        for (l, kind) in &self.listeners {
            info!(kind = kind.name(), addr = %l.local_addr()?, "listener");
        }
        info!(addrs = ?self.local_addrs()?, shards = n, "tern broker listening");
        // Plain TCP listeners are polled by every shard; the others are
        // accepted by tokio tasks.
        let mut tcp = Vec::new();
        let mut others = Vec::new();
        for (l, kind) in self.listeners {
            match kind {
                Kind::Tcp => tcp.push(l.into_std()?),
                other => others.push((l, other)),
            }
        }
        let shared = shard::Shared {
            cfg: conn_cfg.clone(),
            peers: txs.clone(),
            router: shard::router(n, self.config.broker.hash_seed),
            runtime: tokio::runtime::Handle::current(),
            writer: writer.clone(),
        };
        for ((i, inbox), restored) in inboxes.into_iter().enumerate().zip(restored) {
            shard::spawn(i, inbox, restored, &self.config, &tcp, &shared, &live)?;
        }
        let sys = self
            .config
            .broker
            .sys_interval
            .map(|every| tokio::spawn(sys::publish(txs.clone(), every)));
        let (mut accepts, mut conn_rx) = link::accept(others);
        let mut local_rx = self.local_rx;
        // The server's own handle: in-process connections end with it.
        drop(self.local);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                // No tokio listeners: the channel is closed at once, and
                // this branch is disabled.
                Some((stream, peer, kind)) = conn_rx.recv() => {
                    if !conn_cfg.admit(&peer) {
                        continue;
                    }
                    let (txs, cfg) = (txs.clone(), conn_cfg.clone());
                    tokio::spawn(ConnTask::new(stream, peer, kind, txs, cfg, &live));
                }
                Some(r) = local_rx.recv() => local_request(r, &txs, &conn_cfg, &live),
            }
        }
        info!("shutting down");
        accepts.abort_all();
        if let Some(s) = sys {
            s.abort();
        }
        shard::shut_down(&txs).await;
        stop_writer(writer).await;
        // Every connection has `shutdown_grace` to flush; one still at it
        // then is left to the runtime.
        let _ = tokio::time::timeout(self.config.shutdown_grace, live.idle()).await;
        drop(txs);
        info!("stopped");
        Ok(())
    }
}

impl Server {
    /// How many shards: the configured count (0: one per core), and one
    /// with persistence. A message forwarded to another shard is stored in
    /// that shard's batch, and its publisher's acknowledgement does not
    /// wait for it yet: with one shard an acknowledged message is never
    /// lost (a kill -9 between two shards' commits lost some).
    fn shard_count(&self) -> usize {
        let n = match self.config.shards {
            0 => default_shards(),
            n => n,
        }
        .min(usize::from(u16::MAX));
        if self.config.persistence.is_some() && n > 1 {
            if self.config.shards > 1 {
                warn!(
                    shards = self.config.shards,
                    "with persistence the broker runs one shard (an acknowledgement does not yet wait for another shard's commit)"
                );
            }
            return 1;
        }
        n
    }

    /// With persistence: the stored state, each session for the shard its
    /// client id lives on (every shard keeps every retained message), and
    /// the store's writer, started.
    #[allow(clippy::type_complexity)]
    fn restore(
        &self,
        n: usize,
        txs: &Arc<Vec<ShardTx>>,
        conn_cfg: &ConnConfig,
    ) -> io::Result<(
        Vec<shard::Restored>,
        Option<std::sync::mpsc::Sender<persist::ToWriter>>,
    )> {
        let mut restored: Vec<shard::Restored> = (0..n).map(|_| Default::default()).collect();
        let Some(p) = &self.config.persistence else {
            return Ok((restored, None));
        };
        let loaded = persist::load(p)?;
        for s in loaded.sessions {
            let i = conn_cfg.shard(Some(s.client_id.as_bytes()), n);
            restored[i].sessions.push(s);
        }
        for r in &mut restored {
            r.retained = loaded.retained.clone();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        persist::spawn(p, rx, txs.clone())?;
        Ok((restored, Some(tx)))
    }
}

/// Connection tasks and shard threads alive, so that a shutdown can wait
/// for them.
#[derive(Default)]
pub(super) struct Live {
    pub(super) count: AtomicUsize,
    pub(super) none: Notify,
}

/// One per connection task and per shard thread.
pub(super) struct LiveGuard(Arc<Live>);

impl LiveGuard {
    pub(super) fn new(live: &Arc<Live>) -> LiveGuard {
        live.count.fetch_add(1, Ordering::Relaxed);
        LiveGuard(live.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.none.notify_waiters();
        }
    }
}

impl Live {
    /// Waits until no connection task is left.
    async fn idle(&self) {
        loop {
            let notified = self.none.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// An in-process adapter's request: a connection, or a question for the
/// shards' cores.
fn local_request(
    r: local::Request,
    txs: &Arc<Vec<ShardTx>>,
    conn_cfg: &Arc<ConnConfig>,
    live: &Arc<Live>,
) {
    match r {
        local::Request::Connect {
            io,
            identity,
            trusted,
            peer,
        } => {
            if !conn_cfg.admit_local() {
                return;
            }
            let (txs, cfg) = (txs.clone(), conn_cfg.clone());
            let io: link::Io = Box::pin(io);
            tokio::spawn(ConnTask::local(io, identity, trusted, peer, txs, cfg, live));
        }
        // Every shard keeps every retained message; the first has them
        // once any forward sent before this request is in (its inbox is in
        // order).
        local::Request::Run { target, f } => {
            let to: Vec<usize> = match target {
                local::Target::All => (0..txs.len()).collect(),
                local::Target::First => vec![0],
                local::Target::ClientId(id) => {
                    vec![conn_cfg.shard(Some(id.as_bytes()), txs.len())]
                }
            };
            for i in to {
                let _ = txs[i].send(ToShard::Run(f.clone()));
            }
        }
        local::Request::Retained {
            client,
            filter,
            limit,
            reply,
        } => {
            let _ = txs[0].send(ToShard::Retained {
                client,
                filter,
                limit,
                reply,
            });
        }
    }
}

/// The store's writer writes the last changes (sessions gone offline,
/// wills) and stops.
async fn stop_writer(writer: Option<std::sync::mpsc::Sender<persist::ToWriter>>) {
    if let Some(w) = writer {
        let (done, finished) = std::sync::mpsc::channel();
        if w.send(persist::ToWriter::Stop(done)).is_ok() {
            let _ = tokio::task::spawn_blocking(move || finished.recv()).await;
        }
    }
}
