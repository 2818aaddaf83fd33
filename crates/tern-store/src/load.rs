//! Reading the store back: at startup every session with its
//! subscriptions, messages in flight and QoS 2 ids, and the first `window`
//! of its queued messages (the rest counted, left in the store and fetched
//! when the broker asks); later, a session's next queued messages.
//!
//! A record that cannot be read is left out and named, never guessed at.

use std::collections::{BTreeMap, HashSet};

use tern_broker::durable::{InflightStage, StoredDelivery, StoredSession};
use tern_codec::MqttString;

use crate::format::{self, SessionRecord, Table};
use crate::kv::{Engine, KvStore};
use crate::{Loaded, Problem, StoreError};

impl<E: Engine> KvStore<E> {
    pub(crate) fn load_window(&mut self, window: usize) -> Result<Loaded, StoreError> {
        let mut problems = Vec::new();
        let mut bad = |table: Table, key: &[u8], reason: &'static str| {
            problems.push(Problem {
                table: table.name(),
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            });
        };
        // The records are read back; which session of the running broker
        // each is stays as its `Session` changes said.
        self.records.clear();
        let mut sessions: BTreeMap<MqttString, StoredSession> = BTreeMap::new();
        let mut records = Vec::new();
        self.engine.scan(Table::Sessions, &mut |k, v| {
            records.push((k.to_vec(), format::session_of(v)));
        })?;
        for (k, r) in records {
            let id = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| MqttString::from_str(s).ok());
            match (id, r) {
                (Some(id), Ok(r)) => {
                    sessions.insert(id.clone(), stored(id.clone(), &r));
                    self.records.insert(id, r);
                }
                (None, _) => bad(Table::Sessions, &k, "client id invalid"),
                (_, Err(e)) => bad(Table::Sessions, &k, e),
            }
        }
        // The small tables, whole.
        let mut rows = Vec::new();
        for t in [Table::Subscriptions, Table::Inflight, Table::Qos2] {
            self.engine
                .scan(t, &mut |k, v| rows.push((t, k.to_vec(), v.to_vec())))?;
        }
        let mut inflight: BTreeMap<Vec<u8>, (u16, InflightStage)> = BTreeMap::new();
        for (t, k, v) in rows {
            let (id, rest) = match format::split_key(&k) {
                Ok(x) => x,
                Err(e) => {
                    bad(t, &k, e);
                    continue;
                }
            };
            let Some(s) = sessions.get_mut(&id) else {
                bad(t, &k, "no session");
                continue;
            };
            let r = match t {
                Table::Subscriptions => {
                    format::subscription_of(rest, &v).map(|sub| s.subscriptions.push(sub))
                }
                Table::Qos2 => match rest {
                    [a, b] if v.is_empty() => {
                        s.incoming_qos2.push(u16::from_be_bytes([*a, *b]));
                        Ok(())
                    }
                    _ => Err("packet id invalid"),
                },
                _ if rest.len() != 8 => Err("message id invalid"),
                _ => format::inflight_of(&v).map(|x| {
                    inflight.insert(k.clone(), x);
                }),
            };
            if let Err(e) = r {
                bad(t, &k, e);
            }
        }
        self.inflight_rows = Some(inflight.keys().cloned().collect());
        // Messages, streamed: those in flight and the first `window` queued
        // ones of each session are read, the rest only counted.
        let mut current: Option<(Vec<u8>, Option<MqttString>)> = None;
        let mut matched = HashSet::new();
        // Each session's lowest stored id: where its removal mark starts.
        let mut first: BTreeMap<MqttString, u64> = BTreeMap::new();
        self.engine.scan(Table::Messages, &mut |k, v| {
            let (cid, rest) = match raw_split(k) {
                Some(x) => x,
                None => return bad(Table::Messages, k, "key too short"),
            };
            if current.as_ref().is_none_or(|(c, _)| c.as_slice() != cid) {
                let id = std::str::from_utf8(cid)
                    .ok()
                    .and_then(|s| MqttString::from_str(s).ok())
                    .filter(|id| sessions.contains_key(id));
                current = Some((cid.to_vec(), id));
            }
            let Some((_, Some(client_id))) = &current else {
                return bad(Table::Messages, k, "no session");
            };
            let Ok(n) = <[u8; 8]>::try_from(rest).map(u64::from_be_bytes) else {
                return bad(Table::Messages, k, "message id invalid");
            };
            let s = sessions.get_mut(client_id).expect("checked above");
            first.entry(client_id.clone()).or_insert(n);
            let row = inflight.get(k).copied();
            if row.is_none()
                && !format::delivery_is_sent(v)
                && (s.queued.len() >= window || s.spilled.count > 0)
            {
                // Left in the store: the broker asks for it in turn.
                s.spilled.count += 1;
                s.spilled.bytes += v.len() as u64;
                s.spilled.last_id = n;
                return;
            }
            match format::delivery_of(n, v) {
                // A row of its own says more recently than the message's.
                Ok((d, sent)) => match row.or(sent) {
                    Some((pid, stage)) => {
                        if row.is_some() {
                            matched.insert(k.to_vec());
                        }
                        s.inflight.push((pid, stage, d));
                    }
                    None => s.queued.push(d),
                },
                Err(e) => bad(Table::Messages, k, e),
            }
        })?;
        for k in inflight.keys().filter(|k| !matched.contains(*k)) {
            bad(Table::Inflight, k, "no message");
        }
        self.removals = Default::default();
        self.removals.known = true;
        for id in sessions.keys() {
            self.removals.loaded(id.clone(), first.get(id).copied());
        }
        let mut retained = Vec::new();
        let mut rows = Vec::new();
        self.engine.scan(Table::Retained, &mut |k, v| {
            rows.push((k.to_vec(), v.to_vec()))
        })?;
        for (k, v) in rows {
            match format::topic_of(&k).and_then(|topic| {
                let r = format::retained_of(&v)?;
                if r.message.topic == topic {
                    Ok(r)
                } else {
                    Err("topic differs from its key")
                }
            }) {
                Ok(r) => retained.push(r),
                Err(e) => bad(Table::Retained, &k, e),
            }
        }
        Ok(Loaded {
            sessions: sessions.into_values().collect(),
            retained,
            problems,
        })
    }

    /// A session's queued messages from `from` on.
    pub(crate) fn fetch_queued(
        &mut self,
        client_id: &MqttString,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredDelivery>, StoreError> {
        let cid = client_id.as_bytes();
        let prefix = format::session_prefix(cid);
        let start = format::message_key(cid, from);
        let rows = self.inflight_rows.as_ref();
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.engine
            .scan_from(Table::Messages, &start, &mut |k, v| {
                let Some(rest) = k.strip_prefix(prefix.as_slice()) else {
                    return false;
                };
                if format::delivery_is_sent(v) || rows.is_some_and(|r| r.contains(k)) {
                    return true;
                }
                let Ok(n) = <[u8; 8]>::try_from(rest).map(u64::from_be_bytes) else {
                    return true;
                };
                // One that cannot be read was named when the store was loaded;
                // the session goes on with the next.
                if let Ok((d, _)) = format::delivery_of(n, v) {
                    out.push(d);
                }
                out.len() < max
            })?;
        Ok(out)
    }
}

/// A session record's key as client id bytes and the rest.
fn raw_split(key: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = usize::from(u16::from_be_bytes([*key.first()?, *key.get(1)?]));
    Some((key.get(2..2 + n)?, &key[2 + n..]))
}

/// A session with its record and nothing else yet.
fn stored(client_id: MqttString, r: &SessionRecord) -> StoredSession {
    StoredSession {
        client_id,
        username: r.username.clone(),
        version: r.version,
        expiry: r.expiry,
        expires_at: r.expires_at,
        subscriptions: Vec::new(),
        inflight: Vec::new(),
        queued: Vec::new(),
        spilled: Default::default(),
        incoming_qos2: Vec::new(),
        will: r.will.clone(),
        will_at: r.will_at,
    }
}
