//! What the embedding polls, and the packets behind it: transmits
//! (encoded into shared chunks) and events.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tern_codec::{Packet, ProtocolVersion, Publish, ReasonCode, TopicFilter, TopicName};

use super::{Broker, ConnId, Token};
use crate::durable::{Change, Fetch};
use crate::policy::{ClientInfo, Credentials};
use crate::router::Report;

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

/// What the embedding must know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerEvent {
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
    /// A message was dropped for a session because its queue was full.
    Dropped {
        /// The session's client id.
        client_id: String,
        /// The topic of the dropped message (`None`: one the durable store
        /// held, dropped unread).
        topic: Option<TopicName>,
    },
}

impl BrokerEvent {
    /// The token of a request (authentication, authorization), to pass
    /// back with the answer; `None` for an event that asks nothing.
    pub fn token(&self) -> Option<Token> {
        match self {
            BrokerEvent::Authenticate { token, .. }
            | BrokerEvent::AuthContinue { token, .. }
            | BrokerEvent::AuthorizePublish { token, .. }
            | BrokerEvent::AuthorizeSubscribe { token, .. } => Some(*token),
            _ => None,
        }
    }
}

/// Bytes of one encoding chunk of the arena.
const ARENA_CHUNK: usize = 16 * 1024;

/// What makes two QoS 0 deliveries of one message the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WireKey {
    pub(super) msg: usize,
    pub(super) version: ProtocolVersion,
    pub(super) retain: bool,
    pub(super) expiry: Option<u32>,
}

/// The core's outputs: transmits and events in the order they are made,
/// the changes to the durable state, and the chunk packets are encoded
/// into.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Transmits that may be written now.
    ready: VecDeque<Transmit>,
    /// Transmits waiting for a change to be durable, each with the number
    /// of the last change made before it, in the order they were made.
    held: VecDeque<(u64, Transmit)>,
    /// How many transmits each connection has held: a later one for it
    /// waits behind them, whatever it depends on.
    held_per_conn: HashMap<ConnId, u32>,
    pub(super) events: VecDeque<BrokerEvent>,
    /// For the router, with `Config::forward`.
    pub(super) reports: VecDeque<Report>,
    /// Requests for spilled messages, with `Config::durable`.
    pub(super) fetches: VecDeque<Fetch>,
    /// Changes to the durable state, numbered from 1.
    changes: VecDeque<(u64, Change)>,
    /// The number of the last change made.
    logged: u64,
    /// The number of the last change the embedding said is durable.
    persisted: u64,
    /// Where outgoing packets are encoded: each is split off as its own
    /// `Bytes` sharing the chunk, so encoding allocates once per chunk, not
    /// once per packet.
    arena: BytesMut,
    /// Encoded QoS 0 PUBLISH packets of the message being routed.
    wires: Vec<(WireKey, Bytes)>,
}

impl Outbox {
    /// Queues bytes for `conn` that tell the client something that depends
    /// on every change made so far: they go out once those are durable.
    pub(super) fn push(&mut self, conn: ConnId, data: Bytes) {
        self.push_after(self.logged, conn, data);
    }

    /// Queues bytes that depend on no change (a QoS 0 or 1 PUBLISH, which a
    /// crash may make the client get again, as QoS 1 allows): they go out
    /// as soon as what the connection has waiting before them.
    pub(super) fn push_now(&mut self, conn: ConnId, data: Bytes) {
        self.push_after(0, conn, data);
    }

    fn push_after(&mut self, need: u64, conn: ConnId, data: Bytes) {
        let t = Transmit { conn, data };
        if need <= self.persisted
            && (self.held.is_empty() || !self.held_per_conn.contains_key(&conn))
        {
            self.ready.push_back(t);
        } else {
            *self.held_per_conn.entry(conn).or_insert(0) += 1;
            self.held.push_back((need, t));
        }
    }

    /// The next transmit that may be written.
    pub(super) fn pop(&mut self) -> Option<Transmit> {
        self.ready.pop_front()
    }

