//! The storage boundary: sessions and retained messages out of a broker,
//! and into a fresh one.

use std::sync::Arc;
use std::time::Instant;

use tern_codec::MqttString;

use super::durability::stage;
use super::{Broker, SessionId};
use crate::durable::{
    Change, ImportError, InflightStage, Spilled, StoredDelivery, StoredRetained, StoredSession,
    StoredSubscription,
};
use crate::session::{Delivery, Envelope, OutState, Outgoing, Session, SessionWill, Sub};

impl Broker {
    /// A copy of every session (connected or not), for a durable store.
    pub fn export_sessions(&self) -> Vec<StoredSession> {
        self.sessions
            .values()
            .map(|s| {
                let f = s.flow();
                let mut inflight: Vec<_> = f.inflight.iter().collect();
                inflight.sort_by_key(|(_, o)| o.seq);
                let wall = |at| self.wall_of(self.epoch.instant(at));
                StoredSession {
                    client_id: MqttString::from_str(&s.client.client_id)
                        .expect("a client id stays valid"),
                    username: s.client.username.clone(),
                    version: s.version,
                    expiry: s.expiry,
                    expires_at: s.expires_at.and_then(wall),
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
                        .map(|(&id, o)| (id, stage(o.state), self.stored_delivery(&o.delivery)))
                        .collect(),
                    queued: f.queue.iter().map(|d| self.stored_delivery(d)).collect(),
                    spilled: f.spilled,
                    incoming_qos2: f.incoming_qos2.iter().copied().collect(),
                    will: s.will.as_ref().map(|w| w.will.clone()),
                    will_at: s.will.as_ref().and_then(|w| w.at).and_then(wall),
                }
            })
            .collect()
    }

    /// Every retained message, for a durable store.
    pub fn export_retained(&self) -> Vec<StoredRetained> {
        let mut out = Vec::with_capacity(self.routing.retained.len());
        self.routing.retained.for_each(|_, m| {
            out.push(StoredRetained {
                message: m.clone(),
                expires_at: m.expires_at.and_then(|at| self.wall_of(at)),
            })
        });
        out
    }

    /// Restores a session as offline. Its deadlines continue from the wall
    /// clock ([`Broker::set_wall_clock`]): a session that expired while the
    /// broker was down ends now (publishing its will), one that did not
    /// keeps the rest of its interval. A session stored without deadlines
    /// (connected when it was stored, or stored without a wall clock) is
    /// treated as if its connection had just closed abnormally: its expiry
    /// starts now and its will is published or scheduled.
    ///
    /// What is due already (an expiry, a will) happens at the next
    /// [`Broker::handle_timeout`]: import every session first, then call
    /// it, so that a will reaches the sessions imported after its own.
    pub fn import_session(
        &mut self,
        stored: StoredSession,
        now: Instant,
    ) -> Result<SessionId, ImportError> {
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
        let mut next_id = self.import_inflight(&mut s, stored.inflight, now)?;
        let expired = self.import_queue(&mut s, stored.queued, stored.spilled, &mut next_id, now);
        if next_id > 0 {
            s.flow_mut().next_id = next_id;
        }
        if !stored.incoming_qos2.is_empty() {
            s.flow_mut().incoming_qos2 = stored.incoming_qos2.into_iter().collect();
        }
        s.will = stored.will.map(SessionWill::new);
        let sid = self.new_session_id();
        self.import_subscriptions(&mut s, sid, stored.subscriptions);
        s.stored = self.config.durable;
        self.sessions.insert(sid, Box::new(s));
        self.by_client_id.insert(sid, &self.sessions);
        // The store learns which session this is in this process.
        self.record_session(sid);
        for id in expired {
            self.log_for(sid, || Change::Removed { session: sid, id });
        }
        let expires_at = stored.expires_at.map(|w| self.instant_of_wall(w, now));
        let will_at = stored.will_at.map(|w| self.instant_of_wall(w, now));
        self.offline(sid, now, expires_at, will_at, true);
        Ok(sid)
    }

