//! Durability: the state a broker keeps, as plain values a durable store
//! can write and read back, and the changes to it as they happen.
//!
//! Two ways out of a broker, one way back in:
//!
//! - [`Broker::export_sessions`](crate::Broker::export_sessions) and
//!   [`Broker::export_retained`](crate::Broker::export_retained) take a
//!   consistent copy of everything that must survive a restart;
//! - with [`Config::durable`](crate::Config::durable), every change to that
//!   state comes out as a numbered [`Change`]
//!   ([`Broker::poll_change`](crate::Broker::poll_change)) as it happens;
//!   the broker sends nothing to a client that depends on a change until
//!   the embedding says the change is durable
//!   ([`Broker::handle_persisted`](crate::Broker::handle_persisted)), so a
//!   PUBACK or PUBREC means the message is stored;
//! - [`Broker::import_session`](crate::Broker::import_session) and
//!   [`Broker::import_retained`](crate::Broker::import_retained) put the
//!   state back into a fresh broker.
//!
//! [`Image`] applies changes to an in-memory copy of the state and gives the
//! stored values back: the reference a store is checked against, and the
//! store of the simulated disk.
//!
//! Deadlines that must outlive the process (a session's expiry, a delayed
//! will, a message's expiry) are kept as wall-clock times ([`WallMs`]),
//! from the wall clock the embedding gives the broker
//! ([`Broker::set_wall_clock`](crate::Broker::set_wall_clock)).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use tern_codec::{
    MqttString, ProtocolVersion, QoS, SubscriptionOptions, TopicFilter, TopicName, Will,
};

use crate::{Envelope, SessionId};

/// A wall-clock time: milliseconds since the Unix epoch.
pub type WallMs = u64;

/// A message on its way to one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// Names the delivery within its session, in the order the session got
    /// its messages (a store keys it by client id and this).
    pub id: u64,
    /// The message.
    pub message: Arc<Envelope>,
    /// When the message expires, on the wall clock (`None`: it does not,
    /// or the broker had no wall clock and keeps the message's own
    /// expiry).
    pub expires_at: Option<WallMs>,
    /// The QoS it is delivered with.
    pub qos: QoS,
    /// The RETAIN flag it is delivered with.
    pub retain: bool,
    /// Subscription identifiers it carries.
    pub subscription_ids: Vec<NonZeroU32>,
}

/// A retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRetained {
    /// The message.
    pub message: Arc<Envelope>,
    /// When it expires, on the wall clock (as [`StoredDelivery::expires_at`]).
    pub expires_at: Option<WallMs>,
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
    /// When the session ends, on the wall clock, if it is offline and
    /// expires (`None` while connected, when it never expires, or when the
    /// broker had no wall clock: then its expiry starts again at import).
    pub expires_at: Option<WallMs>,
    /// Subscriptions.
    pub subscriptions: Vec<StoredSubscription>,
    /// Outgoing QoS 1/2 messages in flight, in send order (which is their
    /// [`StoredDelivery::id`] order), with their packet identifiers.
    pub inflight: Vec<(u16, InflightStage, StoredDelivery)>,
    /// Messages waiting to be sent, in order.
    pub queued: Vec<StoredDelivery>,
    /// Messages waiting after `queued` that the store keeps and hands over
    /// when asked ([`Fetch`]): all of them when `count` is 0.
    pub spilled: Spilled,
    /// Incoming QoS 2 packet identifiers acknowledged with PUBREC and not
    /// yet released.
    pub incoming_qos2: Vec<u16>,
    /// The will not yet published.
    pub will: Option<Will>,
    /// When the will is due, on the wall clock, once the session is offline
    /// with a Will Delay Interval.
    pub will_at: Option<WallMs>,
}

/// Queued messages of a session kept in the store only, after those in
/// memory: a durable broker holds at most
/// [`Config::queue_window`](crate::Config::queue_window) of a session's
/// queued messages in memory, and asks for the next ones ([`Fetch`]) as its
/// queue drains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spilled {
    /// How many.
    pub count: u64,
    /// Their size, as the broker weighs a message (a store may give the
    /// size of its records instead): it counts towards
    /// [`Config::max_queued_bytes`](crate::Config::max_queued_bytes).
    pub bytes: u64,
    /// The id of the last ([`StoredDelivery::id`]): later deliveries get
    /// higher ids.
    pub last_id: u64,
}

/// A request for a session's next queued messages from the store
/// ([`Broker::poll_fetch`](crate::Broker::poll_fetch)): answer with
/// [`Broker::handle_fetched`](crate::Broker::handle_fetched) once every
/// change polled before it is written (a store reads what it was given,
/// not necessarily synced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    /// The session.
    pub session: SessionId,
    /// Its client id, which a store keys it by.
    pub client_id: MqttString,
    /// The first message id wanted: the queued (not in-flight) messages
    /// with this id or a higher one, in id order.
    pub from: u64,
    /// At most this many.
    pub max: usize,
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

