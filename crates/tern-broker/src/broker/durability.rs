//! Durability: the changes to the durable state as they happen, the
//! numbered log the embedding makes durable, and the wall clock that
//! deadlines outliving the process are kept in.

use std::time::{Duration, Instant};

use tern_codec::MqttString;

use tern_codec::{Disconnect, Packet, ReasonCode};

use super::conn::Phase;
use super::{Broker, ConnId, SessionId};
use crate::durable::{Change, InflightStage, StoredDelivery, WallMs};
use crate::session::{Delivery, OutState};

impl Broker {
    /// The wall clock at `now`, in milliseconds since the Unix epoch: with
    /// it, deadlines that must outlive the process (session expiry, will
    /// delay, message expiry) are stored as wall-clock times, so a session
    /// that expired while the broker was down is gone when it starts again.
    /// Call it before importing, and from time to time (the broker keeps
    /// the offset between the two clocks).
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: WallMs) {
        self.wall = Some((now, unix_ms));
    }

    /// The next change to the durable state, with its number (from 1, in
    /// order), with [`Config::durable`](crate::Config::durable). Write the
    /// changes in order, then report how far they are durable with
    /// [`Broker::handle_persisted`].
    #[must_use]
    pub fn poll_change(&mut self) -> Option<(u64, Change)> {
        self.out.pop_change()
    }

    /// The changes up to and including number `n` are durable: what waited
    /// for them (a PUBACK, a PUBREC, a SUBACK, a CONNACK, ...) may be sent.
    /// Drain [`Broker::poll_transmit`] afterwards.
    pub fn handle_persisted(&mut self, n: u64) {
        self.out.persisted(n);
    }

    /// The store could not make the changes durable (a full disk, a failed
    /// write): what waits for them is never sent, and every connection is
    /// closed with Quota exceeded (DISCONNECT 0x97 to 5.0 clients), so no
    /// client waits for an acknowledgement that cannot come. Sessions stay
    /// as they are in memory; clients that come back get their CONNACK once
    /// the store takes changes again. Nothing is acknowledged and dropped.
    pub fn handle_store_failed(&mut self, now: Instant) {
        for t in self.out.drop_held() {
            if let Some(c) = self.conns.get_mut(&t.conn) {
                c.unwritten = c.unwritten.saturating_sub(t.data.len());
            }
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            let c = &self.conns[&conn];
            if c.version().is_v5() && matches!(c.phase, Phase::Active(_)) {
                let p = Packet::Disconnect(Disconnect::new(ReasonCode::QuotaExceeded));
                let data = self.out.encode(c.version(), &p);
                self.stats.bytes_sent += data.len() as u64;
                self.out.push_now(conn, data);
            }
            self.close(conn, ReasonCode::QuotaExceeded, true, now);
        }
    }

    /// `at` on the wall clock, if the broker has one.
    pub(super) fn wall_of(&self, at: Instant) -> Option<WallMs> {
        let (now, wall) = self.wall?;
        Some(match at.checked_duration_since(now) {
            Some(d) => wall.saturating_add(millis(d)),
            None => wall.saturating_sub(millis(now - at)),
        })
    }

    /// The instant of wall-clock time `at`, seen from `now` (a time already
    /// past is `now`).
    pub(super) fn instant_of_wall(&self, at: WallMs, now: Instant) -> Instant {
        match self.wall {
            Some((then, wall)) => {
                let wall_now = wall.saturating_add(millis(now.saturating_duration_since(then)));
                now + Duration::from_millis(at.saturating_sub(wall_now))
            }
            None => now,
        }
    }

    /// Whether the session's changes go to the durable store.
    pub(super) fn stored(&self, sid: SessionId) -> bool {
        self.sessions.get(&sid).is_some_and(|s| s.stored)
    }

    /// Logs a change of a stored session.
    pub(super) fn log_for(&mut self, sid: SessionId, change: impl FnOnce() -> Change) {
        if self.stored(sid) {
            self.out.log(change());
        }
    }

    /// Records a session taken up by a connection (or its settings
    /// changed): from then on, if it outlives its connection, its changes
    /// go to the durable store.
    pub(super) fn record_session(&mut self, sid: SessionId) {
        if !self.config.durable {
            return;
        }
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !s.stored && s.expiry == 0 {
            return;
        }
        s.stored = true;
        let change = Change::Session {
            session: sid,
            client_id: MqttString::from_str(&s.client.client_id).expect("a client id stays valid"),
            username: s.client.username.clone(),
            version: s.version,
            expiry: s.expiry,
            will: s.will.as_ref().map(|w| Box::new(w.will.clone())),
        };
        self.out.log(change);
    }

    /// A delivery as the store keeps it.
    pub(super) fn stored_delivery(&self, d: &Delivery) -> StoredDelivery {
        StoredDelivery {
            id: d.id,
            message: d.msg.clone(),
            expires_at: d.msg.expires_at.and_then(|at| self.wall_of(at)),
            qos: d.qos,
            retain: d.retain,
            subscription_ids: d.sub_ids.clone(),
        }
    }
}

/// The stage of an outgoing message, as the store keeps it.
pub(super) fn stage(state: OutState) -> InflightStage {
    match state {
        OutState::Ack => InflightStage::AwaitPubAck,
        OutState::Rec => InflightStage::AwaitPubRec,
        OutState::Comp => InflightStage::AwaitPubComp,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
