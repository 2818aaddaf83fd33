//! Routing between broker instances: the shards of one server today, the
//! nodes of a cluster tomorrow (a node is to the cluster what a shard is to
//! the process).
//!
//! Each [`Broker`](crate::Broker) with [`Config::forward`](crate::Config::forward)
//! reports what it learns as [`Report`]s
//! ([`Broker::poll_report`](crate::Broker::poll_report)): how many of its
//! sessions subscribe with a filter, and every message published on it. One
//! [`Router`] takes the reports of every instance and decides, for each
//! message, which instances get it and, for each shared group, which one
//! instance delivers it to one of its members. The decisions come back as
//! [`Forward`]s, which the embedding hands to
//! [`Broker::handle_forward`](crate::Broker::handle_forward) of the
//! instance named (the publishing one included: only the router may choose
//! the member of a shared group spread over several instances).
//!
//! The router is sans-IO like the core: no threads, no clock. A server
//! keeps it behind a lock (messages are routed with `&self`, reports of
//! subscriptions change it with `&mut self`); a cluster would keep a copy
//! per node, fed with every node's reports.
//!
//! ```
//! use std::sync::Arc;
//! use tern_broker::router::{InstanceId, Report, Router};
//! use tern_broker::{Envelope, Message};
//! use tern_codec::{TopicFilter, TopicName};
//!
//! let (a, b) = (InstanceId(0), InstanceId(1));
//! let mut router = Router::new([a, b]);
//! // Instance b has a subscriber to `lights/#`...
//! let report = Report::Subscriptions { filter: TopicFilter::new("lights/#")?, count: 1 };
//! router.handle_report(b, report, &mut Vec::new());
//! // ...so a message published on a goes to b.
//! let msg = Arc::new(Envelope::from(Message::new(TopicName::new("lights/kitchen")?, "on")));
//! let mut out = Vec::new();
//! router.handle_report(a, Report::Published(msg), &mut out);
//! assert_eq!(out.len(), 1);
//! assert_eq!(out[0].to, b);
//! assert!(out[0].subscribers);
//! # Ok::<(), tern_topic::TopicError>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tern_codec::TopicFilter;
use tern_topic::{Matches, SubscriptionIndex};

use crate::Envelope;

/// One broker instance among those sharing a [`Router`]: a shard of a
/// server, or a node of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub u16);

/// What a broker instance tells the router it shares with other instances
/// ([`Broker::poll_report`](crate::Broker::poll_report)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// A message was published on this instance (by a client, or a will):
    /// the other instances with matching subscriptions get it, every other
    /// instance gets it if it is retained, and the router picks which
    /// instance delivers it to each shared group.
    Published(Arc<Envelope>),
    /// This instance's sessions now hold `count` subscriptions with exactly
    /// `filter`. Said when the count leaves or reaches zero, and, for a
    /// shared filter (`$share/{group}/...`), at every change: the count is
    /// the instance's weight in the group. Reported before the SUBACK is
    /// queued, so a router that has it before the SUBACK is written never
    /// leaves a subscriber that saw its SUBACK without a message.
    Subscriptions {
        /// The filter, as the clients subscribed (shared ones with their
        /// `$share/{group}/` prefix).
        filter: TopicFilter,
        /// This instance's subscriptions with it (members, for a shared
        /// filter).
        count: usize,
    },
}

/// A message for one instance, as the router decided: give it to that
/// instance's [`Broker::handle_forward`](crate::Broker::handle_forward).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The instance.
    pub to: InstanceId,
    /// The message (shared: the payload is never copied).
    pub msg: Arc<Envelope>,
    /// Deliver it to the instance's ordinary (not shared) subscriptions.
    pub subscribers: bool,
    /// Deliver it to one local member of each of these shared groups.
    pub groups: Vec<TopicFilter>,
    /// Keep it as the topic's retained message (or clear that, if the
    /// payload is empty): every instance keeps the retained set.
    pub retain: bool,
}

/// A shared group's turn, shared by its members' entries.
#[derive(Debug)]
struct Group {
    filter: TopicFilter,
    turn: AtomicU64,
}

/// What the router's index holds per instance and filter.
#[derive(Debug, Clone)]
struct Entry {
    /// The instance's subscriptions (members, for a shared group).
    count: u32,
    /// The group, for a shared filter.
    group: Option<Arc<Group>>,
}

/// Reusable buffers for [`Router::route`], one per thread that routes.
#[derive(Default)]
pub struct RouteScratch {
    matches: Matches<InstanceId, Entry>,
}

impl std::fmt::Debug for RouteScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteScratch").finish_non_exhaustive()
    }
}

