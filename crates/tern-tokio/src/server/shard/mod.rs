//! A shard: an OS thread with its own `mio::Poll` and its own broker core.
//! It owns its plain TCP connections outright (`native`), serves the TLS
//! and WebSocket connections linked to it, drains the core's output (the
//! router's reports first), and moves the router's decisions to the other
//! shards' inboxes.

mod native;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_broker::policy::AskEmbedding;
use tern_broker::router::{Forward, InstanceId, Report, RouteScratch, Router};
use tern_broker::{Broker, BrokerEvent, ConnId};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::accept::ConnConfig;
use super::config::{BoxedAuthn, BoxedAuthz, CredentialCheck, ServerConfig};
use super::inbox::{Link, ShardTx, ToShard};
use super::persist::{Batch, ToWriter};
use super::Live;
use super::{now, wall_now, LiveGuard, READ_CHUNK};
use native::{Native, Probe};

/// Connections served between two drains of the core's output.
pub(super) const FLUSH_EVERY: usize = 4;

/// The poll token of a shard's inbox.
pub(super) const INBOX: mio::Token = mio::Token(usize::MAX);

/// Poll tokens: listener `i` is `LISTENERS - i`; new connections awaiting
/// their first packet are `PROBES + key`; the others are their key.
pub(super) const LISTENERS: usize = usize::MAX - 1;
pub(super) const PROBES: usize = 1 << 40;

/// How a shard reaches a connection: a key in one of its slabs (8 bytes
/// in the table of every connection).
#[derive(Debug, Clone, Copy)]
pub(super) enum Endpoint {
    /// Plain TCP, in this shard's poll: the key in `native`.
    Native(u32),
    /// TLS and WebSocket, run by a tokio task: the key in `linked`.
    Linked(u32),
}

impl Endpoint {
    pub(super) fn native(k: usize) -> Endpoint {
        Endpoint::Native(u32::try_from(k).expect("fewer than 2^32 connections"))
    }

    pub(super) fn linked(k: usize) -> Endpoint {
        Endpoint::Linked(u32::try_from(k).expect("fewer than 2^32 connections"))
    }
}

pub(super) struct Linked {
    pub(super) link: Arc<Link>,
    pub(super) pending: BytesMut,
}

impl Drop for Linked {
    /// A connection the shard forgets is closed.
    fn drop(&mut self) {
        self.link.close();
    }
}

pub(super) struct Shard {
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
    /// The writer of the durable store, with persistence.
    writer: Option<std::sync::mpsc::Sender<ToWriter>>,
    /// Relaxed persistence: acknowledge once handed to the writer.
    relaxed: bool,
    /// After shutdown: when to stop waiting for the last writes.
    stopping: Option<Instant>,
    _live: LiveGuard,
}

