//! The client state machine: [`Client`], its inputs and outputs, and the
//! application's commands.
//!
//! The rooms: `event` (what the application learns: events, errors,
//! states), `connection` (a connection's life: CONNACK, resume or restart,
//! loss), `inbound` (what the server sends: messages, acknowledgements, the
//! application's acks), `outbound` (what the client sends: publishes,
//! (un)subscribe requests, flow control, encoding).

mod connection;
mod event;
mod inbound;
mod outbound;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Auth, AuthProperties, Connect, DecodeError, Decoder, Disconnect, Message, Packet, PacketId,
    ReasonCode, Subscribe, SubscribeFilter, SubscribeProperties, TopicFilter, Unsubscribe,
    UnsubscribeProperties,
};

use crate::store::{MemoryStore, Queued, RequestId, Store};
use crate::{ClientConfig, ConfigError, QueuePolicy};

use connection::{Link, PendingAck, ReqKind, Request};

pub use event::{
    AckId, ClientEvent, Delivery, DisconnectReason, PublishError, RequestError, State,
};

/// Bytes of new messages the client encodes ahead of the transport: past
/// this, publishes wait in the (bounded) queue until `poll_transmit` takes
/// the output, so a stalled transport cannot grow memory.
const OUT_HIGH: usize = 64 * 1024;

