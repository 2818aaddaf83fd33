//! Where the client keeps the state that must outlive a connection: the
//! messages waiting to be sent, the QoS 1/2 messages in flight, and the
//! identifiers of QoS 2 messages received but not yet released.
//!
//! [`MemoryStore`] keeps them in memory. A durable [`Store`] (a file, a
//! flash page, a database) lets a device restart without losing a QoS 1/2
//! message: [`Client::with_store`](crate::Client::with_store) resumes from
//! whatever the store holds. The client calls the store synchronously, at
//! each change, in the order the changes happen; a store that cannot write
//! should panic or abort rather than silently forget.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tern_codec::{PacketId, Publish, QoS};

use crate::Message;

/// A handle for one request (publish, subscribe, unsubscribe), named again by
/// the [`ClientEvent`](crate::ClientEvent) that completes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A message waiting to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The request this message answers to.
    pub id: RequestId,
    /// The message.
    pub message: Message,
}

/// A QoS 1/2 message sent and not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inflight {
    /// The request this message answers to.
    pub id: RequestId,
    /// Sending order: messages are sent again in this order.
    pub seq: u64,
    /// The PUBLISH as sent (topic in full, never an alias), packet
    /// identifier included.
    pub publish: Publish,
    /// PUBREC came (QoS 2): what is left is PUBREL until PUBCOMP.
    pub released: bool,
}

/// What the client needs to know of a message in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InflightState {
    /// The request it answers to.
    pub id: RequestId,
    /// Its QoS (1 or 2).
    pub qos: QoS,
    /// PUBREC came.
    pub released: bool,
}

/// The state of a client session that must outlive a connection.
///
/// No method hands out a reference into the store, so an implementation
/// may keep its state behind a lock or outside the process.
pub trait Store: Send {
    /// Appends a message to the queue.
    fn push_queued(&mut self, item: Queued);
    /// Puts messages back at the front of the queue, in the given order
    /// (messages a server forgot with its session).
    fn requeue_front(&mut self, items: Vec<Queued>);
    /// Takes the oldest queued message.
    fn pop_queued(&mut self) -> Option<Queued>;
    /// The QoS of the oldest queued message.
    fn front_qos(&self) -> Option<QoS>;
    /// The request id of the newest queued message.
    fn newest_queued(&self) -> Option<RequestId>;
    /// How many messages are queued.
    fn queued_len(&self) -> usize;

    /// Records a message sent with QoS 1/2.
    fn insert_inflight(&mut self, item: Inflight);
    /// The message in flight under `pid`.
    fn inflight(&self, pid: PacketId) -> Option<InflightState>;
    /// Marks the QoS 2 message under `pid` released (PUBREC came).
    fn release_inflight(&mut self, pid: PacketId);
    /// Marks the message under `pid` as a resend (DUP).
    fn set_dup(&mut self, pid: PacketId);
    /// Forgets the message under `pid` (it was acknowledged).
    fn remove_inflight(&mut self, pid: PacketId) -> Option<Inflight>;
    /// How many messages are in flight.
    fn inflight_len(&self) -> usize;
    /// Every message in flight, in sending order.
    fn inflight_in_order(&self) -> Vec<Inflight>;
    /// Forgets every message in flight.
    fn clear_inflight(&mut self);

    /// Records that a QoS 2 message `pid` was received and PUBREC sent.
    fn insert_incoming(&mut self, pid: PacketId);
    /// Whether QoS 2 message `pid` was received and not released.
    fn contains_incoming(&self, pid: PacketId) -> bool;
    /// Forgets QoS 2 message `pid` (PUBREL came).
    fn remove_incoming(&mut self, pid: PacketId) -> bool;
    /// How many QoS 2 messages wait for PUBREL.
    fn incoming_len(&self) -> usize;
    /// Forgets every received QoS 2 message.
    fn clear_incoming(&mut self);
}

/// A [`Store`] in memory: the state outlives connections, not the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    queue: VecDeque<Queued>,
    inflight: BTreeMap<u16, Inflight>,
    incoming: BTreeSet<u16>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn push_queued(&mut self, item: Queued) {
        self.queue.push_back(item);
    }
    fn requeue_front(&mut self, items: Vec<Queued>) {
        for item in items.into_iter().rev() {
            self.queue.push_front(item);
        }
    }
    fn pop_queued(&mut self) -> Option<Queued> {
        self.queue.pop_front()
    }
    fn front_qos(&self) -> Option<QoS> {
        self.queue.front().map(|q| q.message.qos)
    }
    fn newest_queued(&self) -> Option<RequestId> {
        self.queue.back().map(|q| q.id)
    }
    fn queued_len(&self) -> usize {
        self.queue.len()
    }

    fn insert_inflight(&mut self, item: Inflight) {
        if let Some(pid) = item.publish.qos.packet_id() {
            self.inflight.insert(pid.get(), item);
        }
    }
    fn inflight(&self, pid: PacketId) -> Option<InflightState> {
        self.inflight.get(&pid.get()).map(|i| InflightState {
            id: i.id,
            qos: i.publish.qos.qos(),
            released: i.released,
        })
    }
    fn release_inflight(&mut self, pid: PacketId) {
        if let Some(item) = self.inflight.get_mut(&pid.get()) {
            item.released = true;
        }
    }
    fn set_dup(&mut self, pid: PacketId) {
        if let Some(item) = self.inflight.get_mut(&pid.get()) {
            item.publish.dup = true;
        }
    }
    fn remove_inflight(&mut self, pid: PacketId) -> Option<Inflight> {
        self.inflight.remove(&pid.get())
    }
    fn inflight_len(&self) -> usize {
        self.inflight.len()
    }
    fn inflight_in_order(&self) -> Vec<Inflight> {
        let mut all: Vec<Inflight> = self.inflight.values().cloned().collect();
        all.sort_by_key(|i| i.seq);
        all
    }
    fn clear_inflight(&mut self) {
        self.inflight.clear();
    }

    fn insert_incoming(&mut self, pid: PacketId) {
        self.incoming.insert(pid.get());
    }
    fn contains_incoming(&self, pid: PacketId) -> bool {
        self.incoming.contains(&pid.get())
    }
    fn remove_incoming(&mut self, pid: PacketId) -> bool {
        self.incoming.remove(&pid.get())
    }
    fn incoming_len(&self) -> usize {
        self.incoming.len()
    }
    fn clear_incoming(&mut self) {
        self.incoming.clear();
    }
}
