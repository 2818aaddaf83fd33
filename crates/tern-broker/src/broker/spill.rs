//! Queues beyond memory: with `Config::durable`, a stored session holds at
//! most `Config::queue_window` queued messages in memory while it is
//! connected, and none while it is not; the rest are in the store only
//! (their `Queued` changes went there) and are asked for, in order, as the
//! queue drains.

use std::time::Instant;

use tern_codec::MqttString;

use super::{Broker, SessionId};
use crate::durable::{Change, Fetch, StoredDelivery};

impl Broker {
    /// The next request for spilled messages: a session's queue is running
    /// low and the store has more of it. Poll it after the changes
    /// ([`Broker::poll_change`]) and answer with [`Broker::handle_fetched`]
    /// once those changes are written: the store must read what it was
    /// given before the request.
    #[must_use]
    pub fn poll_fetch(&mut self) -> Option<Fetch> {
        self.out.fetches.pop_front()
    }

    /// The store's answer to a [`Fetch`]: the session's next queued
    /// messages, in id order (fewer than asked: the store has no more).
    /// They join the session's queue and go out as its window allows. An
    /// answer for a session that has ended, or one not asked for, is
    /// ignored.
    pub fn handle_fetched(
        &mut self,
        session: SessionId,
        deliveries: Vec<StoredDelivery>,
        now: Instant,
    ) {
        let asked = match self.sessions.get_mut(&session) {
            Some(s) if s.conn.is_none() => {
                // Gone offline meanwhile: the messages stay in the store.
                if let Some(f) = s.flow_if_any() {
                    f.fetching = 0;
                }
                return;
            }
            Some(s) if s.flow().fetching > 0 => s.flow().fetching,
            _ => return,
        };
        let s = self.sessions.get_mut(&session).expect("checked above");
        let f = s.flow_mut();
        if f.fetching_from != f.fetch_from {
            // The queue changed under the request (it went offline and
            // back, or its oldest was dropped): ask again.
            f.fetching = 0;
            return self.drain_queue(session, now);
        }
        // Spilled after the request: the answer may not have them yet.
        let since = f.spilled.count.saturating_sub(f.fetching_count);
        // Fewer than it had counted when asked: the store has no more of
        // those (records it could not read).
        let short = (deliveries.len() as u64) < (asked as u64).min(f.fetching_count);
        let mut expired = Vec::new();
        for d in deliveries {
            let d = self.delivery(d, now);
            let s = self.sessions.get_mut(&session).expect("checked above");
            let f = s.flow_mut();
            if d.id < f.fetch_from {
                continue;
            }
            f.fetch_from = d.id + 1;
            f.spilled.count = f.spilled.count.saturating_sub(1);
            f.spilled.bytes = f.spilled.bytes.saturating_sub(d.msg.weight() as u64);
            if d.msg.expired(now) {
                expired.push(d.id);
            } else {
                s.push_queue(d);
            }
        }
        let s = self.sessions.get_mut(&session).expect("checked above");
        let f = s.flow_mut();
        f.fetching = 0;
        if short {
            f.spilled.count = since;
        }
        if f.spilled.count == 0 {
            f.spilled = Default::default();
        }
        for id in expired {
            self.log_for(session, || Change::Removed { session, id });
        }
        self.drain_queue(session, now);
    }

    /// A stored session going offline leaves its whole queue to the store:
    /// the messages in memory join the spilled ones (their `Queued` changes
    /// went to the store before any later fetch).
    pub(super) fn spill_queue(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !s.stored {
            return;
        }
        let Some(f) = s.flow_if_any() else {
            return;
        };
        let (Some(first), Some(last)) = (f.queue.front(), f.queue.back()) else {
            return;
        };
        let (first, last) = (first.id, last.id);
        if f.spilled.count == 0 {
            f.spilled.last_id = last;
        }
        f.spilled.count += f.queue.len() as u64;
        f.spilled.bytes += f.queued_bytes as u64;
        f.fetch_from = first;
        f.queue.clear();
        f.queued_bytes = 0;
    }

    /// Asks for spilled messages when the session's queue in memory is half
    /// empty or less.
    pub(super) fn fetch_if_low(&mut self, sid: SessionId) {
        let window = self.config.queue_window;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let f = s.flow();
        if f.spilled.count == 0 || f.fetching > 0 || f.queue.len() > window / 2 {
            return;
        }
        let max = window.saturating_sub(f.queue.len()).max(1);
        let fetch = Fetch {
            session: sid,
            client_id: MqttString::from_str(&s.client.client_id).expect("a client id stays valid"),
            from: f.fetch_from,
            max,
        };
        let f = s.flow_mut();
        f.fetching = max;
        f.fetching_from = f.fetch_from;
        f.fetching_count = f.spilled.count;
        self.out.fetches.push_back(fetch);
    }
}
