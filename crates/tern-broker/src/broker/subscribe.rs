//! SUBSCRIBE and UNSUBSCRIBE: what CONNACK said is available, the
//! authorization policy filter by filter, the grant, and the retained
//! messages that follow the SUBACK.

use std::time::Instant;

use tern_codec::{
    Packet, PacketType, ReasonCode, RetainHandling, SubAck, Subscribe, TopicFilter, UnsubAck,
    Unsubscribe,
};

use super::conn::{Held, Phase};
use super::connect::RESERVED_PREFIX;
use super::{refusal, Broker, BrokerEvent, ConnId, SessionId};
use crate::durable::{Change, StoredSubscription};
use crate::policy::Verdict;
use crate::session::{Delivery, Sub};

impl Broker {
    /// Works through a SUBSCRIBE's filters from `next`, pausing where the
    /// authorizer asks the embedding.
    pub(super) fn subscribe_from(
        &mut self,
        conn: ConnId,
        packet: Subscribe,
        next: usize,
        mut codes: Vec<(ReasonCode, bool)>,
        now: Instant,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let v5 = c.version().is_v5();
        let Phase::Active(sid) = c.phase else { return };
        if next == 0
            && packet.properties.subscription_identifier.is_some()
            && !self.config.subscription_identifiers
        {
            return self.disconnect(conn, ReasonCode::SubscriptionIdentifiersNotSupported, now);
        }
        if next == 0 && v5 {
            // What CONNACK said is not available is a protocol error on 5.0
            // (§3.2.2.3.11, §3.2.2.3.15); 3.1.1 gets 0x80 for the filter.
            let cfg = &self.config;
            let filters = &packet.filters;
            if !cfg.shared_subscriptions && filters.iter().any(|f| f.filter.is_shared()) {
                return self.disconnect(conn, ReasonCode::SharedSubscriptionsNotSupported, now);
            }
            if !cfg.wildcard_subscriptions && filters.iter().any(|f| f.filter.has_wildcards()) {
                return self.disconnect(conn, ReasonCode::WildcardSubscriptionsNotSupported, now);
            }
        }
        for i in next..packet.filters.len() {
            let filter = &packet.filters[i].filter;
            let verdict = match self.precheck(conn, filter, v5) {
                Some(v) => v,
                None if self.sessions[&sid].trusted => Verdict::Allow,
                None if filter.filter().starts_with(RESERVED_PREFIX) => {
                    Verdict::Deny(ReasonCode::NotAuthorized)
                }
                None => self.authz.subscribe(&self.sessions[&sid].client, filter),
            };
            if verdict == Verdict::Ask {
                let client = self.sessions[&sid].client.clone();
                let token = self.token(conn);
                let filter = filter.clone();
                let c = self.conns.get_mut(&conn).expect("connection exists");
                c.held = Some(Box::new((
                    token,
                    Held::Subscribe {
                        packet,
                        next: i,
                        codes,
                    },
                )));
                self.out.events.push_back(BrokerEvent::AuthorizeSubscribe {
                    token,
                    client,
                    filter,
                });
                return;
            }
            let code = self.grant(conn, &packet, i, verdict);
            codes.push(code);
        }
        let ack = SubAck {
            packet_id: packet.packet_id,
            reason_codes: codes.iter().map(|&(c, _)| c).collect(),
            properties: Default::default(),
        };
        self.send(conn, &Packet::SubAck(ack));
        // Retained messages follow the SUBACK.
        for (i, f) in packet.filters.iter().enumerate() {
            let (code, new) = codes[i];
            // Retained messages are not sent for shared subscriptions.
            let send = match f.options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendIfNew => new,
                RetainHandling::DoNotSend => false,
            };
            if send && !code.is_error() && !f.filter.is_shared() {
                self.send_retained(conn, &packet, i, now);
            }
        }
    }

    /// Checks that do not depend on the policy.
    pub(super) fn precheck(
        &self,
        _conn: ConnId,
        filter: &TopicFilter,
        _v5: bool,
    ) -> Option<Verdict> {
        let cfg = &self.config;
        if filter.is_shared() && !cfg.shared_subscriptions {
            return Some(Verdict::Deny(ReasonCode::SharedSubscriptionsNotSupported));
        }
        if filter.has_wildcards() && !cfg.wildcard_subscriptions {
            return Some(Verdict::Deny(ReasonCode::WildcardSubscriptionsNotSupported));
        }
        if filter.levels().count() > cfg.max_topic_levels || filter.len() > cfg.max_topic_length {
            return Some(Verdict::Deny(ReasonCode::TopicFilterInvalid));
        }
        None
    }

    /// Installs filter `i` of `packet` if `verdict` allows; returns its code.
    pub(super) fn grant(
        &mut self,
        conn: ConnId,
        packet: &Subscribe,
        i: usize,
        verdict: Verdict,
    ) -> (ReasonCode, bool) {
        if let Verdict::Deny(code) = verdict {
            return (refusal(code, PacketType::SubAck), false);
        }
        let Some(Phase::Active(sid)) = self.conns.get(&conn).map(|c| &c.phase) else {
            return (ReasonCode::UnspecifiedError, false);
        };
        let sid = *sid;
        let f = &packet.filters[i];
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let exists = s.subscriptions.contains_key(&f.filter);
        if !exists && s.subscriptions.len() >= self.config.max_subscriptions {
            return (ReasonCode::QuotaExceeded, false);
        }
        let mut options = f.options;
        options.qos = options.qos.min(self.config.maximum_qos);
        let sub = Sub {
            options,
            id: packet.properties.subscription_identifier,
        };
        // Kept for the session's life: its own bytes, not the read buffer's.
        let filter = TopicFilter::new(f.filter.as_str()).expect("a valid filter stays valid");
        s.subscriptions.insert(filter.clone(), sub);
        self.routing.subs.subscribe(&f.filter, sid, sub);
        self.log_for(sid, || Change::Subscribed {
            session: sid,
            subscription: StoredSubscription {
                filter,
                options,
                id: sub.id,
            },
        });
        if !exists {
            self.subscription_changed(&f.filter, true);
        }
        (ReasonCode::granted(options.qos), !exists)
    }

    pub(super) fn send_retained(
        &mut self,
        conn: ConnId,
        packet: &Subscribe,
        i: usize,
        now: Instant,
    ) {
        let f = &packet.filters[i];
        let Some(Phase::Active(sid)) = self.conns.get(&conn).map(|c| &c.phase) else {
            return;
        };
        let sid = *sid;
        let Some(sub) = self.sessions[&sid].subscriptions.get(&f.filter) else {
            return;
        };
        let granted = sub.options.qos;
        let mut found = Vec::new();
        self.routing
            .retained
            .for_each_match(&f.filter, |_, m| found.push(m.clone()));
        for m in found {
            if m.expired(now) {
                // An expired retained message is forgotten when found.
                self.routing.retained.remove(&m.topic);
                if self.config.durable {
                    self.out.log(Change::Unretained(m.topic.clone()));
                }
                continue;
            }
            let d = Delivery {
                id: 0,
                qos: m.qos.min(granted),
                msg: m,
                // Retained messages sent because of a subscribe keep RETAIN
                // (3.1.1 [MQTT-3.3.1-8]; 5.0 §3.3.1.3).
                retain: true,
                sub_ids: packet
                    .properties
                    .subscription_identifier
                    .into_iter()
                    .collect(),
            };
            self.deliver(sid, d, now);
        }
    }

    pub(super) fn on_unsubscribe(&mut self, conn: ConnId, sid: SessionId, u: Unsubscribe) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let mut codes = Vec::with_capacity(u.filters.len());
        let mut gone = Vec::new();
        for f in &u.filters {
            if s.subscriptions.remove(f).is_some() {
                self.routing.subs.unsubscribe(f, &sid);
                gone.push(f);
                codes.push(ReasonCode::Success);
            } else {
                codes.push(ReasonCode::NoSubscriptionExisted);
            }
        }
        for f in gone {
            self.subscription_changed(f, false);
            self.log_for(sid, || Change::Unsubscribed {
                session: sid,
                filter: f.clone(),
            });
        }
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Default::default(),
        };
        self.send(conn, &Packet::UnsubAck(ack));
    }
}
