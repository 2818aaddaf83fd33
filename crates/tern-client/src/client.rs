//! The client state machine.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_codec::{
    Ack, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect, DecodeError, Decoder,
    Disconnect, DisconnectProperties, Packet, PacketId, Publish, PublishProperties, QoS, QosPid,
    ReasonCode, SubAck, Subscribe, SubscribeFilter, SubscribeProperties, TopicFilter, TopicName,
    UnsubAck, Unsubscribe, UnsubscribeProperties,
};

use crate::store::{Inflight, MemoryStore, Queued, RequestId, Store};
use crate::{ClientConfig, ConfigError, QueuePolicy};

/// Bytes of new messages the client encodes ahead of the transport: past
/// this, publishes wait in the (bounded) queue until `poll_transmit` takes
/// the output, so a stalled transport cannot grow memory.
const OUT_HIGH: usize = 64 * 1024;

/// An application message, as published or as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic, in full (topic aliases are the client's business).
    pub topic: TopicName,
    /// The payload.
    pub payload: Bytes,
    /// The QoS.
    pub qos: QoS,
    /// The RETAIN flag.
    pub retain: bool,
    /// MQTT 5.0 properties. A Topic Alias set here is ignored: the client
    /// chooses aliases itself ([`ClientConfig::use_topic_aliases`]).
    pub properties: PublishProperties,
}

impl Message {
    /// A QoS 0 message, not retained, without properties.
    pub fn new(topic: TopicName, payload: impl Into<Bytes>) -> Message {
        Message {
            topic,
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties::default(),
        }
    }

    /// The same message with QoS `qos`.
    pub fn with_qos(mut self, qos: QoS) -> Message {
        self.qos = qos;
        self
    }

    /// The same message with the RETAIN flag set to `retain`.
    pub fn with_retain(mut self, retain: bool) -> Message {
        self.retain = retain;
        self
    }

    fn from_publish(p: Publish) -> Message {
        Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos.qos(),
            retain: p.retain,
            properties: p.properties,
        }
    }
}

/// Names a received QoS 1/2 message for [`Client::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AckId(u64);

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The server marked it as a possible resend.
    pub dup: bool,
    /// With manual acknowledgement, what to pass to [`Client::ack`] once
    /// the message is handled (QoS 1/2 only).
    pub ack: Option<AckId>,
}

/// Why a publish did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The server refused the message (PUBACK or PUBREC with a reason code
    /// of 0x80 or more).
    #[error("the server refused the message: {0:?}")]
    Rejected(ReasonCode),
    /// The queue of messages waiting to be sent is full
    /// ([`QueuePolicy::RejectNew`]).
    #[error("the queue of messages waiting to be sent is full")]
    QueueFull,
    /// Dropped from a full queue to make room for a newer message
    /// ([`QueuePolicy::DropOldest`]).
    #[error("dropped from a full queue to make room for a newer message")]
    Dropped,
    /// The server accepts messages of at most this QoS (5.0 Maximum QoS).
    #[error("the server accepts messages of at most QoS {0:?}")]
    QosNotSupported(QoS),
    /// The server does not accept retained messages (5.0 Retain Available).
    #[error("the server does not accept retained messages")]
    RetainNotSupported,
    /// The PUBLISH would exceed the server's Maximum Packet Size.
    #[error("a PUBLISH of {size} bytes exceeds the server's maximum packet size of {max}")]
    PacketTooLarge {
        /// Size of the PUBLISH.
        size: usize,
        /// The server's maximum.
        max: u32,
    },
    /// The message cannot be encoded for this protocol version.
    #[error("the message cannot be encoded: {0}")]
    Invalid(String),
}

