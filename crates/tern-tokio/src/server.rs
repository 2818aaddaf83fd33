//! The broker server: listeners, shards (one broker core per core but one), and one
//! task per connection.
//!
//! ```text
//! listener --accept--> connection task: reads until CONNECT, picks the
//!                      shard by client id, then
//!   connection task  --Read(bytes), Written(n)-->  shard task (owns a
//!                    <--bytes to write (Link)---   tern_broker::Broker)
//! shard <--Forward(message)--> other shards
//! ```
//!
//! Backpressure both ways: a connection may have at most
//! `max_packet_size + READ_CHUNK` bytes handed to its shard and not yet
//! consumed by the core (its read credit), so a connection whose input the
//! core does not read (a slow consumer, a pending decision) stops being
//! read; and the core stops producing for a connection whose writes are not
//! reported done (`Config::max_unwritten_bytes`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tern_broker::policy::{AskEmbedding, Credentials};
use tern_broker::policy::{Authenticator, Authorizer};
use tern_broker::router::{Forward, InstanceId, Report, RouteScratch, Router};
use tern_broker::{Broker, Config, ConnId, Event, Stats, Token};
use tern_codec::ReasonCode;
use tern_codec::{Decoder, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::transport::{common_name, websocket, TlsSettings};

/// Bytes read from a socket at a time, at most.
const READ_CHUNK: usize = 16 * 1024;

/// Builds one policy instance per shard.
pub type PolicyFactory<P> = Arc<dyn Fn() -> Box<P> + Send + Sync>;

/// What the server runs.
#[derive(Clone)]
pub struct ServerConfig {
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls: Vec<(SocketAddr, TlsSettings)>,
    /// WebSocket listeners: address and path (subprotocol `mqtt`).
    pub ws: Vec<(SocketAddr, String)>,
    /// New connections accepted per second at most; more are closed at
    /// once. `None`: no limit.
    pub max_connection_rate: Option<u32>,
    /// The broker core's configuration (`shard` and `forward` are set per
    /// shard by the server).
    pub broker: Config,
    /// Broker shards (`0`: one per available core but one, and at least
    /// one).
    pub shards: usize,
    /// How long a graceful shutdown waits for connections to flush.
    pub shutdown_grace: Duration,
    /// The authentication policy of each shard (`AllowAll` if `None`).
    pub authenticator: Option<PolicyFactory<dyn Authenticator>>,
    /// The authorization policy of each shard (`AllowAll` if `None`).
    pub authorizer: Option<PolicyFactory<dyn Authorizer>>,
    /// Checks credentials on a blocking thread, off the shards (for slow
    /// password hashes, files, databases): those of every CONNECT the
    /// `authenticator` answers with `Verdict::Ask`, or of every CONNECT
    /// when there is no `authenticator`. A quick `authenticator` in front
    /// keeps the cheap cases (anonymous clients, say) off that round trip.
    pub check_credentials: Option<CredentialCheck>,
}

/// A credentials check run off the shards' threads.
pub type CredentialCheck = Arc<dyn Fn(&Credentials) -> Result<(), ReasonCode> + Send + Sync>;

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .field("ws", &self.ws)
            .field("broker", &self.broker)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    /// Zero configuration: 127.0.0.1:1883, anonymous clients, the core's
    /// safe limits, a shard per core but one.
    fn default() -> ServerConfig {
        ServerConfig {
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            tls: Vec::new(),
            ws: Vec::new(),
            max_connection_rate: None,
            broker: Config::default(),
            shards: 0,
            shutdown_grace: Duration::from_secs(5),
            authenticator: None,
            authorizer: None,
            check_credentials: None,
        }
    }
}

enum ToShard {
    Accept {
        link: Arc<Link>,
        data: BytesMut,
        peer: SocketAddr,
        identity: Option<String>,
    },
    Read {
        conn: ConnId,
        data: BytesMut,
    },
    Written {
        conn: ConnId,
        n: usize,
    },
    Closed {
        conn: ConnId,
    },
    Forward(Forward),
    Stats(oneshot::Sender<Stats>),
    Sys(Stats),
    Shutdown(oneshot::Sender<()>),
    /// Stop at once (the server is gone).
    Stop,
    /// A plain TCP connection, for the shard's own poll, with what was read
    /// of it so far.
    AcceptNative {
        stream: mio::net::TcpStream,
        data: BytesMut,
        peer: SocketAddr,
    },
    Answer {
        token: Token,
        result: Result<(), ReasonCode>,
    },
}

/// What a connection's task and its shard share: the connection's id once
/// the core accepted it, the bytes to write, the end, the read credit, and
/// the task's waker. Nothing is allocated while the queue is empty.
struct Link {
    state: std::sync::Mutex<LinkState>,
}

struct LinkState {
    /// Set by the shard when the core accepted the connection.
    conn: Option<ConnId>,
    out: Vec<Bytes>,
    /// Close once `out` is written.
    close: bool,
    /// Bytes the task may still hand to the shard that the core has not
    /// consumed: the task reads only while it has `READ_CHUNK` of credit.
    credit: usize,
    waker: Option<Waker>,
}

