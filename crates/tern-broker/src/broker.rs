//! The broker state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::{NonZeroU16, NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Ack, Auth, AuthProperties, ConnAck, Connect, Decoder, Disconnect, MqttString, Packet, PacketId,
    PacketType, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, ReasonCode,
    RetainHandling, SubAck, Subscribe, TopicFilter, TopicName, UnsubAck, Unsubscribe,
};
use tern_topic::{Matches, RetainedIndex, SubscriptionIndex};

use crate::policy::{
    AllowAll, AuthStep, Authenticator, Authorizer, ClientInfo, Credentials, Verdict,
};
use crate::session::{Delivery, Message, OutState, Outgoing, Session, SessionWill, Sub};
use crate::shard::{LocalShared, SharedRouting};
use crate::stamp::{Epoch, Stamp};
use crate::store::{ImportError, InflightStage, StoredDelivery, StoredSession, StoredSubscription};
use crate::{Config, QueueFullPolicy};

/// A transport connection, as the broker names it. Handed out by
/// [`Broker::accept`]; the embedding maps it to its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(NonZeroU64);

impl ConnId {
    /// The number behind the id (unique for the broker's lifetime).
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

/// A session, as the broker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(NonZeroU64);

/// Bytes to write to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to write them.
    pub conn: ConnId,
    /// One or more encoded packets. They may share their allocation with
    /// other transmits (the core encodes into chunks): an embedding that
    /// keeps bytes unwritten for long should copy them, so that a slow
    /// connection does not pin a chunk (the tokio server does).
    pub data: Bytes,
}

/// Bytes of one encoding chunk of the arena.
const ARENA_CHUNK: usize = 16 * 1024;

/// A request the embedding answers with [`Broker::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token {
    conn: ConnId,
    seq: u64,
}

impl Token {
    /// The connection the request is about.
    pub fn conn(self) -> ConnId {
        self.conn
    }
}

/// What the embedding must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Close the transport, after writing every [`Transmit`] for it polled
    /// before this event. `reason` says why (`Success` after a client's
    /// normal DISCONNECT).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: ReasonCode,
    },
    /// A client connected (CONNACK accepted it): for logs and metrics.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its client id (assigned by the broker if the client sent none).
        client_id: String,
        /// Whether an existing session was resumed.
        session_present: bool,
    },
    /// Authenticate a CONNECT; answer with [`Broker::answer`].
    Authenticate {
        /// Pass it back with the answer.
        token: Token,
        /// What the client presented.
        credentials: Credentials,
    },
    /// The next step of an enhanced authentication (5.0 AUTH): the client
    /// answered a challenge, or asks to re-authenticate. Answer with
    /// [`Broker::answer_auth`].
    AuthContinue {
        /// Pass it back with the answer.
        token: Token,
        /// The client.
        client_id: String,
        /// The Authentication Method of the exchange.
        method: String,
        /// The client's Authentication Data.
        data: Option<Bytes>,
        /// Whether this starts a re-authentication of a connected client.
        reauthenticate: bool,
    },
    /// May this client publish to this topic? Answer with [`Broker::answer`];
    /// the connection's later packets wait until then.
    AuthorizePublish {
        /// Pass it back with the answer.
        token: Token,
        /// Who.
        client: ClientInfo,
        /// Where to.
        topic: TopicName,
    },
    /// May this client subscribe to this filter? As `AuthorizePublish`.
    AuthorizeSubscribe {
        /// Pass it back with the answer.
        token: Token,
        /// Who.
        client: ClientInfo,
        /// To what.
        filter: TopicFilter,
    },
    /// A message published here, to pass to the other shards'
    /// [`Broker::route_foreign`] (only with [`Config::forward`]).
    Forward(Arc<Message>),
    /// The number of this instance's members of a shared group changed
    /// (for [`SharedRouting`](crate::shard::SharedRouting) across shards).
    SharedMembers {
        /// The share name.
        share: String,
        /// The shared filter.
        filter: String,
        /// Members on this instance now.
        members: usize,
    },
    /// A message was dropped for a session because its queue was full.
    Dropped {
        /// The session's client id.
        client_id: String,
        /// The topic of the dropped message.
        topic: TopicName,
    },
}

/// Counters, as `$SYS` publishes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections that completed CONNECT and are open.
    pub clients_connected: usize,
    /// Sessions, connected or not.
    pub sessions: usize,
    /// PUBLISH packets received.
    pub messages_received: u64,
    /// PUBLISH packets sent.
    pub messages_sent: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Messages dropped because a queue was full.
    pub messages_dropped: u64,
    /// Subscriptions held.
    pub subscriptions: usize,
    /// Retained messages held.
    pub retained: usize,
}

impl std::ops::Add for Stats {
    type Output = Stats;

    /// The counters of two broker instances together.
    fn add(self, o: Stats) -> Stats {
        Stats {
            clients_connected: self.clients_connected + o.clients_connected,
            sessions: self.sessions + o.sessions,
            messages_received: self.messages_received + o.messages_received,
            messages_sent: self.messages_sent + o.messages_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            bytes_sent: self.bytes_sent + o.bytes_sent,
            messages_dropped: self.messages_dropped + o.messages_dropped,
            subscriptions: self.subscriptions + o.subscriptions,
            // Every instance holds every retained message.
            retained: self.retained.max(o.retained),
        }
    }
}

/// What makes two QoS 0 deliveries of one message the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WireKey {
    msg: usize,
    version: ProtocolVersion,
    retain: bool,
    expiry: Option<u32>,
}

/// Timers other than the connections' (those are `Broker::conn_timers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    SessionExpiry(SessionId),
    Will(SessionId),
    Sys,
}

/// A packet held while the embedding decides on it.
#[derive(Debug)]
enum Held {
    Connect(Box<Connect>, bool),
    Reauth,
    Publish(Publish, TopicName),
    Subscribe {
        packet: Subscribe,
        next: usize,
        codes: Vec<(ReasonCode, bool)>,
    },
}

#[derive(Debug)]
enum Phase {
    AwaitConnect,
    Active(SessionId),
}

/// A connection: 64 bytes, one allocator size class, as every idle
/// connection has one. What few connections need is boxed; the client id
/// and user name are the session's; the decoder is made for each packet
/// from `version` (all it keeps between packets).
#[derive(Debug)]
struct Conn {
    phase: Phase,
    last_packet: Stamp,
    /// When this connection's entry in `conn_timers` is due.
    timer: Stamp,
    /// Topic aliases, both ways: boxed, as most connections use none.
    aliases: Option<Box<Aliases>>,
    /// Awaiting the embedding's answer: input is not read meanwhile.
    held: Option<Box<(Token, Held)>>,
    /// Enhanced authentication and the transport's identity: boxed, as most
    /// connections have neither.
    auth: Option<Box<AuthState>>,
    /// Bytes handed out in transmits, not yet reported written.
    unwritten: usize,
    max_packet_out: u32,
    /// Seconds (the client's or the server's); 0 is off.
    keep_alive: u16,
    /// The protocol version, known once a CONNECT was decoded; answers
    /// before that are in 3.1.1 form.
    version: Option<ProtocolVersion>,
    /// An answer exceeded the client's Maximum Packet Size.
    oversize: bool,
}

/// Sessions by client id, without a copy of the id: a table of session
/// ids, hashed by their session's client id.
struct ClientIds {
    table: hashbrown::HashTable<SessionId>,
    hasher: foldhash::fast::FixedState,
}

type Sessions = BTreeMap<SessionId, Box<Session>>;

