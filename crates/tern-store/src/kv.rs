//! The store on any ordered key-value engine: changes become puts and
//! deletes in [`Table`]s, one atomic batch per commit; loading reads the
//! tables back into sessions and retained messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;

use tern_broker::durable::{Change, InflightStage, StoredDelivery};

use tern_broker::SessionId;
use tern_codec::MqttString;

use crate::format::{self, SessionRecord, Table};
use crate::removals::{Removal, Removals};
use crate::{Loaded, Store, StoreError};

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key.
    Put(Table, Vec<u8>, Vec<u8>),
    /// Removes a key.
    Delete(Table, Vec<u8>),
    /// Removes every key that starts with the prefix.
    DeletePrefix(Table, Vec<u8>),
    /// Removes every key from the first (included) to the second (not).
    DeleteRange(Table, Vec<u8>, Vec<u8>),
}

/// An ordered key-value engine with tables and atomic, durable batches.
pub trait Engine: Send {
    /// Applies `ops` in order as one atomic batch; with `sync`, it is on
    /// disk (fsync) when this returns.
    fn write(&mut self, ops: &[Op], sync: bool) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Calls `f` with every record of `table`, in key order.
    fn scan(&mut self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> io::Result<()>;
    /// Calls `f` with the records of `table` from key `start` on, in key
    /// order, while it returns true.
    fn scan_from(
        &mut self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> io::Result<()>;
    /// Bytes the engine holds on disk (0 when it cannot tell).
    fn size(&self) -> u64 {
        0
    }
    /// Gives back space that churn left free, when that is worth it;
    /// returns whether it did. Called when the store is idle.
    fn maintain(&mut self) -> io::Result<bool> {
        Ok(false)
    }
}

/// The durable store on an [`Engine`].
#[derive(Debug)]
pub struct KvStore<E> {
    pub(crate) engine: E,
    /// Client id of each session of the broker writing to it.
    names: HashMap<SessionId, MqttString>,
    /// Each stored session's record, as last written.
    pub(crate) records: HashMap<MqttString, SessionRecord>,
    /// Whether a batch was written without a sync since the last one.
    unsynced: bool,
    /// The keys with a row in [`Table::Inflight`], once `load` has read
    /// them (before, a message removed has its row deleted whether there
    /// is one or not).
    pub(crate) inflight_rows: Option<HashSet<Vec<u8>>>,
    /// Acknowledged messages, removed by range where they go in order.
    pub(crate) removals: Removals,
    /// The ops of a write that failed, and how many changes they were for.
    failed: Option<(usize, Vec<Op>)>,
}

impl<E: Engine> KvStore<E> {
    /// A store on `engine`.
    pub fn new(engine: E) -> KvStore<E> {
        KvStore {
            engine,
            names: HashMap::new(),
            records: HashMap::new(),
            unsynced: false,
            inflight_rows: None,
            removals: Removals::default(),
            failed: None,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// The engine, to change.
    pub fn engine_mut(&mut self) -> &mut E {
        &mut self.engine
    }

    /// The writes for `changes`, in order.
    fn ops(&mut self, changes: &[(u64, Change)]) -> Vec<Op> {
        let plan = Plan::of(changes);
        let mut ops = Vec::with_capacity(changes.len());
        for (_, c) in changes {
            match c {
                Change::Queued {
                    session, delivery, ..
                } if plan.transient.contains(&(*session, delivery.id)) => {
                    if let Some(name) = self.names.get(session) {
                        self.removals.queued(name, delivery.id);
                    }
                }
                Change::Removed { session, id, .. }
                    if plan.transient.contains(&(*session, *id)) =>
                {
                    // Never written: only the mark moves.
                    if let Some(name) = self.names.get(session) {
                        let _ = self.removals.removed(name, *id);
                    }
                }
                Change::Sent { session, id, .. } if plan.transient.contains(&(*session, *id)) => {}
                // Said with the message itself.
                Change::Sent { session, id, .. } if plan.sent.contains_key(&(*session, *id)) => {}
                _ => self.op(c, &plan, &mut ops),
            }
        }
        for (cid, from, to) in self.removals.take_ranges() {
            let (start, end) = (
                format::message_key(cid.as_bytes(), from),
                format::message_key(cid.as_bytes(), to),
            );
            if let Some(rows) = &mut self.inflight_rows {
                for n in from..to {
                    rows.remove(&format::message_key(cid.as_bytes(), n));
                }
            }
            ops.push(Op::DeleteRange(Table::Inflight, start.clone(), end.clone()));
            ops.push(Op::DeleteRange(Table::Messages, start, end));
        }
        ops
    }

    fn op(&mut self, change: &Change, plan: &Plan, ops: &mut Vec<Op>) {
        if let Change::Session {
            session,
            client_id,
            username,
            version,
            expiry,
            will,
        } = change
        {
            self.names.insert(*session, client_id.clone());
            let r = SessionRecord {
                username: username.clone(),
                version: *version,
                expiry: *expiry,
                expires_at: None,
                will_at: None,
                will: will.as_deref().cloned(),
            };
            ops.push(Op::Put(
                Table::Sessions,
                client_id.as_bytes().to_vec(),
                format::session(&r),
            ));
            self.records.insert(client_id.clone(), r);
            return;
        }
        match change {
            Change::Retained(r) => {
                let key = r.message.topic.as_bytes().to_vec();
                ops.push(Op::Put(Table::Retained, key, format::retained(r)));
                return;
            }
            Change::Unretained(topic) => {
                ops.push(Op::Delete(Table::Retained, topic.as_bytes().to_vec()));
                return;
            }
            _ => {}
        }
        let Some((sid, id)) = self.client_of(change) else {
            return;
        };
        let cid = id.as_bytes();
        match change {
            Change::Offline {
                expires_at,
                will_at,
                ..
            } => self.update(&id, ops, |r| {
                r.expires_at = *expires_at;
                r.will_at = *will_at;
            }),
            Change::WillGone { .. } => self.update(&id, ops, |r| {
                r.will = None;
                r.will_at = None;
            }),
            Change::Ended { .. } => {
                self.names.remove(&sid);
                self.records.remove(&id);
                self.removals.ended(&id);
                let prefix = format::session_prefix(cid);
                if let Some(rows) = &mut self.inflight_rows {
                    rows.retain(|k| !k.starts_with(&prefix));
                }
                // A batch need not see its own writes: what it put for the
                // session goes from the batch itself.
                ops.retain(|op| !matches!(op, Op::Put(t, k, _) if *t != Table::Sessions && *t != Table::Retained && k.starts_with(&prefix)));
                for t in Table::OF_SESSION {
                    ops.push(Op::DeletePrefix(t, prefix.clone()));
                }
                ops.push(Op::Delete(Table::Sessions, cid.to_vec()));
            }
            Change::Subscribed { subscription, .. } => ops.push(Op::Put(
                Table::Subscriptions,
                format::subscription_key(cid, &subscription.filter),
                format::subscription(subscription),
            )),
            Change::Unsubscribed { filter, .. } => ops.push(Op::Delete(
                Table::Subscriptions,
                format::subscription_key(cid, filter),
            )),
            Change::Queued { delivery, .. } => {
                self.removals.queued(&id, delivery.id);
                ops.push(Op::Put(
                    Table::Messages,
                    format::message_key(cid, delivery.id),
                    format::delivery_sent(delivery, plan.sent.get(&(sid, delivery.id)).copied()),
                ))
            }
            Change::Sent {
                id: m,
                packet_id,
                stage,
                ..
            } => {
                let key = format::message_key(cid, *m);
                if let Some(rows) = &mut self.inflight_rows {
                    rows.insert(key.clone());
                }
                ops.push(Op::Put(
                    Table::Inflight,
                    key,
                    format::inflight(*packet_id, *stage),
                ))
            }
            Change::Removed { id: m, .. } => {
                if self.removals.removed(&id, *m) == Removal::Ranged {
                    // The batch's range delete takes it.
                    return;
                }
                let key = format::message_key(cid, *m);
                if self
                    .inflight_rows
                    .as_mut()
                    .is_none_or(|rows| rows.remove(&key))
                {
                    ops.push(Op::Delete(Table::Inflight, key.clone()));
                }
                ops.push(Op::Delete(Table::Messages, key));
            }
            Change::Received { packet_id, .. } => ops.push(Op::Put(
                Table::Qos2,
                format::qos2_key(cid, *packet_id),
                Vec::new(),
            )),
            Change::Released { packet_id, .. } => {
                ops.push(Op::Delete(Table::Qos2, format::qos2_key(cid, *packet_id)))
            }
            _ => {}
        }
    }

    /// The session a change is about and its client id, if the store knows
    /// the session.
    fn client_of(&self, change: &Change) -> Option<(SessionId, MqttString)> {
        let sid = match change {
            Change::Offline { session, .. }
            | Change::WillGone { session }
            | Change::Ended { session }
            | Change::Subscribed { session, .. }
            | Change::Unsubscribed { session, .. }
            | Change::Queued { session, .. }
            | Change::Sent { session, .. }
            | Change::Removed { session, .. }
            | Change::Received { session, .. }
            | Change::Released { session, .. }
            | Change::Session { session, .. } => *session,
            _ => return None,
        };
        Some((sid, self.names.get(&sid)?.clone()))
    }

    /// Rewrites a session's record after `f`.
    fn update(&mut self, id: &MqttString, ops: &mut Vec<Op>, f: impl FnOnce(&mut SessionRecord)) {
        if let Some(r) = self.records.get_mut(id) {
            f(r);
            let value = format::session(r);
            ops.push(Op::Put(Table::Sessions, id.as_bytes().to_vec(), value));
        }
    }
}

/// What a batch's changes to messages come to, before they are written.
#[derive(Default)]
struct Plan {
    /// Messages queued and removed within the batch (delivered and
    /// acknowledged before it was written): their writes would cancel out,
    /// so none is made. Message ids are never reused within a session, so a
    /// message queued in this batch was not on disk before it.
    transient: HashSet<(SessionId, u64)>,
    /// Messages queued and sent within the batch, and where they last
    /// stood: written with the message, not as a row of their own.
    sent: HashMap<(SessionId, u64), (u16, InflightStage)>,
}

impl Plan {
    fn of(changes: &[(u64, Change)]) -> Plan {
        let mut queued = HashSet::new();
        let mut plan = Plan::default();
        for (_, c) in changes {
            match c {
                Change::Queued {
                    session, delivery, ..
                } => {
                    queued.insert((*session, delivery.id));
                }
                Change::Sent {
                    session,
                    id,
                    packet_id,
                    stage,
                } if queued.contains(&(*session, *id)) => {
                    plan.sent.insert((*session, *id), (*packet_id, *stage));
                }
                Change::Removed { session, id } if queued.contains(&(*session, *id)) => {
                    plan.sent.remove(&(*session, *id));
                    plan.transient.insert((*session, *id));
                }
                _ => {}
            }
        }
        plan
    }
}

impl<E: Engine> Store for KvStore<E> {
    fn commit(&mut self, changes: &[(u64, Change)], sync: bool) -> Result<(), StoreError> {
        // The store's own bookkeeping (names, removal marks) moved with the
        // ops of a write that failed: those ops are kept, and the changes
        // given again (a retry gives the same first ones) are not replayed.
        let (mut ops, from) = match self.failed.take() {
            Some((n, ops)) if n <= changes.len() => (ops, n),
            _ => (Vec::new(), 0),
        };
        ops.extend(self.ops(&changes[from..]));
        if ops.is_empty() {
            // Nothing to write (messages that came and went within the
            // batch): only what earlier batches left unsynced needs an fsync.
            return if sync { self.sync() } else { Ok(()) };
        }
        if let Err(e) = self.engine.write(&ops, sync) {
            self.failed = Some((changes.len(), ops));
            return Err(StoreError::Io(e));
        }
        self.unsynced = !sync;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
            return Ok(());
        }
        self.engine.sync().map_err(StoreError::Io)?;
        self.unsynced = false;
        Ok(())
    }

    fn load(&mut self, window: usize) -> Result<Loaded, StoreError> {
        self.load_window(window)
    }

    fn fetch(
        &mut self,
        client_id: &MqttString,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        self.fetch_queued(client_id, from, max)
    }

    fn size(&self) -> u64 {
        self.engine.size()
    }

    fn maintain(&mut self) -> Result<bool, StoreError> {
        self.engine.maintain().map_err(StoreError::Io)
    }
}

/// An engine in memory: tables of ordered maps. For tests, and for a store
/// that need not survive the process; `full` makes writes fail as a full
/// disk does.
#[derive(Debug, Default, Clone)]
pub struct MemEngine {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Writes fail (with `StorageFull`) while this is set.
    pub full: bool,
}

impl Engine for MemEngine {
    fn write(&mut self, ops: &[Op], _sync: bool) -> io::Result<()> {
        if self.full {
            return Err(io::ErrorKind::StorageFull.into());
        }
        for op in ops {
            match op {
                Op::Put(t, k, v) => {
                    self.tables
                        .entry(*t)
                        .or_default()
                        .insert(k.clone(), v.clone());
                }
                Op::Delete(t, k) => {
                    if let Some(m) = self.tables.get_mut(t) {
                        m.remove(k);
                    }
                }
                Op::DeletePrefix(t, p) => {
                    if let Some(m) = self.tables.get_mut(t) {
                        m.retain(|k, _| !k.starts_with(p));
                    }
                }
                Op::DeleteRange(t, start, end) => {
                    if let Some(m) = self.tables.get_mut(t) {
                        let gone: Vec<Vec<u8>> = m
                            .range(start.clone()..end.clone())
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in gone {
                            m.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn scan(&mut self, table: Table, f: &mut dyn FnMut(&[u8], &[u8])) -> io::Result<()> {
        for (k, v) in self.tables.get(&table).into_iter().flatten() {
            f(k, v);
        }
        Ok(())
    }

    fn scan_from(
        &mut self,
        table: Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> io::Result<()> {
        if let Some(t) = self.tables.get(&table) {
            for (k, v) in t.range(start.to_vec()..) {
                if !f(k, v) {
                    break;
                }
            }
        }
        Ok(())
    }
}