impl Shard {
    /// The shard's thread: one poll for its plain TCP connections and its
    /// inbox, one broker core.
    pub(super) fn run(mut self) {
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

    pub(super) fn ready(&mut self, token: usize, readable: bool, writable: bool, now: Instant) {
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
    pub(super) fn handle(&mut self, msg: ToShard, now: Instant) -> bool {
        match msg {
            ToShard::AcceptNative { stream, data, peer } => {
                self.accept_native(stream, data, peer, now);
            }
            ToShard::Accept {
                link,
                data,
                peer,
                identity,
                trusted,
            } => self.accept_linked(link, data, peer, identity, trusted, now),
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
            ToShard::Run(f) => f(&mut self.broker, now),
            ToShard::Retained {
                client,
                filter,
                limit,
                reply,
            } => {
                let _ = reply.send(self.broker.retained(&client, &filter, limit, now));
            }
            ToShard::Sys(stats) => self.broker.publish_sys(&stats, now),
            ToShard::Answer { token, result } => {
                self.broker.answer(token, result, now);
                // Input that waited for the answer.
                self.resume(token.conn(), now);
            }
            ToShard::Shutdown(reply) => {
                self.shut_down(now);
                let _ = reply.send(());
            }
            ToShard::Stop => return true,
            ToShard::Persisted(n) => self.broker.handle_persisted(n),
            ToShard::Fetched {
                session,
                deliveries,
            } => self.broker.handle_fetched(session, deliveries, now),
            ToShard::StoreFailed => self.broker.handle_store_failed(now),
        }
        false
    }

    /// A TLS or WebSocket connection (or an in-process one) its task has
    /// linked to this shard: the core takes it and reads what came first.
    fn accept_linked(
        &mut self,
        link: Arc<Link>,
        data: BytesMut,
        peer: std::net::SocketAddr,
        identity: Option<String>,
        trusted: bool,
        now: Instant,
    ) {
        let Some(conn) = self.core_accept(now) else {
            warn!(%peer, "connection limit reached: closed");
            link.close();
            return;
        };
        if trusted {
            self.broker.set_trusted(conn);
        }
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

    /// Graceful shutdown: no more accepts, the core says goodbye (DISCONNECT
    /// 0x8B, wills), what it wrote goes out within the grace period.
    fn shut_down(&mut self, now: Instant) {
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
    }

    /// The core takes a connection that holds a slot (it gives the slot
    /// back if the core refuses).
    pub(super) fn core_accept(&mut self, now: Instant) -> Option<ConnId> {
        let conn = self.broker.accept(now);
        if conn.is_none() {
            self.cfg.release();
        }
        conn
    }

    /// Forgets a connection and frees its slot (a linked one is dropped,
    /// which closes it).
    pub(super) fn forget(&mut self, conn: ConnId) -> Option<Endpoint> {
        let e = self.conns.remove(&conn)?;
        self.cfg.release();
        if let Endpoint::Linked(k) = e {
            self.linked.remove(k as usize);
        }
        Some(e)
    }

    /// The core may read a connection's held input again (after an answer,
    /// or after its writes caught up).
    pub(super) fn resume(&mut self, conn: ConnId, now: Instant) {
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

    pub(super) fn read_linked(&mut self, conn: ConnId, data: BytesMut, now: Instant) {
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

    pub(super) fn drain(&mut self, now: Instant) {
        loop {
            // Reports first: a subscription reaches the router before its
            // SUBACK reaches the client. Changes go to the store before the
            // transmits that wait for them are looked at.
            let mut any = self.report(now) | self.persist();
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

    /// Hands the core's changes to the store's writer (relaxed: and lets
    /// what waited for them out at once). Returns whether there were any.
    pub(super) fn persist(&mut self) -> bool {
        let Some(writer) = &self.writer else {
            return false;
        };
        let mut changes = Vec::new();
        while let Some(c) = self.broker.poll_change() {
            changes.push(c);
        }
        let mut any = false;
        if let Some(&(last, _)) = changes.last() {
            any = true;
            let batch = Batch {
                shard: self.index,
                changes,
            };
            if writer.send(ToWriter::Batch(batch)).is_ok() && self.relaxed {
                self.broker.handle_persisted(last);
            }
        }
        // After the changes: the writer reads what it wrote before.
        while let Some(fetch) = self.broker.poll_fetch() {
            any = true;
            let _ = writer.send(ToWriter::Fetch {
                shard: self.index,
                fetch,
            });
        }
        any
    }

    /// Hands the core's reports to the router, and the router's decisions
    /// to the shards they name (this one's at once). Returns whether there
    /// were any.
    pub(super) fn report(&mut self, now: Instant) -> bool {
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

    pub(super) fn event(&mut self, ev: BrokerEvent, now: Instant) {
        match ev {
            BrokerEvent::Close { conn, reason } => {
                info!(shard = self.index, conn = conn.get(), %reason, "closed");
                // Forgetting a linked connection closes its link.
                if let Some(Endpoint::Native(k)) = self.forget(conn) {
                    self.close_native(k as usize, now);
                }
            }
            BrokerEvent::Connected {
                conn,
                client_id,
                session_present,
            } => {
                info!(shard = self.index, conn = conn.get(), %client_id, session_present, "connected");
            }
            BrokerEvent::Dropped { client_id, topic } => {
                let topic = topic.as_ref().map_or("(stored)", |t| t.as_str());
                debug!(shard = self.index, %client_id, topic, "message dropped: queue full or slow consumer");
            }
            BrokerEvent::Authenticate { token, credentials } if self.check.is_some() => {
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
                if let Some(token) = other.token() {
                    self.broker.decline(token, now);
                }
            }
        }
    }
}

/// A shard's receiving side, made before its thread: the channel, the
/// poll whose waker the senders hold, and the flag they check.
pub(super) struct Inbox {
    rx: std::sync::mpsc::Receiver<ToShard>,
    poll: mio::Poll,
    notified: Arc<AtomicBool>,
}

/// The inboxes of `n` shards, and their sending sides.
pub(super) fn inboxes(n: usize) -> io::Result<(Vec<ShardTx>, Vec<Inbox>)> {
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
        inboxes.push(Inbox { rx, poll, notified });
    }
    Ok((txs, inboxes))
}

/// The router `n` shards share, seeded so that nobody facing the network
/// can choose filters that collide (unless `seed` fixes it).
pub(super) fn router(n: usize, seed: u64) -> Arc<RwLock<Router>> {
    let seed = match seed {
        0 => std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            "router",
        ),
        seed => seed,
    };
    let router = Router::new((0..n).map(|i| InstanceId(i as u16))).with_seed(seed);
    Arc::new(RwLock::new(router))
}

/// What every shard shares.
pub(super) struct Shared {
    pub(super) cfg: Arc<ConnConfig>,
    pub(super) peers: Arc<Vec<ShardTx>>,
    pub(super) router: Arc<RwLock<Router>>,
    pub(super) runtime: tokio::runtime::Handle,
    /// The store's writer, with persistence.
    pub(super) writer: Option<std::sync::mpsc::Sender<ToWriter>>,
}

/// What a shard starts with from the store: its sessions and every
/// retained message.
#[derive(Default)]
pub(super) struct Restored {
    pub(super) sessions: Vec<tern_broker::durable::StoredSession>,
    pub(super) retained: Vec<tern_broker::durable::StoredRetained>,
}

/// The broker core of shard `i`: the server's configuration, with the
/// shard's number, forwarding when there are several, a random hash seed
/// unless one is fixed, and no `$SYS` of its own (the server publishes the
/// sum of every shard's counters).
fn core(i: usize, n: usize, server: &ServerConfig, restored: Restored) -> Broker {
    let mut config = server.broker.clone();
    config.shard = i as u16;
    config.forward = n > 1;
    config.durable = server.persistence.is_some();
    if config.hash_seed == 0 {
        // Facing the network: keys nobody can make collide.
        config.hash_seed =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), i);
    }
    config.sys_interval = None;
    let mut broker = Broker::new(config, now());
    if let Some(f) = &server.authenticator {
        broker.set_authenticator(BoxedAuthn(f()));
    }
    if server.check_credentials.is_some() && server.authenticator.is_none() {
        broker.set_authenticator(AskEmbedding);
    }
    if let Some(f) = &server.authorizer {
        broker.set_authorizer(BoxedAuthz(f()));
    }
    if server.persistence.is_some() {
        let now = now();
        broker.set_wall_clock(now, wall_now());
        for s in restored.sessions {
            let id = s.client_id.clone();
            if let Err(e) = broker.import_session(s, now) {
                warn!(client_id = %id, error = %e, "stored session not restored");
            }
        }
        for r in restored.retained {
            broker.import_retained(r, now);
        }
        // What fell due while the broker was down, every session back.
        broker.handle_timeout(now);
    }
    broker
}

/// Starts shard `i`'s thread, polling the plain TCP listeners `tcp`.
pub(super) fn spawn(
    i: usize,
    inbox: Inbox,
    restored: Restored,
    server: &ServerConfig,
    tcp: &[std::net::TcpListener],
    shared: &Shared,
    live: &Arc<Live>,
) -> io::Result<()> {
    let mut listeners = Vec::new();
    for (j, l) in tcp.iter().enumerate() {
        let mut l = mio::net::TcpListener::from_std(l.try_clone()?);
        let token = mio::Token(LISTENERS - j);
        inbox
            .poll
            .registry()
            .register(&mut l, token, mio::Interest::READABLE)?;
        listeners.push(l);
    }
    let shard = Shard {
        index: i,
        cfg: shared.cfg.clone(),
        listeners,
        probes: slab::Slab::new(),
        probe_deadlines: VecDeque::new(),
        probe_serial: 0,
        broker: core(i, shared.peers.len(), server, restored),
        rx: inbox.rx,
        notified: inbox.notified,
        poll: inbox.poll,
        peers: shared.peers.clone(),
        conns: HashMap::new(),
        native: slab::Slab::new(),
        linked: slab::Slab::new(),
        dirty: Vec::new(),
        again: Vec::new(),
        lingering: VecDeque::new(),
        scratch: vec![0; 4 * READ_CHUNK],
        budget: server.broker.max_packet_size as usize + READ_CHUNK,
        grace: server.shutdown_grace,
        router: shared.router.clone(),
        route_scratch: RouteScratch::default(),
        forwards: Vec::new(),
        check: server.check_credentials.clone(),
        runtime: shared.runtime.clone(),
        writer: shared.writer.clone(),
        relaxed: server
            .persistence
            .as_ref()
            .is_some_and(|p| p.relaxed.is_some()),
        stopping: None,
        _live: LiveGuard::new(live),
    };
    std::thread::Builder::new()
        .name(format!("tern-shard-{i}"))
        .spawn(move || shard.run())?;
    Ok(())
}

/// Shuts every shard down (their cores say goodbye to their clients) and
/// waits until each has.
pub(super) async fn shut_down(txs: &[ShardTx]) {
    for tx in txs {
        let (reply, done) = oneshot::channel();
        if tx.send(ToShard::Shutdown(reply)).is_ok() {
            let _ = done.await;
        }
    }
}
