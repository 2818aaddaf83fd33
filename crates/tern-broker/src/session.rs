//! Session state: what the broker keeps for a client id across connections.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tern_codec::{
    MqttString, ProtocolVersion, PublishProperties, QoS, SubscriptionOptions, TopicFilter,
    TopicName, Will,
};

use crate::{ConnId, SessionId};

/// An application message as the broker routes it: immutable and shared by
/// every session it is delivered to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: TopicName,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it was published with.
    pub qos: QoS,
    /// The RETAIN flag it was published with.
    pub retain: bool,
    /// The properties forwarded to subscribers: payload format, content
    /// type, response topic, correlation data and user properties. (Topic
    /// alias, subscription identifiers and message expiry are set per
    /// delivery.)
    pub properties: PublishProperties,
    /// When it expires (from the Message Expiry Interval).
    pub expires_at: Option<Instant>,
    /// The session that published it, for No Local; `None` for wills'
    /// sessions that ended, `$SYS` messages and messages from other shards.
    pub publisher: Option<SessionId>,
}

impl Message {
    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Payload bytes counted against queue and retained limits.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.topic.len()
    }

    /// The message a will becomes when it is published.
    pub fn from_will(will: &Will, now: Instant, publisher: Option<SessionId>) -> Message {
        let w = &will.properties;
        let properties = PublishProperties {
            payload_format_indicator: w.payload_format_indicator,
            content_type: w.content_type.clone(),
            response_topic: w.response_topic.clone(),
            correlation_data: w.correlation_data.clone(),
            user_properties: w.user_properties.clone(),
            ..PublishProperties::default()
        };
        Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties,
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
    pub msg: Arc<Message>,
    /// The QoS it is delivered with (the lower of published and granted).
    pub qos: QoS,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<NonZeroU32>,
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

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: MqttString,
    pub username: Option<String>,
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    pub subscriptions: BTreeMap<TopicFilter, Sub>,
    /// Session Expiry Interval in seconds; `u32::MAX` never expires.
    pub expiry: u32,
    /// When the offline session ends.
    pub expires_at: Option<Instant>,
    /// The will of the current (or last) connection.
    pub will: Option<Box<Will>>,
    /// When a delayed will is due.
    pub will_at: Option<Instant>,
    pub inflight: BTreeMap<u16, Outgoing>,
    pub next_seq: u64,
    pub next_pid: u16,
    pub queue: VecDeque<Delivery>,
    pub queued_bytes: usize,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting
    /// PUBREL: a resent PUBLISH with one of these is not routed again.
    pub incoming_qos2: BTreeSet<u16>,
    /// Outgoing QoS 1/2 window: the client's Receive Maximum capped by ours.
    pub window: u16,
}

impl Session {
    pub fn new(client_id: MqttString, version: ProtocolVersion) -> Session {
        Session {
            client_id,
            username: None,
            conn: None,
            version,
            subscriptions: BTreeMap::new(),
            expiry: 0,
            expires_at: None,
            will: None,
            will_at: None,
            inflight: BTreeMap::new(),
            next_seq: 0,
            next_pid: 1,
            queue: VecDeque::new(),
            queued_bytes: 0,
            incoming_qos2: BTreeSet::new(),
            window: 1,
        }
    }

    /// A packet identifier not in use by an outgoing message, if any is free.
    pub fn allocate_pid(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_pid;
            self.next_pid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Whether a QoS 1/2 message may be sent now.
    pub fn window_open(&self) -> bool {
        self.inflight.len() < usize::from(self.window)
    }

    /// Removes and returns the next queued delivery.
    pub fn pop_queue(&mut self) -> Option<Delivery> {
        let d = self.queue.pop_front()?;
        self.queued_bytes -= d.msg.weight();
        Some(d)
    }
}