/// Decides where messages go between broker instances. See the
/// [module documentation](self).
pub struct Router {
    instances: Vec<InstanceId>,
    index: SubscriptionIndex<InstanceId, Entry>,
    /// Every instance's counts, as reported: to forget an instance, and to
    /// check the index against.
    counts: BTreeMap<InstanceId, BTreeMap<TopicFilter, u32>>,
    groups: HashMap<TopicFilter, Arc<Group>>,
    scratch: RouteScratch,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("instances", &self.instances)
            .field("filters", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A router for these instances, none of which subscribes to anything
    /// yet.
    pub fn new(instances: impl IntoIterator<Item = InstanceId>) -> Router {
        let mut instances: Vec<_> = instances.into_iter().collect();
        instances.sort_unstable();
        instances.dedup();
        Router {
            instances,
            index: SubscriptionIndex::new(),
            counts: BTreeMap::new(),
            groups: HashMap::new(),
            scratch: RouteScratch::default(),
        }
    }

    /// The same router with its hash tables seeded by `seed`: a router
    /// facing the network should use a random one, so that nobody can
    /// choose filters that collide. Call it before any report.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Router {
        self.index = SubscriptionIndex::with_seed(seed);
        self
    }

    /// The instances, in order.
    pub fn instances(&self) -> &[InstanceId] {
        &self.instances
    }

    /// Takes a report of `from`: records its subscriptions, or routes its
    /// message into `out` (which is not cleared).
    pub fn handle_report(&mut self, from: InstanceId, report: Report, out: &mut Vec<Forward>) {
        match report {
            Report::Published(msg) => {
                let mut scratch = std::mem::take(&mut self.scratch);
                self.route(from, &msg, &mut scratch, out);
                self.scratch = scratch;
            }
            Report::Subscriptions { filter, count } => self.subscriptions(from, filter, count),
        }
    }

    /// `from` now holds `count` subscriptions with `filter`.
    pub fn subscriptions(&mut self, from: InstanceId, filter: TopicFilter, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let counts = self.counts.entry(from).or_default();
        if count == 0 {
            if counts.remove(&filter).is_none() {
                return;
            }
            self.index.unsubscribe(&filter, &from);
            if filter.is_shared() && self.index.shared_members(&filter) == 0 {
                self.groups.remove(&filter);
            }
            return;
        }
        counts.insert(filter.clone(), count);
        let group = filter.is_shared().then(|| {
            self.groups
                .entry(filter.clone())
                .or_insert_with(|| {
                    Arc::new(Group {
                        filter: filter.clone(),
                        turn: AtomicU64::new(0),
                    })
                })
                .clone()
        });
        self.index.subscribe(&filter, from, Entry { count, group });
    }

    /// An instance left (a node went down): its subscriptions are
    /// forgotten, and it gets nothing more.
    pub fn leave(&mut self, instance: InstanceId) {
        for (filter, _) in self.counts.remove(&instance).unwrap_or_default() {
            self.index.unsubscribe(&filter, &instance);
            if filter.is_shared() && self.index.shared_members(&filter) == 0 {
                self.groups.remove(&filter);
            }
        }
        self.instances.retain(|&i| i != instance);
    }

    /// Routes a message published on `from` into `out` (not cleared): one
    /// [`Forward`] per instance that gets it, `from` included when it is
    /// picked for a shared group. Takes `&self`, so that several threads
    /// may route at once; each brings its own `scratch`.
    pub fn route(
        &self,
        from: InstanceId,
        msg: &Arc<Envelope>,
        scratch: &mut RouteScratch,
        out: &mut Vec<Forward>,
    ) {
        let first = out.len();
        let to = |out: &mut Vec<Forward>, instance: InstanceId| -> usize {
            match out[first..].iter().position(|f| f.to == instance) {
                Some(i) => first + i,
                None => {
                    out.push(Forward {
                        to: instance,
                        msg: msg.clone(),
                        subscribers: false,
                        groups: Vec::new(),
                        retain: false,
                    });
                    out.len() - 1
                }
            }
        };
        if msg.retain {
            // Every instance keeps the retained set.
            for &i in self.instances.iter().filter(|&&i| i != from) {
                let at = to(out, i);
                out[at].retain = true;
            }
        }
        let m = &mut scratch.matches;
        self.index.matches(&msg.topic, m);
        for &(instance, _) in m.subscriptions() {
            if instance != from {
                let at = to(out, instance);
                out[at].subscribers = true;
            }
        }
        for &g in m.groups() {
            let members = self.index.group(g).members();
            let Some(group) = members.first().and_then(|(_, e)| e.group.as_ref()) else {
                continue;
            };
            if let Some(instance) = pick(members, group) {
                let at = to(out, instance);
                out[at].groups.push(group.filter.clone());
            }
        }
        // A Forward to `from` that only says "retained" or nothing at all
        // cannot exist: `from` is skipped for both.
    }