/// Why a subscribe or unsubscribe request was refused before it was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A SUBSCRIBE or UNSUBSCRIBE needs at least one filter.
    #[error("a request needs at least one topic filter")]
    NoFilters,
    /// Too many requests wait to be sent.
    #[error("too many requests wait to be sent")]
    QueueFull,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server refused the connection in CONNACK.
    Refused(ReasonCode),
    /// The server sent DISCONNECT (5.0).
    Server {
        /// Its reason code.
        reason: ReasonCode,
        /// Its properties (Reason String, Server Reference, ...).
        properties: DisconnectProperties,
    },
    /// The server broke the protocol; the client sent DISCONNECT with this
    /// reason code (5.0) and closes.
    ProtocolError(ReasonCode),
    /// No PINGRESP within the ping timeout.
    KeepAliveTimeout,
    /// No CONNACK within the connect timeout.
    ConnectTimeout,
    /// The transport closed ([`Client::handle_closed`]).
    TransportClosed,
    /// The configuration cannot be sent ([`ClientConfig::validate`]); no
    /// connection will succeed until it changes.
    InvalidConfig(ConfigError),
    /// The application disconnected ([`Client::disconnect`]).
    Local,
}

impl DisconnectReason {
    /// Whether connecting again cannot help until something changes on
    /// our side: an invalid configuration, or a CONNACK refusal about who
    /// we are or what we speak (protocol version, client id, credentials,
    /// authorization, ban, authentication method). Busy or unavailable
    /// servers, lost links and timeouts are not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            DisconnectReason::InvalidConfig(_) => true,
            DisconnectReason::Refused(code) => matches!(
                code,
                ReasonCode::UnsupportedProtocolVersion
                    | ReasonCode::ClientIdentifierNotValid
                    | ReasonCode::BadUserNameOrPassword
                    | ReasonCode::NotAuthorized
                    | ReasonCode::Banned
                    | ReasonCode::BadAuthenticationMethod
            ),
            _ => false,
        }
    }
}

/// What the application should know; see [`Client::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNACK accepted the connection.
    Connected {
        /// The server resumed the session.
        session_present: bool,
        /// The CONNACK's properties (5.0).
        properties: ConnAckProperties,
    },
    /// The connection ended; [`Client::connect`] again on a new transport.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// A message from the server.
    Message(Delivery),
    /// A publish completed: for QoS 0 when it was encoded for the transport,
    /// for QoS 1 at PUBACK, for QoS 2 at PUBCOMP, or it failed.
    Published {
        /// The request, as [`Client::publish`] returned it.
        id: RequestId,
        /// The server's reason code (0x00, or 0x10 No matching
        /// subscribers), or why it failed.
        result: Result<ReasonCode, PublishError>,
    },
    /// SUBACK.
    Subscribed {
        /// The request.
        id: RequestId,
        /// One code per filter, in order: the granted QoS or a failure.
        reason_codes: Vec<ReasonCode>,
    },
    /// SUBACK of the subscription the client made again, by itself, after
    /// a server that lost the session ([`ClientConfig::resubscribe`]).
    Resubscribed {
        /// The filters, each with its reason code.
        results: Vec<(TopicFilter, ReasonCode)>,
    },
    /// UNSUBACK.
    Unsubscribed {
        /// The request.
        id: RequestId,
        /// One code per filter (3.1.1: all Success).
        reason_codes: Vec<ReasonCode>,
    },
    /// AUTH from the server (5.0 enhanced authentication): answer a
    /// Continue Authentication with [`Client::auth`].
    Auth {
        /// Continue Authentication, or Success after a re-authentication.
        reason: ReasonCode,
        /// Method and data.
        properties: AuthProperties,
    },
}

/// Where the client is in its connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No transport, or the transport must be closed.
    Disconnected,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// CONNACK accepted the connection.
    Connected,
}

#[derive(Debug, Clone)]
enum ReqKind {
    Subscribe(Subscribe),
    /// The client's own: every granted filter, after a lost session.
    Resubscribe(Subscribe),
    Unsubscribe(Unsubscribe),
}

#[derive(Debug, Clone)]
struct Request {
    id: RequestId,
    kind: ReqKind,
}

#[derive(Debug, Clone, Copy)]
struct PendingAck {
    seq: u64,
    pid: PacketId,
    qos: QoS,
    acked: bool,
}

