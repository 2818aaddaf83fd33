//! The broker server: listeners, shards (one broker core per core), and one
//! reader and one writer per connection.
//!
//! ```text
//! listener --accept--> connection: reads until CONNECT, picks the shard
//!                      by client id, then
//!   reader task  --Read(bytes)-->   shard task (owns a tern_broker::Broker)
//!   writer task  <--Data(bytes)--   shard task
//!                --Written(n)-->
//! shard <--Forward(message)--> other shards
//! ```
//!
//! Backpressure both ways: a reader may have at most
//! `max_packet_size + READ_CHUNK` bytes handed to its shard and not yet
//! consumed by the core (a semaphore of bytes), so a connection whose input
//! the core does not read (a slow consumer, a pending decision) stops being
//! read; and the core stops producing for a connection whose writes are not
//! reported done (`Config::max_unwritten_bytes`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tern_broker::policy::{AskEmbedding, Credentials};
use tern_broker::policy::{Authenticator, Authorizer};
use tern_broker::shard::SharedRouting;
use tern_broker::{Broker, Config, ConnId, Event, Message, Stats, Token};
use tern_codec::ReasonCode;
use tern_codec::{Decoder, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::transport::{common_name, websocket, TlsSettings};

/// Bytes read from a socket at a time, at most.
const READ_CHUNK: usize = 16 * 1024;

/// Bytes read from a socket at a time, at least.
const MIN_READ: usize = 512;

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
    /// Broker shards, one per core by default (`0` means one per available
    /// core).
    pub shards: usize,
    /// How long a graceful shutdown waits for connections to flush.
    pub shutdown_grace: Duration,
    /// The authentication policy of each shard (`AllowAll` if `None`).
    pub authenticator: Option<PolicyFactory<dyn Authenticator>>,
    /// The authorization policy of each shard (`AllowAll` if `None`).
    pub authorizer: Option<PolicyFactory<dyn Authorizer>>,
    /// Checks every CONNECT's credentials on a blocking thread, off the
    /// shards (for slow password hashes, files, databases). Takes the place
    /// of `authenticator` when set.
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
    /// safe limits, a shard per core.
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
        out: Arc<Outbox>,
        credit: Arc<Semaphore>,
        data: BytesMut,
        peer: SocketAddr,
        identity: Option<String>,
        reply: oneshot::Sender<Option<ConnId>>,
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
    Forward(Arc<Message>),
    Stats(oneshot::Sender<Stats>),
    Sys(Stats),
    Shutdown(oneshot::Sender<()>),
    Answer {
        token: Token,
        result: Result<(), ReasonCode>,
    },
}

/// What the shard has for a connection's writer: bytes, then perhaps the
/// end. Lighter than a channel (nothing allocated while it is empty).
#[derive(Default)]
struct Outbox {
    state: std::sync::Mutex<(std::collections::VecDeque<Bytes>, bool)>,
    wake: Notify,
}

impl Outbox {
    fn push(&self, b: Bytes) {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .push_back(b);
        self.wake.notify_one();
    }

    fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.wake.notify_one();
    }

    /// Waits for bytes or the end; returns up to 256 KiB of bytes and
    /// whether the connection is to be closed after writing them.
    async fn take(&self) -> (Vec<Bytes>, bool) {
        loop {
            {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if !st.0.is_empty() || st.1 {
                    let mut batch = Vec::new();
                    let mut n = 0;
                    while let Some(b) = st.0.pop_front() {
                        n += b.len();
                        batch.push(b);
                        if n >= 256 * 1024 {
                            break;
                        }
                    }
                    if st.0.is_empty() {
                        // Give the emptied queue's memory back.
                        st.0 = std::collections::VecDeque::new();
                    }
                    let close = st.1 && st.0.is_empty();
                    return (batch, close);
                }
            }
            self.wake.notified().await;
        }
    }
}

