//! Session state: what the broker keeps for a client id across connections.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use tern_codec::{
    Message, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions, TopicFilter, Will,
};

use crate::durable::Spilled;
use crate::policy::ClientInfo;
use crate::stamp::Stamp;
use crate::{ConnId, SessionId};

/// A message as the broker routes it: the application [`Message`], when it
/// expires, and who published it. Immutable, and shared (in an `Arc`) by
/// every session it is delivered to. It dereferences to its message, so
/// `envelope.topic` reads the message's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The message. Its properties are those forwarded to subscribers:
    /// payload format, content type, response topic, correlation data and
    /// user properties (topic alias, subscription identifiers and message
    /// expiry are set per delivery).
    pub message: Message,
    /// When it expires (from the Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local; `None` for wills'
    /// sessions that ended, `$SYS` messages and messages from other
    /// instances.
    pub publisher: Option<SessionId>,
}

impl std::ops::Deref for Envelope {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl From<Message> for Envelope {
    /// A message that never expires, from nobody.
    fn from(message: Message) -> Envelope {
        Envelope {
            message,
            expires_at: None,
            publisher: None,
        }
    }
}

impl Envelope {
    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Payload bytes counted against queue and retained limits.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.len()
    }

    /// The message a will becomes when it is published.
    pub fn from_will(will: &Will, now: Instant, publisher: Option<SessionId>) -> Envelope {
        let w = &will.properties;
        let properties = PublishProperties {
            payload_format_indicator: w.payload_format_indicator,
            content_type: w.content_type.clone(),
            response_topic: w.response_topic.clone(),
            correlation_data: w.correlation_data.clone(),
            user_properties: w.user_properties.clone(),
            ..PublishProperties::default()
        };
        Envelope {
            message: Message {
                topic: will.topic.clone(),
                payload: will.payload.clone(),
                qos: will.qos,
                retain: will.retain,
                properties,
            },
            expires_at: w
                .message_expiry_interval
                .map(|s| now + std::time::Duration::from_secs(s.into())),
            publisher,
        }
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Envelope>,
    /// The QoS it is delivered with (the lower of published and granted).
    pub qos: QoS,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<NonZeroU32>,
    /// Names it within its session (set when it is delivered to one).
    pub id: u64,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The acknowledgement an outgoing QoS 1/2 message waits for.
/// (`Ack`: PUBACK; `Rec`: PUBREC; `Comp`: PUBCOMP.)
pub(crate) enum OutState {
    /// QoS 1, PUBLISH sent.
    Ack,
    /// QoS 2, PUBLISH sent.
    Rec,
    /// QoS 2, PUBREL sent.
    Comp,
}

#[derive(Debug)]
pub(crate) struct Outgoing {
    pub delivery: Delivery,
    pub state: OutState,
    /// Send order, for resending in order.
    pub seq: u64,
}

/// A subscription as the session remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sub {
    pub options: SubscriptionOptions,
    pub id: Option<NonZeroU32>,
}

/// What a client id keeps across connections. Every idle connection has
/// one, so it is kept to 112 bytes (an allocator size class): what only
/// some sessions hold (a will, messages in flight or queued) is boxed.
#[derive(Debug)]
pub(crate) struct Session {
    /// The client id, and the user name of the current (or last)
    /// connection: what the authorizer is shown.
    pub client: ClientInfo,
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    /// Outgoing QoS 1/2 window: the client's Receive Maximum capped by ours.
    pub window: u16,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry: u32,
    pub subscriptions: BTreeMap<TopicFilter, Sub>,
    /// When the offline session ends.
    pub expires_at: Option<Stamp>,
    /// The will of the current (or last) connection.
    pub will: Option<Box<SessionWill>>,
    /// Messages in flight and queued: boxed and made on first use, as an
    /// idle session has none (read through [`Session::flow`]).
    flow: Option<Box<Flow>>,
    /// Its changes go to the durable store (`Config::durable`, and it
    /// outlives its connection).
    pub stored: bool,
    /// Its connection was trusted by the embedding
    /// ([`Broker::set_trusted`](crate::Broker::set_trusted)): the
    /// authorization policy is not asked about it.
    pub trusted: bool,
}

/// A session's will, with its due time: one allocation (the time fits in
/// the will's allocator size class).
#[derive(Debug)]
pub(crate) struct SessionWill {
    pub will: Will,
    /// When it is due, once scheduled with a delay (the session offline).
    pub at: Option<Stamp>,
}

impl SessionWill {
    pub fn new(will: Will) -> Box<SessionWill> {
        Box::new(SessionWill { will, at: None })
    }
}

/// What a session has in flight, queued, or received and not released.
#[derive(Debug)]
pub(crate) struct Flow {
    pub inflight: BTreeMap<u16, Outgoing>,
    pub next_seq: u64,
    /// The next delivery's [`Delivery::id`].
    pub next_id: u64,
    pub next_pid: u16,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// Queued after `queue`, in the durable store only
    /// (`Config::queue_window`).
    pub spilled: Spilled,
    /// Where the spilled messages start: the first id to fetch.
    pub fetch_from: u64,
    /// How many messages a fetch on its way asked for (0: none is).
    pub fetching: usize,
    /// Where it asked from: an answer to a request made before the queue
    /// changed under it (`fetch_from` moved) is stale.
    pub fetching_from: u64,
    /// How many were spilled when it asked.
    pub fetching_count: u64,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting
    /// PUBREL: a resent PUBLISH with one of these is not routed again.
    pub incoming_qos2: BTreeSet<u16>,
}

/// The flow of a session that never had one.
static NO_FLOW: Flow = Flow::new();

impl Flow {
    /// Messages queued, in memory and spilled to the store.
    pub fn queued(&self) -> usize {
        self.queue
            .len()
            .saturating_add(usize::try_from(self.spilled.count).unwrap_or(usize::MAX))
    }

