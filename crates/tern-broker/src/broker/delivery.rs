//! Outbound messages: sent at once while the client's window and its
//! connection allow, queued (bounded, with a policy) otherwise, resent in
//! order when a session resumes.

use std::sync::Arc;
use std::time::Instant;

use tern_codec::{Ack, Packet, PacketId, Publish, PublishProperties, QoS, QosPid};

use super::output::WireKey;
use super::{Broker, BrokerEvent, ConnId, SessionId};
use crate::durable::{Change, InflightStage};
use crate::session::{Delivery, OutState, Outgoing, Session};
use crate::{Config, QueueFullPolicy};

impl Broker {
    pub(super) fn deliver(&mut self, sid: SessionId, d: Delivery, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if d.msg.expired(now) {
            return;
        }
        let max = self.config.max_unwritten_bytes;
        let congested = s
            .conn
            .and_then(|c| self.conns.get(&c))
            .is_some_and(|c| c.congested(max));
        match s.conn {
            Some(_) if d.qos == QoS::AtMostOnce && congested => {
                // A slow consumer loses QoS 0 messages, nobody else does.
                self.stats.messages_dropped += 1;
                self.out.events.push_back(BrokerEvent::Dropped {
                    client_id: s.client.client_id.clone(),
                    topic: Some(d.msg.topic.clone()),
                });
            }
            Some(conn) if d.qos == QoS::AtMostOnce => self.send_publish(conn, sid, d, false, now),
            Some(conn) if s.flow().queued() == 0 && s.window_open() && !congested => {
                self.send_publish(conn, sid, d, false, now)
            }
            None if d.qos == QoS::AtMostOnce && !self.config.queue_qos0_offline => {}
            _ => self.enqueue(sid, d),
        }
    }