impl ClientIds {
    fn new(seed: u64) -> ClientIds {
        ClientIds {
            table: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    fn hash(&self, id: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }

    fn get(&self, id: &[u8], sessions: &Sessions) -> Option<SessionId> {
        self.table
            .find(self.hash(id), |sid| {
                sessions
                    .get(sid)
                    .is_some_and(|s| s.client.client_id.as_bytes() == id)
            })
            .copied()
    }

    /// Indexes `sid`, which `sessions` holds already.
    fn insert(&mut self, sid: SessionId, sessions: &Sessions) {
        let hash = self.hash(sessions[&sid].client.client_id.as_bytes());
        let hasher = &self.hasher;
        self.table.insert_unique(hash, sid, |other| {
            std::hash::BuildHasher::hash_one(hasher, sessions[other].client.client_id.as_bytes())
        });
    }

    fn remove(&mut self, id: &[u8], sid: SessionId) {
        if let Ok(entry) = self.table.find_entry(self.hash(id), |other| *other == sid) {
            entry.remove();
        }
    }
}

/// A connection's topic aliases.
#[derive(Debug, Default)]
struct Aliases {
    /// How many of ours the client takes (its Topic Alias Maximum).
    out_max: u16,
    /// The client's aliases: topic of alias `i + 1`.
    incoming: Vec<Option<TopicName>>,
    /// Ours, as sent to the client.
    outgoing: BTreeMap<TopicName, u16>,
}

/// What few connections have: enhanced authentication, a proven identity.
#[derive(Debug, Default)]
struct AuthState {
    /// The Authentication Method of an enhanced authentication.
    method: Option<MqttString>,
    /// A CONNECT whose enhanced authentication awaits the client's AUTH.
    connect: Option<(Box<Connect>, bool)>,
    /// A re-authentication awaits the client's AUTH.
    reauth_waiting: bool,
    /// A user name the transport proved (a client certificate).
    identity: Option<MqttString>,
    /// Authentication Data for the CONNACK that ends an exchange.
    success_data: Option<Bytes>,
}

impl Conn {
    fn version(&self) -> ProtocolVersion {
        self.version.unwrap_or(ProtocolVersion::V3_1_1)
    }

    /// 1.5 times the keep alive; `None` when keep alive is off.
    fn keep_alive(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The client's Topic Alias Maximum.
    fn alias_out_max(&self) -> u16 {
        self.aliases.as_ref().map_or(0, |a| a.out_max)
    }

    fn auth_mut(&mut self) -> &mut AuthState {
        self.auth.get_or_insert_with(Box::default)
    }

    fn auth_method(&self) -> Option<MqttString> {
        self.auth.as_ref().and_then(|a| a.method.clone())
    }

    /// A CONNECT's enhanced authentication is under way.
    fn auth_exchange(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.connect.is_some())
    }

    fn reauth_waiting(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.reauth_waiting)
    }
}

/// A complete MQTT 3.1 / 3.1.1 / 5.0 broker with no I/O and no clock.
///
/// # Call contract
///
/// - Inputs: [`accept`](Broker::accept) a transport, feed its bytes with
///   [`handle_read`](Broker::handle_read), report its end with
///   [`handle_closed`](Broker::handle_closed), call
///   [`handle_timeout`](Broker::handle_timeout) at
///   [`poll_timeout`](Broker::poll_timeout), and [`answer`](Broker::answer)
///   the requests. Every input carries `now`; the broker never reads a clock.
/// - Outputs, after every input: drain [`poll_transmit`](Broker::poll_transmit)
///   (write the bytes in order), then [`poll_event`](Broker::poll_event),
///   then read [`poll_timeout`](Broker::poll_timeout).
/// - A connection whose packet awaits an answer reads no further input:
///   `handle_read` leaves the bytes in the buffer. After answering, call
///   `handle_read` again with that connection's buffer.
///
/// The broker is deterministic: the same inputs give the same outputs,
/// byte for byte.
pub struct Broker {
    config: Config,
    authn: Box<dyn Authenticator>,
    authz: Box<dyn Authorizer>,
    shared_routing: Box<dyn SharedRouting>,
    // Boxed values: a tree node moves entries, not whole connections, and
    // holds no slack the size of one.
    conns: BTreeMap<ConnId, Box<Conn>>,
    sessions: BTreeMap<SessionId, Box<Session>>,
    by_client_id: ClientIds,
    /// With `forward`: how many local subscriptions each (inner) filter
    /// has, to tell the shared routing when one is first made or last goes.
    interest: BTreeMap<String, u32>,
    subs: SubscriptionIndex<SessionId, Sub>,
    retained: RetainedIndex<Arc<Message>>,
    /// Each connection's one timer (its CONNECT deadline, then its keep
    /// alive). At the same instant, these run before the others.
    conn_timers: BTreeSet<(Stamp, ConnId)>,
    /// Sessions' expiry and delayed wills, `$SYS`.
    timers: BTreeSet<(Instant, Timer)>,
    /// The base of every `Stamp`.
    epoch: Epoch,
    /// What each read's decoder starts from.
    decoder: Decoder,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    scratch: Matches<SessionId, Sub>,
    /// Encoded QoS 0 PUBLISH packets of the message being routed.
    wire_cache: Vec<(WireKey, Bytes)>,
    /// Where outgoing packets are encoded: each is split off as its own
    /// `Bytes` sharing the chunk, so encoding allocates once per chunk, not
    /// once per packet.
    arena: BytesMut,
    /// Routing's list of deliveries, kept between messages.
    deliveries: Vec<(SessionId, QoS, bool, Vec<NonZeroU32>)>,
    next_conn: u64,
    next_session: u64,
    next_token: u64,
    next_assigned_id: u64,
    started: Instant,
    stats: Stats,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connections", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker with `config` that accepts everyone ([`AllowAll`]).
    pub fn new(config: Config, now: Instant) -> Broker {
        let seed = config.hash_seed;
        let decoder = Decoder::server().with_max_packet_size(config.max_packet_size);
        let mut b = Broker {
            config,
            authn: Box::new(AllowAll),
            authz: Box::new(AllowAll),
            shared_routing: Box::new(LocalShared),
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            by_client_id: ClientIds::new(seed),
            interest: BTreeMap::new(),
            subs: SubscriptionIndex::with_seed(seed),
            retained: RetainedIndex::with_seed(seed),
            conn_timers: BTreeSet::new(),
            timers: BTreeSet::new(),
            epoch: Epoch::new(now),
            decoder,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            scratch: Matches::new(),
            wire_cache: Vec::new(),
            arena: BytesMut::new(),
            deliveries: Vec::new(),
            next_conn: 1,
            next_session: 1,
            next_token: 1,
            next_assigned_id: 1,
            started: now,
            stats: Stats::default(),
        };
        if let Some(i) = b.config.sys_interval {
            b.timers.insert((now + i, Timer::Sys));
        }
        b
    }

    /// Replaces the authentication policy.
    pub fn set_authenticator(&mut self, a: impl Authenticator + 'static) {
        self.authn = Box::new(a);
    }

    /// Replaces the authorization policy.
    pub fn set_authorizer(&mut self, a: impl Authorizer + 'static) {
        self.authz = Box::new(a);
    }

    /// Replaces how shared groups are split across broker instances.
    pub fn set_shared_routing(&mut self, r: impl SharedRouting + 'static) {
        self.shared_routing = Box::new(r);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        Stats {
            clients_connected: self
                .conns
                .values()
                .filter(|c| matches!(c.phase, Phase::Active(_)))
                .count(),
            sessions: self.sessions.len(),
            subscriptions: self.subs.len(),
            retained: self.retained.len(),
            ..self.stats
        }
    }

    /// A new transport connected. Returns `None` when the connection limit
    /// is reached: close the transport.
    pub fn accept(&mut self, now: Instant) -> Option<ConnId> {
        if self.conns.len() >= self.config.max_connections {
            return None;
        }
        let id = ConnId(NonZeroU64::new(self.next_conn).expect("counted from 1"));
        self.next_conn += 1;
        let timer = self.epoch.stamp(now + self.config.connect_timeout);
        self.conns.insert(
            id,
            Box::new(Conn {
                phase: Phase::AwaitConnect,
                last_packet: self.epoch.stamp(now),
                timer,
                aliases: None,
                held: None,
                auth: None,
                unwritten: 0,
                max_packet_out: u32::MAX,
                keep_alive: 0,
                version: None,
                oversize: false,
            }),
        );
        self.conn_timers.insert((timer, id));
        Some(id)
    }

