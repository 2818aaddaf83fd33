//! Shared subscriptions across broker instances.
//!
//! A server that runs several [`Broker`](crate::Broker) shards forwards
//! messages to the shards that have matching subscriptions (learnt from
//! [`SharedRouting::interest`]; retained messages to every shard), and each
//! shard has its own members of a shared group. So that each message goes to one member of the whole
//! group, not one per shard, every shard asks a [`SharedRouting`] whether it
//! is the shard that delivers this message to this group. The embedding
//! learns where members are from [`Event::SharedMembers`](crate::Event::SharedMembers)
//! and answers the same way on every shard (from the message's identity,
//! which is the same `Arc` everywhere).

use std::sync::Arc;

use crate::Message;

/// Decides which broker instance delivers a message to a shared group.
pub trait SharedRouting: Send {
    /// Whether this instance delivers `msg` to its members of the group
    /// `$share/{share}/{filter}`.
    fn delivers(&mut self, share: &str, filter: &str, msg: &Arc<Message>) -> bool;

    /// This instance's first subscription to `filter` was made
    /// (`subscribed`), or its last one went; a shared subscription counts
    /// for its inner filter. Called only with
    /// [`Config::forward`](crate::Config::forward), before the SUBACK is
    /// queued: an embedding that forwards a message only to the instances
    /// with a matching filter learns of a subscription before its client
    /// can know it was made. Retained messages must still go everywhere
    /// (every instance keeps the retained set).
    fn interest(&mut self, filter: &str, subscribed: bool) {
        let _ = (filter, subscribed);
    }
}

/// A single broker instance: it always delivers to its members.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalShared;

impl SharedRouting for LocalShared {
    fn delivers(&mut self, _: &str, _: &str, _: &Arc<Message>) -> bool {
        true
    }
}