/// A change to the durable state, as [`Broker::poll_change`](crate::Broker::poll_change)
/// reports it. Sessions are named by their [`SessionId`] in this process;
/// [`Change::Session`] says which client id that is (and comes first for
/// every session, imported ones included). Only sessions that outlive their
/// connection (a Session Expiry Interval above 0) have changes: a clean
/// session's state dies with its connection anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A session was created or taken up by a connection: its record (its
    /// subscriptions, messages and QoS 2 ids have changes of their own). It
    /// is online: its deadlines are cleared.
    Session {
        /// The session.
        session: SessionId,
        /// Its client id.
        client_id: MqttString,
        /// The user name of its connection.
        username: Option<String>,
        /// The protocol version of its connection.
        version: ProtocolVersion,
        /// Session Expiry Interval, seconds.
        expiry: u32,
        /// The connection's will.
        will: Option<Box<Will>>,
    },
    /// The session went offline: when it ends and when its will is due.
    Offline {
        /// The session.
        session: SessionId,
        /// When it ends (`None`: never).
        expires_at: Option<WallMs>,
        /// When its will is due (`None`: no delayed will).
        will_at: Option<WallMs>,
    },
    /// The session's will was published or discarded.
    WillGone {
        /// The session.
        session: SessionId,
    },
    /// The session ended: everything it held goes.
    Ended {
        /// The session.
        session: SessionId,
    },
    /// A subscription was made, or its options replaced.
    Subscribed {
        /// The session.
        session: SessionId,
        /// The subscription.
        subscription: StoredSubscription,
    },
    /// A subscription went.
    Unsubscribed {
        /// The session.
        session: SessionId,
        /// Its filter.
        filter: TopicFilter,
    },
    /// A message for the session: it waits in the session's queue.
    Queued {
        /// The session.
        session: SessionId,
        /// The message.
        delivery: StoredDelivery,
    },
    /// A queued message was sent with `packet_id` and waits at `stage`
    /// (also said when PUBREC moves it to [`InflightStage::AwaitPubComp`]).
    Sent {
        /// The session.
        session: SessionId,
        /// [`StoredDelivery::id`].
        id: u64,
        /// Its packet identifier.
        packet_id: u16,
        /// What it waits for.
        stage: InflightStage,
    },
    /// A message is done with: acknowledged, completed, expired or dropped.
    Removed {
        /// The session.
        session: SessionId,
        /// [`StoredDelivery::id`].
        id: u64,
    },
    /// An incoming QoS 2 message was routed and acknowledged with PUBREC:
    /// its packet identifier is kept until PUBREL.
    Received {
        /// The session.
        session: SessionId,
        /// The packet identifier.
        packet_id: u16,
    },
    /// PUBREL released an incoming QoS 2 packet identifier.
    Released {
        /// The session.
        session: SessionId,
        /// The packet identifier.
        packet_id: u16,
    },
    /// A retained message was set.
    Retained(StoredRetained),
    /// A topic's retained message was cleared.
    Unretained(TopicName),
}

/// An in-memory copy of the durable state, kept by applying [`Change`]s
/// in order: what a store must hold after the same changes. Its
/// [`sessions`](Image::sessions) and [`retained`](Image::retained) are
/// what [`Broker::import_session`](crate::Broker::import_session) and
/// [`Broker::import_retained`](crate::Broker::import_retained) take.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// Client id of each session of the process that made the changes.
    names: BTreeMap<SessionId, MqttString>,
    sessions: BTreeMap<MqttString, ImageSession>,
    retained: BTreeMap<TopicName, StoredRetained>,
}

#[derive(Debug, Clone)]
struct ImageSession {
    record: StoredSession,
    /// Messages by id (the order the session got them, which is the order
    /// they are sent in): `None` while queued, else packet id and stage.
    messages: BTreeMap<u64, (StoredDelivery, Option<(u16, InflightStage)>)>,
    subscriptions: BTreeMap<TopicFilter, StoredSubscription>,
    incoming_qos2: std::collections::BTreeSet<u16>,
}

impl Image {
    /// An empty state.
    pub fn new() -> Image {
        Image::default()
    }

    /// Applies one change.
    pub fn apply(&mut self, change: &Change) {
        if let Change::Session {
            session,
            client_id,
            username,
            version,
            expiry,
            will,
        } = change
        {
            self.names.insert(*session, client_id.clone());
            let s = self
                .sessions
                .entry(client_id.clone())
                .or_insert_with(|| ImageSession::new(client_id.clone()));
            let r = &mut s.record;
            r.username = username.clone();
            r.version = *version;
            r.expiry = *expiry;
            r.will = will.as_deref().cloned();
            r.expires_at = None;
            r.will_at = None;
            return;
        }
        match change {
            Change::Retained(r) => {
                self.retained.insert(r.message.topic.clone(), r.clone());
                return;
            }
            Change::Unretained(topic) => {
                self.retained.remove(topic);
                return;
            }
            _ => {}
        }
        let Some(session) = session_of(change) else {
            return;
        };
        let Some(name) = self.names.get(&session) else {
            return;
        };
        if let Change::Ended { .. } = change {
            self.sessions.remove(name);
            return;
        }
        let Some(s) = self.sessions.get_mut(name) else {
            return;
        };
        s.apply(change);
    }

