//! What must always hold: every limit, and the tables agreeing with each
//! other. Every step of every simulation checks it.

use std::collections::{BTreeMap, BTreeSet};

use super::conn::Phase;
use super::{Broker, SessionId};
use crate::session::Session;

impl Broker {
    /// Checks the broker's internal invariants: every limit holds, and the
    /// tables agree with each other. For tests and fuzzing; `Err` names the
    /// first broken invariant.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let cfg = &self.config;
        if cfg.forward {
            let mut counted = BTreeMap::new();
            for s in self.sessions.values() {
                for f in s.subscriptions.keys() {
                    *counted.entry(f.clone()).or_insert(0) += 1;
                }
            }
            if counted != self.routing.interest {
                return Err("interest counts differ from the subscriptions".into());
            }
        }
        // One timer entry per connection at most, due when it says.
        let mut timed = BTreeSet::new();
        for &(at, id) in &self.conn_timers {
            match self.conns.get(&id) {
                None => return Err(format!("conn {}: a timer outlives it", id.0)),
                Some(c) if c.timer != at => {
                    return Err(format!("conn {}: its timer is not where it says", id.0))
                }
                Some(_) => {}
            }
            if !timed.insert(id) {
                return Err(format!("conn {}: two timers", id.0));
            }
        }
        for (&sid, s) in &self.sessions {
            self.check_session(sid, s)?;
        }
        if self.sessions.len() > cfg.max_sessions {
            return Err("session limit exceeded".into());
        }
        for (&conn, c) in &self.conns {
            if let Phase::Active(sid) = c.phase {
                if self.sessions.get(&sid).and_then(|s| s.conn) != Some(conn) {
                    return Err(format!("{conn:?}: session does not point back"));
                }
            }
        }
        let subs: usize = self.sessions.values().map(|s| s.subscriptions.len()).sum();
        if subs != self.routing.subs.len() {
            return Err(format!(
                "{subs} subscriptions in sessions, {} indexed",
                self.routing.subs.len()
            ));
        }
        if self.routing.retained.len() > cfg.max_retained_messages
            || self.routing.retained.total_weight() > cfg.max_retained_bytes
        {
            return Err("retained limits exceeded".into());
        }
        if self.conns.len() > cfg.max_connections {
            return Err("connection limit exceeded".into());
        }
        Ok(())
    }

    /// One session's limits, and its place in the tables.
    fn check_session(&self, sid: SessionId, s: &Session) -> Result<(), String> {
        let cfg = &self.config;
        let who = s.client.client_id.as_str();
        let f = s.flow();
        if f.inflight.len() > usize::from(cfg.max_inflight) {
            return Err(format!("{who}: {} in flight", f.inflight.len()));
        }
        if f.inflight.contains_key(&0) {
            return Err(format!("{who}: packet id 0 in flight"));
        }
        if f.queued() > cfg.max_queued_messages {
            return Err(format!("{who}: {} queued", f.queued()));
        }
        if s.stored && s.conn.is_none() && !f.queue.is_empty() {
            return Err(format!(
                "{who}: offline with {} queued in memory",
                f.queue.len()
            ));
        }
        if f.spilled.count > 0 && f.queue.len() > cfg.queue_window {
            return Err(format!(
                "{who}: {} queued in memory and spilled",
                f.queue.len()
            ));
        }
        if f.queue
            .back()
            .is_some_and(|d| f.spilled.count > 0 && d.id >= f.fetch_from)
        {
            return Err(format!("{who}: a message in memory after the spilled ones"));
        }
        let bytes: usize = f.queue.iter().map(|d| d.msg.weight()).sum();
        if bytes != f.queued_bytes || bytes > cfg.max_queued_bytes {
            return Err(format!("{who}: queued bytes {bytes} vs {}", f.queued_bytes));
        }
        if f.incoming_qos2.len() > usize::from(cfg.receive_maximum) {
            return Err(format!("{who}: {} unreleased QoS 2", f.incoming_qos2.len()));
        }
        if s.subscriptions.len() > cfg.max_subscriptions {
            return Err(format!("{who}: {} subscriptions", s.subscriptions.len()));
        }
        if self
            .by_client_id
            .get(s.client.client_id.as_bytes(), &self.sessions)
            != Some(sid)
        {
            return Err(format!("{who}: not indexed by client id"));
        }
        if let Some(conn) = s.conn {
            match self.conns.get(&conn).map(|c| &c.phase) {
                Some(Phase::Active(x)) if *x == sid => {}
                _ => return Err(format!("{who}: connection {conn:?} does not point back")),
            }
        }
        for (f, sub) in &s.subscriptions {
            if self.routing.subs.get(f, &sid) != Some(sub) {
                return Err(format!("{who}: subscription {f} not in the index"));
            }
        }
        Ok(())
    }
}