impl Drop for Entry {
    /// A connection the shard forgets is closed.
    fn drop(&mut self) {
        self.out.close();
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

/// The clock, for the core's `now`. tokio's, so tests with a paused clock
/// drive it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
        // Shared groups are tracked per shard in a 64-bit mask.
        let n = match self.config.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(64);
        let mut txs = Vec::with_capacity(n);
        let mut rxs = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            txs.push(tx);
            rxs.push(rx);
        }
        let txs = Arc::new(txs);
        let mut shard_tasks = JoinSet::new();
        let registry = Registry::default();
        for (i, rx) in rxs.into_iter().enumerate() {
            let mut config = self.config.broker.clone();
            config.shard = i as u16;
            config.forward = n > 1;
            // `$SYS` is published by the server with every shard's counters.
            config.sys_interval = None;
            let mut broker = Broker::new(config, now());
            if let Some(f) = &self.config.authenticator {
                broker.set_authenticator(BoxedAuthn(f()));
            }
            if self.config.check_credentials.is_some() {
                broker.set_authenticator(AskEmbedding);
            }
            if let Some(f) = &self.config.authorizer {
                broker.set_authorizer(BoxedAuthz(f()));
            }
            broker.set_shared_routing(SpreadShared {
                me: i,
                registry: registry.clone(),
            });
            let shard = Shard {
                index: i,
                broker,
                rx,
                peers: txs.clone(),
                conns: HashMap::new(),
                registry: registry.clone(),
                check: self.config.check_credentials.clone(),
            };
            shard_tasks.spawn(shard.run());
        }
        let mut sys = self.config.broker.sys_interval.map(|every| {
            let txs = txs.clone();
            tokio::spawn(sys_task(txs, every))
        });
        for (l, kind) in &self.listeners {
            info!(kind = kind.name(), addr = %l.local_addr()?, "listener");
        }
        info!(
            addrs = ?self.local_addrs()?,
            shards = n,
            "tern broker listening"
        );

        let conn_cfg = Arc::new(ConnConfig {
            max_packet_size: self.config.broker.max_packet_size,
            connect_timeout: self.config.broker.connect_timeout,
            next: AtomicUsize::new(0),
        });
        let mut connections = JoinSet::new();
        let mut accepts = JoinSet::new();
        let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<(TcpStream, SocketAddr, Kind)>();
        for (l, kind) in self.listeners {
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
        let mut rate = RateLimit::new(self.config.max_connection_rate);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                s = conn_rx.recv() => {
                    let Some((stream, peer, kind)) = s else { break };
                    if !rate.admit() {
                        // Once per second at most, or the log is the flood.
                        if rate.first_refusal() {
                            warn!(%peer, "connection rate limit reached: closing the excess");
                        }
                        continue;
                    }
                    let txs = txs.clone();
                    let cfg = conn_cfg.clone();
                    connections.spawn(transport(stream, peer, kind, txs, cfg));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
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
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                () = &mut grace => {
                    connections.abort_all();
                    break;
                }
                r = connections.join_next() => if r.is_none() { break },
            }
        }
        drop(txs);
        shard_tasks.abort_all();
        info!("stopped");
        Ok(())
    }
}