    /// Drops every transmit still waiting for a change to be durable
    /// (the store failed: those changes may never be).
    pub(super) fn drop_held(&mut self) -> Vec<Transmit> {
        self.held_per_conn.clear();
        self.held.drain(..).map(|(_, t)| t).collect()
    }

    /// Records a change to the durable state.
    pub(super) fn log(&mut self, change: Change) {
        self.logged += 1;
        self.changes.push_back((self.logged, change));
    }

    /// The next change, with its number.
    pub(super) fn pop_change(&mut self) -> Option<(u64, Change)> {
        self.changes.pop_front()
    }

    /// The changes up to number `n` are durable: what waited for them is
    /// ready, in order.
    pub(super) fn persisted(&mut self, n: u64) {
        self.persisted = self.persisted.max(n.min(self.logged));
        while self
            .held
            .front()
            .is_some_and(|&(need, _)| need <= self.persisted)
        {
            let (_, t) = self.held.pop_front().expect("front exists");
            if let Some(k) = self.held_per_conn.get_mut(&t.conn) {
                *k -= 1;
                if *k == 0 {
                    self.held_per_conn.remove(&t.conn);
                }
            }
            self.ready.push_back(t);
        }
    }

    /// Encodes a packet the broker built (valid by construction).
    pub(super) fn encode(&mut self, v: ProtocolVersion, p: &Packet) -> Bytes {
        let arena = self.arena_for(p.encoded_len(v));
        p.encode(v, arena).expect("broker packets encode");
        arena.split().freeze()
    }

    /// Encodes a PUBLISH the broker built.
    pub(super) fn encode_publish(&mut self, v: ProtocolVersion, p: &Publish) -> Bytes {
        let arena = self.arena_for(p.encoded_len(v));
        p.encode(v, arena).expect("broker packets encode");
        arena.split().freeze()
    }

    /// A QoS 0 PUBLISH of the message being routed, already encoded.
    pub(super) fn wire(&self, key: &WireKey) -> Option<&Bytes> {
        self.wires.iter().find(|(k, _)| k == key).map(|(_, b)| b)
    }

    /// Remembers an encoded PUBLISH for the rest of the route.
    pub(super) fn keep_wire(&mut self, key: WireKey, data: Bytes) {
        self.wires.push((key, data));
    }

    /// A route ends: its encoded packets are not shared further.
    pub(super) fn forget_wires(&mut self) {
        self.wires.clear();
    }

    /// The arena, with room for `len` more bytes: a full chunk is left to
    /// the packets already split off it (freed with the last of them) and a
    /// new one started.
    pub(super) fn arena_for(&mut self, len: usize) -> &mut BytesMut {
        if self.arena.capacity() - self.arena.len() < len {
            self.arena = BytesMut::with_capacity(len.max(ARENA_CHUNK));
        }
        &mut self.arena
    }
}

impl Broker {
    /// Encodes `p` for `conn` in its version and queues it; a packet larger
    /// than the client's Maximum Packet Size marks the connection, which
    /// [`Broker::close_if_oversize`] then closes.
    pub(super) fn send(&mut self, conn: ConnId, p: &Packet) {
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
    pub(super) fn close_if_oversize(&mut self, conn: ConnId, now: Instant) {
        if self.conns.get(&conn).is_some_and(|c| c.oversize) {
            self.close(conn, ReasonCode::PacketTooLarge, true, now);
        }
    }

    pub(super) fn send_as(&mut self, conn: ConnId, v: ProtocolVersion, p: &Packet) {
        let data = self.out.encode(v, p);
        self.push_transmit(conn, data);
    }

    pub(super) fn push_transmit(&mut self, conn: ConnId, data: Bytes) {
        self.count_transmit(conn, &data);
        self.out.push(conn, data);
    }

    /// Counts bytes handed out for `conn`.
    pub(super) fn count_transmit(&mut self, conn: ConnId, data: &Bytes) {
        self.stats.bytes_sent += data.len() as u64;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.unwritten += data.len();
        }
    }
}
