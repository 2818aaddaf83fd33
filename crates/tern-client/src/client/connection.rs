//! A connection's life: what CONNACK said, a session resumed (resends in
//! order) or lost (requeue, resubscribe), keep alive, and the end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_codec::{
    Ack, ConnAck, Disconnect, Message, Packet, PacketId, QoS, ReasonCode, Subscribe,
    SubscribeFilter, SubscribeProperties, TopicName, Unsubscribe,
};

use crate::store::{Inflight, Queued, RequestId};

use super::{Client, ClientEvent, DisconnectReason, State, PLACEHOLDER};

#[derive(Debug, Clone)]
pub(super) enum ReqKind {
    Subscribe(Subscribe),
    /// The client's own: every granted filter, after a lost session.
    Resubscribe(Subscribe),
    Unsubscribe(Unsubscribe),
}

#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) id: RequestId,
    pub(super) kind: ReqKind,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct PendingAck {
    pub(super) seq: u64,
    pub(super) pid: PacketId,
    pub(super) qos: QoS,
    pub(super) acked: bool,
}

/// What one connection learnt from CONNACK, and its timers.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) keep_alive: Duration,
    /// When the last packet was written (set by CONNECT).
    pub(super) last_sent: Option<Instant>,
    /// CONNECT asked for a clean start.
    pub(super) clean_start: bool,
    pub(super) ping_deadline: Option<Instant>,
    pub(super) connack_deadline: Option<Instant>,
    pub(super) receive_maximum: u16,
    pub(super) maximum_qos: QoS,
    pub(super) retain_available: bool,
    pub(super) maximum_packet_size: Option<u32>,
    pub(super) topic_alias_maximum: u16,
    pub(super) aliases_out: BTreeMap<Bytes, u16>,
    pub(super) aliases_in: BTreeMap<u16, TopicName>,
}

impl Link {
    pub(super) fn new(keep_alive: Duration, now: Option<Instant>) -> Link {
        Link {
            keep_alive,
            last_sent: now,
            clean_start: true,
            ping_deadline: None,
            connack_deadline: None,
            receive_maximum: u16::MAX,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            aliases_out: BTreeMap::new(),
            aliases_in: BTreeMap::new(),
        }
    }
}

impl Client {
    pub(super) fn on_connack(&mut self, ack: ConnAck, now: Instant) {
        if ack.reason_code != ReasonCode::Success {
            self.lost(DisconnectReason::Refused(ack.reason_code));
            return;
        }
        if ack.session_present && self.link.clean_start {
            // [MQTT-3.2.2-4] (5.0), [MQTT-3.2.2-1] (3.1.1).
            return self.protocol_error(ReasonCode::ProtocolError, now);
        }
        self.state = State::Connected;
        self.connected_once = true;
        let p = &ack.properties;
        let link = &mut self.link;
        link.connack_deadline = None;
        if let Some(k) = p.server_keep_alive {
            link.keep_alive = Duration::from_secs(k.into());
        }
        link.receive_maximum = p.receive_maximum.map_or(u16::MAX, |r| r.get());
        link.maximum_qos = p.maximum_qos.unwrap_or(QoS::ExactlyOnce);
        link.retain_available = p.retain_available.unwrap_or(true);
        link.maximum_packet_size = p.maximum_packet_size.map(|m| m.get());
        link.topic_alias_maximum = p.topic_alias_maximum.unwrap_or(0);
        if let Some(id) = &p.assigned_client_identifier {
            self.config.client_id = id.clone();
        }
        if ack.session_present {
            self.resume(now);
        } else {
            self.restart(now);
        }
        self.events.push_back(ClientEvent::Connected {
            session_present: ack.session_present,
            properties: ack.properties,
        });
        // Requests that were answered by nobody go again, then new ones.
        let sent: Vec<u16> = self.requests.keys().copied().collect();
        for pid in sent {
            self.send_request(pid, now);
        }
        while let Some(req) = self.waiting.pop_front() {
            match self.alloc_pid() {
                Some(pid) => {
                    self.requests.insert(pid.get(), req);
                    self.send_request(pid.get(), now);
                }
                None => {
                    self.waiting.push_front(req);
                    break;
                }
            }
        }
        self.flush_acks(now);
        self.send_queued(now);
    }

    /// The server kept the session: send again what it has not
    /// acknowledged, in the order it was first sent.
    pub(super) fn resume(&mut self, now: Instant) {
        self.resend = self
            .store
            .inflight_in_order()
            .iter()
            .filter_map(|i| i.publish.qos.packet_id())
            .collect();
        self.send_resends(now);
        // QoS 1 messages the application had not acknowledged come again.
        self.retain_qos2_acks();
    }