    /// The transport authenticated the client as `username` (the common
    /// name of a verified client certificate, say): its CONNECT is accepted
    /// without asking the authenticator, and `username` replaces whatever
    /// user name it sends (so ACL rules and `%u` see it). Call it right after
    /// [`Broker::accept`].
    pub fn set_identity(&mut self, conn: ConnId, username: &str) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth_mut().identity = MqttString::from_str(username).ok();
        }
    }

    /// Bytes arrived on `conn`. Every complete packet is taken from `buf`;
    /// an incomplete one is left for the next call.
    pub fn handle_read(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) {
        let max = self.config.max_unwritten_bytes;
        let stamp = self.epoch.stamp(now);
        // All a decoder keeps between reads is the version (and the fixed
        // header of a partial packet, which is cheap to read again): it is
        // made for each read rather than kept by every connection.
        let mut decoder = self.decoder.clone();
        if let Some(v) = self.conns.get(&conn).and_then(|c| c.version) {
            decoder.set_version(v);
        }
        loop {
            let Some(c) = self.conns.get_mut(&conn) else {
                // Closed: whatever arrives is discarded.
                buf.clear();
                return;
            };
            if c.held.is_some() || c.congested(max) {
                return;
            }
            let before = buf.len();
            match decoder.decode(buf) {
                Ok(Some(p)) => {
                    // A CONNECT sets it.
                    c.version = decoder.version();
                    self.stats.bytes_received += (before - buf.len()) as u64;
                    c.last_packet = stamp;
                    self.handle_packet(conn, p, now);
                    self.close_if_oversize(conn, now);
                }
                Ok(None) => return,
                Err(e) => {
                    buf.clear();
                    let code = e.reason_code();
                    if matches!(c.phase, Phase::AwaitConnect) {
                        if let tern_codec::DecodeError::UnsupportedProtocolVersion(_) = e {
                            // [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1 form), then close.
                            let ack = ConnAck {
                                reason_code: ReasonCode::UnsupportedProtocolVersion,
                                ..ConnAck::new(false)
                            };
                            self.send_as(conn, ProtocolVersion::V3_1_1, &ack.into());
                        }
                    }
                    self.protocol_error(conn, code, now);
                    return;
                }
            }
        }
    }

    /// `n` bytes of `conn`'s transmits were written to its transport. With
    /// [`Config::max_unwritten_bytes`] set, the embedding reports every
    /// write here; messages held back for a slow consumer go out again, and
    /// its input is read again: call [`Broker::handle_read`] afterwards if
    /// it has input buffered.
    pub fn handle_written(&mut self, conn: ConnId, n: usize, now: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.unwritten = c.unwritten.saturating_sub(n);
        if let Phase::Active(sid) = c.phase {
            self.drain_queue(sid, now);
        }
    }

    /// The transport of `conn` closed (by the peer, or on an I/O error).
    pub fn handle_closed(&mut self, conn: ConnId, now: Instant) {
        if self.conns.contains_key(&conn) {
            self.drop_conn(conn, true, now);
        }
    }

    /// Runs every timer due at `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = self.epoch.stamp(now);
        loop {
            // Both sets in time order; at the same instant, connections'
            // timers first.
            let conn = self.conn_timers.first().copied();
            let conn = conn.filter(|&(at, _)| at <= due);
            let other = self.timers.first().copied();
            let other = other.filter(|&(at, _)| at <= now);
            let (at, timer) = match (conn, other) {
                (Some((at, id)), other)
                    if other.is_none_or(|(o, _)| self.epoch.instant(at) <= o) =>
                {
                    self.conn_timers.pop_first();
                    self.conn_timer(id, now);
                    continue;
                }
                (_, Some(t)) => t,
                (_, None) => return,
            };
            self.timers.pop_first();
            match timer {
                Timer::SessionExpiry(sid) => {
                    if let Some(s) = self.sessions.get(&sid) {
                        if s.conn.is_none() && s.expires_at == Some(self.epoch.stamp(at)) {
                            self.end_session(sid, now);
                        }
                    }
                }
                Timer::Will(sid) => {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        let due = Some(self.epoch.stamp(at));
                        if s.will.as_ref().is_some_and(|w| w.at == due) {
                            let w = s.will.take().expect("will exists");
                            self.publish_will(&w.will, Some(sid), now);
                        }
                    }
                }
                Timer::Sys => {
                    let stats = self.stats();
                    self.publish_sys(&stats, now);
                    if let Some(i) = self.config.sys_interval {
                        self.timers.insert((now + i, Timer::Sys));
                    }
                }
            }
        }
    }

    /// A connection's timer: its CONNECT deadline, or its keep alive
    /// (re-armed at the real deadline if a packet came since).
    fn conn_timer(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(c.phase, Phase::AwaitConnect) {
            return self.close(id, ReasonCode::MaximumConnectTime, true, now);
        }
        let Some(ka) = c.keep_alive() else { return };
        let due = self.epoch.instant(c.last_packet) + ka;
        if due <= now {
            self.disconnect(id, ReasonCode::KeepAliveTimeout, now);
        } else {
            c.timer = self.epoch.stamp(due);
            self.conn_timers.insert((c.timer, id));
        }
    }

    /// The next instant at which [`Broker::handle_timeout`] must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self
            .conn_timers
            .first()
            .map(|&(at, _)| self.epoch.instant(at));
        let other = self.timers.first().map(|&(at, _)| at);
        match (conn, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next bytes to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Answers a request event: `Ok(())` accepts, `Err(code)` refuses with
    /// that reason code. A token for a connection that has closed since is
    /// ignored. Afterwards, call [`Broker::handle_read`] for the connection
    /// with whatever input it has buffered.
    pub fn answer(&mut self, token: Token, verdict: Result<(), ReasonCode>, now: Instant) {
        let step = match verdict {
            Ok(()) => AuthStep::Success(None),
            Err(code) => AuthStep::Fail(code),
        };
        self.answer_auth(token, step, now);
    }

    /// Answers an authentication request ([`Event::Authenticate`] or
    /// [`Event::AuthContinue`]) with the next step of an enhanced
    /// authentication: a challenge for the client, success (with optional
    /// Authentication Data for the client) or failure. Other requests take
    /// `Success` as accept and `Fail` as refuse.
    pub fn answer_auth(&mut self, token: Token, step: AuthStep, now: Instant) {
        self.answer_held(token, step, now);
        self.close_if_oversize(token.conn, now);
    }

    fn answer_held(&mut self, token: Token, step: AuthStep, now: Instant) {
        let Some(c) = self.conns.get_mut(&token.conn) else {
            return;
        };
        match c.held.take().map(|b| *b) {
            Some((t, held)) if t == token => {
                let v = match &step {
                    AuthStep::Success(_) => Verdict::Allow,
                    AuthStep::Fail(code) => Verdict::Deny(*code),
                    AuthStep::Continue(_) => Verdict::Ask,
                };
                match held {
                    Held::Connect(connect, assigned) => match step {
                        // A challenge needs a method the client chose (5.0).
                        AuthStep::Continue(_) if c.auth_method().is_none() => {
                            let deny = Verdict::Deny(ReasonCode::BadAuthenticationMethod);
                            self.connect_decided(token.conn, *connect, assigned, deny, now)
                        }
                        AuthStep::Continue(data) => {
                            c.auth_mut().connect = Some((connect, assigned));
                            self.send_auth(
                                token.conn,
                                ReasonCode::ContinueAuthentication,
                                Some(data),
                            );
                        }
                        AuthStep::Success(data) => {
                            c.auth_mut().success_data = data;
                            self.connect_decided(token.conn, *connect, assigned, v, now)
                        }
                        AuthStep::Fail(_) => {
                            self.connect_decided(token.conn, *connect, assigned, v, now)
                        }
                    },
                    Held::Reauth => match step {
                        AuthStep::Continue(data) => {
                            c.auth_mut().reauth_waiting = true;
                            self.send_auth(
                                token.conn,
                                ReasonCode::ContinueAuthentication,
                                Some(data),
                            );
                        }
                        AuthStep::Success(data) => {
                            self.send_auth(token.conn, ReasonCode::Success, data);
                        }
                        AuthStep::Fail(code) => {
                            let code = refusal(code, PacketType::Disconnect);
                            self.disconnect(token.conn, code, now)
                        }
                    },
                    _ if v == Verdict::Ask => {
                        // A challenge answers only an authentication.
                        self.protocol_error(
                            token.conn,
                            ReasonCode::ImplementationSpecificError,
                            now,
                        )
                    }
                    Held::Publish(p, topic) => self.publish_decided(token.conn, p, topic, v, now),
                    Held::Subscribe {
                        packet,
                        next,
                        mut codes,
                    } => {
                        let code = self.grant(token.conn, &packet, next, v);
                        codes.push(code);
                        self.subscribe_from(token.conn, packet, next + 1, codes, now);
                    }
                }
            }
            other => c.held = other.map(Box::new),
        }
    }

    /// Shuts the broker down: every connection is closed, 5.0 clients first
    /// get DISCONNECT 0x8B (server shutting down), and wills are published
    /// as for any connection that ends without the client's DISCONNECT.
    /// Sessions stay (export them to keep them across a restart).
    pub fn shutdown(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.disconnect(conn, ReasonCode::ServerShuttingDown, now);
        }
    }

    /// Routes a message that another broker instance (a shard of the same
    /// server) forwarded with [`Event::Forward`] to this instance's
    /// subscribers, and stores or clears it as retained if it is, so every
    /// shard answers subscriptions from a full retained set. Returns how
    /// many sessions it was delivered to.
    pub fn route_foreign(&mut self, msg: Arc<Message>, now: Instant) -> usize {
        if msg.retain {
            // Over the limit, this shard's copy is not kept; the publisher's
            // shard answered the client.
            let _ = self.retain(&msg);
        }
        self.route(&msg, now)
    }

    // ---- storage boundary ----

    /// A copy of every session (connected or not), for a durable store.
    pub fn export_sessions(&self) -> Vec<StoredSession> {
        let stored = |d: &Delivery| StoredDelivery {
            message: d.msg.clone(),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.sub_ids.clone(),
        };
        self.sessions
            .values()
            .map(|s| {
                let f = s.flow();
                let mut inflight: Vec<_> = f.inflight.iter().collect();
                inflight.sort_by_key(|(_, o)| o.seq);
                StoredSession {
                    client_id: MqttString::from_str(&s.client.client_id)
                        .expect("a client id stays valid"),
                    username: s.client.username.clone(),
                    version: s.version,
                    expiry: s.expiry,
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|(f, sub)| StoredSubscription {
                            filter: f.clone(),
                            options: sub.options,
                            id: sub.id,
                        })
                        .collect(),
                    inflight: inflight
                        .into_iter()
                        .map(|(&id, o)| {
                            let stage = match o.state {
                                OutState::Ack => InflightStage::AwaitPubAck,
                                OutState::Rec => InflightStage::AwaitPubRec,
                                OutState::Comp => InflightStage::AwaitPubComp,
                            };
                            (id, stage, stored(&o.delivery))
                        })
                        .collect(),
                    queued: f.queue.iter().map(stored).collect(),
                    incoming_qos2: f.incoming_qos2.iter().copied().collect(),
                    will: s.will.as_ref().map(|w| w.will.clone()),
                }
            })
            .collect()
    }

    /// Every retained message, for a durable store.
    pub fn export_retained(&self) -> Vec<Arc<Message>> {
        let mut out = Vec::with_capacity(self.retained.len());
        self.retained.for_each(|_, m| out.push(m.clone()));
        out
    }

    /// Restores a session as offline, as if its connection had just closed
    /// abnormally: its expiry starts now and its will is published or
    /// scheduled.
    pub fn import_session(
        &mut self,
        stored: StoredSession,
        now: Instant,
    ) -> Result<(), ImportError> {
        if self
            .by_client_id
            .get(stored.client_id.as_bytes(), &self.sessions)
            .is_some()
        {
            return Err(ImportError::Exists(stored.client_id.as_str().to_owned()));
        }
        let mut s = Session::new(stored.client_id.as_str().to_owned(), stored.version);
        s.client.username = stored.username;
        s.expiry = stored.expiry;
        s.window = self.config.max_inflight.max(1);
        let delivery = |d: StoredDelivery| Delivery {
            msg: d.message,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.subscription_ids,
        };
        for (seq, (id, stage, d)) in stored.inflight.into_iter().enumerate() {
            let state = match stage {
                InflightStage::AwaitPubAck => OutState::Ack,
                InflightStage::AwaitPubRec => OutState::Rec,
                InflightStage::AwaitPubComp => OutState::Comp,
            };
            let o = Outgoing {
                delivery: delivery(d),
                state,
                seq: seq as u64,
            };
            let f = s.flow_mut();
            if id == 0 || f.inflight.insert(id, o).is_some() {
                return Err(ImportError::PacketId(id));
            }
            f.next_seq = seq as u64 + 1;
        }
        for d in stored.queued {
            s.push_queue(delivery(d));
        }
        if !stored.incoming_qos2.is_empty() {
            s.flow_mut().incoming_qos2 = stored.incoming_qos2.into_iter().collect();
        }
        s.will = stored.will.map(SessionWill::new);
        let subs: Vec<_> = stored.subscriptions;
        let sid = self.new_session_id();
        for sub in &subs {
            let v = Sub {
                options: sub.options,
                id: sub.id,
            };
            let new = s.subscriptions.insert(sub.filter.clone(), v).is_none();
            self.subs.subscribe(&sub.filter, sid, v);
            if new {
                self.subscription_changed(&sub.filter, true);
            }
        }
        self.sessions.insert(sid, Box::new(s));
        self.by_client_id.insert(sid, &self.sessions);
        self.go_offline(sid, now);
        Ok(())
    }

    /// Restores a retained message.
    pub fn import_retained(&mut self, msg: Arc<Message>) {
        let _ = self.retain(&msg);
    }

    /// Checks the broker's internal invariants: every limit holds, and the
    /// tables agree with each other. For tests and fuzzing; `Err` names the
    /// first broken invariant.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.config;
        if cfg.forward {
            let mut counted: BTreeMap<String, u32> = BTreeMap::new();
            for s in self.sessions.values() {
                for f in s.subscriptions.keys() {
                    *counted.entry(f.filter().to_owned()).or_insert(0) += 1;
                }
            }
            if counted != self.interest {
                return Err("interest counts differ from the subscriptions".into());
            }
        }
        // One timer entry per connection at most, due when it says.
        let mut timed = BTreeSet::new();
        for &(at, id) in &self.conn_timers {
            match self.conns.get(&id) {
                None => return Err(format!("conn {}: a timer outlives it", id.0)),
                Some(c) if c.timer != at => {
                    return Err(format!("conn {}: its timer is not where it says", id.0))
                }
                Some(_) => {}
            }
            if !timed.insert(id) {
                return Err(format!("conn {}: two timers", id.0));
            }
        }
        for (&sid, s) in &self.sessions {
            let who = s.client.client_id.as_str();
            let f = s.flow();
            if f.inflight.len() > usize::from(cfg.max_inflight) {
                return Err(format!("{who}: {} in flight", f.inflight.len()));
            }
            if f.inflight.contains_key(&0) {
                return Err(format!("{who}: packet id 0 in flight"));
            }
            if f.queue.len() > cfg.max_queued_messages {
                return Err(format!("{who}: {} queued", f.queue.len()));
            }
            let bytes: usize = f.queue.iter().map(|d| d.msg.weight()).sum();
            if bytes != f.queued_bytes || bytes > cfg.max_queued_bytes {
                return Err(format!("{who}: queued bytes {bytes} vs {}", f.queued_bytes));
            }
            if f.incoming_qos2.len() > usize::from(cfg.receive_maximum) {
                return Err(format!("{who}: {} unreleased QoS 2", f.incoming_qos2.len()));
            }
            if s.subscriptions.len() > cfg.max_subscriptions {
                return Err(format!("{who}: {} subscriptions", s.subscriptions.len()));
            }
            if self
                .by_client_id
                .get(s.client.client_id.as_bytes(), &self.sessions)
                != Some(sid)
            {
                return Err(format!("{who}: not indexed by client id"));
            }
            if let Some(conn) = s.conn {
                match self.conns.get(&conn).map(|c| &c.phase) {
                    Some(Phase::Active(x)) if *x == sid => {}
                    _ => return Err(format!("{who}: connection {conn:?} does not point back")),
                }
            }
            for (f, sub) in &s.subscriptions {
                if self.subs.get(f, &sid) != Some(sub) {
                    return Err(format!("{who}: subscription {f} not in the index"));
                }
            }
        }
        if self.sessions.len() > cfg.max_sessions {
            return Err("session limit exceeded".into());
        }
        for (&conn, c) in &self.conns {
            if let Phase::Active(sid) = c.phase {
                if self.sessions.get(&sid).and_then(|s| s.conn) != Some(conn) {
                    return Err(format!("{conn:?}: session does not point back"));
                }
            }
        }
        let subs: usize = self.sessions.values().map(|s| s.subscriptions.len()).sum();
        if subs != self.subs.len() {
            return Err(format!(
                "{subs} subscriptions in sessions, {} indexed",
                self.subs.len()
            ));
        }
        if self.retained.len() > cfg.max_retained_messages
            || self.retained.total_weight() > cfg.max_retained_bytes
        {
            return Err("retained limits exceeded".into());
        }
        if self.conns.len() > cfg.max_connections {
            return Err("connection limit exceeded".into());
        }
        Ok(())
    }

    // ---- packets ----

    fn handle_packet(&mut self, conn: ConnId, p: Packet, now: Instant) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let sid = match c.phase {
            Phase::AwaitConnect => {
                match p {
                    Packet::Connect(connect) if !c.auth_exchange() => {
                        self.on_connect(conn, *connect, now)
                    }
                    Packet::Auth(a) if c.auth_exchange() => self.on_auth(conn, a, now),
                    _ => self.protocol_error(conn, ReasonCode::ProtocolError, now),
                }
                return;
            }
            Phase::Active(sid) => sid,
        };
        match p {
            Packet::Publish(p) => self.on_publish(conn, sid, p, now),
            Packet::PubAck(a) => {
                self.on_ack(conn, sid, a, OutState::Ack, now);
            }
            Packet::PubRec(a) => self.on_pubrec(conn, sid, a, now),
            Packet::PubComp(a) => {
                self.on_ack(conn, sid, a, OutState::Comp, now);
            }
            Packet::PubRel(a) => self.on_pubrel(conn, sid, a),
            Packet::Subscribe(s) => self.subscribe_from(conn, s, 0, Vec::new(), now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(conn, sid, u),
            Packet::PingReq => self.send(conn, &Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(conn, sid, d, now),
            Packet::Auth(a) => self.on_auth(conn, a, now),
            // [MQTT-3.1.0-2]: a second CONNECT is a protocol error.
            _ => self.protocol_error(conn, ReasonCode::ProtocolError, now),
        }
    }

    fn on_connect(&mut self, conn: ConnId, mut connect: Connect, now: Instant) {
        // (The connection took its version from the decoder.)
        let v = connect.protocol;
        let mut assigned = false;
        // MQTT 3.1: a client id of 1 to 23 characters, nothing else.
        if v == ProtocolVersion::V3_1 && !(1..=23).contains(&connect.client_id.len()) {
            return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
        }
        // Client identifier rules: [MQTT-3.1.3-6], [MQTT-3.1.3-8].
        if connect.client_id.is_empty() {
            if v.is_v5() || connect.clean_start {
                connect.client_id = self.assign_client_id();
                assigned = true;
            } else {
                return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
            }
        }
        // [MQTT-3.1.3-5]: 1 to 23 bytes are always allowed.
        if connect.client_id.len() > self.config.max_client_id_len.max(23) {
            return self.refuse(conn, ReasonCode::ClientIdentifierNotValid, now);
        }
        if let Some(w) = &connect.will {
            if w.qos > self.config.maximum_qos {
                return self.refuse(conn, ReasonCode::QoSNotSupported, now);
            }
            if w.retain && !self.config.retain_available {
                return self.refuse(conn, ReasonCode::RetainNotSupported, now);
            }
        }
        if let Some(id) = self.conns[&conn]
            .auth
            .as_ref()
            .and_then(|a| a.identity.clone())
        {
            connect.username = Some(id);
            connect.password = None;
            return self.connect_decided(conn, connect, assigned, Verdict::Allow, now);
        }
        let credentials = Credentials {
            client_id: connect.client_id.as_str().to_owned(),
            username: connect.username.as_ref().map(|u| u.as_str().to_owned()),
            password: connect.password.clone(),
            method: connect
                .properties
                .authentication_method
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            data: connect.properties.authentication_data.clone(),
        };
        let c = self.conns.get_mut(&conn).expect("connection exists");
        if let Some(m) = &connect.properties.authentication_method {
            c.auth_mut().method = Some(m.clone());
        }
        match self.authn.authenticate(&credentials) {
            Verdict::Ask => {
                let token = self.token(conn);
                let c = self.conns.get_mut(&conn).expect("connection exists");
                c.held = Some(Box::new((
                    token,
                    Held::Connect(Box::new(connect), assigned),
                )));
                self.events
                    .push_back(Event::Authenticate { token, credentials });
            }
            v => self.connect_decided(conn, connect, assigned, v, now),
        }
    }

    fn refuse(&mut self, conn: ConnId, code: ReasonCode, now: Instant) {
        let code = fit(code, PacketType::ConnAck);
        let ack = ConnAck {
            reason_code: code,
            ..ConnAck::new(false)
        };
        self.send(conn, &ack.into());
        self.close(conn, code, true, now);
    }

    fn connect_decided(
        &mut self,
        conn: ConnId,
        connect: Connect,
        assigned: bool,
        v: Verdict,
        now: Instant,
    ) {
        if let Verdict::Deny(code) = v {
            return self.refuse(conn, refusal(code, PacketType::ConnAck), now);
        }
        let version = connect.protocol;
        let assigned = assigned && version.is_v5();
        // Takeover: [MQTT-3.1.4-3].
        let existing = self
            .by_client_id
            .get(connect.client_id.as_bytes(), &self.sessions);
        if let Some(sid) = existing {
            if let Some(old) = self.sessions[&sid].conn {
                self.disconnect(old, ReasonCode::SessionTakenOver, now);
            }
        }
        // The takeover may have ended the old session (expiry 0).
        let existing = self
            .by_client_id
            .get(connect.client_id.as_bytes(), &self.sessions);
        let resume = existing.filter(|_| !connect.clean_start);
        if let (Some(sid), None) = (existing, resume) {
            self.end_session(sid, now);
        }
        if resume.is_none() && self.sessions.len() >= self.config.max_sessions {
            return self.refuse(conn, ReasonCode::QuotaExceeded, now);
        }
        let session_present = resume.is_some();
        let sid = match resume {
            Some(sid) => sid,
            None => {
                let sid = self.new_session_id();
                // Its own copy of the id, not a slice of the read buffer.
                let id = connect.client_id.as_str().to_owned();
                self.sessions
                    .insert(sid, Box::new(Session::new(id, version)));
                self.by_client_id.insert(sid, &self.sessions);
                sid
            }
        };
        // Session expiry: 3.1.1 persistent sessions ask for "forever".
        let requested = if version.is_v5() {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry = requested.min(self.config.max_session_expiry);
        let client_window = connect
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get);
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.conn = Some(conn);
        s.version = version;
        s.expiry = expiry;
        s.expires_at = None;
        // A new connection cancels a pending will: [MQTT-3.1.3-9].
        s.will = connect
            .will
            .as_ref()
            .map(|w| SessionWill::new(compact_will(w)));
        s.client.username = connect.username.as_ref().map(|u| u.as_str().to_owned());
        s.window = client_window.min(self.config.max_inflight).max(1);

        let keep_alive = self.keep_alive_for(version, connect.keep_alive);
        let c = self.conns.get_mut(&conn).expect("connection exists");
        c.phase = Phase::Active(sid);
        c.keep_alive = keep_alive;
        let alias_out_max = connect.properties.topic_alias_maximum.unwrap_or(0);
        if alias_out_max > 0 {
            c.aliases.get_or_insert_with(Box::default).out_max = alias_out_max;
        }
        c.max_packet_out = connect
            .properties
            .maximum_packet_size
            .map_or(u32::MAX, NonZeroU32::get);
        let epoch = self.epoch;
        if let Some(ka) = c
            .keep_alive()
            .filter(|ka| now + *ka < epoch.instant(c.timer))
        {
            // Sooner than the CONNECT deadline, whose entry would check it.
            self.conn_timers.remove(&(c.timer, conn));
            c.timer = epoch.stamp(now + ka);
            self.conn_timers.insert((c.timer, conn));
        }

        let mut ack = ConnAck::new(session_present);
        if version.is_v5() {
            let p = &mut ack.properties;
            let cfg = &self.config;
            if assigned {
                p.assigned_client_identifier = Some(connect.client_id.clone());
            }
            if requested != expiry {
                p.session_expiry_interval = Some(expiry);
            }
            p.receive_maximum =
                NonZeroU16::new(cfg.receive_maximum).filter(|r| r.get() != u16::MAX);
            if cfg.maximum_qos != QoS::ExactlyOnce {
                p.maximum_qos = Some(cfg.maximum_qos);
            }
            if !cfg.retain_available {
                p.retain_available = Some(false);
            }
            p.maximum_packet_size = NonZeroU32::new(cfg.max_packet_size);
            if cfg.topic_alias_maximum > 0 {
                p.topic_alias_maximum = Some(cfg.topic_alias_maximum);
            }
            if !cfg.wildcard_subscriptions {
                p.wildcard_subscription_available = Some(false);
            }
            if !cfg.subscription_identifiers {
                p.subscription_identifiers_available = Some(false);
            }
            if !cfg.shared_subscriptions {
                p.shared_subscription_available = Some(false);
            }
            if cfg.server_keep_alive.is_some() || keep_alive != connect.keep_alive {
                p.server_keep_alive = Some(keep_alive);
            }
            let c = self.conns.get_mut(&conn).expect("connection exists");
            p.authentication_method = c.auth_method();
            // Authentication Data only makes sense within a method.
            let data = c.auth.as_mut().and_then(|a| a.success_data.take());
            p.authentication_data = data.filter(|_| p.authentication_method.is_some());
        }
        self.send(conn, &ack.into());
        self.events.push_back(Event::Connected {
            conn,
            client_id: connect.client_id.as_str().to_owned(),
            session_present,
        });
        if session_present {
            self.resend_inflight(conn, sid, now);
        }
        self.drain_queue(sid, now);
    }

    /// The keep alive a client asking for `asked` gets: the server's if it
    /// sets one, the cap if it asks for more or for none; on 5.0 only, which
    /// can say so in CONNACK (3.1.1 clients keep their own).
    fn keep_alive_for(&self, version: ProtocolVersion, asked: u16) -> u16 {
        if !version.is_v5() {
            return asked;
        }
        match (self.config.server_keep_alive, self.config.max_keep_alive) {
            (Some(k), _) => k,
            (None, Some(max)) if asked == 0 || asked > max => max,
            _ => asked,
        }
    }

    /// An AUTH from the client: the next step of an exchange, or the start
    /// of a re-authentication ([MQTT-4.12.0-*]).
    fn on_auth(&mut self, conn: ConnId, a: Auth, now: Instant) {
        let c = self.conns.get_mut(&conn).expect("connection exists");
        let Some(method) = c.auth_method() else {
            // [MQTT-4.12.0-6]: AUTH without a method at CONNECT.
            return self.protocol_error(conn, ReasonCode::ProtocolError, now);
        };
        if a.properties.authentication_method.as_ref() != Some(&method) {
            // [MQTT-4.12.0-5]: the method cannot change.
            return self.protocol_error(conn, ReasonCode::ProtocolError, now);
        }
        let reauthenticate = match (a.reason_code, &c.phase) {
            (ReasonCode::ContinueAuthentication, Phase::AwaitConnect) => false,
            (ReasonCode::ContinueAuthentication, Phase::Active(_)) if c.reauth_waiting() => false,
            (ReasonCode::ReAuthenticate, Phase::Active(_)) if !c.reauth_waiting() => true,
            _ => return self.protocol_error(conn, ReasonCode::ProtocolError, now),
        };
        let held = match c.auth.as_mut().and_then(|a| {
            a.reauth_waiting = false;
            a.connect.take()
        }) {
            Some((connect, assigned)) => Held::Connect(connect, assigned),
            None => Held::Reauth,
        };
        let client_id = match (&held, &c.phase) {
            (Held::Connect(connect, _), _) => connect.client_id.as_str().to_owned(),
            (_, Phase::Active(sid)) => self.sessions[sid].client.client_id.clone(),
            (_, Phase::AwaitConnect) => String::new(),
        };
        let token = self.token(conn);
        let c = self.conns.get_mut(&conn).expect("connection exists");
        c.held = Some(Box::new((token, held)));
        self.events.push_back(Event::AuthContinue {
            token,
            client_id,
            method: method.as_str().to_owned(),
            data: a.properties.authentication_data,
            reauthenticate,
        });
    }

    fn send_auth(&mut self, conn: ConnId, code: ReasonCode, data: Option<Bytes>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let auth = Auth {
            reason_code: code,
            properties: AuthProperties {
                authentication_method: c.auth_method(),
                authentication_data: data,
                ..AuthProperties::default()
            },
        };
        self.send(conn, &Packet::Auth(auth));
    }

    fn on_publish(&mut self, conn: ConnId, sid: SessionId, mut p: Publish, now: Instant) {
        let c = self.conns.get_mut(&conn).expect("connection exists");
        if p.qos.qos() > self.config.maximum_qos {
            return self.disconnect(conn, ReasonCode::QoSNotSupported, now);
        }
        if p.retain && !self.config.retain_available {
            return self.disconnect(conn, ReasonCode::RetainNotSupported, now);
        }
        // Topic alias: [MQTT-3.3.2-7] ... [MQTT-3.3.2-12].
        if let Some(alias) = p.properties.topic_alias.take() {
            let i = usize::from(alias.get());
            if i > usize::from(self.config.topic_alias_maximum) {
                return self.disconnect(conn, ReasonCode::TopicAliasInvalid, now);
            }
            let aliases_in = &mut c.aliases.get_or_insert_with(Box::default).incoming;
            if aliases_in.len() < i {
                aliases_in.resize(i, None);
            }
            if p.topic.is_empty() {
                match &aliases_in[i - 1] {
                    Some(t) => p.topic = t.clone(),
                    None => return self.disconnect(conn, ReasonCode::ProtocolError, now),
                }
            } else {
                aliases_in[i - 1] = Some(p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return self.disconnect(conn, ReasonCode::ProtocolError, now);
        }
        // QoS 2 resent before PUBREL: acknowledge again, do not route again.
        if let QosPid::ExactlyOnce(id) = p.qos {
            let received = &self.sessions[&sid].flow().incoming_qos2;
            if received.contains(&id.get()) {
                return self.send(conn, &Packet::PubRec(Ack::new(id)));
            }
            if received.len() >= usize::from(self.config.receive_maximum) {
                return self.disconnect(conn, ReasonCode::ReceiveMaximumExceeded, now);
            }
        }
        self.stats.messages_received += 1;
        let topic = p.topic.clone();
        if topic.levels().count() > self.config.max_topic_levels
            || topic.len() > self.config.max_topic_length
        {
            return self.publish_decided(
                conn,
                p,
                topic,
                Verdict::Deny(ReasonCode::TopicNameInvalid),
                now,
            );
        }
        // Clients do not publish to `$SYS`: it is the broker's.
        if topic.as_str().starts_with("$SYS") {
            return self.publish_decided(
                conn,
                p,
                topic,
                Verdict::Deny(ReasonCode::NotAuthorized),
                now,
            );
        }
        match self.authz.publish(&self.sessions[&sid].client, &topic) {
            Verdict::Ask => {
                let client = self.sessions[&sid].client.clone();
                let token = self.token(conn);
                let c = self.conns.get_mut(&conn).expect("connection exists");
                c.held = Some(Box::new((token, Held::Publish(p, topic.clone()))));
                self.events.push_back(Event::AuthorizePublish {
                    token,
                    client,
                    topic,
                });
            }
            v => self.publish_decided(conn, p, topic, v, now),
        }
    }

    fn publish_decided(
        &mut self,
        conn: ConnId,
        p: Publish,
        topic: TopicName,
        v: Verdict,
        now: Instant,
    ) {
        let Some(Phase::Active(sid)) = self.conns.get(&conn).map(|c| &c.phase) else {
            return;
        };
        let sid = *sid;
        let mut code = match v {
            Verdict::Deny(code) => refusal(code, PacketType::PubAck),
            _ => ReasonCode::Success,
        };
        if !code.is_error() {
            let props = p.properties;
            let msg = Arc::new(Message {
                topic,
                payload: p.payload,
                qos: p.qos.qos(),
                retain: p.retain,
                expires_at: props
                    .message_expiry_interval
                    .map(|s| now + Duration::from_secs(s.into())),
                properties: PublishProperties {
                    message_expiry_interval: None,
                    topic_alias: None,
                    subscription_identifiers: Vec::new(),
                    ..props
                },
                publisher: Some(sid),
            });
            if msg.retain {
                if let Err(c) = self.retain(&msg) {
                    // A 5.0 QoS 1/2 message is refused (0x97). Where no
                    // refusal can be said (QoS 0, or 3.1.1, which answers
                    // positively by [MQTT-3.3.5-2]) the message is
                    // delivered, just not kept.
                    if self.conns[&conn].version().is_v5() && p.qos != QosPid::AtMostOnce {
                        code = c;
                    }
                }
            }
            if !code.is_error() {
                let n = self.route(&msg, now);
                if self.config.forward {
                    self.events.push_back(Event::Forward(msg));
                } else if n == 0 {
                    code = ReasonCode::NoMatchingSubscribers;
                }
            }
        }
        let v5 = self.conns[&conn].version().is_v5();
        match p.qos {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => {
                let code = fit(code, PacketType::PubAck);
                self.send(conn, &Packet::PubAck(ack(id, code, v5)))
            }
            QosPid::ExactlyOnce(id) => {
                let code = fit(code, PacketType::PubRec);
                if !code.is_error() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.flow_mut().incoming_qos2.insert(id.get());
                    }
                }
                self.send(conn, &Packet::PubRec(ack(id, code, v5)));
            }
        }
    }

    /// Stores or clears a retained message.
    fn retain(&mut self, msg: &Arc<Message>) -> Result<(), ReasonCode> {
        if msg.payload.is_empty() {
            // [MQTT-3.3.1-6]: an empty payload clears the retained message.
            self.retained.remove(&msg.topic);
            return Ok(());
        }
        let replaced = self.retained.get(&msg.topic).map_or(0, |m| m.weight());
        let full_count = self.retained.len() >= self.config.max_retained_messages && replaced == 0;
        let full_bytes =
            self.retained.total_weight() - replaced + msg.weight() > self.config.max_retained_bytes;
        if full_count || full_bytes {
            return Err(ReasonCode::QuotaExceeded);
        }
        self.retained
            .insert(msg.topic.clone(), compact_message(msg), msg.weight());
        Ok(())
    }

    /// Delivers `msg` to every matching session; returns how many.
    fn route(&mut self, msg: &Arc<Message>, now: Instant) -> usize {
        self.wire_cache.clear();
        let n = self.route_inner(msg, now);
        self.wire_cache.clear();
        n
    }

    fn route_inner(&mut self, msg: &Arc<Message>, now: Instant) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.subs.matches(&msg.topic, &mut scratch);
        // Reused from message to message: routing allocates nothing.
        let mut deliveries = std::mem::take(&mut self.deliveries);
        for entries in scratch.per_subscriber() {
            let sid = entries[0].0;
            let mut qos = None;
            let mut retain = false;
            let mut sub_ids = Vec::new();
            for (_, sub) in entries {
                // [MQTT-3.8.3-3]: No Local.
                if sub.options.no_local && msg.publisher == Some(sid) {
                    continue;
                }
                qos = qos.max(Some(sub.options.qos));
                retain |= sub.options.retain_as_published && msg.retain;
                sub_ids.extend(sub.id);
            }
            if let Some(q) = qos {
                deliveries.push((sid, q.min(msg.qos), retain, sub_ids));
            }
        }
        let sessions = &self.sessions;
        // Round robin over the connected members; over all of them (to
        // queue) when none is connected.
        let mut online_first = |m: &[(SessionId, Sub)], cursor: &mut usize| {
            let n = m.len();
            let online = |i: usize| sessions.get(&m[i].0).is_some_and(|s| s.conn.is_some());
            let start = *cursor % n;
            let at = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| online(i))
                .unwrap_or(start);
            *cursor = at + 1;
            Some(at)
        };
        for &g in scratch.groups() {
            let group = self.subs.group(g);
            if !self
                .shared_routing
                .delivers(group.name(), group.filter(), msg)
            {
                continue;
            }
            if let Some(&(sid, sub)) = self.subs.pick(g, &mut online_first) {
                let retain = sub.options.retain_as_published && msg.retain;
                let ids = sub.id.into_iter().collect();
                deliveries.push((sid, sub.options.qos.min(msg.qos), retain, ids));
            }
        }
        self.scratch = scratch;
        let n = deliveries.len();
        for (sid, qos, retain, sub_ids) in deliveries.drain(..) {
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain,
                sub_ids,
            };
            self.deliver(sid, d, now);
        }
        self.deliveries = deliveries;
        n
    }

    fn deliver(&mut self, sid: SessionId, d: Delivery, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if d.msg.expired(now) {
            return;
        }
        let max = self.config.max_unwritten_bytes;
        let congested = s
            .conn
            .and_then(|c| self.conns.get(&c))
            .is_some_and(|c| c.congested(max));
        match s.conn {
            Some(_) if d.qos == QoS::AtMostOnce && congested => {
                // A slow consumer loses QoS 0 messages, nobody else does.
                self.stats.messages_dropped += 1;
                self.events.push_back(Event::Dropped {
                    client_id: s.client.client_id.clone(),
                    topic: d.msg.topic.clone(),
                });
            }
            Some(conn) if d.qos == QoS::AtMostOnce => self.send_publish(conn, sid, d, now),
            Some(conn) if s.flow().queue.is_empty() && s.window_open() && !congested => {
                self.send_publish(conn, sid, d, now)
            }
            None if d.qos == QoS::AtMostOnce && !self.config.queue_qos0_offline => {}
            _ => self.enqueue(sid, d),
        }
    }

    fn enqueue(&mut self, sid: SessionId, d: Delivery) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let w = d.msg.weight();
        let full = |s: &Session, cfg: &Config| {
            let f = s.flow();
            f.queue.len() >= cfg.max_queued_messages || f.queued_bytes + w > cfg.max_queued_bytes
        };
        let mut dropped = None;
        if full(s, &self.config) {
            match self.config.queue_full {
                QueueFullPolicy::DropNewest => dropped = Some(d.msg.topic.clone()),
                QueueFullPolicy::DropOldest => {
                    while full(s, &self.config) {
                        match s.pop_queue() {
                            Some(old) => {
                                self.stats.messages_dropped += 1;
                                self.events.push_back(Event::Dropped {
                                    client_id: s.client.client_id.clone(),
                                    topic: old.msg.topic.clone(),
                                });
                            }
                            None => break,
                        }
                    }
                    if full(s, &self.config) {
                        dropped = Some(d.msg.topic.clone());
                    }
                }
            }
        }
        match dropped {
            Some(topic) => {
                self.stats.messages_dropped += 1;
                self.events.push_back(Event::Dropped {
                    client_id: s.client.client_id.clone(),
                    topic,
                });
            }
            None => s.push_queue(d),
        }
    }

    /// Sends queued messages while the window allows.
    fn drain_queue(&mut self, sid: SessionId, now: Instant) {
        let max = self.config.max_unwritten_bytes;
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let Some(conn) = s.conn else { return };
            let Some(front) = s.flow().queue.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && !s.window_open() {
                return;
            }
            if self.conns.get(&conn).is_some_and(|c| c.congested(max)) {
                return;
            }
            let d = s.pop_queue().expect("front exists");
            if d.msg.expired(now) {
                continue;
            }
            self.send_publish(conn, sid, d, now);
        }
    }

    /// Sends one delivery, registering it in flight if QoS 1/2.
    fn send_publish(&mut self, conn: ConnId, sid: SessionId, d: Delivery, now: Instant) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let (qos, state) = match d.qos {
            QoS::AtMostOnce => (QosPid::AtMostOnce, None),
            q => {
                let Some(id) = s.allocate_pid().and_then(PacketId::new) else {
                    return self.enqueue(sid, d);
                };
                if q == QoS::AtLeastOnce {
                    (QosPid::AtLeastOnce(id), Some(OutState::Ack))
                } else {
                    (QosPid::ExactlyOnce(id), Some(OutState::Rec))
                }
            }
        };
        let sent = self.write_publish(conn, &d, qos, false, now);
        if let (Some(state), Some(id), true) = (state, qos.packet_id(), sent) {
            let f = self
                .sessions
                .get_mut(&sid)
                .expect("session exists")
                .flow_mut();
            let seq = f.next_seq;
            f.next_seq += 1;
            f.inflight.insert(
                id.get(),
                Outgoing {
                    delivery: d,
                    state,
                    seq,
                },
            );
        }
    }

    /// Encodes and queues a PUBLISH. Returns false if it was too large for
    /// the client, in which case it is dropped as if delivered
    /// ([MQTT-3.1.2-25]).
    fn write_publish(
        &mut self,
        conn: ConnId,
        d: &Delivery,
        qos: QosPid,
        dup: bool,
        now: Instant,
    ) -> bool {
        let c = self.conns.get_mut(&conn).expect("connection exists");
        let version = c.version();
        let v5 = version.is_v5();
        let alias_out_max = c.alias_out_max();
        let m = &d.msg;
        let expiry = match m.expires_at {
            Some(at) if v5 => {
                // The remaining lifetime is forwarded: [MQTT-3.3.2-6].
                let left = at.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                Some(secs.min(u64::from(u32::MAX)) as u32)
            }
            _ => None,
        };
        // A QoS 0 PUBLISH without per-subscriber parts is the same bytes for
        // every subscriber speaking the same version: encoded once per route.
        let key = (qos == QosPid::AtMostOnce
            && !dup
            && d.sub_ids.is_empty()
            && !(v5 && alias_out_max > 0))
            .then_some(WireKey {
                msg: Arc::as_ptr(m) as usize,
                version,
                retain: d.retain,
                expiry,
            });
        let max = c.max_packet_out as usize;
        if let Some(k) = &key {
            if let Some((_, data)) = self.wire_cache.iter().find(|(w, _)| w == k) {
                if data.len() > max {
                    return false;
                }
                let data = data.clone();
                self.stats.messages_sent += 1;
                self.push_transmit(conn, data);
                return true;
            }
        }
        let mut new_alias = None;
        let mut p = Publish {
            dup,
            qos,
            retain: d.retain,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            properties: PublishProperties::default(),
        };
        if v5 {
            p.properties = m.properties.clone();
            p.properties.subscription_identifiers = d.sub_ids.clone();
            p.properties.message_expiry_interval = expiry;
            if alias_out_max > 0 {
                let out = &c.aliases.get_or_insert_with(Box::default).outgoing;
                if let Some(&a) = out.get(&m.topic) {
                    p.topic = TopicName::empty();
                    p.properties.topic_alias = NonZeroU16::new(a);
                } else if out.len() < usize::from(alias_out_max) {
                    new_alias = Some(out.len() as u16 + 1);
                    p.properties.topic_alias = new_alias.and_then(NonZeroU16::new);
                }
            }
        }
        if p.encoded_len(version) > max {
            return false;
        }
        // The alias is the client's to know only once the packet is sent.
        if let Some(a) = new_alias {
            c.aliases
                .get_or_insert_with(Box::default)
                .outgoing
                .insert(m.topic.clone(), a);
        }
        let len = p.encoded_len(version);
        let arena = self.arena_for(len);
        p.encode(version, arena).expect("broker packets encode");
        let data = arena.split().freeze();
        if let Some(k) = key {
            self.wire_cache.push((k, data.clone()));
        }
        self.stats.messages_sent += 1;
        self.push_transmit(conn, data);
        true
    }

    /// After a session resumes: PUBLISH (DUP) and PUBREL again, in order.
    fn resend_inflight(&mut self, conn: ConnId, sid: SessionId, now: Instant) {
        let inflight = &self.sessions[&sid].flow().inflight;
        let mut order: Vec<(u64, u16)> = inflight.iter().map(|(&id, o)| (o.seq, id)).collect();
        order.sort_unstable();
        for (_, id) in order {
            let o = &self.sessions[&sid].flow().inflight[&id];
            let pid = PacketId::new(id).expect("non-zero");
            match o.state {
                OutState::Comp => self.send(conn, &Packet::PubRel(Ack::new(pid))),
                state => {
                    let d = o.delivery.clone();
                    let qos = if state == OutState::Ack {
                        QosPid::AtLeastOnce(pid)
                    } else {
                        QosPid::ExactlyOnce(pid)
                    };
                    // [MQTT-4.4.0-1]: resent with DUP.
                    if !self.write_publish(conn, &d, qos, true, now) {
                        self.sessions
                            .get_mut(&sid)
                            .expect("session exists")
                            .flow_mut()
                            .inflight
                            .remove(&id);
                    }
                }
            }
        }
    }

    fn on_ack(&mut self, _conn: ConnId, sid: SessionId, a: Ack, expect: OutState, now: Instant) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let id = a.packet_id.get();
        let Some(f) = s.flow_if_any() else { return };
        if f.inflight.get(&id).is_some_and(|o| o.state == expect) {
            f.inflight.remove(&id);
            self.drain_queue(sid, now);
        }
    }

    fn on_pubrec(&mut self, conn: ConnId, sid: SessionId, a: Ack, now: Instant) {
        let v5 = self.conns[&conn].version().is_v5();
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let id = a.packet_id;
        match s.flow_if_any().and_then(|f| f.inflight.get_mut(&id.get())) {
            Some(o) if o.state == OutState::Rec => {
                if a.reason_code.is_error() {
                    // The exchange ends here: [MQTT-4.3.3-4] (5.0).
                    s.flow_mut().inflight.remove(&id.get());
                    self.drain_queue(sid, now);
                } else {
                    o.state = OutState::Comp;
                    self.send(conn, &Packet::PubRel(Ack::new(id)));
                }
            }
            Some(o) if o.state == OutState::Comp => {
                self.send(conn, &Packet::PubRel(Ack::new(id)));
            }
            _ => {
                let code = ReasonCode::PacketIdentifierNotFound;
                self.send(conn, &Packet::PubRel(ack(id, code, v5)));
            }
        }
    }

    fn on_pubrel(&mut self, conn: ConnId, sid: SessionId, a: Ack) {
        let v5 = self.conns[&conn].version().is_v5();
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let released = s
            .flow_if_any()
            .is_some_and(|f| f.incoming_qos2.remove(&a.packet_id.get()));
        let code = if released {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send(conn, &Packet::PubComp(ack(a.packet_id, code, v5)));
    }

    /// Works through a SUBSCRIBE's filters from `next`, pausing where the
    /// authorizer asks the embedding.
    fn subscribe_from(
        &mut self,
        conn: ConnId,
        packet: Subscribe,
        next: usize,
        mut codes: Vec<(ReasonCode, bool)>,
        now: Instant,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let v5 = c.version().is_v5();
        let Phase::Active(sid) = c.phase else { return };
        if next == 0
            && packet.properties.subscription_identifier.is_some()
            && !self.config.subscription_identifiers
        {
            return self.disconnect(conn, ReasonCode::SubscriptionIdentifiersNotSupported, now);
        }
        if next == 0 && v5 {
            // What CONNACK said is not available is a protocol error on 5.0
            // (§3.2.2.3.11, §3.2.2.3.15); 3.1.1 gets 0x80 for the filter.
            let cfg = &self.config;
            let filters = &packet.filters;
            if !cfg.shared_subscriptions && filters.iter().any(|f| f.filter.is_shared()) {
                return self.disconnect(conn, ReasonCode::SharedSubscriptionsNotSupported, now);
            }
            if !cfg.wildcard_subscriptions && filters.iter().any(|f| f.filter.has_wildcards()) {
                return self.disconnect(conn, ReasonCode::WildcardSubscriptionsNotSupported, now);
            }
        }
        for i in next..packet.filters.len() {
            let filter = &packet.filters[i].filter;
            let verdict = match self.precheck(conn, filter, v5) {
                Some(v) => v,
                None => self.authz.subscribe(&self.sessions[&sid].client, filter),
            };
            if verdict == Verdict::Ask {
                let client = self.sessions[&sid].client.clone();
                let token = self.token(conn);
                let filter = filter.clone();
                let c = self.conns.get_mut(&conn).expect("connection exists");
                c.held = Some(Box::new((
                    token,
                    Held::Subscribe {
                        packet,
                        next: i,
                        codes,
                    },
                )));
                self.events.push_back(Event::AuthorizeSubscribe {
                    token,
                    client,
                    filter,
                });
                return;
            }
            let code = self.grant(conn, &packet, i, verdict);
            codes.push(code);
        }
        let ack = SubAck {
            packet_id: packet.packet_id,
            reason_codes: codes.iter().map(|&(c, _)| c).collect(),
            properties: Default::default(),
        };
        self.send(conn, &Packet::SubAck(ack));
        // Retained messages follow the SUBACK.
        for (i, f) in packet.filters.iter().enumerate() {
            let (code, new) = codes[i];
            // Retained messages are not sent for shared subscriptions.
            let send = match f.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => new,
                RetainHandling::DoNotSend => false,
            };
            if send && !code.is_error() && !f.filter.is_shared() {
                self.send_retained(conn, &packet, i, now);
            }
        }
    }

    /// Checks that do not depend on the policy.
    fn precheck(&self, _conn: ConnId, filter: &TopicFilter, _v5: bool) -> Option<Verdict> {
        let cfg = &self.config;
        if filter.is_shared() && !cfg.shared_subscriptions {
            return Some(Verdict::Deny(ReasonCode::SharedSubscriptionsNotSupported));
        }
        if filter.has_wildcards() && !cfg.wildcard_subscriptions {
            return Some(Verdict::Deny(ReasonCode::WildcardSubscriptionsNotSupported));
        }
        if filter.levels().count() > cfg.max_topic_levels || filter.len() > cfg.max_topic_length {
            return Some(Verdict::Deny(ReasonCode::TopicFilterInvalid));
        }
        None
    }

    /// Installs filter `i` of `packet` if `verdict` allows; returns its code.
    fn grant(
        &mut self,
        conn: ConnId,
        packet: &Subscribe,
        i: usize,
        verdict: Verdict,
    ) -> (ReasonCode, bool) {
        if let Verdict::Deny(code) = verdict {
            return (refusal(code, PacketType::SubAck), false);
        }
        let Some(Phase::Active(sid)) = self.conns.get(&conn).map(|c| &c.phase) else {
            return (ReasonCode::UnspecifiedError, false);
        };
        let sid = *sid;
        let f = &packet.filters[i];
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let exists = s.subscriptions.contains_key(&f.filter);
        if !exists && s.subscriptions.len() >= self.config.max_subscriptions {
            return (ReasonCode::QuotaExceeded, false);
        }
        let mut options = f.options;
        options.qos = options.qos.min(self.config.maximum_qos);
        let sub = Sub {
            options,
            id: packet.properties.subscription_identifier,
        };
        // Kept for the session's life: its own bytes, not the read buffer's.
        let filter = TopicFilter::new(f.filter.as_str()).expect("a valid filter stays valid");
        s.subscriptions.insert(filter, sub);
        self.subs.subscribe(&f.filter, sid, sub);
        if !exists {
            self.subscription_changed(&f.filter, true);
        }
        (ReasonCode::granted(options.qos), !exists)
    }

    fn send_retained(&mut self, conn: ConnId, packet: &Subscribe, i: usize, now: Instant) {
        let f = &packet.filters[i];
        let Some(Phase::Active(sid)) = self.conns.get(&conn).map(|c| &c.phase) else {
            return;
        };
        let sid = *sid;
        let Some(sub) = self.sessions[&sid].subscriptions.get(&f.filter) else {
            return;
        };
        let granted = sub.options.qos;
        let mut found = Vec::new();
        self.retained
            .for_each_match(&f.filter, |_, m| found.push(m.clone()));
        for m in found {
            if m.expired(now) {
                // An expired retained message is forgotten when found.
                self.retained.remove(&m.topic);
                continue;
            }
            let d = Delivery {
                qos: m.qos.min(granted),
                msg: m,
                // Retained messages sent because of a subscribe keep RETAIN
                // (3.1.1 [MQTT-3.3.1-8]; 5.0 §3.3.1.3).
                retain: true,
                sub_ids: packet
                    .properties
                    .subscription_identifier
                    .into_iter()
                    .collect(),
            };
            self.deliver(sid, d, now);
        }
    }

    fn on_unsubscribe(&mut self, conn: ConnId, sid: SessionId, u: Unsubscribe) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut gone = Vec::new();
        for f in &u.filters {
            if s.subscriptions.remove(f).is_some() {
                self.subs.unsubscribe(f, &sid);
                gone.push(f);
                codes.push(ReasonCode::Success);
            } else {
                codes.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        for f in gone {
            self.subscription_changed(f, false);
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Default::default(),
        };
        self.send(conn, &Packet::UnsubAck(ack));
    }

    fn on_disconnect(&mut self, conn: ConnId, sid: SessionId, d: Disconnect, now: Instant) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if let Some(e) = d.properties.session_expiry_interval {
            // 5.0 §3.14.2.2.2: 0 at CONNECT cannot become non-zero.
            if s.expiry == 0 && e != 0 {
                return self.disconnect(conn, ReasonCode::ProtocolError, now);
            }
            s.expiry = e.min(self.config.max_session_expiry);
        }
        // [MQTT-3.14.4-3]: a normal DISCONNECT discards the will; 0x04 keeps it.
        let abnormal = d.reason_code == ReasonCode::DisconnectWithWillMessage;
        if !abnormal {
            s.will = None;
        }
        self.close(conn, ReasonCode::Success, abnormal, now);
    }

    // ---- closing ----

    /// Sends DISCONNECT with `code` (5.0 only) and closes.
    fn disconnect(&mut self, conn: ConnId, code: ReasonCode, now: Instant) {
        let code = fit(code, PacketType::Disconnect);
        if let Some(c) = self.conns.get(&conn) {
            if c.version().is_v5() && matches!(c.phase, Phase::Active(_)) {
                self.send(conn, &Packet::Disconnect(Disconnect::new(code)));
            }
        }
        self.close(conn, code, true, now);
    }

    /// A malformed or forbidden packet: DISCONNECT with `code` (5.0, once
    /// connected), then close.
    fn protocol_error(&mut self, conn: ConnId, code: ReasonCode, now: Instant) {
        self.disconnect(conn, code, now);
    }

    /// Closes the connection and tells the embedding to.
    fn close(&mut self, conn: ConnId, reason: ReasonCode, abnormal: bool, now: Instant) {
        if self.conns.contains_key(&conn) {
            self.drop_conn(conn, abnormal, now);
            self.events.push_back(Event::Close { conn, reason });
        }
    }

    /// Forgets the connection; the session goes offline (or ends).
    fn drop_conn(&mut self, conn: ConnId, abnormal: bool, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.conn_timers.remove(&(c.timer, conn));
        let Phase::Active(sid) = c.phase else { return };
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.conn = None;
        if !abnormal {
            s.will = None;
        }
        self.go_offline(sid, now);
    }

    /// The session lost its connection: it ends, or waits for its expiry
    /// with its will published or scheduled.
    fn go_offline(&mut self, sid: SessionId, now: Instant) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let delay = s
            .will
            .as_ref()
            .and_then(|w| w.will.properties.will_delay_interval)
            .unwrap_or(0);
        if s.expiry == 0 {
            // The session ends now, and with it any delayed will.
            return self.end_session(sid, now);
        }
        if s.expiry != u32::MAX {
            let at = now + Duration::from_secs(s.expiry.into());
            s.expires_at = Some(self.epoch.stamp(at));
            self.timers.insert((at, Timer::SessionExpiry(sid)));
        }
        if let Some(w) = s.will.as_mut() {
            if delay == 0 {
                let w = s.will.take().expect("will exists");
                self.publish_will(&w.will, Some(sid), now);
            } else {
                // [MQTT-3.1.3-9]: published after the delay unless the
                // session resumes first (or at session end, if sooner).
                let at = now + Duration::from_secs(delay.into());
                w.at = Some(self.epoch.stamp(at));
                self.timers.insert((at, Timer::Will(sid)));
            }
        }
    }

    /// Ends a session: a pending will is published, subscriptions go.
    fn end_session(&mut self, sid: SessionId, now: Instant) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        self.by_client_id.remove(s.client.client_id.as_bytes(), sid);
        for f in s.subscriptions.keys() {
            self.subs.unsubscribe(f, &sid);
            self.subscription_changed(f, false);
        }
        if let Some(w) = s.will.take() {
            self.publish_will(&w.will, None, now);
        }
    }

    fn publish_will(
        &mut self,
        will: &tern_codec::Will,
        publisher: Option<SessionId>,
        now: Instant,
    ) {
        let msg = Arc::new(Message::from_will(will, now, publisher));
        if msg.retain {
            let _ = self.retain(&msg);
        }
        self.route(&msg, now);
        if self.config.forward {
            self.events.push_back(Event::Forward(msg));
        }
    }

    /// Publishes the `$SYS` topics with `st` (retained, QoS 0). The broker
    /// does it by itself every [`Config::sys_interval`]; a server running
    /// several instances turns that off and calls this on each with the
    /// sum of their [`Broker::stats`].
    pub fn publish_sys(&mut self, st: &Stats, now: Instant) {
        let uptime = now.saturating_duration_since(self.started).as_secs();
        let values: [(&str, String); 10] = [
            ("$SYS/broker/version", self.config.version.to_owned()),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
            (
                "$SYS/broker/clients/connected",
                st.clients_connected.to_string(),
            ),
            ("$SYS/broker/clients/total", st.sessions.to_string()),
            (
                "$SYS/broker/messages/received",
                st.messages_received.to_string(),
            ),
            ("$SYS/broker/messages/sent", st.messages_sent.to_string()),
            ("$SYS/broker/bytes/received", st.bytes_received.to_string()),
            ("$SYS/broker/bytes/sent", st.bytes_sent.to_string()),
            (
                "$SYS/broker/subscriptions/count",
                st.subscriptions.to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                st.retained.to_string(),
            ),
        ];
        for (topic, value) in values {
            let msg = Arc::new(Message {
                topic: TopicName::from_static(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PublishProperties::default(),
                expires_at: None,
                publisher: None,
            });
            let _ = self.retain(&msg);
            self.route(&msg, now);
        }
    }

    // ---- output ----

    /// A client id no session uses: `tern-`, the shard and a counter, in
    /// hex ([MQTT-3.1.3-6]: unique on this server).
    fn assign_client_id(&mut self) -> MqttString {
        loop {
            let n = self.next_assigned_id;
            self.next_assigned_id += 1;
            let id = format!("tern-{:04x}{:012x}", self.config.shard, n);
            if self
                .by_client_id
                .get(id.as_bytes(), &self.sessions)
                .is_none()
            {
                return MqttString::from_str(&id).expect("ascii id");
            }
        }
    }

    /// A local subscription to `filter` was made or went: the shared
    /// routing hears of a filter's first subscription and of its last (a
    /// shared one counts for its inner filter; only with `forward`), and a
    /// shared group's member count is reported.
    fn subscription_changed(&mut self, filter: &TopicFilter, subscribed: bool) {
        if self.config.forward {
            let inner = filter.filter();
            if subscribed {
                let n = self.interest.entry(inner.to_owned()).or_insert(0);
                *n += 1;
                if *n == 1 {
                    self.shared_routing.interest(inner, true);
                }
            } else if let Some(n) = self.interest.get_mut(inner) {
                *n -= 1;
                if *n == 0 {
                    self.interest.remove(inner);
                    self.shared_routing.interest(inner, false);
                }
            }
        }
        if let Some(share) = filter.share_group() {
            self.events.push_back(Event::SharedMembers {
                share: share.to_owned(),
                filter: filter.filter().to_owned(),
                members: self.subs.shared_members(filter),
            });
        }
    }

    fn new_session_id(&mut self) -> SessionId {
        let id = u64::from(self.config.shard) << 48 | self.next_session;
        let id = SessionId(NonZeroU64::new(id).expect("counted from 1"));
        self.next_session += 1;
        id
    }

    fn token(&mut self, conn: ConnId) -> Token {
        let seq = self.next_token;
        self.next_token += 1;
        Token { conn, seq }
    }

    fn send(&mut self, conn: ConnId, p: &Packet) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let v = c.version();
        // [MQTT-3.1.2-24]: nothing larger than the client's Maximum Packet
        // Size. (PUBLISH is checked, and dropped, before it gets here.) A
        // control packet that does not fit ends the connection.
        if p.encoded_len(v) > c.max_packet_out as usize {
            c.oversize = true;
            return;
        }
        self.send_as(conn, v, p);
    }

    /// Closes the connection if an answer to it did not fit its Maximum
    /// Packet Size.
    fn close_if_oversize(&mut self, conn: ConnId, now: Instant) {
        if self.conns.get(&conn).is_some_and(|c| c.oversize) {
            self.close(conn, ReasonCode::PacketTooLarge, true, now);
        }
    }

    fn send_as(&mut self, conn: ConnId, v: ProtocolVersion, p: &Packet) {
        // Packets the broker builds are valid by construction.
        let arena = self.arena_for(p.encoded_len(v));
        p.encode(v, arena).expect("broker packets encode");
        let data = arena.split().freeze();
        self.push_transmit(conn, data);
    }

    /// The arena, with room for `len` more bytes: a full chunk is left to
    /// the packets already split off it (freed with the last of them) and a
    /// new one started.
    fn arena_for(&mut self, len: usize) -> &mut BytesMut {
        if self.arena.capacity() - self.arena.len() < len {
            self.arena = BytesMut::with_capacity(len.max(ARENA_CHUNK));
        }
        &mut self.arena
    }

    fn push_transmit(&mut self, conn: ConnId, data: Bytes) {
        self.stats.bytes_sent += data.len() as u64;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.unwritten += data.len();
        }
        self.transmits.push_back(Transmit { conn, data });
    }
}