    /// Puts a whole session in, as a store does when it is given one
    /// (replacing any with its client id).
    pub fn put_session(&mut self, stored: StoredSession) {
        let mut s = ImageSession::new(stored.client_id.clone());
        for sub in &stored.subscriptions {
            s.subscriptions.insert(sub.filter.clone(), sub.clone());
        }
        for (pid, stage, d) in &stored.inflight {
            s.messages.insert(d.id, (d.clone(), Some((*pid, *stage))));
        }
        for d in &stored.queued {
            s.messages.insert(d.id, (d.clone(), None));
        }
        s.incoming_qos2 = stored.incoming_qos2.iter().copied().collect();
        s.record = stored;
        self.sessions.insert(s.record.client_id.clone(), s);
    }

    /// Puts a retained message in.
    pub fn put_retained(&mut self, stored: StoredRetained) {
        self.retained.insert(stored.message.topic.clone(), stored);
    }

    /// Every session, as stored.
    pub fn sessions(&self) -> Vec<StoredSession> {
        self.sessions.values().map(ImageSession::stored).collect()
    }

    /// Every retained message, as stored.
    pub fn retained(&self) -> Vec<StoredRetained> {
        self.retained.values().cloned().collect()
    }

    /// What a store answers to a [`Fetch`]: the queued messages of the
    /// session of `client_id` from id `from` on, at most `max`.
    pub fn fetch(&self, client_id: &MqttString, from: u64, max: usize) -> Vec<StoredDelivery> {
        let Some(s) = self.sessions.get(client_id) else {
            return Vec::new();
        };
        s.messages
            .range(from..)
            .filter(|(_, (_, at))| at.is_none())
            .take(max)
            .map(|(_, (d, _))| d.clone())
            .collect()
    }
}

/// The session a change is about, if any.
fn session_of(change: &Change) -> Option<SessionId> {
    Some(match change {
        Change::Session { session, .. }
        | Change::Offline { session, .. }
        | Change::WillGone { session }
        | Change::Ended { session }
        | Change::Subscribed { session, .. }
        | Change::Unsubscribed { session, .. }
        | Change::Queued { session, .. }
        | Change::Sent { session, .. }
        | Change::Removed { session, .. }
        | Change::Received { session, .. }
        | Change::Released { session, .. } => *session,
        Change::Retained(_) | Change::Unretained(_) => return None,
    })
}

impl ImageSession {
    fn new(client_id: MqttString) -> ImageSession {
        ImageSession {
            record: StoredSession {
                client_id,
                username: None,
                version: ProtocolVersion::V5,
                expiry: 0,
                expires_at: None,
                subscriptions: Vec::new(),
                inflight: Vec::new(),
                queued: Vec::new(),
                spilled: Spilled::default(),
                incoming_qos2: Vec::new(),
                will: None,
                will_at: None,
            },
            messages: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            incoming_qos2: std::collections::BTreeSet::new(),
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Offline {
                expires_at,
                will_at,
                ..
            } => {
                self.record.expires_at = *expires_at;
                self.record.will_at = *will_at;
            }
            Change::WillGone { .. } => {
                self.record.will = None;
                self.record.will_at = None;
            }
            Change::Subscribed { subscription, .. } => {
                let f = subscription.filter.clone();
                self.subscriptions.insert(f, subscription.clone());
            }
            Change::Unsubscribed { filter, .. } => {
                self.subscriptions.remove(filter);
            }
            Change::Queued { delivery, .. } => {
                self.messages.insert(delivery.id, (delivery.clone(), None));
            }
            Change::Sent {
                id,
                packet_id,
                stage,
                ..
            } => {
                if let Some(m) = self.messages.get_mut(id) {
                    m.1 = Some((*packet_id, *stage));
                }
            }
            Change::Removed { id, .. } => {
                self.messages.remove(id);
            }
            Change::Received { packet_id, .. } => {
                self.incoming_qos2.insert(*packet_id);
            }
            Change::Released { packet_id, .. } => {
                self.incoming_qos2.remove(packet_id);
            }
            _ => {}
        }
    }

    fn stored(&self) -> StoredSession {
        let mut s = self.record.clone();
        s.subscriptions = self.subscriptions.values().cloned().collect();
        s.inflight = self
            .messages
            .values()
            .filter_map(|(d, at)| at.map(|(pid, stage)| (pid, stage, d.clone())))
            .collect();
        s.queued = self
            .messages
            .values()
            .filter(|(_, at)| at.is_none())
            .map(|(d, _)| d.clone())
            .collect();
        s.incoming_qos2 = self.incoming_qos2.iter().copied().collect();
        s
    }
}
