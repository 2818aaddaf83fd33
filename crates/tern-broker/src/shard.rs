//! Shared subscriptions across broker instances.
//!
//! A server that runs several [`Broker`](crate::Broker) shards forwards
//! every message to every shard, and each shard has its own members of a
//! shared group. So that each message goes to one member of the whole
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
}

/// A single broker instance: it always delivers to its members.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalShared;

impl SharedRouting for LocalShared {
    fn delivers(&mut self, _: &str, _: &str, _: &Arc<Message>) -> bool {
        true
    }
}