/// Every `every`, sums the shards' counters and has each publish `$SYS`.
async fn sys_task(txs: Arc<Vec<mpsc::UnboundedSender<ToShard>>>, every: Duration) {
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

/// Reads until the first packet is complete; returns its client id if it
/// is a CONNECT with one.
async fn first_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: u32,
) -> io::Result<Option<Vec<u8>>> {
    // The probe keeps the fixed header it has read, so the packet is
    // decoded (from a copy) once it is whole, not again after every read:
    // a CONNECT trickling in byte by byte costs one copy, not one per byte.
    let mut probe = Decoder::server().with_max_packet_size(max);
    loop {
        let whole = probe.pending_len().is_none_or(|total| buf.len() >= total);
        if whole {
            let mut copy = buf.clone();
            match probe.decode(&mut copy) {
                Ok(Some(Packet::Connect(c))) => return Ok(Some(c.client_id.as_bytes().to_vec())),
                // Not a CONNECT, or malformed: the core answers it.
                Ok(Some(_)) | Err(_) => return Ok(None),
                Ok(None) => {}
            }
        }
        buf.reserve(READ_CHUNK);
        if rd.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Completes the transport's handshake (TLS, WebSocket), then runs the
/// connection.
async fn transport(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shards: Arc<Vec<mpsc::UnboundedSender<ToShard>>>,
    cfg: Arc<ConnConfig>,
) {
    let _ = stream.set_nodelay(true);
    // The TLS and WebSocket paths are boxed: their handshake state is large,
    // and the task of every plain TCP connection would otherwise be sized
    // for it.
    match kind {
        Kind::Tcp => connection(stream, peer, None, shards, cfg).await,
        Kind::Tls(tls) => Box::pin(tls_connection(stream, peer, tls, shards, cfg)).await,
        Kind::Ws(path) => Box::pin(ws_connection(stream, peer, path, shards, cfg)).await,
    }
}

async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: TlsSettings,
    shards: Arc<Vec<mpsc::UnboundedSender<ToShard>>>,
    cfg: Arc<ConnConfig>,
) {
    let accepted = tokio::time::timeout(cfg.connect_timeout, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = if tls.cn_as_username {
        common_name(stream.get_ref().1.peer_certificates())
    } else {
        None
    };
    connection(stream, peer, identity, shards, cfg).await;
}

async fn ws_connection(
    stream: TcpStream,
    peer: SocketAddr,
    path: String,
    shards: Arc<Vec<mpsc::UnboundedSender<ToShard>>>,
    cfg: Arc<ConnConfig>,
) {
    // At least 64 KiB: a message may hold several small packets.
    let max = (cfg.max_packet_size as usize).max(64 * 1024);
    let ws = tokio::time::timeout(cfg.connect_timeout, websocket(stream, path, max)).await;
    match ws {
        Ok(Ok(s)) => connection(s, peer, None, shards, cfg).await,
        Ok(Err(e)) => debug!(%peer, error = %e, "WebSocket handshake failed"),
        Err(_) => debug!(%peer, "WebSocket handshake timed out"),
    }
}

/// At most `max` new connections per second.
struct RateLimit {
    max: Option<u32>,
    window: tokio::time::Instant,
    count: u32,
}

impl RateLimit {
    fn new(max: Option<u32>) -> RateLimit {
        RateLimit {
            max,
            window: tokio::time::Instant::now(),
            count: 0,
        }
    }

    fn admit(&mut self) -> bool {
        let Some(max) = self.max else { return true };
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= max
    }

    /// Whether the last refusal was the first of its second.
    fn first_refusal(&self) -> bool {
        self.max.is_some_and(|max| self.count == max + 1)
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    identity: Option<String>,
    shards: Arc<Vec<mpsc::UnboundedSender<ToShard>>>,
    cfg: Arc<ConnConfig>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let mut buf = BytesMut::with_capacity(1024);
    let placed = tokio::time::timeout(
        cfg.connect_timeout,
        first_packet(&mut rd, &mut buf, cfg.max_packet_size),
    )
    .await;
    let shard = match placed {
        Ok(Ok(Some(id))) if !id.is_empty() => shard_of(&id, shards.len()),
        Ok(Ok(_)) => cfg.next.fetch_add(1, Ordering::Relaxed) % shards.len(),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection ended before CONNECT");
            return;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            return;
        }
    };
    let tx = shards[shard].clone();
    let budget = cfg.max_packet_size as usize + READ_CHUNK;
    let credit = Arc::new(Semaphore::new(budget));
    let first = std::mem::take(&mut buf);
    credit.forget_permits(first.len());
    let outbox = Arc::new(Outbox::default());
    let (reply, conn) = oneshot::channel();
    let accept = ToShard::Accept {
        out: outbox.clone(),
        credit: credit.clone(),
        data: first,
        peer,
        identity,
        reply,
    };
    if tx.send(accept).is_err() {
        return;
    }
    let Ok(Some(conn)) = conn.await else {
        warn!(%peer, "connection limit reached: closed");
        return;
    };

    let reader_tx = tx.clone();
    let reader = tokio::spawn(async move {
        // A fresh buffer per read, small while the client is quiet and
        // growing while reads fill it: an idle connection holds little.
        let mut chunk = MIN_READ;
        loop {
            let Ok(permit) = credit.clone().acquire_many_owned(READ_CHUNK as u32).await else {
                return;
            };
            let mut buf = BytesMut::with_capacity(chunk);
            let n = match rd.read_buf(&mut (&mut buf).limit(chunk)).await {
                Ok(0) | Err(_) => {
                    let _ = reader_tx.send(ToShard::Closed { conn });
                    return;
                }
                Ok(n) => n,
            };
            permit.forget();
            credit.add_permits(READ_CHUNK - n);
            chunk = if n == chunk {
                (chunk * 2).min(READ_CHUNK)
            } else {
                (chunk / 2).max(MIN_READ)
            };
            if reader_tx.send(ToShard::Read { conn, data: buf }).is_err() {
                return;
            }
        }
    });

    // No resident write buffer: what is queued when the writer wakes is
    // gathered into one buffer for one write, and the buffer is freed.
    let mut w = wr;
    let mut closing = false;
    while !closing {
        let (batch, close) = outbox.take().await;
        closing = close;
        let n: usize = batch.iter().map(Bytes::len).sum();
        let written = match batch.len() {
            0 => Ok(()),
            1 => w.write_all(&batch[0]).await,
            _ => {
                let mut joined = Vec::with_capacity(n);
                for b in &batch {
                    joined.extend_from_slice(b);
                }
                w.write_all(&joined).await
            }
        };
        if written.is_err() {
            let _ = tx.send(ToShard::Closed { conn });
            break;
        }
        if n > 0 {
            let _ = tx.send(ToShard::Written { conn, n });
        }
    }
    let _ = w.shutdown().await;
    reader.abort();
    let _ = tx.send(ToShard::Closed { conn });
}

/// Which shards have members of each shared group.
type Registry = Arc<RwLock<HashMap<(String, String), u64>>>;

/// Among the shards with members of a group, the message's own identity
/// (the same `Arc` on every shard) picks the one that delivers it.
struct SpreadShared {
    me: usize,
    registry: Registry,
}

impl SharedRouting for SpreadShared {
    fn delivers(&mut self, share: &str, filter: &str, msg: &Arc<Message>) -> bool {
        let r = self.registry.read().unwrap_or_else(|e| e.into_inner());
        let mask = r
            .get(&(share.to_owned(), filter.to_owned()))
            .copied()
            .unwrap_or(0);
        if mask == 0 {
            return true;
        }
        let n = mask.count_ones() as usize;
        let mut pick = (Arc::as_ptr(msg) as usize >> 4) % n;
        for shard in 0..64 {
            if mask & (1 << shard) != 0 {
                if pick == 0 {
                    return shard == self.me;
                }
                pick -= 1;
            }
        }
        true
    }
}

struct Entry {
    out: Arc<Outbox>,
    credit: Arc<Semaphore>,
    pending: BytesMut,
}

struct Shard {
    index: usize,
    broker: Broker,
    rx: mpsc::UnboundedReceiver<ToShard>,
    peers: Arc<Vec<mpsc::UnboundedSender<ToShard>>>,
    conns: HashMap<ConnId, Entry>,
    registry: Registry,
    check: Option<CredentialCheck>,
}

impl Shard {
    async fn run(mut self) {
        loop {
            let deadline = self.broker.poll_timeout();
            let msg = tokio::select! {
                m = self.rx.recv() => m,
                () = sleep_until(deadline) => {
                    self.broker.handle_timeout(now());
                    self.drain();
                    continue;
                }
            };
            let Some(msg) = msg else { return };
            if self.handle(msg) {
                self.drain();
                return;
            }
            // Take what else is waiting before writing anything out.
            for _ in 0..64 {
                match self.rx.try_recv() {
                    Ok(m) => {
                        if self.handle(m) {
                            self.drain();
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            self.drain();
        }
    }

    /// Returns true to stop.
    fn handle(&mut self, msg: ToShard) -> bool {
        let now = now();
        match msg {
            ToShard::Accept {
                out,
                credit,
                data,
                peer,
                identity,
                reply,
            } => {
                let Some(conn) = self.broker.accept(now) else {
                    let _ = reply.send(None);
                    return false;
                };
                if let Some(id) = &identity {
                    debug!(conn = conn.get(), identity = %id, "client certificate");
                    self.broker.set_identity(conn, id);
                }
                debug!(shard = self.index, conn = conn.get(), %peer, "accepted");
                self.conns.insert(
                    conn,
                    Entry {
                        out,
                        credit,
                        pending: BytesMut::new(),
                    },
                );
                let _ = reply.send(Some(conn));
                self.read(conn, data, now);
            }
            ToShard::Read { conn, data } => self.read(conn, data, now),
            ToShard::Written { conn, n } => {
                self.broker.handle_written(conn, n, now);
                // Input held back while the connection was congested.
                self.read(conn, BytesMut::new(), now);
            }
            ToShard::Closed { conn } => {
                if self.conns.remove(&conn).is_some() {
                    self.broker.handle_closed(conn, now);
                }
            }
            ToShard::Forward(msg) => {
                self.broker.route_foreign(msg, now);
            }
            ToShard::Stats(reply) => {
                let _ = reply.send(self.broker.stats());
            }
            ToShard::Sys(stats) => self.broker.publish_sys(&stats, now),
            ToShard::Answer { token, result } => {
                self.broker.answer(token, result, now);
                // Input that waited for the answer.
                self.read(token.conn(), BytesMut::new(), now);
            }
            ToShard::Shutdown(reply) => {
                self.broker.shutdown(now);
                self.drain();
                let _ = reply.send(());
                return true;
            }
        }
        false
    }

    fn read(&mut self, conn: ConnId, data: BytesMut, now: Instant) {
        let Some(e) = self.conns.get_mut(&conn) else {
            return;
        };
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
        if let Some(e) = self.conns.get_mut(&conn) {
            e.credit.add_permits(before - pending.len());
            // Keep a partial packet; let go of an emptied buffer.
            if !pending.is_empty() {
                e.pending = pending;
            }
        }
    }

    fn drain(&mut self) {
        loop {
            let mut any = false;
            while let Some(t) = self.broker.poll_transmit() {
                any = true;
                if let Some(e) = self.conns.get(&t.conn) {
                    e.out.push(t.data);
                }
            }
            while let Some(ev) = self.broker.poll_event() {
                any = true;
                self.event(ev);
            }
            if !any {
                return;
            }
        }
    }

    fn event(&mut self, ev: Event) {
        {
            match ev {
                Event::Close { conn, reason } => {
                    info!(shard = self.index, conn = conn.get(), %reason, "closed");
                    if let Some(e) = self.conns.remove(&conn) {
                        e.out.close();
                    }
                }
                Event::Connected {
                    conn,
                    client_id,
                    session_present,
                } => {
                    info!(shard = self.index, conn = conn.get(), %client_id, session_present, "connected");
                }
                Event::Forward(msg) => {
                    for (i, p) in self.peers.iter().enumerate() {
                        if i != self.index {
                            let _ = p.send(ToShard::Forward(msg.clone()));
                        }
                    }
                }
                Event::SharedMembers {
                    share,
                    filter,
                    members,
                } => {
                    let mut r = self.registry.write().unwrap_or_else(|e| e.into_inner());
                    let mask = r.entry((share, filter)).or_insert(0);
                    if members > 0 {
                        *mask |= 1 << self.index;
                    } else {
                        *mask &= !(1 << self.index);
                    }
                }
                Event::Dropped { client_id, topic } => {
                    debug!(shard = self.index, %client_id, %topic, "message dropped: queue full or slow consumer");
                }
                Event::Authenticate { token, credentials } if self.check.is_some() => {
                    let check = self.check.clone().expect("checked");
                    let back = self.peers[self.index].clone();
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || check(&credentials))
                            .await
                            .unwrap_or(Err(ReasonCode::ServerUnavailable));
                        if let Err(code) = result {
                            info!(conn = token.conn().get(), %code, "authentication failed");
                        }
                        let _ = back.send(ToShard::Answer { token, result });
                    });
                }
                other => {
                    // The server's policies answer at once; a policy that
                    // asks is refused rather than left waiting.
                    warn!(?other, "request without an answerer: refused");
                    if let Event::Authenticate { token, .. }
                    | Event::AuthContinue { token, .. }
                    | Event::AuthorizePublish { token, .. }
                    | Event::AuthorizeSubscribe { token, .. } = other
                    {
                        self.broker.answer(
                            token,
                            Err(tern_codec::ReasonCode::NotAuthorized),
                            now(),
                        );
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
