//! Time: each connection's one timer (its CONNECT deadline, then its keep
//! alive), sessions' expiry, delayed wills and `$SYS`.

use std::time::Instant;

use tern_codec::ReasonCode;

use super::conn::Phase;
use super::{Broker, ConnId, SessionId};
use crate::durable::Change;

/// Timers other than the connections' (those are `Broker::conn_timers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    SessionExpiry(SessionId),
    Will(SessionId),
    Sys,
}

impl Broker {
    /// Runs every timer due at `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = self.epoch.stamp(now);
        loop {
            // Both sets in time order; at the same instant, connections'
            // timers first.
            let conn = self.conn_timers.first().copied();
            let conn = conn.filter(|&(at, _)| at <= due);
            let other = self.timers.first().copied();
            let other = other.filter(|&(at, _)| at <= now);
            let (at, timer) = match (conn, other) {
                (Some((at, id)), other)
                    if other.is_none_or(|(o, _)| self.epoch.instant(at) <= o) =>
                {
                    self.conn_timers.pop_first();
                    self.conn_timer(id, now);
                    continue;
                }
                (_, Some(t)) => t,
                (_, None) => return,
            };
            self.timers.pop_first();
            match timer {
                Timer::SessionExpiry(sid) => {
                    if let Some(s) = self.sessions.get(&sid) {
                        if s.conn.is_none() && s.expires_at == Some(self.epoch.stamp(at)) {
                            self.end_session(sid, now);
                        }
                    }
                }
                Timer::Will(sid) => {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        let due = Some(self.epoch.stamp(at));
                        if s.will.as_ref().is_some_and(|w| w.at == due) {
                            let w = s.will.take().expect("will exists");
                            self.log_for(sid, || Change::WillGone { session: sid });
                            self.publish_will(&w.will, Some(sid), now);
                        }
                    }
                }
                Timer::Sys => {
                    let stats = self.stats();
                    self.publish_sys(&stats, now);
                    if let Some(i) = self.config.sys_interval {
                        self.timers.insert((now + i, Timer::Sys));
                    }
                }
            }
        }
    }

    /// A connection's timer: its CONNECT deadline, or its keep alive
    /// (re-armed at the real deadline if a packet came since).
    pub(super) fn conn_timer(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(c.phase, Phase::AwaitConnect) {
            return self.close(id, ReasonCode::MaximumConnectTime, true, now);
        }
        let Some(ka) = c.keep_alive() else { return };
        let due = self.epoch.instant(c.last_packet) + ka;
        if due <= now {
            self.disconnect(id, ReasonCode::KeepAliveTimeout, now);
        } else {
            c.timer = self.epoch.stamp(due);
            self.conn_timers.insert((c.timer, id));
        }
    }

    /// The next instant at which [`Broker::handle_timeout`] must be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn = self
            .conn_timers
            .first()
            .map(|&(at, _)| self.epoch.instant(at));
        let other = self.timers.first().map(|&(at, _)| at);
        match (conn, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
