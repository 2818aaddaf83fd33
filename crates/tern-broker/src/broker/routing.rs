//! Who gets a message: the subscription index (with shared groups), the
//! retained index and its limits, and the interest this instance reports
//! to the shards beside it.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use tern_codec::{QoS, ReasonCode, TopicFilter};
use tern_topic::{Matches, RetainedIndex, SubscriptionIndex};

use super::{compact_message, Broker, SessionId};
use crate::durable::{Change, StoredRetained};
use crate::router::Report;
use crate::session::{Delivery, Envelope, Sub};

/// The indexes a message is routed through, and routing's reusable
/// buffers.
pub(super) struct Routing {
    pub(super) subs: SubscriptionIndex<SessionId, Sub>,
    pub(super) retained: RetainedIndex<Arc<Envelope>>,
    /// With `forward`: how many local subscriptions each filter has (as
    /// subscribed, shared ones with their prefix), for the router.
    pub(super) interest: BTreeMap<TopicFilter, u32>,
    pub(super) scratch: Matches<SessionId, Sub>,
    /// Routing's list of deliveries, kept between messages.
    pub(super) deliveries: Vec<(SessionId, QoS, bool, Vec<NonZeroU32>)>,
}

/// Which of this instance's subscriptions a message is routed to.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    /// All of them: a broker on its own.
    All,
    /// The ordinary ones: published here, beside other instances, whose
    /// shared groups the router gives their turn.
    Subscribers,
    /// As the router decided.
    Forwarded {
        /// The ordinary ones too.
        subscribers: bool,
        /// The shared groups, by their `$share/...` filter.
        groups: &'a [TopicFilter],
    },
}

impl Scope<'_> {
    fn subscribers(self) -> bool {
        match self {
            Scope::All | Scope::Subscribers => true,
            Scope::Forwarded { subscribers, .. } => subscribers,
        }
    }

    /// Whether this instance delivers to the group `$share/{name}/{filter}`.
    fn group(self, name: &str, filter: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Subscribers => false,
            Scope::Forwarded { groups, .. } => groups
                .iter()
                .any(|g| g.share_group() == Some(name) && g.filter() == filter),
        }
    }
}

impl Routing {
    pub(super) fn new(seed: u64) -> Routing {
        Routing {
            subs: SubscriptionIndex::with_seed(seed),
            retained: RetainedIndex::with_seed(seed),
            interest: BTreeMap::new(),
            scratch: Matches::new(),
            deliveries: Vec::new(),
        }
    }
}

impl Broker {
    /// Stores or clears a retained message.
    /// With `persist` (a message published here, or a will), the change
    /// goes to the durable store too.
    pub(super) fn retain(&mut self, msg: &Arc<Envelope>, persist: bool) -> Result<(), ReasonCode> {
        let persist = persist && self.config.durable;
        if msg.payload.is_empty() {
            // [MQTT-3.3.1-6]: an empty payload clears the retained message.
            if self.routing.retained.remove(&msg.topic).is_some() && persist {
                self.out.log(Change::Unretained(msg.topic.clone()));
            }
            return Ok(());
        }
        let replaced = self
            .routing
            .retained
            .get(&msg.topic)
            .map_or(0, |m| m.weight());
        let full_count =
            self.routing.retained.len() >= self.config.max_retained_messages && replaced == 0;
        let full_bytes = self.routing.retained.total_weight() - replaced + msg.weight()
            > self.config.max_retained_bytes;
        if full_count || full_bytes {
            return Err(ReasonCode::QuotaExceeded);
        }
        let kept = compact_message(msg);
        if persist {
            let expires_at = msg.expires_at.and_then(|at| self.wall_of(at));
            self.out.log(Change::Retained(StoredRetained {
                message: kept.clone(),
                expires_at,
            }));
        }
        self.routing
            .retained
            .insert(msg.topic.clone(), kept, msg.weight());
        Ok(())
    }

