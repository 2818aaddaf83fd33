//! The storage boundary: sessions and retained messages out of a broker,
//! and into a fresh one.

use std::sync::Arc;
use std::time::Instant;

use tern_codec::MqttString;

use super::Broker;
use crate::durable::{
    ImportError, InflightStage, StoredDelivery, StoredSession, StoredSubscription,
};
use crate::session::{Delivery, Envelope, OutState, Outgoing, Session, SessionWill, Sub};

impl Broker {
    /// A copy of every session (connected or not), for a durable store.
    pub fn export_sessions(&self) -> Vec<StoredSession> {
        let stored = |d: &Delivery| StoredDelivery {
            message: d.msg.clone(),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.sub_ids.clone(),
        };
        self.sessions
            .values()
            .map(|s| {
                let f = s.flow();
                let mut inflight: Vec<_> = f.inflight.iter().collect();
                inflight.sort_by_key(|(_, o)| o.seq);
                StoredSession {
                    client_id: MqttString::from_str(&s.client.client_id)
                        .expect("a client id stays valid"),
                    username: s.client.username.clone(),
                    version: s.version,
                    expiry: s.expiry,
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|(f, sub)| StoredSubscription {
                            filter: f.clone(),
                            options: sub.options,
                            id: sub.id,
                        })
                        .collect(),
                    inflight: inflight
                        .into_iter()
                        .map(|(&id, o)| {
                            let stage = match o.state {
                                OutState::Ack => InflightStage::AwaitPubAck,
                                OutState::Rec => InflightStage::AwaitPubRec,
                                OutState::Comp => InflightStage::AwaitPubComp,
                            };
                            (id, stage, stored(&o.delivery))
                        })
                        .collect(),
                    queued: f.queue.iter().map(stored).collect(),
                    incoming_qos2: f.incoming_qos2.iter().copied().collect(),
                    will: s.will.as_ref().map(|w| w.will.clone()),
                }
            })
            .collect()
    }

    /// Every retained message, for a durable store.
    pub fn export_retained(&self) -> Vec<Arc<Envelope>> {
        let mut out = Vec::with_capacity(self.routing.retained.len());
        self.routing.retained.for_each(|_, m| out.push(m.clone()));
        out
    }

    /// Restores a session as offline, as if its connection had just closed
    /// abnormally: its expiry starts now and its will is published or
    /// scheduled.
    pub fn import_session(
        &mut self,
        stored: StoredSession,
        now: Instant,
    ) -> Result<(), ImportError> {
        if self
            .by_client_id
            .get(stored.client_id.as_bytes(), &self.sessions)
            .is_some()
        {
            return Err(ImportError::Exists(stored.client_id.as_str().to_owned()));
        }
        let mut s = Session::new(stored.client_id.as_str().to_owned(), stored.version);
        s.client.username = stored.username;
        s.expiry = stored.expiry;
        s.window = self.config.max_inflight.max(1);
        let delivery = |d: StoredDelivery| Delivery {
            msg: d.message,
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.subscription_ids,
        };
        for (seq, (id, stage, d)) in stored.inflight.into_iter().enumerate() {
            let state = match stage {
                InflightStage::AwaitPubAck => OutState::Ack,
                InflightStage::AwaitPubRec => OutState::Rec,
                InflightStage::AwaitPubComp => OutState::Comp,
            };
            let o = Outgoing {
                delivery: delivery(d),
                state,
                seq: seq as u64,
            };
            let f = s.flow_mut();
            if id == 0 || f.inflight.insert(id, o).is_some() {
                return Err(ImportError::PacketId(id));
            }
            f.next_seq = seq as u64 + 1;
        }
        for d in stored.queued {
            s.push_queue(delivery(d));
        }
        if !stored.incoming_qos2.is_empty() {
            s.flow_mut().incoming_qos2 = stored.incoming_qos2.into_iter().collect();
        }
        s.will = stored.will.map(SessionWill::new);
        let subs: Vec<_> = stored.subscriptions;
        let sid = self.new_session_id();
        for sub in &subs {
            let v = Sub {
                options: sub.options,
                id: sub.id,
            };
            let new = s.subscriptions.insert(sub.filter.clone(), v).is_none();
            self.routing.subs.subscribe(&sub.filter, sid, v);
            if new {
                self.subscription_changed(&sub.filter, true);
            }
        }
        self.sessions.insert(sid, Box::new(s));
        self.by_client_id.insert(sid, &self.sessions);
        self.go_offline(sid, now);
        Ok(())
    }

    /// Restores a retained message.
    pub fn import_retained(&mut self, msg: Arc<Envelope>) {
        let _ = self.retain(&msg);
    }
}