    pub(super) fn enqueue(&mut self, sid: SessionId, mut d: Delivery) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let w = d.msg.weight();
        let full = |s: &Session, cfg: &Config| {
            let f = s.flow();
            f.queued() >= cfg.max_queued_messages
                || f.queued_bytes().saturating_add(w) > cfg.max_queued_bytes
        };
        let mut dropped = None;
        if full(s, &self.config) {
            match self.config.queue_full {
                QueueFullPolicy::DropNewest => dropped = Some(d.msg.topic.clone()),
                QueueFullPolicy::DropOldest => {
                    while full(s, &self.config) {
                        let topic = match s.pop_queue() {
                            Some(old) => {
                                if s.stored {
                                    self.out.log(Change::Removed {
                                        session: sid,
                                        id: old.id,
                                    });
                                }
                                Some(old.msg.topic.clone())
                            }
                            None if s.flow().spilled.count > 0 => {
                                // The oldest is in the store only.
                                let id = drop_spilled(s);
                                self.out.log(Change::Removed { session: sid, id });
                                None
                            }
                            None => break,
                        };
                        self.stats.messages_dropped += 1;
                        self.out.events.push_back(BrokerEvent::Dropped {
                            client_id: s.client.client_id.clone(),
                            topic,
                        });
                    }
                    if full(s, &self.config) {
                        dropped = Some(d.msg.topic.clone());
                    }
                }
            }
        }
        match dropped {
            Some(topic) => {
                self.stats.messages_dropped += 1;
                self.out.events.push_back(BrokerEvent::Dropped {
                    client_id: s.client.client_id.clone(),
                    topic: Some(topic),
                });
            }
            None => {
                if s.stored {
                    name(s, &mut d);
                    let delivery = self.stored_delivery(&d);
                    self.out.log(Change::Queued {
                        session: sid,
                        delivery,
                    });
                }
                let s = self.sessions.get_mut(&sid).expect("session exists");
                // Offline, a session holds none of its queue in memory.
                let window = s.conn.map_or(0, |_| self.config.queue_window);
                let f = s.flow();
                if s.stored && (f.spilled.count > 0 || f.queue.len() >= window) {
                    // In the store only, after what is in memory: fetched
                    // when the queue drains.
                    let f = s.flow_mut();
                    if f.spilled.count == 0 {
                        f.fetch_from = d.id;
                    }
                    f.spilled.count += 1;
                    f.spilled.bytes += w as u64;
                    f.spilled.last_id = d.id;
                } else {
                    s.push_queue(d);
                }
            }
        }
    }

    /// Sends queued messages while the window allows.
    pub(super) fn drain_queue(&mut self, sid: SessionId, now: Instant) {
        let max = self.config.max_unwritten_bytes;
        loop {
            let Some(s) = self.sessions.get_mut(&sid) else {
                return;
            };
            let Some(conn) = s.conn else { return };
            self.fetch_if_low(sid);
            let s = self.sessions.get_mut(&sid).expect("checked above");
            let Some(front) = s.flow().queue.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && !s.window_open() {
                return;
            }
            if self.conns.get(&conn).is_some_and(|c| c.congested(max)) {
                return;
            }
            let d = s.pop_queue().expect("front exists");
            if d.msg.expired(now) {
                let id = d.id;
                self.log_for(sid, || Change::Removed { session: sid, id });
                continue;
            }
            self.send_publish(conn, sid, d, true, now);
        }
    }

    /// Sends one delivery (taken from the session's queue, if `queued`),
    /// registering it in flight if QoS 1/2.
    pub(super) fn send_publish(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        mut d: Delivery,
        queued: bool,
        now: Instant,
    ) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let stored = s.stored;
        let (qos, state) = match d.qos {
            QoS::AtMostOnce => (QosPid::AtMostOnce, None),
            q => {
                let Some(id) = s.allocate_pid().and_then(PacketId::new) else {
                    if queued {
                        // Back where it was, first in line.
                        return s.push_queue_front(d);
                    }
                    return self.enqueue(sid, d);
                };
                if q == QoS::AtLeastOnce {
                    (QosPid::AtLeastOnce(id), Some(OutState::Ack))
                } else {
                    (QosPid::ExactlyOnce(id), Some(OutState::Rec))
                }
            }
        };
        // Logged first: the PUBLISH goes out once its state is durable.
        if stored {
            if !queued && qos.packet_id().is_some() {
                name(s, &mut d);
            }
            self.log_sent(sid, &d, queued, qos);
        }
        let sent = self.write_publish(conn, &d, qos, false, now);
        if stored && !sent && (queued || qos.packet_id().is_some()) {
            // Too large for the client: dropped as if delivered.
            let id = d.id;
            self.out.log(Change::Removed { session: sid, id });
        }
        if let (Some(state), Some(id), true) = (state, qos.packet_id(), sent) {
            let f = self
                .sessions
                .get_mut(&sid)
                .expect("session exists")
                .flow_mut();
            let seq = f.next_seq;
            f.next_seq += 1;
            f.inflight.insert(
                id.get(),
                Outgoing {
                    delivery: d,
                    state,
                    seq,
                },
            );
        }
    }

    /// The durable side of sending a stored session's delivery: in flight
    /// (stored first if it never was queued), or, at QoS 0, done with.
    /// At QoS 1 where it stands is not stored per message (a B-tree row in
    /// and out for each): after a crash an unacknowledged QoS 1 message is
    /// sent again as a new one, which QoS 1 allows; a clean shutdown
    /// stores it ([`Broker::shutdown`]), so a restart resends it with its
    /// packet id [MQTT-4.4.0-1].
    fn log_sent(&mut self, sid: SessionId, d: &Delivery, queued: bool, qos: QosPid) {
        let id = d.id;
        let Some(pid) = qos.packet_id() else {
            if queued {
                self.out.log(Change::Removed { session: sid, id });
            }
            return;
        };
        if !queued {
            let delivery = self.stored_delivery(d);
            self.out.log(Change::Queued {
                session: sid,
                delivery,
            });
        }
        if matches!(qos, QosPid::ExactlyOnce(_)) {
            self.out.log(Change::Sent {
                session: sid,
                id,
                packet_id: pid.get(),
                stage: InflightStage::AwaitPubRec,
            });
        }
    }

    /// Encodes and queues a PUBLISH. Returns false if it was too large for
    /// the client, in which case it is dropped as if delivered
    /// ([MQTT-3.1.2-25]).
    pub(super) fn write_publish(
        &mut self,
        conn: ConnId,
        d: &Delivery,
        qos: QosPid,
        dup: bool,
        now: Instant,
    ) -> bool {
        let c = self.conns.get_mut(&conn).expect("connection exists");
        let version = c.version();
        let v5 = version.is_v5();
        let m = &d.msg;
        let expiry = m.expires_at.filter(|_| v5).map(|at| remaining(at, now));
        // A QoS 0 PUBLISH without per-subscriber parts is the same bytes for
        // every subscriber speaking the same version: encoded once per route.
        let key = (qos == QosPid::AtMostOnce
            && !dup
            && d.sub_ids.is_empty()
            && !(v5 && c.alias_out_max() > 0))
            .then_some(WireKey {
                msg: Arc::as_ptr(m) as usize,
                version,
                retain: d.retain,
                expiry,
            });
        let max = c.max_packet_out as usize;
        if let Some(data) = key.as_ref().and_then(|k| self.out.wire(k)) {
            if data.len() > max {
                return false;
            }
            let data = data.clone();
            self.sent_publish(conn, data, qos);
            return true;
        }
        let mut p = Publish {
            dup,
            qos,
            retain: d.retain,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            properties: PublishProperties::default(),
        };
        let mut new_alias = None;
        if v5 {
            p.properties = m.properties.clone();
            p.properties.subscription_identifiers = d.sub_ids.clone();
            p.properties.message_expiry_interval = expiry;
            new_alias = c.alias_topic(&mut p);
        }
        if p.encoded_len(version) > max {
            return false;
        }
        // The alias is the client's to know only once the packet is sent.
        if let Some(a) = new_alias {
            let aliases = c.aliases.get_or_insert_with(Box::default);
            aliases.outgoing.insert(m.topic.clone(), a);
        }
        let data = self.out.encode_publish(version, &p);
        if let Some(k) = key {
            self.out.keep_wire(k, data.clone());
        }
        self.sent_publish(conn, data, qos);
        true
    }

    /// Queues an encoded PUBLISH. At QoS 0 and 1 it need not wait for the
    /// store: a client that gets it again after a crash is within what the
    /// QoS allows. At QoS 2 it waits: its state as sent must be durable, or
    /// a crash could have it delivered twice.
    fn sent_publish(&mut self, conn: ConnId, data: bytes::Bytes, qos: QosPid) {
        self.stats.messages_sent += 1;
        if matches!(qos, QosPid::ExactlyOnce(_)) {
            self.push_transmit(conn, data);
        } else {
            self.count_transmit(conn, &data);
            self.out.push_now(conn, data);
        }
    }

    /// After a session resumes: PUBLISH (DUP) and PUBREL again, in order.
    pub(super) fn resend_inflight(&mut self, conn: ConnId, sid: SessionId, now: Instant) {
        let inflight = &self.sessions[&sid].flow().inflight;
        let mut order: Vec<(u64, u16)> = inflight.iter().map(|(&id, o)| (o.seq, id)).collect();
        order.sort_unstable();
        for (_, id) in order {
            let o = &self.sessions[&sid].flow().inflight[&id];
            let pid = PacketId::new(id).expect("non-zero");
            match o.state {
                OutState::Comp => self.send(conn, &Packet::PubRel(Ack::new(pid))),
                state => {
                    let d = o.delivery.clone();
                    let qos = if state == OutState::Ack {
                        QosPid::AtLeastOnce(pid)
                    } else {
                        QosPid::ExactlyOnce(pid)
                    };
                    // [MQTT-4.4.0-1]: resent with DUP.
                    if !self.write_publish(conn, &d, qos, true, now) {
                        self.sessions
                            .get_mut(&sid)
                            .expect("session exists")
                            .flow_mut()
                            .inflight
                            .remove(&id);
                        let id = d.id;
                        self.log_for(sid, || Change::Removed { session: sid, id });
                    }
                }
            }
        }
    }
}

/// Whole seconds left until `at`, rounded up: the remaining lifetime is
/// what is forwarded ([MQTT-3.3.2-6]).
fn remaining(at: Instant, now: Instant) -> u32 {
    let left = at.saturating_duration_since(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    secs.min(u64::from(u32::MAX)) as u32
}

/// Names a delivery within its stored session, for the durable store, as
/// it is first stored: the ids of a session's stored messages run on
/// without gaps, so the queued ones left to the store are the ids from
/// `fetch_from` to `spilled.last_id`.
fn name(s: &mut Session, d: &mut Delivery) {
    let f = s.flow_mut();
    d.id = f.next_id;
    f.next_id += 1;
}

/// Forgets the oldest message the store holds for the session (whose id is
/// `fetch_from`: the ids run on without gaps); its id. Its size is not
/// known unread: the average is taken off.
fn drop_spilled(s: &mut Session) -> u64 {
    let f = s.flow_mut();
    let id = f.fetch_from;
    f.spilled.bytes -= f.spilled.bytes / f.spilled.count;
    f.spilled.count -= 1;
    f.fetch_from += 1;
    if f.spilled.count == 0 {
        f.spilled = Default::default();
    }
    id
}
