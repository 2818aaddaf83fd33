//! Inbound PUBLISH: topic aliases, QoS 2 duplicates, authorization, the
//! message made and routed, and the acknowledgements of both directions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::{
    Ack, Packet, PacketType, Publish, PublishProperties, QosPid, ReasonCode, TopicName,
};

use super::conn::{Held, Phase};
use super::connect::RESERVED_PREFIX;
use super::routing::Scope;
use super::{ack, fit, refusal, Broker, BrokerEvent, ConnId, SessionId};
use crate::durable::{Change, InflightStage};
use crate::policy::Verdict;
use crate::router::{Forward, Report};
use crate::session::{Envelope, OutState};
use crate::Message;

impl Broker {
    /// Takes a message as the [`Router`](crate::router::Router) decided:
    /// delivers it to this instance's subscriptions and shared groups as
    /// `fwd` says, and keeps it as retained if it says so, so every
    /// instance answers subscriptions from a full retained set. Returns how
    /// many sessions it was delivered to.
    pub fn handle_forward(&mut self, fwd: Forward, now: Instant) -> usize {
        if fwd.retain {
            // Over the limit, this instance's copy is not kept; the
            // publisher's instance answered the client.
            let _ = self.retain(&fwd.msg, false);
        }
        let scope = Scope::Forwarded {
            subscribers: fwd.subscribers,
            groups: &fwd.groups,
        };
        self.route(&fwd.msg, scope, now)
    }

    pub(super) fn on_publish(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        mut p: Publish,
        now: Instant,
    ) {
        if p.qos.qos() > self.config.maximum_qos {
            return self.disconnect(conn, ReasonCode::QoSNotSupported, now);
        }
        if p.retain && !self.config.retain_available {
            return self.disconnect(conn, ReasonCode::RetainNotSupported, now);
        }
        if let Err(code) = self.resolve_alias(conn, &mut p) {
            return self.disconnect(conn, code, now);
        }
        // QoS 2 resent before PUBREL: acknowledge again, do not route again.
        if let QosPid::ExactlyOnce(id) = p.qos {
            let received = &self.sessions[&sid].flow().incoming_qos2;
            if received.contains(&id.get()) {
                return self.send(conn, &Packet::PubRec(Ack::new(id)));
            }
            if received.len() >= usize::from(self.config.receive_maximum) {
                return self.disconnect(conn, ReasonCode::ReceiveMaximumExceeded, now);
            }
        }
        self.stats.messages_received += 1;
        let topic = p.topic.clone();
        if topic.levels().count() > self.config.max_topic_levels
            || topic.len() > self.config.max_topic_length
        {
            return self.publish_decided(
                conn,
                p,
                topic,
                Verdict::Deny(ReasonCode::TopicNameInvalid),
                now,
            );
        }
        // Clients do not publish to `$SYS`: it is the broker's (and its
        // trusted adapters', which report their events there).
        if topic.as_str().starts_with("$SYS") && !self.sessions[&sid].trusted {
            return self.publish_decided(
                conn,
                p,
                topic,
                Verdict::Deny(ReasonCode::NotAuthorized),
                now,
            );
        }
        let verdict = if self.sessions[&sid].trusted {
            Verdict::Allow
        } else if topic.as_str().starts_with(RESERVED_PREFIX) {
            // The broker's own topics (its adapters' configuration).
            Verdict::Deny(ReasonCode::NotAuthorized)
        } else {
            self.authz.publish(&self.sessions[&sid].client, &topic)
        };
        match verdict {
            Verdict::Ask => {
                let client = self.sessions[&sid].client.clone();
                let token = self.token(conn);
                let c = self.conns.get_mut(&conn).expect("connection exists");
                c.held = Some(Box::new((token, Held::Publish(p, topic.clone()))));
                self.out.events.push_back(BrokerEvent::AuthorizePublish {
                    token,
                    client,
                    topic,
                });
            }
            v => self.publish_decided(conn, p, topic, v, now),
        }
    }

    /// Gives `p` its topic from, or records it as, the client's topic
    /// alias ([MQTT-3.3.2-7] ... [MQTT-3.3.2-12]); a PUBLISH left without a
    /// topic is a protocol error.
    fn resolve_alias(&mut self, conn: ConnId, p: &mut Publish) -> Result<(), ReasonCode> {
        if let Some(alias) = p.properties.topic_alias.take() {
            let i = usize::from(alias.get());
            if i > usize::from(self.config.topic_alias_maximum) {
                return Err(ReasonCode::TopicAliasInvalid);
            }
            let c = self.conns.get_mut(&conn).expect("connection exists");
            let aliases_in = &mut c.aliases.get_or_insert_with(Box::default).incoming;
            if aliases_in.len() < i {
                aliases_in.resize(i, None);
            }
            if p.topic.is_empty() {
                let t = aliases_in[i - 1]
                    .as_ref()
                    .ok_or(ReasonCode::ProtocolError)?;
                p.topic = t.clone();
            } else {
                aliases_in[i - 1] = Some(p.topic.clone());
            }
        }
        if p.topic.is_empty() {
            return Err(ReasonCode::ProtocolError);
        }
        Ok(())
    }

