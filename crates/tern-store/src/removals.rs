//! Removing acknowledged messages by range: a session's stored messages
//! have ids without gaps, and are mostly acknowledged in order, so the
//! store keeps, per session, the lowest id that may still be live (every
//! id below it is gone). A message removed at that id moves the mark on,
//! and at the end of the batch everything the mark passed goes in one
//! range delete; one removed out of order is deleted at once (a QoS 2
//! message completed must never come back after a crash) and remembered,
//! so that the mark passes it later.

use std::collections::{BTreeSet, HashMap};

use tern_codec::MqttString;

/// Per session (by client id): the mark, and what it moved over in this
/// batch.
#[derive(Debug, Default)]
pub(crate) struct Removals {
    sessions: HashMap<MqttString, Mark>,
    /// The sessions whose mark moved in this batch.
    moved: Vec<MqttString>,
    /// Whether the marks are known (after `load`): before, every removal
    /// is a delete of its own.
    pub(crate) known: bool,
}

#[derive(Debug, Default)]
struct Mark {
    /// Every id below it is gone (`None`: the session had no message when
    /// the store was loaded or began it, and the first one queued sets it).
    low: Option<u64>,
    /// Where the mark stood when the batch began.
    start: Option<u64>,
    /// Ids above the mark already deleted one by one.
    early: BTreeSet<u64>,
    /// Too many out of order (a message the client never acknowledges
    /// holds the mark while the rest go): every removal of the session is
    /// its own delete from then on, and nothing is remembered.
    off: bool,
}

/// How many out-of-order removals a session's mark remembers.
const EARLY_MAX: usize = 4096;

/// What to do with a removed message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removal {
    /// Nothing now: the batch's range delete takes it.
    Ranged,
    /// Delete it now.
    Now,
}

impl Removals {
    /// A session's lowest stored id, as loaded (`None`: it has none).
    pub(crate) fn loaded(&mut self, client_id: MqttString, first: Option<u64>) {
        self.sessions.insert(
            client_id,
            Mark {
                low: first,
                ..Mark::default()
            },
        );
    }

    /// A message was queued (the first one of a session that had none
    /// sets its mark).
    pub(crate) fn queued(&mut self, client_id: &MqttString, id: u64) {
        if !self.known {
            return;
        }
        let m = self.sessions.entry(client_id.clone()).or_default();
        if m.low.is_none() {
            m.low = Some(id);
        }
    }

    /// A message was removed.
    pub(crate) fn removed(&mut self, client_id: &MqttString, id: u64) -> Removal {
        if !self.known {
            return Removal::Now;
        }
        let Some(m) = self.sessions.get_mut(client_id) else {
            return Removal::Now;
        };
        let Some(low) = m.low.filter(|_| !m.off) else {
            return Removal::Now;
        };
        if id < low {
            // Gone already.
            return Removal::Ranged;
        }
        if id > low {
            m.early.insert(id);
            if m.early.len() > EARLY_MAX {
                m.off = true;
                m.early = BTreeSet::new();
            }
            return Removal::Now;
        }
        if m.start.is_none() {
            m.start = Some(low);
            self.moved.push(client_id.clone());
        }
        let mut next = low + 1;
        while m.early.remove(&next) {
            next += 1;
        }
        m.low = Some(next);
        Removal::Ranged
    }

    /// The session ended: its records go by prefix.
    pub(crate) fn ended(&mut self, client_id: &MqttString) {
        self.sessions.remove(client_id);
    }

    /// The ranges `[from, to)` the marks moved over in this batch, by
    /// session; the batch begins anew.
    pub(crate) fn take_ranges(&mut self) -> Vec<(MqttString, u64, u64)> {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.moved) {
            let Some(m) = self.sessions.get_mut(&id) else {
                // Ended meanwhile: its prefix went.
                continue;
            };
            if let (Some(from), Some(to)) = (m.start.take(), m.low) {
                if to > from {
                    out.push((id, from, to));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> MqttString {
        MqttString::from_str(s).expect("valid")
    }

    #[test]
    fn in_order_removals_make_one_range_and_out_of_order_ones_go_at_once() {
        let mut r = Removals {
            known: true,
            ..Removals::default()
        };
        let c = id("c");
        r.loaded(c.clone(), Some(10));
        assert_eq!(r.removed(&c, 10), Removal::Ranged);
        assert_eq!(r.removed(&c, 11), Removal::Ranged);
        // 13 before 12: deleted now, passed by the mark later.
        assert_eq!(r.removed(&c, 13), Removal::Now);
        assert_eq!(r.take_ranges(), vec![(c.clone(), 10, 12)]);
        assert_eq!(r.removed(&c, 12), Removal::Ranged);
        assert_eq!(r.take_ranges(), vec![(c.clone(), 12, 14)]);
        assert!(r.take_ranges().is_empty());
        // A session with nothing: its first queued message sets the mark.
        let d = id("d");
        r.loaded(d.clone(), None);
        assert_eq!(r.removed(&d, 3), Removal::Now);
        r.queued(&d, 5);
        assert_eq!(r.removed(&d, 5), Removal::Ranged);
        assert_eq!(r.take_ranges(), vec![(d, 5, 6)]);
        // A message never acknowledged holds the mark: past a bound, the
        // session's removals are each their own delete, and the one held
        // is deleted when it goes.
        let e = id("e");
        r.loaded(e.clone(), Some(0));
        for n in 1..=(EARLY_MAX as u64 + 1) {
            assert_eq!(r.removed(&e, n), Removal::Now);
        }
        assert_eq!(r.removed(&e, 0), Removal::Now);
        // Before the store is loaded, every removal is its own delete.
        let mut cold = Removals::default();
        cold.queued(&c, 1);
        assert_eq!(cold.removed(&c, 1), Removal::Now);
    }
}
