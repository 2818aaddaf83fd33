//! The broker state machine: [`Broker`], its inputs and its outputs.
//!
//! The rooms of the core, one concept each:
//!
//! - `conn`: a transport connection as the core keeps it;
//! - `connect`: CONNECT, CONNACK, authentication (enhanced too);
//! - `publish`: inbound PUBLISH and its acknowledgements, wills;
//! - `delivery`: outbound messages: windows, queues, resends;
//! - `routing`: the subscription and retained indexes, who gets a message;
//! - `subscribe`: SUBSCRIBE, UNSUBSCRIBE, retained messages on subscribe;
//! - `lifecycle`: sessions by client id, closing, going offline, ending;
//! - `timers`: connection deadlines, keep alive, expiry, delayed wills;
//! - `output`: what the embedding polls: transmits (encoded into shared
//!   chunks) and events;
//! - `storage`: export and import of sessions and retained messages;
//! - `sys`: the `$SYS` counters;
//! - `invariants`: what must always hold, checked by every simulation step.

mod conn;
mod connect;
mod delivery;
mod durability;
mod invariants;
mod lifecycle;
mod output;
mod publish;
mod query;
mod routing;
mod spill;
mod storage;
mod subscribe;
mod sys;
mod timers;

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Ack, ConnAck, Decoder, MqttString, Packet, PacketId, PacketType, ProtocolVersion, ReasonCode,
    TopicName,
};

use crate::policy::{AllowAll, AuthStep, Authenticator, Authorizer};
use crate::router::Report;
use crate::session::{Envelope, OutState, Session};
use crate::stamp::{Epoch, Stamp};
use crate::Config;
use crate::Message;

use conn::{Conn, Phase};
use lifecycle::ClientIds;
use output::Outbox;
use routing::Routing;
use timers::Timer;

pub use connect::RESERVED_PREFIX;
pub use output::{BrokerEvent, Transmit};
pub use query::{RetainedAnswer, SessionInfo};
pub use sys::Stats;

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

type Sessions = BTreeMap<SessionId, Box<Session>>;

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
/// - Outputs, after every input: with [`Config::forward`], drain
///   [`poll_report`](Broker::poll_report) into the shared
///   [`Router`](crate::router::Router) (and its [`Forward`](crate::router::Forward)s
///   into [`handle_forward`](Broker::handle_forward)); then drain
///   [`poll_transmit`](Broker::poll_transmit) (write the bytes in order),
///   then [`poll_event`](Broker::poll_event), then read
///   [`poll_timeout`](Broker::poll_timeout).
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
    // Boxed values: a tree node moves entries, not whole connections, and
    // holds no slack the size of one.
    conns: BTreeMap<ConnId, Box<Conn>>,
    sessions: Sessions,
    by_client_id: ClientIds,
    /// Subscriptions, retained messages, and who gets a message.
    routing: Routing,
    /// Each connection's one timer (its CONNECT deadline, then its keep
    /// alive). At the same instant, these run before the others.
    conn_timers: BTreeSet<(Stamp, ConnId)>,
    /// Sessions' expiry and delayed wills, `$SYS`.
    timers: BTreeSet<(Instant, Timer)>,
    /// The base of every `Stamp`.
    epoch: Epoch,
    /// What each read's decoder starts from.
    decoder: Decoder,
    /// Transmits and events, and the chunks packets are encoded into.
    out: Outbox,
    next_conn: u64,
    next_session: u64,
    next_token: u64,
    next_assigned_id: u64,
    started: Instant,
    stats: Stats,
    /// An instant and the wall-clock time then, once the embedding gave it.
    wall: Option<(Instant, crate::durable::WallMs)>,
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
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            by_client_id: ClientIds::new(seed),
            routing: Routing::new(seed),
            conn_timers: BTreeSet::new(),
            timers: BTreeSet::new(),
            epoch: Epoch::new(now),
            decoder,
            out: Outbox::default(),
            next_conn: 1,
            next_session: 1,
            next_token: 1,
            next_assigned_id: 1,
            started: now,
            stats: Stats::default(),
            wall: None,
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

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
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

    /// The embedding vouches for the connection (an adapter in the
    /// broker's own process, such as a history recorder): its session's
    /// publishes and subscriptions are not put to the authorization
    /// policy. Call it right after [`Broker::accept`].
    pub fn set_trusted(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.auth_mut().trusted = true;
        }
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

    /// The next bytes to write.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop()
    }

    /// The next report for the [`Router`](crate::router::Router) shared
    /// with other instances (only with [`Config::forward`]). Drain these
    /// first, before the transmits: a subscription must reach the router
    /// before its SUBACK reaches the client.
    #[must_use]
    pub fn poll_report(&mut self) -> Option<Report> {
        self.out.reports.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<BrokerEvent> {
        self.out.events.pop_front()
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

    /// Refuses a request the embedding has nobody to answer: as a policy
    /// that denies would (Not authorized, 0x87, or the nearest code the
    /// packet and version can carry), rather than leave the client waiting.
    pub fn decline(&mut self, token: Token, now: Instant) {
        self.answer(token, Err(ReasonCode::NotAuthorized), now);
    }

    /// Answers an authentication request ([`BrokerEvent::Authenticate`] or
    /// [`BrokerEvent::AuthContinue`]) with the next step of an enhanced
    /// authentication: a challenge for the client, success (with optional
    /// Authentication Data for the client) or failure. Other requests take
    /// `Success` as accept and `Fail` as refuse.
    pub fn answer_auth(&mut self, token: Token, step: AuthStep, now: Instant) {
        self.answer_held(token, step, now);
        self.close_if_oversize(token.conn, now);
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
        // QoS 1 messages in flight are stored as such only now: a restart
        // resends them with their packet ids.
        let mut sent = Vec::new();
        for (&sid, s) in self.sessions.iter().filter(|(_, s)| s.stored) {
            for (&pid, o) in &s.flow().inflight {
                if o.state == OutState::Ack {
                    sent.push(crate::durable::Change::Sent {
                        session: sid,
                        id: o.delivery.id,
                        packet_id: pid,
                        stage: crate::durable::InflightStage::AwaitPubAck,
                    });
                }
            }
        }
        for change in sent {
            self.out.log(change);
        }
    }

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

    fn token(&mut self, conn: ConnId) -> Token {
        let seq = self.next_token;
        self.next_token += 1;
        Token { conn, seq }
    }

    fn new_session_id(&mut self) -> SessionId {
        let id = u64::from(self.config.shard) << 48 | self.next_session;
        let id = SessionId(NonZeroU64::new(id).expect("counted from 1"));
        self.next_session += 1;
        id
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

fn compact_message(m: &Arc<Envelope>) -> Arc<Envelope> {
    Arc::new(Envelope {
        message: Message {
            topic: compact_topic(&m.topic),
            payload: Bytes::copy_from_slice(&m.payload),
            ..m.message.clone()
        },
        expires_at: m.expires_at,
        publisher: m.publisher,
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
