//! What the client sends: publishes (within the server's limits and
//! Receive Maximum, queued otherwise), subscribe and unsubscribe requests,
//! packet identifiers, and encoding within the output bound.

use std::time::Instant;

use tern_codec::{Message, Packet, PacketId, Publish, QoS, QosPid, ReasonCode, TopicName};

use crate::store::{Inflight, Queued, RequestId};

use super::connection::{ReqKind, Request};
use super::{Client, ClientEvent, PublishError, RequestError, State, OUT_HIGH, PLACEHOLDER};

impl Client {
    pub(super) fn request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    pub(super) fn request(
        &mut self,
        kind: ReqKind,
        now: Instant,
    ) -> Result<RequestId, RequestError> {
        let id = self.request_id();
        let req = Request { id, kind };
        if self.state == State::Connected {
            if let Some(pid) = self.alloc_pid() {
                self.requests.insert(pid.get(), req);
                self.send_request(pid.get(), now);
                return Ok(id);
            }
        }
        if self.waiting.len() >= self.config.max_queued {
            return Err(RequestError::QueueFull);
        }
        self.waiting.push_back(req);
        Ok(id)
    }

    pub(super) fn send_request(&mut self, pid: u16, now: Instant) {
        let Some(req) = self.requests.get_mut(&pid) else {
            return;
        };
        let packet_id = PacketId::new(pid).unwrap_or(PLACEHOLDER);
        let packet = match &mut req.kind {
            ReqKind::Subscribe(s) | ReqKind::Resubscribe(s) => {
                s.packet_id = packet_id;
                Packet::Subscribe(s.clone())
            }
            ReqKind::Unsubscribe(u) => {
                u.packet_id = packet_id;
                Packet::Unsubscribe(u.clone())
            }
        };
        if self.write(&packet, now).is_err() {
            // A filter or property this version cannot carry: answer as the
            // server would have refused it.
            if let Some(req) = self.requests.remove(&pid) {
                let n = match &req.kind {
                    ReqKind::Subscribe(s) | ReqKind::Resubscribe(s) => s.filters.len(),
                    ReqKind::Unsubscribe(u) => u.filters.len(),
                };
                let reason_codes = vec![ReasonCode::UnspecifiedError; n];
                self.events.push_back(match req.kind {
                    ReqKind::Subscribe(_) | ReqKind::Resubscribe(_) => ClientEvent::Subscribed {
                        id: req.id,
                        reason_codes,
                    },
                    ReqKind::Unsubscribe(_) => ClientEvent::Unsubscribed {
                        id: req.id,
                        reason_codes,
                    },
                });
            }
        }
    }