    /// Checks the index against the counts reported. For tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut n = 0;
        for (&instance, counts) in &self.counts {
            for (filter, &count) in counts {
                n += 1;
                match self.index.get(filter, &instance) {
                    Some(e) if e.count == count => {}
                    _ => return Err(format!("{instance:?}: {filter} not indexed as reported")),
                }
            }
        }
        if n != self.index.len() {
            return Err(format!("{n} reported, {} indexed", self.index.len()));
        }
        Ok(())
    }
}

/// The instance whose turn it is in a shared group: turns go round the
/// group's members in proportion to their counts, so each member session
/// gets its share whatever instance it is on.
fn pick(members: &[(InstanceId, Entry)], group: &Group) -> Option<InstanceId> {
    let total: u64 = members.iter().map(|(_, e)| u64::from(e.count)).sum();
    if total == 0 {
        return None;
    }
    let mut turn = group.turn.fetch_add(1, Ordering::Relaxed) % total;
    for (instance, e) in members {
        let weight = u64::from(e.count);
        if turn < weight {
            return Some(*instance);
        }
        turn -= weight;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use tern_codec::TopicName;

    fn filter(f: &str) -> TopicFilter {
        TopicFilter::new(f).expect("valid")
    }

    fn msg(topic: &str, retain: bool) -> Arc<Envelope> {
        let m = Message::new(TopicName::new(topic).expect("valid"), "x").with_retain(retain);
        Arc::new(Envelope::from(m))
    }

    fn routed(r: &mut Router, from: u16, m: &Arc<Envelope>) -> Vec<Forward> {
        let mut out = Vec::new();
        r.handle_report(InstanceId(from), Report::Published(m.clone()), &mut out);
        out
    }

    fn ids(n: u16) -> impl Iterator<Item = InstanceId> {
        (0..n).map(InstanceId)
    }

    #[test]
    fn retained_messages_go_to_every_other_instance_and_the_rest_where_wanted() {
        let mut r = Router::new(ids(3));
        r.subscriptions(InstanceId(2), filter("a/+"), 1);
        let out = routed(&mut r, 0, &msg("a/b", true));
        let got: Vec<_> = out
            .iter()
            .map(|f| (f.to.0, f.subscribers, f.retain))
            .collect();
        assert_eq!(got, [(1, false, true), (2, true, true)]);
        let out = routed(&mut r, 0, &msg("a/b", false));
        let got: Vec<_> = out
            .iter()
            .map(|f| (f.to.0, f.subscribers, f.retain))
            .collect();
        assert_eq!(got, [(2, true, false)]);
        // Its own subscribers are the publishing instance's business.
        assert!(routed(&mut r, 2, &msg("a/b", false)).is_empty());
    }

    #[test]
    fn a_groups_turns_follow_its_members_and_include_the_publisher() {
        let mut r = Router::new(ids(2));
        let g = filter("$share/g/jobs");
        r.subscriptions(InstanceId(0), g.clone(), 1);
        r.subscriptions(InstanceId(1), g.clone(), 3);
        let mut per = [0; 2];
        for _ in 0..40 {
            let out = routed(&mut r, 0, &msg("jobs", false));
            assert_eq!(out.len(), 1, "one instance per message");
            assert_eq!(out[0].groups, std::slice::from_ref(&g));
            assert!(!out[0].subscribers);
            per[usize::from(out[0].to.0)] += 1;
        }
        assert_eq!(per, [10, 30]);
        r.check_invariants().expect("consistent");
    }

    #[test]
    fn an_instance_that_leaves_gets_nothing_more() {
        let mut r = Router::new(ids(3));
        r.subscriptions(InstanceId(1), filter("t"), 1);
        r.subscriptions(InstanceId(1), filter("$share/g/t"), 1);
        r.subscriptions(InstanceId(2), filter("$share/g/t"), 1);
        r.leave(InstanceId(1));
        r.check_invariants().expect("consistent");
        for _ in 0..4 {
            let out = routed(&mut r, 0, &msg("t", true));
            assert!(out.iter().all(|f| f.to == InstanceId(2)), "{out:?}");
        }
        // The last member going takes the group with it.
        r.subscriptions(InstanceId(2), filter("$share/g/t"), 0);
        assert!(r.groups.is_empty());
        assert!(routed(&mut r, 0, &msg("t", false)).is_empty());
    }
}