/// A complete MQTT client session, without I/O: see the crate docs for the
/// call contract.
pub struct Client {
    config: ClientConfig,
    store: Box<dyn Store>,
    decoder: Decoder,
    state: State,
    link: Link,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
    next_request: u64,
    next_seq: u64,
    next_pid: u16,
    next_ack: u64,
    /// SUBSCRIBE/UNSUBSCRIBE sent and not answered, by packet identifier.
    requests: BTreeMap<u16, Request>,
    /// SUBSCRIBE/UNSUBSCRIBE waiting for a connection.
    waiting: VecDeque<Request>,
    /// Filters the server granted, by filter, with the properties of their
    /// SUBSCRIBE (a resubscription sends them again).
    subscriptions: BTreeMap<Bytes, (SubscribeFilter, SubscribeProperties)>,
    /// Messages in flight from an earlier connection, to send again as the
    /// server's Receive Maximum allows (in order).
    resend: VecDeque<PacketId>,
    /// Manual acknowledgements, in the order the messages came.
    acks: VecDeque<PendingAck>,
    /// QoS 1/2 messages delivered to the application and not yet
    /// acknowledged by it (manual mode): packet identifier to ack sequence.
    /// The server cannot use an identifier twice, so at most 65,535.
    unacked: BTreeMap<u16, u64>,
    connected_once: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.config.client_id)
            .field("state", &self.state)
            .field("inflight", &self.store.inflight_len())
            .field("queued", &self.store.queued_len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with its session state in memory.
    pub fn new(config: ClientConfig) -> Client {
        Client::with_store(config, Box::new(MemoryStore::new()))
    }

    /// A client that keeps its session state in `store`, resuming whatever
    /// the store already holds: with messages in flight, a 5.0 client asks
    /// to resume the session (clean start off, if its session expiry is
    /// above zero); they are sent again after the CONNACK (or queued anew if
    /// the server lost the session), and queued messages follow in order.
    pub fn with_store(config: ClientConfig, store: Box<dyn Store>) -> Client {
        let inflight = store.inflight_in_order();
        // A store holding messages in flight comes from an earlier session:
        // ask to resume it (5.0 clean start off) if the session outlives
        // connections.
        let resume = !inflight.is_empty();
        let next_seq = inflight.last().map_or(0, |i| i.seq + 1);
        let mut next_request = inflight.iter().map(|i| i.id.0 + 1).max().unwrap_or(0);
        if let Some(q) = store.newest_queued() {
            next_request = next_request.max(q.0 + 1);
        }
        let decoder = decoder_for(&config);
        let keep_alive = config.keep_alive;
        Client {
            config,
            store,
            decoder,
            state: State::Disconnected,
            link: Link::new(keep_alive, None),
            out: BytesMut::new(),
            events: VecDeque::new(),
            next_request: next_request.max(1),
            next_seq,
            next_pid: 0,
            next_ack: 0,
            requests: BTreeMap::new(),
            waiting: VecDeque::new(),
            subscriptions: BTreeMap::new(),
            resend: VecDeque::new(),
            acks: VecDeque::new(),
            unacked: BTreeMap::new(),
            connected_once: resume,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The client identifier: the configured one, or the one the server
    /// assigned.
    pub fn client_id(&self) -> &str {
        self.config.client_id.as_str()
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// QoS 1/2 messages sent and not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.store.inflight_len()
    }

    /// Messages waiting to be sent.
    pub fn queued(&self) -> usize {
        self.store.queued_len()
    }

    /// The filters the server granted and that were not unsubscribed.
    pub fn subscriptions(&self) -> impl Iterator<Item = &SubscribeFilter> {
        self.subscriptions.values().map(|(f, _)| f)
    }

    /// A transport to the server is open: queue CONNECT.
    ///
    /// Call it once per transport, when the client is
    /// [`State::Disconnected`]; otherwise it does nothing.
    pub fn connect(&mut self, now: Instant) {
        if self.state != State::Disconnected {
            return;
        }
        if let Err(e) = self.config.validate() {
            self.events.push_back(ClientEvent::Disconnected {
                reason: DisconnectReason::InvalidConfig(e),
            });
            return;
        }
        self.decoder = decoder_for(&self.config);
        self.out.clear();
        self.link = Link::new(self.config.keep_alive, Some(now));
        self.link.connack_deadline = Some(now + self.config.connect_timeout);
        let c = &self.config;
        let v5 = c.version.is_v5();
        let clean_start = if v5 && self.connected_once && c.keeps_session() {
            false
        } else {
            c.clean_start
        };
        let mut connect = Connect::new(c.version, c.client_id.clone());
        connect.clean_start = clean_start;
        connect.keep_alive = u16::try_from(c.keep_alive.as_secs()).unwrap_or(u16::MAX);
        connect.username = c.username.clone();
        connect.password = c.password.clone();
        connect.will = c.will.clone();
        if v5 {
            let p = &mut connect.properties;
            p.session_expiry_interval =
                (c.session_expiry_interval > 0).then_some(c.session_expiry_interval);
            p.receive_maximum =
                std::num::NonZeroU16::new(c.receive_maximum).filter(|r| r.get() != u16::MAX);
            p.maximum_packet_size = c.maximum_packet_size.and_then(std::num::NonZeroU32::new);
            p.topic_alias_maximum = (c.topic_alias_maximum > 0).then_some(c.topic_alias_maximum);
            p.user_properties = c.user_properties.clone();
            p.authentication_method = c.authentication_method.clone();
            p.authentication_data = c.authentication_data.clone();
        }
        // Pings are timed from what the server was told.
        self.link.keep_alive = Duration::from_secs(connect.keep_alive.into());
        self.link.clean_start = clean_start;
        self.state = State::Connecting;
        // The configuration was checked; what is left is what the encoder
        // refuses (a string or property over 65,535 bytes).
        if let Err(e) = Packet::from(connect).encode(self.config.version, &mut self.out) {
            self.state = State::Disconnected;
            self.out.clear();
            self.events.push_back(ClientEvent::Disconnected {
                reason: DisconnectReason::InvalidConfig(ConfigError::Encode(e.to_string())),
            });
            return;
        }
        self.link.last_sent = Some(now);
    }

    /// Bytes came from the server: decode and handle every whole packet in
    /// `buf`, leaving a partial one there for the next call.
    pub fn handle_read(&mut self, buf: &mut BytesMut, now: Instant) {
        while self.state != State::Disconnected {
            match self.decoder.decode(buf) {
                Ok(Some(p)) => self.handle_packet(p, now),
                Ok(None) => break,
                Err(e) => {
                    self.protocol_error(decode_reason(&e), now);
                    break;
                }
            }
        }
    }

    /// One packet from the server, for adapters that decode themselves.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) {
        match (self.state, packet) {
            (State::Disconnected, _) => {}
            (State::Connecting, Packet::ConnAck(ack)) => self.on_connack(ack, now),
            (_, Packet::Auth(_)) if self.config.authentication_method.is_none() => {
                // AUTH only follows a CONNECT that named a method (§4.12).
                self.protocol_error(ReasonCode::ProtocolError, now)
            }
            (_, Packet::Auth(auth)) if self.config.version.is_v5() => {
                self.events.push_back(ClientEvent::Auth {
                    reason: auth.reason_code,
                    properties: auth.properties,
                });
            }
            (State::Connecting, _) => self.protocol_error(ReasonCode::ProtocolError, now),
            (State::Connected, p) => match p {
                Packet::Publish(p) => self.on_publish(p, now),
                Packet::PubAck(a) => self.on_puback(a, now),
                Packet::PubRec(a) => self.on_pubrec(a, now),
                Packet::PubRel(a) => self.on_pubrel(a, now),
                Packet::PubComp(a) => self.on_pubcomp(a, now),
                Packet::SubAck(a) => self.on_suback(a, now),
                Packet::UnsubAck(a) => self.on_unsuback(a, now),
                Packet::PingResp => self.link.ping_deadline = None,
                Packet::Disconnect(d) => self.lost(DisconnectReason::Server {
                    reason: d.reason_code,
                    properties: d.properties,
                }),
                _ => self.protocol_error(ReasonCode::ProtocolError, now),
            },
        }
    }

    /// The transport closed (or failed). Idempotent.
    pub fn handle_closed(&mut self, _now: Instant) {
        if self.state != State::Disconnected {
            self.lost(DisconnectReason::TransportClosed);
        }
    }

    /// Time passed: send PINGREQ, or give up on a silent server.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Disconnected => {}
            State::Connecting => {
                if self.link.connack_deadline.is_some_and(|d| now >= d) {
                    self.lost(DisconnectReason::ConnectTimeout);
                }
            }
            State::Connected => {
                if self.link.ping_deadline.is_some_and(|d| now >= d) {
                    self.lost(DisconnectReason::KeepAliveTimeout);
                } else if self.link.ping_deadline.is_none()
                    && !self.link.keep_alive.is_zero()
                    && self
                        .link
                        .last_sent
                        .is_some_and(|t| now >= t + self.link.keep_alive)
                {
                    self.link.ping_deadline = Some(now + self.config.ping_timeout);
                    // PINGREQ always encodes.
                    let _ = self.write(&Packet::PingReq, now);
                }
            }
        }
    }

    /// When [`Client::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Disconnected => None,
            State::Connecting => self.link.connack_deadline,
            State::Connected => match self.link.ping_deadline {
                Some(d) => Some(d),
                None if self.link.keep_alive.is_zero() => None,
                None => self.link.last_sent.map(|t| t + self.link.keep_alive),
            },
        }
    }

    /// Bytes to write to the transport, all that is pending in one buffer.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        let out = self.out.split().freeze();
        // Room again: encode what waited for it, for the next call.
        if let Some(now) = self.link.last_sent {
            self.send_queued(now);
        }
        Some(out)
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Publishes `message`. It is sent now if the client is connected and
    /// the in-flight window allows, otherwise queued (bounded by
    /// [`ClientConfig::max_queued`]). [`ClientEvent::Published`] with the returned
    /// id reports the outcome.
    pub fn publish(&mut self, message: Message, now: Instant) -> Result<RequestId, PublishError> {
        if self.state == State::Connected {
            self.check(&message)?;
        }
        let id = self.request_id();
        let item = Queued { id, message };
        if self.state == State::Connected
            && self.store.queued_len() == 0
            && self.resend.is_empty()
            && self.out.len() < OUT_HIGH
            && self.may_send(item.message.qos)
        {
            self.send_message(item, now);
            return Ok(id);
        }
        if self.store.queued_len() >= self.config.max_queued {
            match self.config.queue_policy {
                QueuePolicy::RejectNew => return Err(PublishError::QueueFull),
                QueuePolicy::DropOldest => match self.store.pop_queued() {
                    Some(old) => self.events.push_back(ClientEvent::Published {
                        id: old.id,
                        result: Err(PublishError::Dropped),
                    }),
                    None => return Err(PublishError::QueueFull),
                },
            }
        }
        self.store.push_queued(item);
        Ok(id)
    }

    /// Subscribes to `filters`; [`ClientEvent::Subscribed`] reports the result.
    /// Sent now if connected, otherwise at the next connection.
    pub fn subscribe(
        &mut self,
        filters: Vec<SubscribeFilter>,
        properties: SubscribeProperties,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        if filters.is_empty() {
            return Err(RequestError::NoFilters);
        }
        let sub = Subscribe {
            packet_id: PLACEHOLDER,
            filters,
            properties,
        };
        self.request(ReqKind::Subscribe(sub), now)
    }

    /// Unsubscribes from `filters`; [`ClientEvent::Unsubscribed`] reports the
    /// result.
    pub fn unsubscribe(
        &mut self,
        filters: Vec<TopicFilter>,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        self.unsubscribe_with(filters, UnsubscribeProperties::default(), now)
    }

    /// Unsubscribes with properties (5.0 user properties).
    pub fn unsubscribe_with(
        &mut self,
        filters: Vec<TopicFilter>,
        properties: UnsubscribeProperties,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        if filters.is_empty() {
            return Err(RequestError::NoFilters);
        }
        let unsub = Unsubscribe {
            packet_id: PLACEHOLDER,
            filters,
            properties,
        };
        self.request(ReqKind::Unsubscribe(unsub), now)
    }

    /// Acknowledges a message received with manual acknowledgement.
    /// Acknowledgements go out in the order the messages came: this one is
    /// sent once every earlier one was acknowledged. Returns `false` for an
    /// id that is no longer pending (the connection it came on was lost and
    /// the server will send the message again).
    pub fn ack(&mut self, id: AckId, now: Instant) -> bool {
        let Ok(i) = self.acks.binary_search_by_key(&id.0, |a| a.seq) else {
            return false;
        };
        self.acks[i].acked = true;
        self.flush_acks(now);
        true
    }

    /// Sends AUTH (5.0 enhanced authentication): Continue Authentication
    /// with the next step's data, or Re-authenticate.
    pub fn auth(&mut self, reason: ReasonCode, data: Option<Bytes>, now: Instant) {
        if self.state == State::Disconnected
            || !self.config.version.is_v5()
            || self.config.authentication_method.is_none()
        {
            return;
        }
        let auth = Auth {
            reason_code: reason,
            properties: AuthProperties {
                authentication_method: self.config.authentication_method.clone(),
                authentication_data: data,
                ..AuthProperties::default()
            },
        };
        if self.write(&Packet::Auth(auth), now).is_err() {
            self.protocol_error(ReasonCode::ProtocolError, now);
        }
    }

    /// Ends the connection politely: DISCONNECT (Normal disconnection), so
    /// the server drops the will. The session stays as configured; what is
    /// queued or in flight waits for the next connection.
    pub fn disconnect(&mut self, now: Instant) {
        self.disconnect_with(Disconnect::new(ReasonCode::Success), now);
    }

    /// Ends the connection with this DISCONNECT (5.0: a reason code such as
    /// Disconnect with Will Message, a new Session Expiry Interval).
    pub fn disconnect_with(&mut self, disconnect: Disconnect, now: Instant) {
        if self.state == State::Disconnected {
            return;
        }
        let _ = self.write(&Packet::Disconnect(disconnect), now);
        self.lost(DisconnectReason::Local);
    }
}

/// A packet identifier to fill requests with until they are sent.
const PLACEHOLDER: PacketId = match PacketId::new(1) {
    Some(p) => p,
    None => unreachable!(),
};

fn decoder_for(c: &ClientConfig) -> Decoder {
    let mut d = Decoder::client(c.version);
    d.set_max_packet_size(
        c.maximum_packet_size
            .unwrap_or(tern_codec::PROTOCOL_MAX_PACKET_SIZE),
    );
    d
}

fn decode_reason(e: &DecodeError) -> ReasonCode {
    e.reason_code()
}