    /// Sends again, in order, the messages of an earlier connection, as
    /// far as the new connection's Receive Maximum allows.
    pub(super) fn send_resends(&mut self, now: Instant) {
        if self.resend.is_empty() {
            return;
        }
        let mut items: BTreeMap<u16, Inflight> = self
            .store
            .inflight_in_order()
            .into_iter()
            .filter_map(|i| Some((i.publish.qos.packet_id()?.get(), i)))
            .collect();
        while self.state == State::Connected && self.sent_inflight() < self.window() {
            let Some(pid) = self.resend.pop_front() else {
                return;
            };
            let Some(item) = items.remove(&pid.get()) else {
                continue;
            };
            if item.released {
                self.write_ack(Packet::PubRel(Ack::new(pid)), now);
                continue;
            }
            // The new connection's limits apply to what goes again.
            let m = Message::from(item.publish.clone());
            if let Err(e) = self.check(&m) {
                self.store.remove_inflight(pid);
                self.fail(item.id, e);
                continue;
            }
            self.store.set_dup(pid);
            let mut p = item.publish;
            p.dup = true;
            if let Err(e) = self.write_publish(&p, now) {
                self.store.remove_inflight(pid);
                self.fail(item.id, e);
            }
        }
    }

    /// Messages in flight that were sent on this connection.
    pub(super) fn sent_inflight(&self) -> usize {
        self.store.inflight_len() - self.resend.len()
    }

    /// After a lost connection: QoS 1 messages not yet acknowledged by the
    /// application will come again; QoS 2 ones stay until it acks them.
    pub(super) fn retain_qos2_acks(&mut self) {
        self.acks.retain(|a| a.qos == QoS::ExactlyOnce);
        let keep: std::collections::BTreeSet<u16> = self.acks.iter().map(|a| a.pid.get()).collect();
        self.unacked.retain(|pid, _| keep.contains(pid));
    }

    /// The server did not keep the session: what it acknowledged is done,
    /// what it may not have received goes back to the queue, and the
    /// received side starts afresh.
    pub(super) fn restart(&mut self, now: Instant) {
        let mut again = Vec::new();
        for item in self.store.inflight_in_order() {
            if item.released {
                // PUBREC came: the server has the message.
                self.events.push_back(ClientEvent::Published {
                    id: item.id,
                    result: Ok(ReasonCode::Success),
                });
            } else {
                let mut m = Message::from(item.publish);
                m.properties.topic_alias = None;
                again.push(Queued {
                    id: item.id,
                    message: m,
                });
            }
        }
        self.store.clear_inflight();
        if !again.is_empty() {
            self.store.requeue_front(again);
        }
        self.store.clear_incoming();
        self.acks.clear();
        self.unacked.clear();
        if self.config.resubscribe && !self.subscriptions.is_empty() {
            // One SUBSCRIBE per distinct set of properties (a subscription
            // identifier, user properties), sent after the CONNACK handling
            // with the other requests.
            let mut groups: Vec<(SubscribeProperties, Vec<SubscribeFilter>)> = Vec::new();
            for (f, props) in self.subscriptions.values() {
                match groups.iter_mut().find(|(p, _)| p == props) {
                    Some((_, fs)) => fs.push(f.clone()),
                    None => groups.push((props.clone(), vec![f.clone()])),
                }
            }
            for (properties, filters) in groups.into_iter().rev() {
                let id = self.request_id();
                let sub = Subscribe {
                    packet_id: PLACEHOLDER,
                    filters,
                    properties,
                };
                self.waiting.push_front(Request {
                    id,
                    kind: ReqKind::Resubscribe(sub),
                });
            }
        }
        let _ = now;
    }

    /// The server broke the protocol: tell it why (5.0) and close.
    pub(super) fn protocol_error(&mut self, reason: ReasonCode, now: Instant) {
        if self.config.version.is_v5() && reason.allowed_in(tern_codec::PacketType::Disconnect) {
            let _ = self.write(&Packet::Disconnect(Disconnect::new(reason)), now);
        }
        self.lost(DisconnectReason::ProtocolError(reason));
    }

    /// The connection is over; the session state stays.
    pub(super) fn lost(&mut self, reason: DisconnectReason) {
        self.state = State::Disconnected;
        self.link.ping_deadline = None;
        self.link.connack_deadline = None;
        self.resend.clear();
        self.retain_qos2_acks();
        self.events.push_back(ClientEvent::Disconnected { reason });
    }
}