/// What one connection learnt from CONNACK, and its timers.
#[derive(Debug)]
struct Link {
    keep_alive: Duration,
    /// When the last packet was written (set by CONNECT).
    last_sent: Option<Instant>,
    /// CONNECT asked for a clean start.
    clean_start: bool,
    ping_deadline: Option<Instant>,
    connack_deadline: Option<Instant>,
    receive_maximum: u16,
    maximum_qos: QoS,
    retain_available: bool,
    maximum_packet_size: Option<u32>,
    topic_alias_maximum: u16,
    aliases_out: BTreeMap<Bytes, u16>,
    aliases_in: BTreeMap<u16, TopicName>,
}

impl Link {
    fn new(keep_alive: Duration, now: Option<Instant>) -> Link {
        Link {
            keep_alive,
            last_sent: now,
            clean_start: true,
            ping_deadline: None,
            connack_deadline: None,
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            aliases_out: BTreeMap::new(),
            aliases_in: BTreeMap::new(),
        }
    }
}

/// A complete MQTT client session, without I/O: see the crate docs for the
/// call contract.
pub struct Client {
    config: ClientConfig,
    store: Box<dyn Store>,
    decoder: Decoder,
    state: State,
    link: Link,
    out: BytesMut,
    events: VecDeque<Event>,
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
            self.events.push_back(Event::Disconnected {
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
            self.events.push_back(Event::Disconnected {
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
                self.events.push_back(Event::Auth {
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
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Publishes `message`. It is sent now if the client is connected and
    /// the in-flight window allows, otherwise queued (bounded by
    /// [`ClientConfig::max_queued`]). [`Event::Published`] with the returned
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
                    Some(old) => self.events.push_back(Event::Published {
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

    /// Subscribes to `filters`; [`Event::Subscribed`] reports the result.
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

    /// Unsubscribes from `filters`; [`Event::Unsubscribed`] reports the
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

    // --- inbound ---

    fn on_connack(&mut self, ack: ConnAck, now: Instant) {
        if ack.reason_code != ReasonCode::Success {
            self.lost(DisconnectReason::Refused(ack.reason_code));
            return;
        }
        if ack.session_present && self.link.clean_start {
            // [MQTT-3.2.2-4] (5.0), [MQTT-3.2.2-1] (3.1.1).
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        self.state = State::Connected;
        self.connected_once = true;
        let p = &ack.properties;
        let link = &mut self.link;
        link.connack_deadline = None;
        if let Some(k) = p.server_keep_alive {
            link.keep_alive = Duration::from_secs(k.into());
        }
        link.receive_maximum = p.receive_maximum.map_or(u16::MAX, |r| r.get());
        link.maximum_qos = p.maximum_qos.unwrap_or(QoS::ExactlyOnce);
        link.retain_available = p.retain_available.unwrap_or(true);
        link.maximum_packet_size = p.maximum_packet_size.map(|m| m.get());
        link.topic_alias_maximum = p.topic_alias_maximum.unwrap_or(0);
        if let Some(id) = &p.assigned_client_identifier {
            self.config.client_id = id.clone();
        }
        if ack.session_present {
            self.resume(now);
        } else {
            self.restart(now);
        }
        self.events.push_back(Event::Connected {
            session_present: ack.session_present,
            properties: ack.properties,
        });
        // Requests that were answered by nobody go again, then new ones.
        let sent: Vec<u16> = self.requests.keys().copied().collect();
        for pid in sent {
            self.send_request(pid, now);
        }
        while let Some(req) = self.waiting.pop_front() {
            match self.alloc_pid() {
                Some(pid) => {
                    self.requests.insert(pid.get(), req);
                    self.send_request(pid.get(), now);
                }
                None => {
                    self.waiting.push_front(req);
                    break;
                }
            }
        }
        self.flush_acks(now);
        self.send_queued(now);
    }

    /// The server kept the session: send again what it has not
    /// acknowledged, in the order it was first sent.
    fn resume(&mut self, now: Instant) {
        self.resend = self
            .store
            .inflight_in_order()
            .iter()
            .filter_map(|i| i.publish.qos.packet_id())
            .collect();
        self.send_resends(now);
        // QoS 1 messages the application had not acknowledged come again.
        self.retain_qos2_acks();
    }

    /// Sends again, in order, the messages of an earlier connection, as
    /// far as the new connection's Receive Maximum allows.
    fn send_resends(&mut self, now: Instant) {
        if self.resend.is_empty() {
            return;
        }
        let mut items: BTreeMap<u16, Inflight> = self
            .store
            .inflight_in_order()
            .into_iter()
            .filter_map(|i| Some((i.publish.qos.packet_id()?.get(), i)))
            .collect();
        while self.state == State::Connected && self.sent_inflight() < self.window() {
            let Some(pid) = self.resend.pop_front() else {
                return;
            };
            let Some(item) = items.remove(&pid.get()) else {
                continue;
            };
            if item.released {
                self.write_ack(Packet::PubRel(Ack::new(pid)), now);
                continue;
            }
            // The new connection's limits apply to what goes again.
            let m = Message::from_publish(item.publish.clone());
            if let Err(e) = self.check(&m) {
                self.store.remove_inflight(pid);
                self.fail(item.id, e);
                continue;
            }
            self.store.set_dup(pid);
            let mut p = item.publish;
            p.dup = true;
            if let Err(e) = self.write_publish(&p, now) {
                self.store.remove_inflight(pid);
                self.fail(item.id, e);
            }
        }
    }

    /// Messages in flight that were sent on this connection.
    fn sent_inflight(&self) -> usize {
        self.store.inflight_len() - self.resend.len()
    }

    /// After a lost connection: QoS 1 messages not yet acknowledged by the
    /// application will come again; QoS 2 ones stay until it acks them.
    fn retain_qos2_acks(&mut self) {
        self.acks.retain(|a| a.qos == QoS::ExactlyOnce);
        let keep: std::collections::BTreeSet<u16> = self.acks.iter().map(|a| a.pid.get()).collect();
        self.unacked.retain(|pid, _| keep.contains(pid));
    }

    /// The server did not keep the session: what it acknowledged is done,
    /// what it may not have received goes back to the queue, and the
    /// received side starts afresh.
    fn restart(&mut self, now: Instant) {
        let mut again = Vec::new();
        for item in self.store.inflight_in_order() {
            if item.released {
                // PUBREC came: the server has the message.
                self.events.push_back(Event::Published {
                    id: item.id,
                    result: Ok(ReasonCode::Success),
                });
            } else {
                let mut m = Message::from_publish(item.publish);
                m.properties.topic_alias = None;
                again.push(Queued {
                    id: item.id,
                    message: m,
                });
            }
        }
        self.store.clear_inflight();
        if !again.is_empty() {
            self.store.requeue_front(again);
        }
        self.store.clear_incoming();
        self.acks.clear();
        self.unacked.clear();
        if self.config.resubscribe && !self.subscriptions.is_empty() {
            // One SUBSCRIBE per distinct set of properties (a subscription
            // identifier, user properties), sent after the CONNACK handling
            // with the other requests.
            let mut groups: Vec<(SubscribeProperties, Vec<SubscribeFilter>)> = Vec::new();
            for (f, props) in self.subscriptions.values() {
                match groups.iter_mut().find(|(p, _)| p == props) {
                    Some((_, fs)) => fs.push(f.clone()),
                    None => groups.push((props.clone(), vec![f.clone()])),
                }
            }
            for (properties, filters) in groups.into_iter().rev() {
                let id = self.request_id();
                let sub = Subscribe {
                    packet_id: PLACEHOLDER,
                    filters,
                    properties,
                };
                self.waiting.push_front(Request {
                    id,
                    kind: ReqKind::Resubscribe(sub),
                });
            }
        }
        let _ = now;
    }

    fn on_publish(&mut self, mut p: Publish, now: Instant) {
        if self.config.version.is_v5() {
            if let Some(alias) = p.properties.topic_alias.take() {
                if alias.get() > self.config.topic_alias_maximum {
                    return self.protocol_error(ReasonCode::TopicAliasInvalid, now);
                }
                if p.topic.is_empty() {
                    match self.link.aliases_in.get(&alias.get()) {
                        Some(t) => p.topic = t.clone(),
                        None => return self.protocol_error(ReasonCode::ProtocolError, now),
                    }
                } else {
                    self.link.aliases_in.insert(alias.get(), p.topic.clone());
                }
            }
        }
        if p.topic.is_empty() {
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        let dup = p.dup;
        match p.qos {
            QosPid::AtMostOnce => self.deliver(p, dup, None),
            QosPid::AtLeastOnce(pid) => {
                if self.unacked.contains_key(&pid.get()) {
                    // Sent again before the application acked it: it has it.
                    return;
                }
                if !self.receive_quota_left() {
                    return self.protocol_error(ReasonCode::ReceiveMaximumExceeded, now);
                }
                if self.config.manual_ack {
                    let seq = self.push_ack(pid, QoS::AtLeastOnce);
                    self.unacked.insert(pid.get(), seq);
                    self.deliver(p, dup, Some(AckId(seq)));
                } else {
                    self.deliver(p, dup, None);
                    self.write_ack(Packet::PubAck(Ack::new(pid)), now);
                }
            }
            QosPid::ExactlyOnce(pid) => {
                if self.store.contains_incoming(pid) {
                    // Delivered already; our PUBREC was lost.
                    self.write_ack(Packet::PubRec(Ack::new(pid)), now);
                    return;
                }
                if self.unacked.contains_key(&pid.get()) {
                    // Delivered already; the application has yet to ack.
                    return;
                }
                if !self.receive_quota_left() {
                    return self.protocol_error(ReasonCode::ReceiveMaximumExceeded, now);
                }
                if self.config.manual_ack {
                    let seq = self.push_ack(pid, QoS::ExactlyOnce);
                    self.unacked.insert(pid.get(), seq);
                    self.deliver(p, dup, Some(AckId(seq)));
                } else {
                    self.store.insert_incoming(pid);
                    self.deliver(p, dup, None);
                    self.write_ack(Packet::PubRec(Ack::new(pid)), now);
                }
            }
        }
    }

    fn receive_quota_left(&self) -> bool {
        !self.config.version.is_v5()
            || self.acks.len() + self.store.incoming_len()
                < usize::from(self.config.receive_maximum)
    }

    fn deliver(&mut self, p: Publish, dup: bool, ack: Option<AckId>) {
        self.events.push_back(Event::Message(Delivery {
            message: Message::from_publish(p),
            dup,
            ack,
        }));
    }

    fn push_ack(&mut self, pid: PacketId, qos: QoS) -> u64 {
        let seq = self.next_ack;
        self.next_ack += 1;
        self.acks.push_back(PendingAck {
            seq,
            pid,
            qos,
            acked: false,
        });
        seq
    }

    fn flush_acks(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        while self.acks.front().is_some_and(|a| a.acked) {
            let Some(a) = self.acks.pop_front() else {
                break;
            };
            self.unacked.remove(&a.pid.get());
            if a.qos == QoS::ExactlyOnce {
                self.store.insert_incoming(a.pid);
                self.write_ack(Packet::PubRec(Ack::new(a.pid)), now);
            } else {
                self.write_ack(Packet::PubAck(Ack::new(a.pid)), now);
            }
        }
    }

    fn on_puback(&mut self, a: Ack, now: Instant) {
        let Some(item) = self.store.inflight(a.packet_id) else {
            return;
        };
        if item.qos != QoS::AtLeastOnce {
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        let id = item.id;
        self.store.remove_inflight(a.packet_id);
        self.complete(id, a.reason_code);
        self.send_queued(now);
    }

    fn on_pubrec(&mut self, a: Ack, now: Instant) {
        let pid = a.packet_id;
        let Some(item) = self.store.inflight(pid) else {
            let mut rel = Ack::new(pid);
            if self.config.version.is_v5() {
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
            }
            return self.write_ack(Packet::PubRel(rel), now);
        };
        if item.qos != QoS::ExactlyOnce {
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        if a.reason_code.is_error() {
            let id = item.id;
            self.store.remove_inflight(pid);
            self.complete(id, a.reason_code);
            self.send_queued(now);
            return;
        }
        if !item.released {
            self.store.release_inflight(pid);
        }
        self.write_ack(Packet::PubRel(Ack::new(pid)), now);
    }

    fn on_pubcomp(&mut self, a: Ack, now: Instant) {
        match self.store.inflight(a.packet_id) {
            Some(item) if item.released => {
                let id = item.id;
                self.store.remove_inflight(a.packet_id);
                self.complete(id, ReasonCode::Success);
                self.send_queued(now);
            }
            Some(_) => self.protocol_error(ReasonCode::ProtocolError, now),
            None => {}
        }
    }

    fn on_pubrel(&mut self, a: Ack, now: Instant) {
        let mut comp = Ack::new(a.packet_id);
        if !self.store.remove_incoming(a.packet_id) && self.config.version.is_v5() {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.write_ack(Packet::PubComp(comp), now);
    }

    fn on_suback(&mut self, a: SubAck, now: Instant) {
        let pid = a.packet_id.get();
        match self.requests.get(&pid).map(|r| &r.kind) {
            None => return,
            Some(ReqKind::Subscribe(s) | ReqKind::Resubscribe(s))
                if s.filters.len() == a.reason_codes.len() => {}
            // An answer to another request, or not one code per filter.
            Some(_) => return self.protocol_error(ReasonCode::ProtocolError, now),
        }
        let Some(req) = self.requests.remove(&pid) else {
            return;
        };
        let (ReqKind::Subscribe(sub) | ReqKind::Resubscribe(sub)) = &req.kind else {
            return;
        };
        let mut results = Vec::with_capacity(sub.filters.len());
        for (f, &code) in sub.filters.iter().zip(&a.reason_codes) {
            if code.is_error() {
                self.subscriptions.remove(f.filter.bytes());
            } else {
                self.subscriptions.insert(
                    f.filter.bytes().clone(),
                    (f.clone(), sub.properties.clone()),
                );
            }
            results.push((f.filter.clone(), code));
        }
        self.events.push_back(match req.kind {
            ReqKind::Resubscribe(_) => Event::Resubscribed { results },
            _ => Event::Subscribed {
                id: req.id,
                reason_codes: a.reason_codes,
            },
        });
    }

    fn on_unsuback(&mut self, a: UnsubAck, now: Instant) {
        let pid = a.packet_id.get();
        match self.requests.get(&pid).map(|r| &r.kind) {
            None => return,
            Some(ReqKind::Unsubscribe(u))
                if a.reason_codes.is_empty() || a.reason_codes.len() == u.filters.len() => {}
            Some(_) => return self.protocol_error(ReasonCode::ProtocolError, now),
        }
        let Some(req) = self.requests.remove(&pid) else {
            return;
        };
        if let ReqKind::Unsubscribe(unsub) = req.kind {
            let mut codes = a.reason_codes;
            if codes.is_empty() {
                codes = vec![ReasonCode::Success; unsub.filters.len()];
            }
            for f in &unsub.filters {
                self.subscriptions.remove(f.bytes());
            }
            self.events.push_back(Event::Unsubscribed {
                id: req.id,
                reason_codes: codes,
            });
        }
    }

    // --- outbound ---

    fn request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    fn request(&mut self, kind: ReqKind, now: Instant) -> Result<RequestId, RequestError> {
        let id = self.request_id();
        let req = Request { id, kind };
        if self.state == State::Connected {
            if let Some(pid) = self.alloc_pid() {
                self.requests.insert(pid.get(), req);
                self.send_request(pid.get(), now);
                return Ok(id);
            }
        }
        if self.waiting.len() >= self.config.max_queued {
            return Err(RequestError::QueueFull);
        }
        self.waiting.push_back(req);
        Ok(id)
    }

    fn send_request(&mut self, pid: u16, now: Instant) {
        let Some(req) = self.requests.get_mut(&pid) else {
            return;
        };
        let packet_id = PacketId::new(pid).unwrap_or(PLACEHOLDER);
        let packet = match &mut req.kind {
            ReqKind::Subscribe(s) | ReqKind::Resubscribe(s) => {
                s.packet_id = packet_id;
                Packet::Subscribe(s.clone())
            }
            ReqKind::Unsubscribe(u) => {
                u.packet_id = packet_id;
                Packet::Unsubscribe(u.clone())
            }
        };
        if self.write(&packet, now).is_err() {
            // A filter or property this version cannot carry: answer as the
            // server would have refused it.
            if let Some(req) = self.requests.remove(&pid) {
                let n = match &req.kind {
                    ReqKind::Subscribe(s) | ReqKind::Resubscribe(s) => s.filters.len(),
                    ReqKind::Unsubscribe(u) => u.filters.len(),
                };
                let reason_codes = vec![ReasonCode::UnspecifiedError; n];
                self.events.push_back(match req.kind {
                    ReqKind::Subscribe(_) | ReqKind::Resubscribe(_) => Event::Subscribed {
                        id: req.id,
                        reason_codes,
                    },
                    ReqKind::Unsubscribe(_) => Event::Unsubscribed {
                        id: req.id,
                        reason_codes,
                    },
                });
            }
        }
    }

    /// A packet identifier not in use by a message in flight or a request.
    fn alloc_pid(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            let pid = PacketId::new(self.next_pid)?;
            if self.store.inflight(pid).is_none() && !self.requests.contains_key(&pid.get()) {
                return Some(pid);
            }
        }
        None
    }

    fn window(&self) -> usize {
        usize::from(self.config.max_inflight.min(self.link.receive_maximum))
    }

    fn may_send(&self, qos: QoS) -> bool {
        qos == QoS::AtMostOnce || self.sent_inflight() < self.window()
    }

    /// Checks a message against what the server said it accepts.
    fn check(&self, m: &Message) -> Result<(), PublishError> {
        if m.qos > self.link.maximum_qos {
            return Err(PublishError::QosNotSupported(self.link.maximum_qos));
        }
        if m.retain && !self.link.retain_available {
            return Err(PublishError::RetainNotSupported);
        }
        Ok(())
    }

    /// Sends queued messages while connected and the window allows.
    fn send_queued(&mut self, now: Instant) {
        self.send_resends(now);
        if !self.resend.is_empty() {
            return;
        }
        while self.state == State::Connected && self.out.len() < OUT_HIGH {
            match self.store.front_qos() {
                Some(qos) if self.may_send(qos) => {}
                _ => break,
            }
            let Some(item) = self.store.pop_queued() else {
                break;
            };
            if let Err(e) = self.check(&item.message) {
                self.fail(item.id, e);
                continue;
            }
            if !self.send_message(item, now) {
                break;
            }
        }
    }

    /// Sends one message (the window was checked). Returns `false` when no
    /// packet identifier was free and the message went back to the queue.
    fn send_message(&mut self, item: Queued, now: Instant) -> bool {
        let Queued { id, message: m } = item;
        let qos = match m.qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            q => {
                let Some(pid) = self.alloc_pid() else {
                    self.store.requeue_front(vec![Queued { id, message: m }]);
                    return false;
                };
                if q == QoS::AtLeastOnce {
                    QosPid::AtLeastOnce(pid)
                } else {
                    QosPid::ExactlyOnce(pid)
                }
            }
        };
        let mut properties = m.properties;
        // The client chooses aliases; Subscription Identifiers are the
        // server's to send [MQTT-3.3.4-6].
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let publish = Publish {
            dup: false,
            qos,
            retain: m.retain,
            topic: m.topic,
            payload: m.payload,
            properties,
        };
        if let Err(e) = self.write_publish(&publish, now) {
            self.fail(id, e);
            return true;
        }
        if qos == QosPid::AtMostOnce {
            self.complete(id, ReasonCode::Success);
        } else {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.store.insert_inflight(Inflight {
                id,
                seq,
                publish,
                released: false,
            });
        }
        true
    }

    fn complete(&mut self, id: RequestId, reason: ReasonCode) {
        let result = if reason.is_error() {
            Err(PublishError::Rejected(reason))
        } else {
            Ok(reason)
        };
        self.events.push_back(Event::Published { id, result });
    }

    fn fail(&mut self, id: RequestId, error: PublishError) {
        self.events.push_back(Event::Published {
            id,
            result: Err(error),
        });
    }

    /// Encodes a PUBLISH, with a topic alias when the server allows them,
    /// within the server's Maximum Packet Size.
    fn write_publish(&mut self, p: &Publish, now: Instant) -> Result<(), PublishError> {
        let v = self.config.version;
        let mut new_alias = None;
        let mut aliased = None;
        if v.is_v5() && self.config.use_topic_aliases && self.link.topic_alias_maximum > 0 {
            let alias = match self.link.aliases_out.get(p.topic.bytes()) {
                Some(&a) => Some((a, true)),
                None => {
                    let n = self.link.aliases_out.len();
                    (n < usize::from(self.link.topic_alias_maximum)).then(|| {
                        new_alias = Some(n as u16 + 1);
                        (n as u16 + 1, false)
                    })
                }
            };
            if let Some((a, known)) = alias {
                let mut q = p.clone();
                q.properties.topic_alias = std::num::NonZeroU16::new(a);
                if known {
                    q.topic = TopicName::empty();
                }
                aliased = Some(q);
            }
        }
        let packet = aliased.as_ref().unwrap_or(p);
        if let Some(max) = self.link.maximum_packet_size {
            let size = packet.encoded_len(v);
            if size > max as usize {
                return Err(PublishError::PacketTooLarge { size, max });
            }
        }
        packet
            .encode(v, &mut self.out)
            .map_err(|e| PublishError::Invalid(e.to_string()))?;
        if let Some(a) = new_alias {
            self.link.aliases_out.insert(p.topic.bytes().clone(), a);
        }
        self.link.last_sent = Some(now);
        Ok(())
    }

    fn write_ack(&mut self, p: Packet, now: Instant) {
        // Acknowledgements without properties always encode.
        let _ = self.write(&p, now);
    }

    fn write(&mut self, p: &Packet, now: Instant) -> Result<(), tern_codec::EncodeError> {
        if let Some(max) = self.link.maximum_packet_size {
            let size = p.encoded_len(self.config.version);
            if size > max as usize {
                return Err(tern_codec::EncodeError::PacketTooLarge(size));
            }
        }
        p.encode(self.config.version, &mut self.out)?;
        self.link.last_sent = Some(now);
        Ok(())
    }

    /// The server broke the protocol: tell it why (5.0) and close.
    fn protocol_error(&mut self, reason: ReasonCode, now: Instant) {
        if self.config.version.is_v5() && reason.allowed_in(tern_codec::PacketType::Disconnect) {
            let _ = self.write(&Packet::Disconnect(Disconnect::new(reason)), now);
        }
        self.lost(DisconnectReason::ProtocolError(reason));
    }

    /// The connection is over; the session state stays.
    fn lost(&mut self, reason: DisconnectReason) {
        self.state = State::Disconnected;
        self.link.ping_deadline = None;
        self.link.connack_deadline = None;
        self.resend.clear();
        self.retain_qos2_acks();
        self.events.push_back(Event::Disconnected { reason });
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