    /// A packet identifier not in use by a message in flight or a request.
    pub(super) fn alloc_pid(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
            let pid = PacketId::new(self.next_pid)?;
            if self.store.inflight(pid).is_none() && !self.requests.contains_key(&pid.get()) {
                return Some(pid);
            }
        }
        None
    }

    pub(super) fn window(&self) -> usize {
        usize::from(self.config.max_inflight.min(self.link.receive_maximum))
    }

    pub(super) fn may_send(&self, qos: QoS) -> bool {
        qos == QoS::AtMostOnce || self.sent_inflight() < self.window()
    }

    /// Checks a message against what the server said it accepts.
    pub(super) fn check(&self, m: &Message) -> Result<(), PublishError> {
        if m.qos > self.link.maximum_qos {
            return Err(PublishError::QosNotSupported(self.link.maximum_qos));
        }
        if m.retain && !self.link.retain_available {
            return Err(PublishError::RetainNotSupported);
        }
        Ok(())
    }

    /// Sends queued messages while connected and the window allows.
    pub(super) fn send_queued(&mut self, now: Instant) {
        self.send_resends(now);
        if !self.resend.is_empty() {
            return;
        }
        while self.state == State::Connected && self.out.len() < OUT_HIGH {
            match self.store.front_qos() {
                Some(qos) if self.may_send(qos) => {}
                _ => break,
            }
            let Some(item) = self.store.pop_queued() else {
                break;
            };
            if let Err(e) = self.check(&item.message) {
                self.fail(item.id, e);
                continue;
            }
            if !self.send_message(item, now) {
                break;
            }
        }
    }

    /// Sends one message (the window was checked). Returns `false` when no
    /// packet identifier was free and the message went back to the queue.
    pub(super) fn send_message(&mut self, item: Queued, now: Instant) -> bool {
        let Queued { id, message: m } = item;
        let qos = match m.qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            q => {
                let Some(pid) = self.alloc_pid() else {
                    self.store.requeue_front(vec![Queued { id, message: m }]);
                    return false;
                };
                if q == QoS::AtLeastOnce {
                    QosPid::AtLeastOnce(pid)
                } else {
                    QosPid::ExactlyOnce(pid)
                }
            }
        };
        let mut properties = m.properties;
        // The client chooses aliases; Subscription Identifiers are the
        // server's to send [MQTT-3.3.4-6].
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let publish = Publish {
            dup: false,
            qos,
            retain: m.retain,
            topic: m.topic,
            payload: m.payload,
            properties,
        };
        if let Err(e) = self.write_publish(&publish, now) {
            self.fail(id, e);
            return true;
        }
        if qos == QosPid::AtMostOnce {
            self.complete(id, ReasonCode::Success);
        } else {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.store.insert_inflight(Inflight {
                id,
                seq,
                publish,
                released: false,
            });
        }
        true
    }

    pub(super) fn complete(&mut self, id: RequestId, reason: ReasonCode) {
        let result = if reason.is_error() {
            Err(PublishError::Rejected(reason))
        } else {
            Ok(reason)
        };
        self.events.push_back(ClientEvent::Published { id, result });
    }

    pub(super) fn fail(&mut self, id: RequestId, error: PublishError) {
        self.events.push_back(ClientEvent::Published {
            id,
            result: Err(error),
        });
    }

    /// Encodes a PUBLISH, with a topic alias when the server allows them,
    /// within the server's Maximum Packet Size.
    pub(super) fn write_publish(&mut self, p: &Publish, now: Instant) -> Result<(), PublishError> {
        let v = self.config.version;
        let mut new_alias = None;
        let mut aliased = None;
        if v.is_v5() && self.config.use_topic_aliases && self.link.topic_alias_maximum > 0 {
            let alias = match self.link.aliases_out.get(p.topic.bytes()) {
                Some(&a) => Some((a, true)),
                None => {
                    let n = self.link.aliases_out.len();
                    (n < usize::from(self.link.topic_alias_maximum)).then(|| {
                        new_alias = Some(n as u16 + 1);
                        (n as u16 + 1, false)
                    })
                }
            };
            if let Some((a, known)) = alias {
                let mut q = p.clone();
                q.properties.topic_alias = std::num::NonZeroU16::new(a);
                if known {
                    q.topic = TopicName::empty();
                }
                aliased = Some(q);
            }
        }
        let packet = aliased.as_ref().unwrap_or(p);
        if let Some(max) = self.link.maximum_packet_size {
            let size = packet.encoded_len(v);
            if size > max as usize {
                return Err(PublishError::PacketTooLarge { size, max });
            }
        }
        packet
            .encode(v, &mut self.out)
            .map_err(|e| PublishError::Invalid(e.to_string()))?;
        if let Some(a) = new_alias {
            self.link.aliases_out.insert(p.topic.bytes().clone(), a);
        }
        self.link.last_sent = Some(now);
        Ok(())
    }

    pub(super) fn write_ack(&mut self, p: Packet, now: Instant) {
        // Acknowledgements without properties always encode.
        let _ = self.write(&p, now);
    }

    pub(super) fn write(
        &mut self,
        p: &Packet,
        now: Instant,
    ) -> Result<(), tern_codec::EncodeError> {
        if let Some(max) = self.link.maximum_packet_size {
            let size = p.encoded_len(self.config.version);
            if size > max as usize {
                return Err(tern_codec::EncodeError::PacketTooLarge(size));
            }
        }
        p.encode(self.config.version, &mut self.out)?;
        self.link.last_sent = Some(now);
        Ok(())
    }
}