    pub(super) fn publish_decided(
        &mut self,
        conn: ConnId,
        p: Publish,
        topic: TopicName,
        v: Verdict,
        now: Instant,
    ) {
        let Some(Phase::Active(sid)) = self.conns.get(&conn).map(|c| &c.phase) else {
            return;
        };
        let sid = *sid;
        let mut code = match v {
            Verdict::Deny(code) => refusal(code, PacketType::PubAck),
            _ => ReasonCode::Success,
        };
        if !code.is_error() {
            let props = p.properties;
            let msg = Arc::new(Envelope {
                message: Message {
                    topic,
                    payload: p.payload,
                    qos: p.qos.qos(),
                    retain: p.retain,
                    properties: PublishProperties {
                        message_expiry_interval: None,
                        topic_alias: None,
                        subscription_identifiers: Vec::new(),
                        ..props
                    },
                },
                expires_at: props
                    .message_expiry_interval
                    .map(|s| now + Duration::from_secs(s.into())),
                publisher: Some(sid),
            });
            if msg.retain {
                if let Err(c) = self.retain(&msg, true) {
                    // A 5.0 QoS 1/2 message is refused (0x97). Where no
                    // refusal can be said (QoS 0, or 3.1.1, which answers
                    // positively by [MQTT-3.3.5-2]) the message is
                    // delivered, just not kept.
                    if self.conns[&conn].version().is_v5() && p.qos != QosPid::AtMostOnce {
                        code = c;
                    }
                }
            }
            if !code.is_error() {
                let n = self.route(&msg, self.local_scope(), now);
                if self.config.forward {
                    self.out.reports.push_back(Report::Published(msg));
                } else if n == 0 {
                    code = ReasonCode::NoMatchingSubscribers;
                }
            }
        }
        let v5 = self.conns[&conn].version().is_v5();
        match p.qos {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => {
                let code = fit(code, PacketType::PubAck);
                self.send(conn, &Packet::PubAck(ack(id, code, v5)))
            }
            QosPid::ExactlyOnce(id) => {
                let code = fit(code, PacketType::PubRec);
                if !code.is_error() {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.flow_mut().incoming_qos2.insert(id.get());
                    }
                    // The PUBREC waits for this (and the message's copies)
                    // to be durable: a resend after a crash is recognised.
                    let packet_id = id.get();
                    self.log_for(sid, || Change::Received {
                        session: sid,
                        packet_id,
                    });
                }
                self.send(conn, &Packet::PubRec(ack(id, code, v5)));
            }
        }
    }

    pub(super) fn on_ack(
        &mut self,
        _conn: ConnId,
        sid: SessionId,
        a: Ack,
        expect: OutState,
        now: Instant,
    ) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let id = a.packet_id.get();
        let Some(f) = s.flow_if_any() else { return };
        if f.inflight.get(&id).is_some_and(|o| o.state == expect) {
            let o = f.inflight.remove(&id).expect("in flight");
            let id = o.delivery.id;
            self.log_for(sid, || Change::Removed { session: sid, id });
            self.drain_queue(sid, now);
        }
    }

    pub(super) fn on_pubrec(&mut self, conn: ConnId, sid: SessionId, a: Ack, now: Instant) {
        let v5 = self.conns[&conn].version().is_v5();
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let id = a.packet_id;
        match s.flow_if_any().and_then(|f| f.inflight.get_mut(&id.get())) {
            Some(o) if o.state == OutState::Rec => {
                let stored = o.delivery.id;
                if a.reason_code.is_error() {
                    // The exchange ends here: [MQTT-4.3.3-4] (5.0).
                    s.flow_mut().inflight.remove(&id.get());
                    self.log_for(sid, || Change::Removed {
                        session: sid,
                        id: stored,
                    });
                    self.drain_queue(sid, now);
                } else {
                    o.state = OutState::Comp;
                    self.log_for(sid, || Change::Sent {
                        session: sid,
                        id: stored,
                        packet_id: id.get(),
                        stage: InflightStage::AwaitPubComp,
                    });
                    self.send(conn, &Packet::PubRel(Ack::new(id)));
                }
            }
            Some(o) if o.state == OutState::Comp => {
                self.send(conn, &Packet::PubRel(Ack::new(id)));
            }
            _ => {
                let code = ReasonCode::PacketIdentifierNotFound;
                self.send(conn, &Packet::PubRel(ack(id, code, v5)));
            }
        }
    }

    pub(super) fn on_pubrel(&mut self, conn: ConnId, sid: SessionId, a: Ack) {
        let v5 = self.conns[&conn].version().is_v5();
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let released = s
            .flow_if_any()
            .is_some_and(|f| f.incoming_qos2.remove(&a.packet_id.get()));
        if released {
            let packet_id = a.packet_id.get();
            self.log_for(sid, || Change::Released {
                session: sid,
                packet_id,
            });
        }
        let code = if released {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        };
        self.send(conn, &Packet::PubComp(ack(a.packet_id, code, v5)));
    }

    pub(super) fn publish_will(
        &mut self,
        will: &tern_codec::Will,
        publisher: Option<SessionId>,
        now: Instant,
    ) {
        if will.topic.as_str().starts_with("$SYS") {
            // A will is a client's message: `$SYS` is the broker's.
            return;
        }
        let msg = Arc::new(Envelope::from_will(will, now, publisher));
        if msg.retain {
            let _ = self.retain(&msg, true);
        }
        self.route(&msg, self.local_scope(), now);
        if self.config.forward {
            self.out.reports.push_back(Report::Published(msg));
        }
    }
}
