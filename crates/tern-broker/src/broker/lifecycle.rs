//! Sessions by client id; a connection's end (DISCONNECT, a protocol
//! error, the transport); a session going offline, expiring, ending, and
//! its will.

use std::time::{Duration, Instant};

use tern_codec::{Disconnect, Packet, PacketType, ReasonCode};

use super::conn::Phase;
use super::timers::Timer;
use super::{fit, Broker, BrokerEvent, ConnId, SessionId, Sessions};
use crate::durable::Change;

/// Sessions by client id, without a copy of the id: a table of session
/// ids, hashed by their session's client id.
pub(super) struct ClientIds {
    table: hashbrown::HashTable<SessionId>,
    hasher: foldhash::fast::FixedState,
}

impl ClientIds {
    pub(super) fn new(seed: u64) -> ClientIds {
        ClientIds {
            table: hashbrown::HashTable::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    pub(super) fn hash(&self, id: &[u8]) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, id)
    }

    pub(super) fn get(&self, id: &[u8], sessions: &Sessions) -> Option<SessionId> {
        self.table
            .find(self.hash(id), |sid| {
                sessions
                    .get(sid)
                    .is_some_and(|s| s.client.client_id.as_bytes() == id)
            })
            .copied()
    }

    /// Indexes `sid`, which `sessions` holds already.
    pub(super) fn insert(&mut self, sid: SessionId, sessions: &Sessions) {
        let hash = self.hash(sessions[&sid].client.client_id.as_bytes());
        let hasher = &self.hasher;
        self.table.insert_unique(hash, sid, |other| {
            std::hash::BuildHasher::hash_one(hasher, sessions[other].client.client_id.as_bytes())
        });
    }

    pub(super) fn remove(&mut self, id: &[u8], sid: SessionId) {
        if let Ok(entry) = self.table.find_entry(self.hash(id), |other| *other == sid) {
            entry.remove();
        }
    }
}

impl Broker {
    pub(super) fn on_disconnect(
        &mut self,
        conn: ConnId,
        sid: SessionId,
        d: Disconnect,
        now: Instant,
    ) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        let before = (s.expiry, s.will.is_some());
        if let Some(e) = d.properties.session_expiry_interval {
            // 5.0 §3.14.2.2.2: 0 at CONNECT cannot become non-zero.
            if s.expiry == 0 && e != 0 {
                return self.disconnect(conn, ReasonCode::ProtocolError, now);
            }
            s.expiry = e.min(self.config.max_session_expiry);
        }
        // [MQTT-3.14.4-3]: a normal DISCONNECT discards the will; 0x04 keeps it.
        let abnormal = d.reason_code == ReasonCode::DisconnectWithWillMessage;
        if !abnormal {
            s.will = None;
        }
        if (s.expiry, s.will.is_some()) != before {
            self.record_session(sid);
        }
        self.close(conn, ReasonCode::Success, abnormal, now);
    }

    /// Sends DISCONNECT with `code` (5.0 only) and closes.
    pub(super) fn disconnect(&mut self, conn: ConnId, code: ReasonCode, now: Instant) {
        let code = fit(code, PacketType::Disconnect);
        if let Some(c) = self.conns.get(&conn) {
            if c.version().is_v5() && matches!(c.phase, Phase::Active(_)) {
                self.send(conn, &Packet::Disconnect(Disconnect::new(code)));
            }
        }
        self.close(conn, code, true, now);
    }

    /// A malformed or forbidden packet: DISCONNECT with `code` (5.0, once
    /// connected), then close.
    pub(super) fn protocol_error(&mut self, conn: ConnId, code: ReasonCode, now: Instant) {
        self.disconnect(conn, code, now);
    }

    /// Closes the connection and tells the embedding to.
    pub(super) fn close(&mut self, conn: ConnId, reason: ReasonCode, abnormal: bool, now: Instant) {
        if self.conns.contains_key(&conn) {
            self.drop_conn(conn, abnormal, now);
            self.out
                .events
                .push_back(BrokerEvent::Close { conn, reason });
        }
    }

    /// Forgets the connection; the session goes offline (or ends).
    pub(super) fn drop_conn(&mut self, conn: ConnId, abnormal: bool, now: Instant) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.conn_timers.remove(&(c.timer, conn));
        let Phase::Active(sid) = c.phase else { return };
        self.publish_presence(sid, false, now);
        let s = self.sessions.get_mut(&sid).expect("session exists");
        s.conn = None;
        if !abnormal && s.will.take().is_some() {
            self.log_for(sid, || Change::WillGone { session: sid });
        }
        self.go_offline(sid, now);
    }

    /// The session lost its connection: it ends, or waits for its expiry
    /// with its will published or scheduled.
    pub(super) fn go_offline(&mut self, sid: SessionId, now: Instant) {
        self.offline(sid, now, None, None, false);
    }

    /// The session is offline from `now`: it ends at `expires_at` (by
    /// default, its expiry interval from now) and its will is due at
    /// `will_at` (by default, its will delay from now); what is due already
    /// happens now, or, `deferred`, at the next `handle_timeout` (so that a
    /// will due during an import reaches sessions imported after it).
    pub(super) fn offline(
        &mut self,
        sid: SessionId,
        now: Instant,
        expires_at: Option<Instant>,
        will_at: Option<Instant>,
        deferred: bool,
    ) {
        let s = self.sessions.get_mut(&sid).expect("session exists");
        if s.expiry == 0 {
            // The session ends now, and with it any delayed will.
            return self.end_session(sid, now);
        }
        let expires = (s.expiry != u32::MAX)
            .then(|| expires_at.unwrap_or(now + Duration::from_secs(s.expiry.into())));
        if let Some(at) = expires {
            if at <= now && !deferred {
                // It expired while the broker was down.
                return self.end_session(sid, now);
            }
            s.expires_at = Some(self.epoch.stamp(at));
            self.timers.insert((at, Timer::SessionExpiry(sid)));
        }
        let mut will_due = None;
        if let Some(w) = s.will.as_mut() {
            let delay = w.will.properties.will_delay_interval.unwrap_or(0);
            let at = will_at.unwrap_or(now + Duration::from_secs(delay.into()));
            if at <= now && !deferred {
                let w = s.will.take().expect("will exists");
                self.log_for(sid, || Change::WillGone { session: sid });
                self.publish_will(&w.will, Some(sid), now);
            } else {
                // [MQTT-3.1.3-9]: published after the delay unless the
                // session resumes first (or at session end, if sooner).
                w.at = Some(self.epoch.stamp(at));
                self.timers.insert((at, Timer::Will(sid)));
                will_due = Some(at);
            }
        }
        let expires_at = expires.and_then(|at| self.wall_of(at));
        let will_at = will_due.and_then(|at| self.wall_of(at));
        self.spill_queue(sid);
        self.log_for(sid, || Change::Offline {
            session: sid,
            expires_at,
            will_at,
        });
    }

    /// Ends a session: a pending will is published, subscriptions go.
    pub(super) fn end_session(&mut self, sid: SessionId, now: Instant) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        if s.stored {
            self.out.log(Change::Ended { session: sid });
        }
        self.by_client_id.remove(s.client.client_id.as_bytes(), sid);
        for f in s.subscriptions.keys() {
            self.routing.subs.unsubscribe(f, &sid);
            self.subscription_changed(f, false);
        }
        if let Some(w) = s.will.take() {
            self.publish_will(&w.will, None, now);
        }
    }
}