impl Link {
    fn new(credit: usize) -> Link {
        Link {
            state: std::sync::Mutex::new(LinkState {
                conn: None,
                out: Vec::new(),
                close: false,
                credit,
                waker: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f`; wakes the task (outside the lock) if `f` says so.
    fn update(&self, f: impl FnOnce(&mut LinkState) -> bool) {
        let waker = {
            let mut st = self.lock();
            if f(&mut st) {
                st.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn accepted(&self, conn: ConnId) {
        self.update(|st| {
            st.conn = Some(conn);
            true
        });
    }

    /// Queues bytes to write. The task is woken only when the queue was
    /// empty: with bytes already queued, it is either about to take them or
    /// waiting for the socket to take the ones it has.
    fn push(&self, b: Bytes) {
        // The task may hold it a while (TLS, WebSocket framing): its own
        // copy, not a slice pinning the core's encoding chunk.
        let b = owned(b);
        self.update(|st| {
            st.out.push(b);
            st.out.len() == 1
        });
    }

    fn close(&self) {
        self.update(|st| {
            st.close = true;
            true
        });
    }

    /// The core consumed `n` bytes: they may be read again.
    fn give_credit(&self, n: usize) {
        self.update(|st| {
            let starved = st.credit < READ_CHUNK;
            st.credit += n;
            starved && st.credit >= READ_CHUNK
        });
    }
}

/// A bound, not yet running, broker server.
pub struct Server {
    listeners: Vec<(TcpListener, Kind)>,
    config: ServerConfig,
}

/// What a listener speaks.
#[derive(Clone)]
enum Kind {
    Tcp,
    Tls(TlsSettings),
    Ws(String),
}

impl Kind {
    fn name(&self) -> &'static str {
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
fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The clock, for the core's `now`: the adapter is where it is read.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Tells every shard to stop when dropped.
struct StopShards(Arc<Vec<ShardTx>>);

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
        Ok(Server { listeners, config })
    }

    /// The addresses listened on (with the ports the OS chose for port 0).
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|(l, _)| l.local_addr()).collect()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully: stop
    /// accepting, DISCONNECT 0x8B to 5.0 clients, wills published, writes
    /// flushed (up to `shutdown_grace`).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let n = match self.config.shards {
            0 => default_shards(),
            n => n,
        }
        .min(usize::from(u16::MAX));
        let live = Arc::new(Live::default());
        let mut txs = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let poll = mio::Poll::new()?;
            let waker = Arc::new(mio::Waker::new(poll.registry(), INBOX)?);
            let notified = Arc::new(AtomicBool::new(false));
            txs.push(ShardTx {
                tx,
                waker,
                notified: notified.clone(),
            });
            inboxes.push((rx, poll, notified));
        }
        let txs = Arc::new(txs);
        // Shards stop with the server, even when its future is dropped.
        let _stop = StopShards(txs.clone());
        let conn_cfg = Arc::new(ConnConfig {
            max_packet_size: self.config.broker.max_packet_size,
            connect_timeout: self.config.broker.connect_timeout,
            next: AtomicUsize::new(0),
            close_grace: self.config.shutdown_grace,
            rate: std::sync::Mutex::new(RateLimit::new(self.config.max_connection_rate)),
            max_connections: self.config.broker.max_connections,
            connections: AtomicUsize::new(0),
        });
        for (l, kind) in &self.listeners {
            info!(kind = kind.name(), addr = %l.local_addr()?, "listener");
        }
        info!(
            addrs = ?self.local_addrs()?,
            shards = n,
            "tern broker listening"
        );
        // Plain TCP listeners are polled by every shard; the others are
        // accepted by tokio tasks.
        let mut tcp_listeners = Vec::new();
        let mut tokio_listeners = Vec::new();
        for (l, kind) in self.listeners {
            match kind {
                Kind::Tcp => tcp_listeners.push(l.into_std()?),
                other => tokio_listeners.push((l, other)),
            }
        }
        // Facing the network: filters nobody can make collide.
        let seed = match self.config.broker.hash_seed {
            0 => std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                "router",
            ),
            seed => seed,
        };
        let router = Router::new((0..n).map(|i| InstanceId(i as u16))).with_seed(seed);
        let router = Arc::new(RwLock::new(router));
        let runtime = tokio::runtime::Handle::current();
        for (i, (rx, poll, notified)) in inboxes.into_iter().enumerate() {
            let mut config = self.config.broker.clone();
            config.shard = i as u16;
            config.forward = n > 1;
            if config.hash_seed == 0 {
                // Facing the network: keys nobody can make collide.
                config.hash_seed = std::hash::BuildHasher::hash_one(
                    &std::collections::hash_map::RandomState::new(),
                    i,
                );
            }
            // `$SYS` is published by the server with every shard's counters.
            config.sys_interval = None;
            let mut broker = Broker::new(config, now());
            if let Some(f) = &self.config.authenticator {
                broker.set_authenticator(BoxedAuthn(f()));
            }
            if self.config.check_credentials.is_some() && self.config.authenticator.is_none() {
                broker.set_authenticator(AskEmbedding);
            }
            if let Some(f) = &self.config.authorizer {
                broker.set_authorizer(BoxedAuthz(f()));
            }
            let mut listeners = Vec::new();
            for (j, l) in tcp_listeners.iter().enumerate() {
                let mut l = mio::net::TcpListener::from_std(l.try_clone()?);
                poll.registry().register(
                    &mut l,
                    mio::Token(LISTENERS - j),
                    mio::Interest::READABLE,
                )?;
                listeners.push(l);
            }
            let shard = Shard {
                index: i,
                cfg: conn_cfg.clone(),
                listeners,
                probes: slab::Slab::new(),
                probe_deadlines: VecDeque::new(),
                probe_serial: 0,
                broker,
                rx,
                notified,
                poll,
                peers: txs.clone(),
                conns: HashMap::new(),
                native: slab::Slab::new(),
                linked: slab::Slab::new(),
                dirty: Vec::new(),
                again: Vec::new(),
                lingering: VecDeque::new(),
                scratch: vec![0; 4 * READ_CHUNK],
                budget: self.config.broker.max_packet_size as usize + READ_CHUNK,
                grace: self.config.shutdown_grace,
                router: router.clone(),
                route_scratch: RouteScratch::default(),
                forwards: Vec::new(),
                check: self.config.check_credentials.clone(),
                runtime: runtime.clone(),
                stopping: None,
                _live: LiveGuard::new(&live),
            };
            std::thread::Builder::new()
                .name(format!("tern-shard-{i}"))
                .spawn(move || shard.run())?;
        }
        let mut sys = self.config.broker.sys_interval.map(|every| {
            let txs = txs.clone();
            tokio::spawn(sys_task(txs, every))
        });

        let mut accepts = JoinSet::new();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<(TcpStream, SocketAddr, Kind)>();
        for (l, kind) in tokio_listeners {
            let tx = conn_tx.clone();
            accepts.spawn(async move {
                loop {
                    match l.accept().await {
                        Ok((s, peer)) => {
                            if tx.send((s, peer, kind.clone())).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // Out of file descriptors and the like: back off.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        drop(conn_tx);
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
                    let txs = txs.clone();
                    let cfg = conn_cfg.clone();
                    tokio::spawn(ConnTask::new(stream, peer, kind, txs, cfg, &live));
                }
            }
        }
        info!("shutting down");
        accepts.abort_all();
        if let Some(s) = sys.take() {
            s.abort();
        }
        for tx in txs.iter() {
            let (reply, done) = oneshot::channel();
            if tx.send(ToShard::Shutdown(reply)).is_ok() {
                let _ = done.await;
            }
        }
        // Every connection has `shutdown_grace` to flush; one still at it
        // then is left to the runtime.
        let _ = tokio::time::timeout(self.config.shutdown_grace, live.idle()).await;
        drop(txs);
        info!("stopped");
        Ok(())
    }
}

/// Every `every`, sums the shards' counters and has each publish `$SYS`.
async fn sys_task(txs: Arc<Vec<ShardTx>>, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let mut total = Stats::default();
        for tx in txs.iter() {
            let (reply, stats) = oneshot::channel();
            if tx.send(ToShard::Stats(reply)).is_err() {
                return;
            }
            if let Ok(s) = stats.await {
                total = total + s;
            }
        }
        for tx in txs.iter() {
            let _ = tx.send(ToShard::Sys(total));
        }
    }
}

struct BoxedAuthn(Box<dyn Authenticator>);
impl Authenticator for BoxedAuthn {
    fn authenticate(
        &mut self,
        c: &tern_broker::policy::Credentials,
    ) -> tern_broker::policy::Verdict {
        self.0.authenticate(c)
    }
}

struct BoxedAuthz(Box<dyn Authorizer>);
impl Authorizer for BoxedAuthz {
    fn publish(
        &mut self,
        c: &tern_broker::policy::ClientInfo,
        t: &tern_codec::TopicName,
    ) -> tern_broker::policy::Verdict {
        self.0.publish(c, t)
    }
    fn subscribe(
        &mut self,
        c: &tern_broker::policy::ClientInfo,
        f: &tern_codec::TopicFilter,
    ) -> tern_broker::policy::Verdict {
        self.0.subscribe(c, f)
    }
}

struct ConnConfig {
    max_packet_size: u32,
    connect_timeout: Duration,
    /// Round robin for clients without a client id.
    next: AtomicUsize,
    /// How long a closed connection's last writes may take.
    close_grace: Duration,
    /// New connections per second, over every listener and shard.
    rate: std::sync::Mutex<RateLimit>,
    /// Connections at most, over every shard (each core has the same
    /// limit, which alone would allow one per shard), those still waiting
    /// for their CONNECT included.
    max_connections: usize,
    /// Connections held, from their accept to their close.
    connections: AtomicUsize,
}

impl ConnConfig {
    /// Whether a new connection from `peer` may stay: within the rate and
    /// the connection limit. It takes a slot at once, before its CONNECT,
    /// so connections that never send one are bounded too; whoever holds
    /// the connection gives the slot back ([`ConnConfig::release`]).
    fn admit(&self, peer: &SocketAddr) -> bool {
        let within_rate = self
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(peer);
        if !within_rate {
            return false;
        }
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.release();
            warn!(%peer, "connection limit reached: closed");
            return false;
        }
        true
    }

    /// A connection's slot is free again.
    fn release(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// The shard of a client id (round robin without one).
    fn shard(&self, client_id: Option<&[u8]>, shards: usize) -> usize {
        match client_id {
            Some(id) if !id.is_empty() => shard_of(id, shards),
            _ => self.next.fetch_add(1, Ordering::Relaxed) % shards,
        }
    }
}

/// FNV-1a: a stable spread of client ids over shards.
fn shard_of(client_id: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in client_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Finds a new connection's client id in its first packet. It keeps the
/// fixed header it has read, so the packet is decoded (from a copy) once it
/// is whole, not again after every read: a CONNECT trickling in byte by
/// byte costs one copy, not one per byte.
struct FirstPacket(Decoder);

impl FirstPacket {
    fn new(max_packet_size: u32) -> FirstPacket {
        FirstPacket(Decoder::server().with_max_packet_size(max_packet_size))
    }

    /// `None` while the first packet in `buf` is not whole; then the client
    /// id of a CONNECT that has one (`Some(None)` for anything else,
    /// malformed included: the core answers it).
    fn client_id(&mut self, buf: &BytesMut) -> Option<Option<Vec<u8>>> {
        if self.0.pending_len().is_some_and(|total| buf.len() < total) {
            return None;
        }
        match self.0.decode(&mut buf.clone()) {
            Ok(Some(Packet::Connect(c))) => Some(Some(c.client_id.as_bytes().to_vec())),
            Ok(Some(_)) | Err(_) => Some(None),
            Ok(None) => None,
        }
    }

    /// How much to read next, having `have`: small reads until the
    /// packet's length is known (most CONNECTs are a few dozen bytes, and
    /// every connection passes through here).
    fn want(&self, have: usize) -> usize {
        self.0
            .pending_len()
            .map_or(512, |total| total.saturating_sub(have))
            .clamp(64, READ_CHUNK)
    }
}

/// Reads until the first packet is complete; returns its client id if it
/// is a CONNECT with one.
async fn first_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: u32,
) -> io::Result<Option<Vec<u8>>> {
    let mut first = FirstPacket::new(max);
    loop {
        if let Some(id) = first.client_id(buf) {
            return Ok(id);
        }
        buf.reserve(first.want(buf.len()));
        if rd.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// At most `max` new connections per second.
struct RateLimit {
    max: Option<u32>,
    window: Instant,
    count: u32,
}

impl RateLimit {
    fn new(max: Option<u32>) -> RateLimit {
        RateLimit {
            max,
            window: now(),
            count: 0,
        }
    }

    /// Whether a connection from `peer` may stay; logs the first refusal
    /// of each second (or the log would be the flood).
    fn admit(&mut self, peer: &SocketAddr) -> bool {
        let Some(max) = self.max else { return true };
        let now = now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count == max + 1 {
            warn!(%peer, "connection rate limit reached: closing the excess");
        }
        self.count <= max
    }
}

/// A TLS or WebSocket connection's byte stream, boxed: its state is large.
type Io = Pin<Box<dyn ByteStream>>;

trait ByteStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> ByteStream for T {}

/// Connection tasks and shard threads alive, so that a shutdown can wait
/// for them.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    none: Notify,
}

/// One per connection task and per shard thread.
struct LiveGuard(Arc<Live>);

impl LiveGuard {
    fn new(live: &Arc<Live>) -> LiveGuard {
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

/// A connection's task: its start (handshakes, the first packet, the choice
/// of shard) is boxed and freed once done; what stays for the connection's
/// life is a [`Running`] of a few words.
struct ConnTask {
    start: Option<Pin<Box<dyn Future<Output = Option<Running>> + Send>>>,
    running: Option<Running>,
    _live: LiveGuard,
}

impl ConnTask {
    fn new(
        stream: TcpStream,
        peer: SocketAddr,
        kind: Kind,
        shards: Arc<Vec<ShardTx>>,
        cfg: Arc<ConnConfig>,
        live: &Arc<Live>,
    ) -> ConnTask {
        ConnTask {
            start: Some(Box::pin(start(stream, peer, kind, shards, cfg))),
            running: None,
            _live: LiveGuard::new(live),
        }
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(start) = &mut this.start {
            let running = ready!(start.as_mut().poll(cx));
            this.start = None;
            match running {
                Some(r) => this.running = Some(r),
                None => return Poll::Ready(()),
            }
        }
        match &mut this.running {
            Some(r) => Pin::new(r).poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Completes the transport's handshake (TLS, WebSocket), reads the first
/// packet, and hands the connection (and its slot) to its shard; a
/// connection that does not get there gives its slot back.
async fn start(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shards: Arc<Vec<ShardTx>>,
    cfg: Arc<ConnConfig>,
) -> Option<Running> {
    let running = handshake(stream, peer, kind, shards, cfg.clone()).await;
    if running.is_none() {
        cfg.release();
    }
    running
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shards: Arc<Vec<ShardTx>>,
    cfg: Arc<ConnConfig>,
) -> Option<Running> {
    let _ = stream.set_nodelay(true);
    let (mut io, identity): (Io, _) = match kind {
        // Plain TCP is accepted by the shards.
        Kind::Tcp => return None,
        Kind::Tls(tls) => {
            let accepted =
                tokio::time::timeout(cfg.connect_timeout, tls.acceptor().accept(stream)).await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    info!(%peer, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return None;
                }
            };
            let identity = if tls.cn_as_username {
                common_name(stream.get_ref().1.peer_certificates())
            } else {
                None
            };
            (Box::pin(stream), identity)
        }
        Kind::Ws(path) => {
            // At least 64 KiB: a message may hold several small packets.
            let max = (cfg.max_packet_size as usize).max(64 * 1024);
            let ws = tokio::time::timeout(cfg.connect_timeout, websocket(stream, path, max)).await;
            match ws {
                Ok(Ok(s)) => (Box::pin(s), None),
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "WebSocket handshake failed");
                    return None;
                }
                Err(_) => {
                    debug!(%peer, "WebSocket handshake timed out");
                    return None;
                }
            }
        }
    };
    let mut buf = BytesMut::new();
    let placed = tokio::time::timeout(
        cfg.connect_timeout,
        first_packet(&mut io, &mut buf, cfg.max_packet_size),
    )
    .await;
    let shard = match placed {
        Ok(Ok(id)) => cfg.shard(id.as_deref(), shards.len()),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection ended before CONNECT");
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            return None;
        }
    };
    let tx = shards[shard].clone();
    let budget = cfg.max_packet_size as usize + READ_CHUNK;
    let link = Arc::new(Link::new(budget.saturating_sub(buf.len())));
    let accept = ToShard::Accept {
        link: link.clone(),
        data: buf,
        peer,
        identity,
    };
    tx.send(accept).ok()?;
    Some(Running {
        io,
        link,
        tx,
        batch: Vec::new(),
        batch_len: 0,
        flushing: false,
        state: RunState::Drive,
        deadline: None,
        grace: cfg.close_grace,
    })
}

/// A connection in its shard's hands, as one small future: writes what the
/// shard queued (one vectored write per wake-up where the stream supports
/// it), reads while the core keeps up, and reports both to the shard. Holds
/// no buffer between wake-ups: a read goes through the stack and leaves as
/// a buffer of its exact size.
struct Running {
    io: Io,
    link: Arc<Link>,
    tx: ShardTx,
    batch: Vec<Bytes>,
    batch_len: usize,
    flushing: bool,
    state: RunState,
    /// Once the shard closed the connection: how long the last writes may
    /// take (a peer that does not read does not keep the task).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    grace: Duration,
}

enum RunState {
    Drive,
    /// Everything queued was written; the stream is being shut down.
    Shutdown,
}

impl Future for Running {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let RunState::Drive = this.state {
            match ready!(this.poll_drive(cx)) {
                true => this.state = RunState::Shutdown,
                false => {
                    this.closed();
                    return Poll::Ready(());
                }
            }
        }
        // Shutting down, within the deadline.
        let late = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if !late {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx)).ok();
        }
        this.closed();
        Poll::Ready(())
    }
}

impl Running {
    /// Tells the shard the connection is gone (it ignores a connection it
    /// already forgot).
    fn closed(&self) {
        if let Some(conn) = self.link.lock().conn {
            let _ = self.tx.send(ToShard::Closed { conn });
        }
    }

    /// Returns `true` when the shard closed the connection and everything
    /// queued was written, `false` when the peer or the stream ended it.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            let (conn, close, can_read) = {
                let mut st = self.link.lock();
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                if self.batch.is_empty() && !self.flushing && !st.out.is_empty() {
                    self.batch = std::mem::take(&mut st.out);
                    self.batch_len = self.batch.iter().map(Bytes::len).sum();
                }
                (st.conn, st.close, st.credit >= READ_CHUNK)
            };
            if close {
                if conn.is_none() {
                    // Refused by the shard (it said why).
                    return Poll::Ready(false);
                }
                let grace = self.grace;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
            }
            let mut progress = false;
            if !self.batch.is_empty() {
                match poll_write_batch(self.io.as_mut(), cx, &mut self.batch) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
                self.flushing = self.batch.is_empty();
            }
            if self.flushing {
                match self.io.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.flushing = false;
                        progress = true;
                        if let Some(conn) = conn {
                            let n = self.batch_len;
                            let _ = self.tx.send(ToShard::Written { conn, n });
                        }
                        // Give the drained queue's memory back.
                        self.batch = Vec::new();
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
            }
            let idle = self.batch.is_empty() && !self.flushing;
            if close && idle && self.link.lock().out.is_empty() {
                return Poll::Ready(true);
            }
            if let (Some(conn), true, false) = (conn, can_read, close) {
                let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut rb = ReadBuf::uninit(&mut raw);
                match self.io.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(false),
                    Poll::Ready(Ok(())) => {
                        let data = BytesMut::from(rb.filled());
                        self.link.lock().credit -= data.len();
                        if self.tx.send(ToShard::Read { conn, data }).is_err() {
                            return Poll::Ready(false);
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// Writes some of `batch` (one system call), dropping what was written.
fn poll_write_batch<S: AsyncWrite + ?Sized>(
    mut stream: Pin<&mut S>,
    cx: &mut Context<'_>,
    batch: &mut Vec<Bytes>,
) -> Poll<io::Result<()>> {
    if batch.len() > 1 && !stream.is_write_vectored() {
        // One buffer, one write, rather than a write per packet.
        let mut joined = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
        for b in batch.drain(..) {
            joined.extend_from_slice(&b);
        }
        batch.push(joined.freeze());
    }
    let n = if batch.len() == 1 {
        ready!(stream.as_mut().poll_write(cx, &batch[0]))?
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let (k, _) = io_slices(batch, &mut slices);
        ready!(stream.as_mut().poll_write_vectored(cx, &slices[..k]))?
    };
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    advance(batch, n);
    Poll::Ready(Ok(()))
}

/// Makes every buffer of `queue` its own allocation (those already are
/// stay as they are).
fn own(queue: &mut [Bytes]) {
    for b in queue.iter_mut() {
        *b = owned(std::mem::take(b));
    }
}

/// `b` as its own allocation: itself if it is, a copy if it shares one.
fn owned(b: Bytes) -> Bytes {
    if b.is_unique() {
        b
    } else {
        Bytes::copy_from_slice(&b)
    }
}

/// Buffers handed to one vectored write at most.
const MAX_SLICES: usize = 64;

/// Fills `slices` with the first buffers of `queue`; returns how many, and
/// their length in bytes.
fn io_slices<'a>(queue: &'a [Bytes], slices: &mut [IoSlice<'a>]) -> (usize, usize) {
    let mut len = 0;
    let mut k = 0;
    for (slice, b) in slices.iter_mut().zip(queue.iter()) {
        *slice = IoSlice::new(b);
        len += b.len();
        k += 1;
    }
    (k, len)
}

/// Drops the first `n` bytes of `queue`, which were written. (A queue is
/// a `Vec`, 8 bytes smaller than a `VecDeque` in every idle connection; it
/// is usually written whole, and what is left moves up.)
fn advance(queue: &mut Vec<Bytes>, mut n: usize) {
    let mut done = 0;
    for b in queue.iter_mut() {
        if n == 0 {
            break;
        }
        if n >= b.len() {
            n -= b.len();
            done += 1;
        } else {
            b.advance(n);
            n = 0;
        }
    }
    queue.drain(..done);
}

/// The sending side of a shard's inbox: a channel, and a wake-up of the
/// shard's poll when the shard may be asleep (one per drain, not one per
/// message).
#[derive(Clone)]
struct ShardTx {
    tx: std::sync::mpsc::Sender<ToShard>,
    waker: Arc<mio::Waker>,
    notified: Arc<AtomicBool>,
}

impl ShardTx {
    fn send(&self, msg: ToShard) -> Result<(), ()> {
        self.tx.send(msg).map_err(|_| ())?;
        if !self.notified.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
        Ok(())
    }
}

/// Connections served between two drains of the core's output.
const FLUSH_EVERY: usize = 4;

/// The poll token of a shard's inbox.
const INBOX: mio::Token = mio::Token(usize::MAX);

/// Poll tokens: listener `i` is `LISTENERS - i`; new connections awaiting
/// their first packet are `PROBES + key`; the others are their key.
const LISTENERS: usize = usize::MAX - 1;
const PROBES: usize = 1 << 40;

/// A new plain TCP connection whose first packet is not whole yet.
struct Probe {
    stream: mio::net::TcpStream,
    peer: SocketAddr,
    buf: BytesMut,
    first: FirstPacket,
    /// Tells this probe from a later one with the same key.
    serial: u64,
}

/// Reads of one connection per readiness event before the others get a
/// turn.
const READS_PER_TURN: usize = 4;

/// How a shard reaches a connection: a key in one of its slabs (8 bytes
/// in the table of every connection).
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    /// Plain TCP, in this shard's poll: the key in `native`.
    Native(u32),
    /// TLS and WebSocket, run by a tokio task: the key in `linked`.
    Linked(u32),
}

impl Endpoint {
    fn native(k: usize) -> Endpoint {
        Endpoint::Native(u32::try_from(k).expect("fewer than 2^32 connections"))
    }

    fn linked(k: usize) -> Endpoint {
        Endpoint::Linked(u32::try_from(k).expect("fewer than 2^32 connections"))
    }
}

struct Linked {
    link: Arc<Link>,
    pending: BytesMut,
}

impl Drop for Linked {
    /// A connection the shard forgets is closed.
    fn drop(&mut self) {
        self.link.close();
    }
}

/// A plain TCP connection owned by a shard.
struct Native {
    stream: mio::net::TcpStream,
    conn: ConnId,
    /// Input the core has not consumed (a partial packet, or input held
    /// while the core waits): boxed, as it is usually empty.
    pending: Option<Box<BytesMut>>,
    out: Vec<Bytes>,
    /// Reading stopped with input perhaps left in the socket: the core did
    /// not keep up, or the connection had its turn.
    unread: bool,
    /// Closed by the core: the last bytes are being written, then the
    /// peer's are drained until it closes too, or until its deadline.
    closing: bool,
}

impl Native {
    /// Keeps what the core left unread; nothing is kept for nothing.
    fn keep(&mut self, pending: BytesMut) {
        self.pending = (!pending.is_empty()).then(|| Box::new(pending));
    }
}

struct Shard {
    index: usize,
    cfg: Arc<ConnConfig>,
    /// The plain TCP listeners, shared by every shard.
    listeners: Vec<mio::net::TcpListener>,
    probes: slab::Slab<Probe>,
    /// New connections' CONNECT deadlines, in order: key and serial. The
    /// first is a probe still waiting (the others may have gone).
    probe_deadlines: VecDeque<(Instant, usize, u64)>,
    probe_serial: u64,
    broker: Broker,
    rx: std::sync::mpsc::Receiver<ToShard>,
    notified: Arc<AtomicBool>,
    poll: mio::Poll,
    peers: Arc<Vec<ShardTx>>,
    conns: HashMap<ConnId, Endpoint>,
    native: slab::Slab<Native>,
    linked: slab::Slab<Linked>,
    /// Native connections with output to write.
    dirty: Vec<usize>,
    /// Tokens to read again without waiting for readiness.
    again: Vec<usize>,
    /// Closing native connections, by deadline: key and connection.
    lingering: VecDeque<(Instant, usize, ConnId)>,
    scratch: Vec<u8>,
    budget: usize,
    grace: Duration,
    /// Where messages go between shards, shared by every shard.
    router: Arc<RwLock<Router>>,
    route_scratch: RouteScratch,
    /// The router's decisions for the message at hand.
    forwards: Vec<Forward>,
    check: Option<CredentialCheck>,
    runtime: tokio::runtime::Handle,
    /// After shutdown: when to stop waiting for the last writes.
    stopping: Option<Instant>,
    _live: LiveGuard,
}

impl Shard {
    /// The shard's thread: one poll for its plain TCP connections and its
    /// inbox, one broker core.
    fn run(mut self) {
        let mut events = mio::Events::with_capacity(1024);
        loop {
            let t = now();
            if let Some(until) = self.stopping {
                // Stopping: done once every last write went out.
                if t >= until || self.native.iter().all(|(_, n)| n.out.is_empty()) {
                    return;
                }
            }
            let timeout = if self.again.is_empty() {
                let mut deadline = self.broker.poll_timeout();
                if let Some(&(c, _, _)) = self.lingering.front() {
                    deadline = Some(deadline.map_or(c, |d| d.min(c)));
                }
                if let Some(&(c, _, _)) = self.probe_deadlines.front() {
                    deadline = Some(deadline.map_or(c, |d| d.min(c)));
                }
                if let Some(s) = self.stopping {
                    deadline = Some(deadline.map_or(s, |d| d.min(s)));
                }
                deadline.map(|d| d.saturating_duration_since(t))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(shard = self.index, error = %e, "poll failed: shard stopped");
                return;
            }
            let now = now();
            let mut inbox = false;
            let mut handled = 0;
            for ev in events.iter() {
                if ev.token() == INBOX {
                    inbox = true;
                    continue;
                }
                let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                self.ready(ev.token().0, readable, ev.is_writable(), now);
                // Answers go out every few connections, not after all of
                // them: a client waiting for its acknowledgements waits
                // less, and writes still carry several packets.
                handled += 1;
                if handled % FLUSH_EVERY == 0 {
                    self.drain(now);
                }
            }
            for token in std::mem::take(&mut self.again) {
                self.ready(token, true, false, now);
            }
            if inbox {
                self.notified.store(false, Ordering::SeqCst);
                loop {
                    match self.rx.try_recv() {
                        Ok(msg) => {
                            if self.handle(msg, now) {
                                return;
                            }
                        }
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    }
                }
            }
            if self.broker.poll_timeout().is_some_and(|t| t <= now) {
                self.broker.handle_timeout(now);
            }
            self.drain(now);
            self.linger(now);
            self.expire_probes(now);
        }
    }

    fn ready(&mut self, token: usize, readable: bool, writable: bool, now: Instant) {
        if token > LISTENERS - self.listeners.len() {
            self.accept(LISTENERS - token, now);
        } else if token >= PROBES {
            self.read_probe(token - PROBES, now);
        } else {
            if writable {
                self.flush(token, now);
            }
            if readable {
                self.read_native(token, now);
            }
        }
    }

    /// Returns true to stop at once.
    fn handle(&mut self, msg: ToShard, now: Instant) -> bool {
        match msg {
            ToShard::AcceptNative { stream, data, peer } => {
                self.accept_native(stream, data, peer, now);
            }
            ToShard::Accept {
                link,
                data,
                peer,
                identity,
            } => {
                let Some(conn) = self.core_accept(now) else {
                    warn!(%peer, "connection limit reached: closed");
                    link.close();
                    return false;
                };
                if let Some(id) = &identity {
                    debug!(conn = conn.get(), identity = %id, "client certificate");
                    self.broker.set_identity(conn, id);
                }
                debug!(shard = self.index, conn = conn.get(), %peer, "accepted");
                let k = self.linked.insert(Linked {
                    link: link.clone(),
                    pending: BytesMut::new(),
                });
                self.conns.insert(conn, Endpoint::linked(k));
                link.accepted(conn);
                self.read_linked(conn, data, now);
            }
            ToShard::Read { conn, data } => self.read_linked(conn, data, now),
            ToShard::Written { conn, n } => {
                self.broker.handle_written(conn, n, now);
                self.resume(conn, now);
            }
            ToShard::Closed { conn } => {
                if let Some(Endpoint::Linked(_)) = self.conns.get(&conn) {
                    self.forget(conn);
                    self.broker.handle_closed(conn, now);
                }
            }
            ToShard::Forward(fwd) => {
                self.broker.handle_forward(fwd, now);
            }
            ToShard::Stats(reply) => {
                let _ = reply.send(self.broker.stats());
            }
            ToShard::Sys(stats) => self.broker.publish_sys(&stats, now),
            ToShard::Answer { token, result } => {
                self.broker.answer(token, result, now);
                // Input that waited for the answer.
                self.resume(token.conn(), now);
            }
            ToShard::Shutdown(reply) => {
                for mut l in std::mem::take(&mut self.listeners) {
                    let _ = self.poll.registry().deregister(&mut l);
                }
                for _ in self.probes.drain() {
                    self.cfg.release();
                }
                self.broker.shutdown(now);
                self.drain(now);
                // TLS and WebSocket connections flush on their own.
                let all: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in all {
                    self.forget(conn);
                }
                self.stopping = Some(now + self.grace);
                let _ = reply.send(());
            }
            ToShard::Stop => return true,
        }
        false
    }

    /// Accepts what the listeners have, up to a turn's worth.
    fn accept(&mut self, i: usize, now: Instant) {
        for _ in 0..64 {
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => {
                    if !self.cfg.admit(&peer) {
                        continue;
                    }
                    debug!(shard = self.index, %peer, "new connection");
                    let _ = stream.set_nodelay(true);
                    self.probe(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and the like: the next
                    // readiness (or the next connection's) tries again.
                    warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
        // More may wait: the listener is edge-triggered.
        self.again.push(LISTENERS - i);
    }

    /// Waits for a new connection's first packet, to know its shard.
    fn probe(&mut self, mut stream: mio::net::TcpStream, peer: SocketAddr, now: Instant) {
        let entry = self.probes.vacant_entry();
        let k = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            mio::Token(PROBES + k),
            mio::Interest::READABLE,
        ) {
            warn!(%peer, error = %e, "cannot poll the connection: closed");
            self.cfg.release();
            return;
        }
        self.probe_serial += 1;
        let until = now + self.cfg.connect_timeout;
        entry.insert(Probe {
            stream,
            peer,
            buf: BytesMut::new(),
            first: FirstPacket::new(self.cfg.max_packet_size),
            serial: self.probe_serial,
        });
        self.probe_deadlines
            .push_back((until, k, self.probe_serial));
        // The CONNECT may be there already.
        self.again.push(PROBES + k);
    }

    /// Reads a new connection until its first packet is whole, then hands
    /// it to its shard (perhaps this one).
    fn read_probe(&mut self, k: usize, now: Instant) {
        loop {
            let Some(p) = self.probes.get_mut(k) else {
                return;
            };
            match std::io::Read::read(&mut p.stream, &mut self.scratch) {
                Ok(0) => return self.drop_probe(k, "connection ended before CONNECT"),
                Ok(len) => p.buf.extend_from_slice(&self.scratch[..len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_probe(k, "connection failed before CONNECT"),
            }
            let Some(id) = p.first.client_id(&p.buf) else {
                continue;
            };
            let shard = self.cfg.shard(id.as_deref(), self.peers.len());
            let mut p = self.probes.remove(k);
            if shard == self.index {
                self.accept_native(p.stream, p.buf, p.peer, now);
            } else {
                let _ = self.poll.registry().deregister(&mut p.stream);
                let handed = self.peers[shard].send(ToShard::AcceptNative {
                    stream: p.stream,
                    data: p.buf,
                    peer: p.peer,
                });
                if handed.is_err() {
                    self.cfg.release();
                }
            }
            return;
        }
    }

    /// Lets go of new connections that sent no CONNECT in time, and of the
    /// deadlines of those that did (up to the first one still waiting), so
    /// that a burst of connections does not leave its deadlines queued for
    /// the whole connect timeout.
    fn expire_probes(&mut self, now: Instant) {
        while let Some(&(until, k, serial)) = self.probe_deadlines.front() {
            let waiting = self.probes.get(k).is_some_and(|p| p.serial == serial);
            if waiting && until > now {
                return;
            }
            self.probe_deadlines.pop_front();
            if waiting {
                self.drop_probe(k, "no CONNECT in time");
            }
        }
    }

    /// Lets go of a new connection that will not reach a core.
    fn drop_probe(&mut self, k: usize, why: &str) {
        let mut p = self.probes.remove(k);
        let _ = self.poll.registry().deregister(&mut p.stream);
        self.cfg.release();
        // After the slot is given back (a test waits for this line).
        debug!(shard = self.index, peer = %p.peer, "{why}");
    }

    /// Takes a connection into this shard's core and poll (it may be
    /// registered already, as this shard's probe).
    fn accept_native(
        &mut self,
        mut stream: mio::net::TcpStream,
        data: BytesMut,
        peer: SocketAddr,
        now: Instant,
    ) {
        let k = self.native.vacant_key();
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        let registry = self.poll.registry();
        let registered = registry
            .reregister(&mut stream, mio::Token(k), interest)
            .or_else(|_| registry.register(&mut stream, mio::Token(k), interest));
        if let Err(e) = registered {
            warn!(%peer, error = %e, "cannot poll the connection: closed");
            self.cfg.release();
            return;
        }
        let Some(conn) = self.core_accept(now) else {
            warn!(%peer, "connection limit reached: closed");
            let _ = self.poll.registry().deregister(&mut stream);
            return;
        };
        debug!(shard = self.index, conn = conn.get(), %peer, "accepted");
        self.native.insert(Native {
            stream,
            conn,
            pending: None,
            out: Vec::new(),
            unread: false,
            closing: false,
        });
        self.conns.insert(conn, Endpoint::native(k));
        self.native[k].keep(data);
        self.consume(k, now);
        // Bytes that came after the first read wait in the socket.
        self.again.push(k);
    }

    /// The core takes a connection that holds a slot (it gives the slot
    /// back if the core refuses).
    fn core_accept(&mut self, now: Instant) -> Option<ConnId> {
        let conn = self.broker.accept(now);
        if conn.is_none() {
            self.cfg.release();
        }
        conn
    }

    /// Forgets a connection and frees its slot (a linked one is dropped,
    /// which closes it).
    fn forget(&mut self, conn: ConnId) -> Option<Endpoint> {
        let e = self.conns.remove(&conn)?;
        self.cfg.release();
        if let Endpoint::Linked(k) = e {
            self.linked.remove(k as usize);
        }
        Some(e)
    }

    /// Has the core read a native connection's pending input.
    fn consume(&mut self, k: usize, now: Instant) {
        let Some(n) = self.native.get_mut(k) else {
            return;
        };
        if n.closing {
            return;
        }
        let Some(pending) = n.pending.take() else {
            return;
        };
        self.consume_buf(k, *pending, now);
    }

    /// Has the core read `pending`, a native connection's unread input.
    fn consume_buf(&mut self, k: usize, mut pending: BytesMut, now: Instant) {
        let Some(conn) = self.native.get(k).map(|n| n.conn) else {
            return;
        };
        self.broker.handle_read(conn, &mut pending, now);
        if let Some(n) = self.native.get_mut(k) {
            // Keep a partial packet; let go of an emptied buffer.
            if n.conn == conn {
                n.keep(pending);
            }
        }
    }

    /// Reads a native connection until the socket is empty, the core stops
    /// keeping up, or the connection had its turn.
    fn read_native(&mut self, k: usize, now: Instant) {
        for _ in 0..READS_PER_TURN {
            let Some(n) = self.native.get_mut(k) else {
                return;
            };
            if !n.closing && n.pending.as_ref().is_some_and(|p| p.len() >= self.budget) {
                // The core holds this input back; it says when to go on.
                n.unread = true;
                return;
            }
            n.unread = false;
            let read = std::io::Read::read(&mut n.stream, &mut self.scratch);
            match read {
                Ok(0) => return self.drop_native(k, now),
                Ok(len) => {
                    // A short read emptied the socket: no read to learn
                    // that it would block (the next bytes raise a new edge).
                    let drained = len < self.scratch.len();
                    if n.closing {
                        // The peer's last words, dropped.
                        if drained {
                            return;
                        }
                        continue;
                    }
                    let data = &self.scratch[..len];
                    let buf = match n.pending.take() {
                        Some(mut p) => {
                            p.extend_from_slice(data);
                            *p
                        }
                        None => BytesMut::from(data),
                    };
                    self.consume_buf(k, buf, now);
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_native(k, now),
            }
        }
        if let Some(n) = self.native.get_mut(k) {
            n.unread = true;
            self.again.push(k);
        }
    }

    /// The socket is gone (closed by the peer, or failed).
    fn drop_native(&mut self, k: usize, now: Instant) {
        let mut n = self.native.remove(k);
        let _ = self.poll.registry().deregister(&mut n.stream);
        if !n.closing {
            self.forget(n.conn);
            self.broker.handle_closed(n.conn, now);
            // After the slot is given back (a test waits for this line).
            debug!(
                shard = self.index,
                conn = n.conn.get(),
                "the client closed the connection"
            );
        }
    }

    /// Writes what a native connection has queued, as far as the socket
    /// takes it, and tells the core.
    fn flush(&mut self, k: usize, now: Instant) {
        let Some(n) = self.native.get_mut(k) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while !n.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let (count, offered) = io_slices(&n.out, &mut slices);
            match std::io::Write::write_vectored(&mut n.stream, &slices[..count]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(len) => {
                    written += len;
                    advance(&mut n.out, len);
                    // A short write filled the socket: wait for it to drain
                    // rather than learn again that it would block.
                    if len < offered {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if n.out.is_empty() {
            // Give the drained queue's memory back.
            n.out = Vec::new();
        } else {
            // Behind: what waits is copied out of the core's shared
            // encoding chunks, so a slow reader pins only its own bytes.
            own(&mut n.out);
        }
        let (conn, closing, done) = (n.conn, n.closing, n.out.is_empty());
        if failed {
            return self.drop_native(k, now);
        }
        if closing {
            if done {
                let _ = n.stream.shutdown(std::net::Shutdown::Write);
            }
            return;
        }
        if written > 0 {
            self.broker.handle_written(conn, written, now);
            self.resume(conn, now);
        }
    }

    /// The core may read a connection's held input again (after an answer,
    /// or after its writes caught up).
    fn resume(&mut self, conn: ConnId, now: Instant) {
        match self.conns.get(&conn).copied() {
            Some(Endpoint::Native(k)) => {
                let k = k as usize;
                self.consume(k, now);
                if self.native.get(k).is_some_and(|n| n.unread) {
                    self.again.push(k);
                }
            }
            Some(Endpoint::Linked(_)) => self.read_linked(conn, BytesMut::new(), now),
            None => {}
        }
    }

    /// Closed by the core: write what is left, then wait (briefly) for the
    /// peer to close, so that unread input does not turn the close into a
    /// reset that loses the last packet.
    fn close_native(&mut self, k: usize, now: Instant) {
        if let Some(n) = self.native.get_mut(k) {
            let until = now + self.grace.min(Duration::from_secs(5));
            n.closing = true;
            n.pending = None;
            // The same delay for all: the queue stays in deadline order.
            self.lingering.push_back((until, k, n.conn));
        }
        self.flush(k, now);
    }

    /// Lets go of closing connections whose time is up.
    fn linger(&mut self, now: Instant) {
        while let Some(&(until, k, conn)) = self.lingering.front() {
            if until > now {
                return;
            }
            self.lingering.pop_front();
            // The key may have gone, or been reused by a new connection.
            if self
                .native
                .get(k)
                .is_some_and(|n| n.conn == conn && n.closing)
            {
                self.drop_native(k, now);
            }
        }
    }

    fn read_linked(&mut self, conn: ConnId, data: BytesMut, now: Instant) {
        let Some(&Endpoint::Linked(k)) = self.conns.get(&conn) else {
            return;
        };
        let e = &mut self.linked[k as usize];
        if e.pending.is_empty() {
            e.pending = data;
        } else {
            e.pending.extend_from_slice(&data);
        }
        if e.pending.is_empty() {
            return;
        }
        let before = e.pending.len();
        let mut pending = std::mem::take(&mut e.pending);
        self.broker.handle_read(conn, &mut pending, now);
        if let Some(&Endpoint::Linked(k)) = self.conns.get(&conn) {
            let e = &mut self.linked[k as usize];
            e.link.give_credit(before - pending.len());
            // Keep a partial packet; let go of an emptied buffer.
            if !pending.is_empty() {
                e.pending = pending;
            }
        }
    }

    fn drain(&mut self, now: Instant) {
        loop {
            // Reports first: a subscription reaches the router before its
            // SUBACK reaches the client.
            let mut any = self.report(now);
            while let Some(t) = self.broker.poll_transmit() {
                any = true;
                match self.conns.get(&t.conn).copied() {
                    Some(Endpoint::Native(k)) => {
                        let k = k as usize;
                        let n = &mut self.native[k];
                        if n.out.is_empty() {
                            self.dirty.push(k);
                        }
                        n.out.push(t.data);
                    }
                    Some(Endpoint::Linked(k)) => self.linked[k as usize].link.push(t.data),
                    None => {}
                }
            }
            while let Some(ev) = self.broker.poll_event() {
                any = true;
                self.event(ev, now);
            }
            for k in std::mem::take(&mut self.dirty) {
                any = true;
                self.flush(k, now);
            }
            if !any {
                return;
            }
        }
    }

    /// Hands the core's reports to the router, and the router's decisions
    /// to the shards they name (this one's at once). Returns whether there
    /// were any.
    fn report(&mut self, now: Instant) -> bool {
        let me = InstanceId(self.index as u16);
        let mut any = false;
        while let Some(r) = self.broker.poll_report() {
            any = true;
            match r {
                Report::Published(msg) => {
                    let router = self.router.read().unwrap_or_else(|e| e.into_inner());
                    router.route(me, &msg, &mut self.route_scratch, &mut self.forwards);
                }
                Report::Subscriptions { filter, count } => {
                    let mut router = self.router.write().unwrap_or_else(|e| e.into_inner());
                    router.subscriptions(me, filter, count);
                }
                _ => {}
            }
            let mut forwards = std::mem::take(&mut self.forwards);
            for fwd in forwards.drain(..) {
                if fwd.to == me {
                    self.broker.handle_forward(fwd, now);
                } else if let Some(p) = self.peers.get(usize::from(fwd.to.0)) {
                    let _ = p.send(ToShard::Forward(fwd));
                }
            }
            self.forwards = forwards;
        }
        any
    }

    fn event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Close { conn, reason } => {
                info!(shard = self.index, conn = conn.get(), %reason, "closed");
                // Forgetting a linked connection closes its link.
                if let Some(Endpoint::Native(k)) = self.forget(conn) {
                    self.close_native(k as usize, now);
                }
            }
            Event::Connected {
                conn,
                client_id,
                session_present,
            } => {
                info!(shard = self.index, conn = conn.get(), %client_id, session_present, "connected");
            }
            Event::Dropped { client_id, topic } => {
                debug!(shard = self.index, %client_id, %topic, "message dropped: queue full or slow consumer");
            }
            Event::Authenticate { token, credentials } if self.check.is_some() => {
                let check = self.check.clone().expect("checked");
                let back = self.peers[self.index].clone();
                self.runtime.spawn_blocking(move || {
                    let result = check(&credentials);
                    if let Err(code) = result {
                        info!(conn = token.conn().get(), %code, "authentication failed");
                    }
                    let _ = back.send(ToShard::Answer { token, result });
                });
            }
            other => {
                // The server's policies answer at once; a policy that asks
                // is refused rather than left waiting.
                warn!(?other, "request without an answerer: refused");
                if let Event::Authenticate { token, .. }
                | Event::AuthContinue { token, .. }
                | Event::AuthorizePublish { token, .. }
                | Event::AuthorizeSubscribe { token, .. } = other
                {
                    self.broker
                        .answer(token, Err(ReasonCode::NotAuthorized), now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_waits_for_a_slow_reader_stops_sharing_the_cores_chunks() {
        let mut chunk = BytesMut::with_capacity(16 * 1024);
        chunk.extend_from_slice(&[1u8; 100]);
        let a = chunk.split_to(40).freeze();
        let b = chunk.split().freeze();
        let owned = Bytes::from(vec![2u8; 10]);
        let ptr = owned.as_ptr();
        let mut queue = vec![a.clone(), owned, b];
        own(&mut queue);
        assert!(queue.iter_mut().all(|b| b.is_unique()));
        assert_eq!(queue[0], a);
        assert_eq!(queue[1].as_ptr(), ptr, "already its own: not copied");
        assert_eq!(queue[2].len(), 60);
    }
}