impl Conn {
    /// Whether the connection has more unwritten output than `max` allows.
    fn congested(&self, max: Option<usize>) -> bool {
        max.is_some_and(|max| self.unwritten >= max)
    }
}

// Values a broker keeps for long (client ids, filters, wills, retained
// messages) are copied out of the read buffer they were decoded from:
// a slice would keep the whole buffer alive.

fn compact_topic(t: &TopicName) -> TopicName {
    TopicName::new(t.as_str()).expect("a valid topic stays valid")
}

fn compact_will(w: &tern_codec::Will) -> tern_codec::Will {
    tern_codec::Will {
        topic: compact_topic(&w.topic),
        payload: Bytes::copy_from_slice(&w.payload),
        ..w.clone()
    }
}

fn compact_message(m: &Arc<Message>) -> Arc<Message> {
    Arc::new(Message {
        topic: compact_topic(&m.topic),
        payload: Bytes::copy_from_slice(&m.payload),
        properties: m.properties.clone(),
        ..Message::clone(m)
    })
}

/// `code` if `ty` may carry it, else Unspecified error (0x80): codes can
/// come from the embedding's policy.
fn fit(code: ReasonCode, ty: PacketType) -> ReasonCode {
    if code.allowed_in(ty) {
        code
    } else {
        ReasonCode::UnspecifiedError
    }
}

/// The code to refuse with: `code` if it is a failure `ty` may carry, else
/// Unspecified error (0x80). A policy may name any code, even a success.
fn refusal(code: ReasonCode, ty: PacketType) -> ReasonCode {
    if code.is_error() {
        fit(code, ty)
    } else {
        ReasonCode::UnspecifiedError
    }
}

fn ack(id: PacketId, code: ReasonCode, v5: bool) -> Ack {
    Ack {
        reason_code: if v5 { code } else { ReasonCode::Success },
        ..Ack::new(id)
    }
}
