//! The storage boundary: the state a broker keeps, as plain values a
//! durable store can write and read back.
//!
//! [`Broker::export_sessions`](crate::Broker::export_sessions) and
//! [`Broker::export_retained`](crate::Broker::export_retained) take a
//! consistent copy of everything that must survive a restart;
//! [`Broker::import_session`](crate::Broker::import_session) and
//! [`Broker::import_retained`](crate::Broker::import_retained) put it back
//! into a fresh broker. The broker itself keeps everything in memory.

use std::num::NonZeroU32;
use std::sync::Arc;

use tern_codec::{MqttString, ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, Will};

use crate::Envelope;

/// A message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// The message.
    pub message: Arc<Envelope>,
    /// The QoS it is delivered with.
    pub qos: QoS,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// Subscription identifiers it carries.
    pub subscription_ids: Vec<NonZeroU32>,
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightStage {
    /// Sent, waiting for PUBACK (QoS 1).
    AwaitPubAck,
    /// Sent, waiting for PUBREC (QoS 2).
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP (QoS 2).
    AwaitPubComp,
}

/// One subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    /// The filter.
    pub filter: TopicFilter,
    /// Its options, QoS as granted.
    pub options: SubscriptionOptions,
    /// Its Subscription Identifier.
    pub id: Option<NonZeroU32>,
}

/// Everything a session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The client identifier.
    pub client_id: MqttString,
    /// The user name of its last connection.
    pub username: Option<String>,
    /// The protocol version of its last connection.
    pub version: ProtocolVersion,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// Subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// Outgoing QoS 1/2 messages in flight, in send order, with their packet
    /// identifiers.
    pub inflight: Vec<(u16, InflightStage, StoredDelivery)>,
    /// Messages waiting to be sent, in order.
    pub queued: Vec<StoredDelivery>,
    /// Incoming QoS 2 packet identifiers acknowledged with PUBREC and not
    /// yet released.
    pub incoming_qos2: Vec<u16>,
    /// The will not yet published.
    pub will: Option<Will>,
}

/// Why a session could not be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A session with this client id exists already.
    #[error("a session for client id {0:?} exists already")]
    Exists(String),
    /// Two in-flight messages share a packet identifier, or one is 0.
    #[error("invalid in-flight packet identifier {0}")]
    PacketId(u16),
}