    /// A stored session's messages in flight, in their order; the next
    /// delivery id after them.
    fn import_inflight(
        &mut self,
        s: &mut Session,
        inflight: Vec<(u16, InflightStage, StoredDelivery)>,
        now: Instant,
    ) -> Result<u64, ImportError> {
        let mut next_id = 0;
        for (seq, (id, stage, d)) in inflight.into_iter().enumerate() {
            let state = match stage {
                InflightStage::AwaitPubAck => OutState::Ack,
                InflightStage::AwaitPubRec => OutState::Rec,
                InflightStage::AwaitPubComp => OutState::Comp,
            };
            next_id = next_id.max(d.id + 1);
            // In flight, its onward delivery has started: it goes on,
            // expired or not ([MQTT-3.3.2-5] deletes only what has not).
            let o = Outgoing {
                delivery: self.delivery(d, now),
                state,
                seq: seq as u64,
            };
            let f = s.flow_mut();
            if id == 0 || f.inflight.insert(id, o).is_some() {
                return Err(ImportError::PacketId(id));
            }
            f.next_seq = seq as u64 + 1;
        }
        Ok(next_id)
    }

    /// A stored session's queue: up to the window in memory, the rest left
    /// in the store with what the store kept back (`more`), which comes
    /// after. Returns the ids of queued messages that expired while the
    /// broker was down: they are not sent, and the store forgets them once
    /// the session is known to it.
    fn import_queue(
        &mut self,
        s: &mut Session,
        queued: Vec<StoredDelivery>,
        more: Spilled,
        next_id: &mut u64,
        now: Instant,
    ) -> Vec<u64> {
        let window = if self.config.durable {
            self.config.queue_window
        } else {
            usize::MAX
        };
        let mut expired = Vec::new();
        let mut extra = Spilled::default();
        let mut first_spilled = None;
        let last_loaded = queued.last().map(|d| d.id);
        for d in queued {
            *next_id = (*next_id).max(d.id + 1);
            if first_spilled.is_none() && s.flow().queue.len() >= window {
                first_spilled = Some(d.id);
            }
            if first_spilled.is_some() {
                extra.count += 1;
                extra.bytes += d.message.weight() as u64;
                extra.last_id = d.id;
                continue;
            }
            let delivery = self.delivery(d, now);
            if delivery.msg.expired(now) {
                expired.push(delivery.id);
            } else {
                s.push_queue(delivery);
            }
        }
        if extra.count + more.count > 0 {
            *next_id = (*next_id).max(more.last_id + 1);
            let f = s.flow_mut();
            f.spilled = Spilled {
                count: extra.count + more.count,
                bytes: extra.bytes + more.bytes,
                last_id: if more.count > 0 {
                    more.last_id
                } else {
                    extra.last_id
                },
            };
            f.fetch_from = first_spilled.or(last_loaded.map(|id| id + 1)).unwrap_or(0);
        }
        expired
    }

    /// A stored session's subscriptions, back in the routing index.
    fn import_subscriptions(
        &mut self,
        s: &mut Session,
        sid: SessionId,
        subs: Vec<StoredSubscription>,
    ) {
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
    }

    /// A stored delivery back in this process: its message's expiry from
    /// the wall clock, if it was stored with one.
    pub(super) fn delivery(&self, d: StoredDelivery, now: Instant) -> Delivery {
        Delivery {
            msg: self.envelope(d.message, d.expires_at, now),
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.subscription_ids,
            id: d.id,
        }
    }

    /// A stored message back in this process, expiring when the wall clock
    /// says (if it was stored with a wall-clock expiry).
    fn envelope(&self, m: Arc<Envelope>, expires_at: Option<u64>, now: Instant) -> Arc<Envelope> {
        match expires_at {
            Some(w) => Arc::new(Envelope {
                message: m.message.clone(),
                expires_at: Some(self.instant_of_wall(w, now)),
                publisher: None,
            }),
            None => m,
        }
    }

    /// Restores a retained message (one that expired meanwhile is not).
    pub fn import_retained(&mut self, stored: StoredRetained, now: Instant) {
        let msg = self.envelope(stored.message, stored.expires_at, now);
        if !msg.expired(now) {
            let _ = self.retain(&msg, false);
        } else if self.config.durable {
            self.out.log(Change::Unretained(msg.topic.clone()));
        }
    }
}
