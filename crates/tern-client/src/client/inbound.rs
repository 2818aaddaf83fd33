//! What the server sends: messages (exactly once for QoS 2), the
//! application's acknowledgements in arrival order, and the answers to the
//! client's publishes and requests.

use std::time::Instant;

use tern_codec::{
    Ack, Message, Packet, PacketId, Publish, QoS, QosPid, ReasonCode, SubAck, UnsubAck,
};

use super::connection::{PendingAck, ReqKind};
use super::{AckId, Client, ClientEvent, Delivery, State};

impl Client {
    pub(super) fn on_publish(&mut self, mut p: Publish, now: Instant) {
        if self.config.version.is_v5() {
            if let Some(alias) = p.properties.topic_alias.take() {
                if alias.get() > self.config.topic_alias_maximum {
                    return self.protocol_error(ReasonCode::TopicAliasInvalid, now);
                }
                if p.topic.is_empty() {
                    match self.link.aliases_in.get(&alias.get()) {
                        Some(t) => p.topic = t.clone(),
                        None => return self.protocol_error(ReasonCode::ProtocolError, now),
                    }
                } else {
                    self.link.aliases_in.insert(alias.get(), p.topic.clone());
                }
            }
        }
        if p.topic.is_empty() {
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        let dup = p.dup;
        match p.qos {
            QosPid::AtMostOnce => self.deliver(p, dup, None),
            QosPid::AtLeastOnce(pid) => {
                if self.unacked.contains_key(&pid.get()) {
                    // Sent again before the application acked it: it has it.
                    return;
                }
                if !self.receive_quota_left() {
                    return self.protocol_error(ReasonCode::ReceiveMaximumExceeded, now);
                }
                if self.config.manual_ack {
                    let seq = self.push_ack(pid, QoS::AtLeastOnce);
                    self.unacked.insert(pid.get(), seq);
                    self.deliver(p, dup, Some(AckId(seq)));
                } else {
                    self.deliver(p, dup, None);
                    self.write_ack(Packet::PubAck(Ack::new(pid)), now);
                }
            }
            QosPid::ExactlyOnce(pid) => {
                if self.store.contains_incoming(pid) {
                    // Delivered already; our PUBREC was lost.
                    self.write_ack(Packet::PubRec(Ack::new(pid)), now);
                    return;
                }
                if self.unacked.contains_key(&pid.get()) {
                    // Delivered already; the application has yet to ack.
                    return;
                }
                if !self.receive_quota_left() {
                    return self.protocol_error(ReasonCode::ReceiveMaximumExceeded, now);
                }
                if self.config.manual_ack {
                    let seq = self.push_ack(pid, QoS::ExactlyOnce);
                    self.unacked.insert(pid.get(), seq);
                    self.deliver(p, dup, Some(AckId(seq)));
                } else {
                    self.store.insert_incoming(pid);
                    self.deliver(p, dup, None);
                    self.write_ack(Packet::PubRec(Ack::new(pid)), now);
                }
            }
        }
    }

    pub(super) fn receive_quota_left(&self) -> bool {
        !self.config.version.is_v5()
            || self.acks.len() + self.store.incoming_len()
                < usize::from(self.config.receive_maximum)
    }

    pub(super) fn deliver(&mut self, p: Publish, dup: bool, ack: Option<AckId>) {
        self.events.push_back(ClientEvent::Message(Delivery {
            message: Message::from(p),
            dup,
            ack,
        }));
    }

    pub(super) fn push_ack(&mut self, pid: PacketId, qos: QoS) -> u64 {
        let seq = self.next_ack;
        self.next_ack += 1;
        self.acks.push_back(PendingAck {
            seq,
            pid,
            qos,
            acked: false,
        });
        seq
    }

    pub(super) fn flush_acks(&mut self, now: Instant) {
        if self.state != State::Connected {
            return;
        }
        while self.acks.front().is_some_and(|a| a.acked) {
            let Some(a) = self.acks.pop_front() else {
                break;
            };
            self.unacked.remove(&a.pid.get());
            if a.qos == QoS::ExactlyOnce {
                self.store.insert_incoming(a.pid);
                self.write_ack(Packet::PubRec(Ack::new(a.pid)), now);
            } else {
                self.write_ack(Packet::PubAck(Ack::new(a.pid)), now);
            }
        }
    }

    pub(super) fn on_puback(&mut self, a: Ack, now: Instant) {
        let Some(item) = self.store.inflight(a.packet_id) else {
            return;
        };
        if item.qos != QoS::AtLeastOnce {
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        let id = item.id;
        self.store.remove_inflight(a.packet_id);
        self.complete(id, a.reason_code);
        self.send_queued(now);
    }

    pub(super) fn on_pubrec(&mut self, a: Ack, now: Instant) {
        let pid = a.packet_id;
        let Some(item) = self.store.inflight(pid) else {
            let mut rel = Ack::new(pid);
            if self.config.version.is_v5() {
                rel.reason_code = ReasonCode::PacketIdentifierNotFound;
            }
            return self.write_ack(Packet::PubRel(rel), now);
        };
        if item.qos != QoS::ExactlyOnce {
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        if a.reason_code.is_error() {
            let id = item.id;
            self.store.remove_inflight(pid);
            self.complete(id, a.reason_code);
            self.send_queued(now);
            return;
        }
        if !item.released {
            self.store.release_inflight(pid);
        }
        self.write_ack(Packet::PubRel(Ack::new(pid)), now);
    }

    pub(super) fn on_pubcomp(&mut self, a: Ack, now: Instant) {
        match self.store.inflight(a.packet_id) {
            Some(item) if item.released => {
                let id = item.id;
                self.store.remove_inflight(a.packet_id);
                self.complete(id, ReasonCode::Success);
                self.send_queued(now);
            }
            Some(_) => self.protocol_error(ReasonCode::ProtocolError, now),
            None => {}
        }
    }

    pub(super) fn on_pubrel(&mut self, a: Ack, now: Instant) {
        let mut comp = Ack::new(a.packet_id);
        if !self.store.remove_incoming(a.packet_id) && self.config.version.is_v5() {
            comp.reason_code = ReasonCode::PacketIdentifierNotFound;
        }
        self.write_ack(Packet::PubComp(comp), now);
    }

    pub(super) fn on_suback(&mut self, a: SubAck, now: Instant) {
        let pid = a.packet_id.get();
        match self.requests.get(&pid).map(|r| &r.kind) {
            None => return,
            Some(ReqKind::Subscribe(s) | ReqKind::Resubscribe(s))
                if s.filters.len() == a.reason_codes.len() => {}
            // An answer to another request, or not one code per filter.
            Some(_) => return self.protocol_error(ReasonCode::ProtocolError, now),
        }
        let Some(req) = self.requests.remove(&pid) else {
            return;
        };
        let (ReqKind::Subscribe(sub) | ReqKind::Resubscribe(sub)) = &req.kind else {
            return;
        };
        let mut results = Vec::with_capacity(sub.filters.len());
        for (f, &code) in sub.filters.iter().zip(&a.reason_codes) {
            if code.is_error() {
                self.subscriptions.remove(f.filter.bytes());
            } else {
                self.subscriptions.insert(
                    f.filter.bytes().clone(),
                    (f.clone(), sub.properties.clone()),
                );
            }
            results.push((f.filter.clone(), code));
        }
        self.events.push_back(match req.kind {
            ReqKind::Resubscribe(_) => ClientEvent::Resubscribed { results },
            _ => ClientEvent::Subscribed {
                id: req.id,
                reason_codes: a.reason_codes,
            },
        });
    }

    pub(super) fn on_unsuback(&mut self, a: UnsubAck, now: Instant) {
        let pid = a.packet_id.get();
        match self.requests.get(&pid).map(|r| &r.kind) {
            None => return,
            Some(ReqKind::Unsubscribe(u))
                if a.reason_codes.is_empty() || a.reason_codes.len() == u.filters.len() => {}
            Some(_) => return self.protocol_error(ReasonCode::ProtocolError, now),
        }
        let Some(req) = self.requests.remove(&pid) else {
            return;
        };
        if let ReqKind::Unsubscribe(unsub) = req.kind {
            let mut codes = a.reason_codes;
            if codes.is_empty() {
                codes = vec![ReasonCode::Success; unsub.filters.len()];
            }
            for f in &unsub.filters {
                self.subscriptions.remove(f.bytes());
            }
            self.events.push_back(ClientEvent::Unsubscribed {
                id: req.id,
                reason_codes: codes,
            });
        }
    }
}