    /// Their size.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
            .saturating_add(usize::try_from(self.spilled.bytes).unwrap_or(usize::MAX))
    }

    const fn new() -> Flow {
        Flow {
            inflight: BTreeMap::new(),
            next_seq: 0,
            next_id: 0,
            next_pid: 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            spilled: Spilled {
                count: 0,
                bytes: 0,
                last_id: 0,
            },
            fetch_from: 0,
            fetching: 0,
            fetching_from: 0,
            fetching_count: 0,
            incoming_qos2: BTreeSet::new(),
        }
    }
}

impl Session {
    pub fn new(client_id: String, version: ProtocolVersion) -> Session {
        Session {
            client: ClientInfo {
                client_id,
                username: None,
            },
            conn: None,
            version,
            window: 1,
            expiry: 0,
            subscriptions: BTreeMap::new(),
            expires_at: None,
            will: None,
            flow: None,
            stored: false,
            trusted: false,
        }
    }

    /// What is in flight and queued (nothing, for a session that never
    /// had any).
    pub fn flow(&self) -> &Flow {
        self.flow.as_deref().unwrap_or(&NO_FLOW)
    }

    /// The same, to change: made if the session has none yet.
    pub fn flow_mut(&mut self) -> &mut Flow {
        self.flow.get_or_insert_with(|| Box::new(Flow::new()))
    }

    /// The same, only if the session has one: nothing to remove otherwise.
    pub fn flow_if_any(&mut self) -> Option<&mut Flow> {
        self.flow.as_deref_mut()
    }

    /// A packet identifier not in use by an outgoing message, if any is free.
    pub fn allocate_pid(&mut self) -> Option<u16> {
        let f = self.flow_mut();
        if f.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = f.next_pid;
            f.next_pid = if id == u16::MAX { 1 } else { id + 1 };
            if !f.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Whether a QoS 1/2 message may be sent now.
    pub fn window_open(&self) -> bool {
        self.flow().inflight.len() < usize::from(self.window)
    }

    /// Queues a delivery at the back.
    pub fn push_queue(&mut self, d: Delivery) {
        let f = self.flow_mut();
        f.queued_bytes += d.msg.weight();
        f.queue.push_back(d);
    }

    /// Puts a delivery back at the front.
    pub fn push_queue_front(&mut self, d: Delivery) {
        let f = self.flow_mut();
        f.queued_bytes += d.msg.weight();
        f.queue.push_front(d);
    }

    /// Removes and returns the next queued delivery.
    pub fn pop_queue(&mut self) -> Option<Delivery> {
        let f = self.flow_if_any()?;
        let d = f.queue.pop_front()?;
        f.queued_bytes -= d.msg.weight();
        Some(d)
    }
}