    /// How a message published here is routed: to everything, or, beside
    /// other instances, to the ordinary subscriptions (the router gives
    /// shared groups their turn).
    pub(super) fn local_scope(&self) -> Scope<'static> {
        if self.config.forward {
            Scope::Subscribers
        } else {
            Scope::All
        }
    }

    /// Delivers `msg` to the matching sessions in `scope`; returns how many.
    pub(super) fn route(&mut self, msg: &Arc<Envelope>, scope: Scope<'_>, now: Instant) -> usize {
        self.out.forget_wires();
        let n = self.route_inner(msg, scope, now);
        self.out.forget_wires();
        n
    }

    fn route_inner(&mut self, msg: &Arc<Envelope>, scope: Scope<'_>, now: Instant) -> usize {
        let mut scratch = std::mem::take(&mut self.routing.scratch);
        self.routing.subs.matches(&msg.topic, &mut scratch);
        // Reused from message to message: routing allocates nothing.
        let mut deliveries = std::mem::take(&mut self.routing.deliveries);
        if scope.subscribers() {
            for entries in scratch.per_subscriber() {
                let sid = entries[0].0;
                let mut qos = None;
                let mut retain = false;
                let mut sub_ids = Vec::new();
                for (_, sub) in entries {
                    // [MQTT-3.8.3-3]: No Local.
                    if sub.options.no_local && msg.publisher == Some(sid) {
                        continue;
                    }
                    qos = qos.max(Some(sub.options.qos));
                    retain |= sub.options.retain_as_published && msg.retain;
                    sub_ids.extend(sub.id);
                }
                if let Some(q) = qos {
                    deliveries.push((sid, q.min(msg.qos), retain, sub_ids));
                }
            }
        }
        let sessions = &self.sessions;
        // Round robin over the connected members; over all of them (to
        // queue) when none is connected.
        let mut online_first = |m: &[(SessionId, Sub)], cursor: &mut usize| {
            let n = m.len();
            let online = |i: usize| sessions.get(&m[i].0).is_some_and(|s| s.conn.is_some());
            let start = *cursor % n;
            let at = (0..n)
                .map(|k| (start + k) % n)
                .find(|&i| online(i))
                .unwrap_or(start);
            *cursor = at + 1;
            Some(at)
        };
        for &g in scratch.groups() {
            let group = self.routing.subs.group(g);
            if !scope.group(group.name(), group.filter()) {
                continue;
            }
            if let Some(&(sid, sub)) = self.routing.subs.pick(g, &mut online_first) {
                let retain = sub.options.retain_as_published && msg.retain;
                let ids = sub.id.into_iter().collect();
                deliveries.push((sid, sub.options.qos.min(msg.qos), retain, ids));
            }
        }
        self.routing.scratch = scratch;
        let n = deliveries.len();
        for (sid, qos, retain, sub_ids) in deliveries.drain(..) {
            let d = Delivery {
                msg: msg.clone(),
                qos,
                retain,
                sub_ids,
                id: 0,
            };
            self.deliver(sid, d, now);
        }
        self.routing.deliveries = deliveries;
        n
    }

    /// A local subscription to `filter` was made (`subscribed`) or went:
    /// with `forward`, the router hears of a filter's first subscription
    /// and of its last, and of every change of a shared group's members.
    pub(super) fn subscription_changed(&mut self, filter: &TopicFilter, subscribed: bool) {
        if !self.config.forward {
            return;
        }
        let interest = &mut self.routing.interest;
        let count = match interest.get_mut(filter) {
            Some(n) if subscribed => {
                *n += 1;
                *n
            }
            Some(n) => {
                *n -= 1;
                *n
            }
            None if subscribed => {
                interest.insert(filter.clone(), 1);
                1
            }
            None => return,
        };
        if count == 0 {
            interest.remove(filter);
        }
        let edge = if subscribed { count == 1 } else { count == 0 };
        if edge || filter.is_shared() {
            let report = Report::Subscriptions {
                filter: filter.clone(),
                count: count as usize,
            };
            self.out.reports.push_back(report);
        }
    }
}
