//! The history on redb: writing batches of messages (with their minute
//! buckets), reading a topic's messages and buckets, a stream's messages
//! after a sequence number, expiry.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tern_codec::{Message, TopicFilter, TopicName};

use super::rollup::{align, value_of, Bucket};
use super::{rule_for, Rule, MINUTE};
use crate::format;
use crate::StoreError;

const LOG: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("log");
const POINTS: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("points");
const MINUTES: TableDefinition<'static, &'static [u8], &'static [u8]> =
    TableDefinition::new("minutes");
const TOPICS: TableDefinition<'static, &'static [u8], ()> = TableDefinition::new("topics");

/// The pages redb keeps in memory.
const CACHE: usize = 16 * 1024 * 1024;

/// Log entries one read looks at, at most (a stream whose filters match
/// little does not hold a read open for long).
const SCAN: usize = 10_000;

/// A recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its place among all recorded messages, from 1.
    pub seq: u64,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub time: u64,
    /// The message.
    pub message: Message,
}

/// The history file and the rules it records by.
#[derive(Debug)]
pub struct History {
    db: Database,
    rules: Vec<Rule>,
    last_seq: u64,
    last_time: u64,
}

fn other(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(io::Error::other(e.to_string()))
}

/// `topic`, a NUL (which no topic holds), then `t`: a topic's keys in time
/// order.
fn key(topic: &[u8], t: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 9);
    k.extend_from_slice(topic);
    k.push(0);
    k.extend_from_slice(&t.to_be_bytes());
    k
}

fn point_key(topic: &[u8], time: u64, seq: u64) -> Vec<u8> {
    let mut k = key(topic, time);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    b.get(i..i + 8)
        .map_or(0, |s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
}

fn log_value(time: u64, m: &Message) -> Vec<u8> {
    let mut v = time.to_be_bytes().to_vec();
    format::put_message(&mut v, m);
    v
}

fn log_record(seq: u64, v: &[u8]) -> Option<Record> {
    let time = u64_at(v, 0);
    let mut rest = v.get(8..)?;
    let message = format::message_of(&mut rest).ok()?;
    Some(Record { seq, time, message })
}

impl History {
    /// Opens (or creates) the history file `path`, recording by `rules`.
    pub fn open(path: &Path, rules: Vec<Rule>) -> Result<History, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE)
            .create(path)
            .map_err(|e| StoreError::Damaged(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(other)?;
        tx.open_table(LOG).map_err(other)?;
        tx.open_table(POINTS).map_err(other)?;
        tx.open_table(MINUTES).map_err(other)?;
        tx.open_table(TOPICS).map_err(other)?;
        tx.commit().map_err(other)?;
        let (last_seq, last_time) = {
            let tx = db.begin_read().map_err(other)?;
            let log = tx.open_table(LOG).map_err(other)?;
            let last = log
                .last()
                .map_err(other)?
                .map(|(k, v)| (k.value(), u64_at(v.value(), 0)));
            last.unwrap_or((0, 0))
        };
        Ok(History {
            db,
            rules,
            last_seq,
            last_time,
        })
    }

    /// The rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The last sequence number given (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Records `messages`, each with the time it arrived (those no rule
    /// names are left out), as one durable write: each gets the next
    /// sequence number, and its time (or the last time given, if the
    /// clock went back: times never go back along the log). The records
    /// written, in order.
    pub fn append(&mut self, messages: Vec<(Message, u64)>) -> Result<Vec<Record>, StoreError> {
        let mut time = self.last_time;
        let mut records = Vec::with_capacity(messages.len());
        let mut minutes: HashMap<Vec<u8>, Bucket> = HashMap::new();
        let mut tx = self.db.begin_write().map_err(other)?;
        tx.set_durability(Durability::Immediate).map_err(other)?;
        let mut seq = self.last_seq;
        {
            let mut log = tx.open_table(LOG).map_err(other)?;
            let mut points = tx.open_table(POINTS).map_err(other)?;
            let mut topics = tx.open_table(TOPICS).map_err(other)?;
            for (m, at) in messages {
                let Some(rule) = rule_for(&self.rules, &m.topic) else {
                    continue;
                };
                time = time.max(at);
                seq += 1;
                let topic = m.topic.as_bytes();
                let value = value_of(&m.payload, rule.value.as_deref());
                log.insert(seq, log_value(time, &m).as_slice())
                    .map_err(other)?;
                let v = value.map(f64::to_be_bytes);
                let v: &[u8] = v.as_ref().map_or(&[], |b| b.as_slice());
                points
                    .insert(point_key(topic, time, seq).as_slice(), v)
                    .map_err(other)?;
                topics.insert(topic, ()).map_err(other)?;
                if let Some(v) = value {
                    let minute = align(time, MINUTE);
                    minutes
                        .entry(key(topic, minute))
                        .or_insert_with(|| Bucket::empty(minute))
                        .add(v, time);
                }
                records.push(Record {
                    seq,
                    time,
                    message: m,
                });
            }
            let mut table = tx.open_table(MINUTES).map_err(other)?;
            for (k, mut b) in minutes {
                let old = table
                    .get(k.as_slice())
                    .map_err(other)?
                    .and_then(|v| Bucket::decode(b.start, v.value()));
                if let Some(old) = old {
                    let mut merged = old;
                    merged.merge(&b);
                    b = merged;
                }
                table
                    .insert(k.as_slice(), b.encode().as_slice())
                    .map_err(other)?;
            }
        }
        tx.commit().map_err(other)?;
        self.last_seq = seq;
        self.last_time = time;
        Ok(records)
    }

    /// The recorded messages after `after` that match one of `filters`, at
    /// most `limit`; and the last sequence number looked at (the next
    /// read starts after it: a read that found nothing still moves on).
    pub fn after(
        &self,
        after: u64,
        filters: &[TopicFilter],
        limit: usize,
    ) -> Result<(Vec<Record>, u64), StoreError> {
        let tx = self.db.begin_read().map_err(other)?;
        let log = tx.open_table(LOG).map_err(other)?;
        let mut out = Vec::new();
        let mut last = after;
        for (n, entry) in log
            .range(after.saturating_add(1)..)
            .map_err(other)?
            .enumerate()
        {
            if n >= SCAN || out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(other)?;
            last = k.value();
            if let Some(r) = log_record(last, v.value()) {
                if filters.iter().any(|f| f.matches(&r.message.topic)) {
                    out.push(r);
                }
            }
        }
        Ok((out, last))
    }

    /// The last sequence number recorded before `time` (a stream that
    /// starts at `time` reads after it). Times never go back along the
    /// log, so this is a binary search.
    pub fn seq_before(&self, time: u64) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(other)?;
        let log = tx.open_table(LOG).map_err(other)?;
        let Some((first, _)) = log.first().map_err(other)? else {
            return Ok(self.last_seq);
        };
        // Invariant: every seq < lo is before `time`; every seq >= hi is not.
        let (mut lo, mut hi) = (first.value(), self.last_seq + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            // The first entry at or after mid (expiry leaves gaps).
            let at = log
                .range(mid..)
                .map_err(other)?
                .next()
                .transpose()
                .map_err(other)?
                .map(|(k, v)| (k.value(), u64_at(v.value(), 0)));
            match at {
                Some((seq, t)) if t < time => lo = seq + 1,
                _ => hi = mid,
            }
        }
        Ok(lo - 1)
    }

    /// `topic`'s messages from `from` (included) to `to` (not), oldest
    /// first, at most `limit`.
    pub fn range(
        &self,
        topic: &TopicName,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let tx = self.db.begin_read().map_err(other)?;
        let points = tx.open_table(POINTS).map_err(other)?;
        let log = tx.open_table(LOG).map_err(other)?;
        let t = topic.as_bytes();
        let (start, end) = (key(t, from), key(t, to));
        let mut out = Vec::new();
        for entry in points
            .range(start.as_slice()..end.as_slice())
            .map_err(other)?
        {
            if out.len() >= limit {
                break;
            }
            let (k, _) = entry.map_err(other)?;
            let seq = u64_at(k.value(), t.len() + 9);
            if let Some(v) = log.get(seq).map_err(other)? {
                out.extend(log_record(seq, v.value()));
            }
        }
        Ok(out)
    }

    /// `topic`'s numbers from `from` to `to` in buckets of `step`
    /// milliseconds, aligned to the epoch (the first holds `from`, the last
    /// ends at or after `to`), with the number at `field` (a JSON pointer;
    /// `None`: the payload). Empty buckets are left out. From the minute
    /// buckets when `step` is whole minutes and `field` is what the rule
    /// keeps them of; from the messages otherwise.
    pub fn buckets(
        &self,
        topic: &TopicName,
        from: u64,
        to: u64,
        step: u64,
        field: Option<&str>,
    ) -> Result<Vec<Bucket>, StoreError> {
        let step = step.max(1);
        let (from, to) = (align(from, step), to.saturating_add(step - 1) / step * step);
        let kept = rule_for(&self.rules, topic).map(|r| r.value.as_deref());
        let tx = self.db.begin_read().map_err(other)?;
        let t = topic.as_bytes();
        let (start, end) = (key(t, from), key(t, to));
        let mut out: Vec<Bucket> = Vec::new();
        let mut put = |b: Bucket| {
            let s = align(b.start, step);
            match out.last_mut() {
                Some(last) if last.start == s => last.merge(&b),
                _ => {
                    let mut n = Bucket::empty(s);
                    n.merge(&b);
                    out.push(n);
                }
            }
        };
        if step.is_multiple_of(MINUTE) && kept == Some(field) {
            let minutes = tx.open_table(MINUTES).map_err(other)?;
            for entry in minutes
                .range(start.as_slice()..end.as_slice())
                .map_err(other)?
            {
                let (k, v) = entry.map_err(other)?;
                let minute = u64_at(k.value(), t.len() + 1);
                out_of(Bucket::decode(minute, v.value()), &mut put);
            }
            return Ok(out);
        }
        let points = tx.open_table(POINTS).map_err(other)?;
        let log = tx.open_table(LOG).map_err(other)?;
        for entry in points
            .range(start.as_slice()..end.as_slice())
            .map_err(other)?
        {
            let (k, v) = entry.map_err(other)?;
            let time = u64_at(k.value(), t.len() + 1);
            let value = if kept == Some(field) {
                v.value().try_into().ok().map(f64::from_be_bytes)
            } else {
                let seq = u64_at(k.value(), t.len() + 9);
                log.get(seq)
                    .map_err(other)?
                    .and_then(|v| log_record(seq, v.value()))
                    .and_then(|r| value_of(&r.message.payload, field))
            };
            if let Some(v) = value {
                put(Bucket::of(time, v, time));
            }
        }
        Ok(out)
    }

    /// Forgets what is older than its rule keeps it, as of `now`. How many
    /// messages went.
    pub fn expire(&mut self, now: u64) -> Result<usize, StoreError> {
        let mut gone = 0;
        let tx = self.db.begin_write().map_err(other)?;
        {
            let topics: Vec<Vec<u8>> = {
                let t = tx.open_table(TOPICS).map_err(other)?;
                let mut v = Vec::new();
                for e in t.iter().map_err(other)? {
                    v.push(e.map_err(other)?.0.value().to_vec());
                }
                v
            };
            let mut log = tx.open_table(LOG).map_err(other)?;
            let mut points = tx.open_table(POINTS).map_err(other)?;
            let mut minutes = tx.open_table(MINUTES).map_err(other)?;
            let mut names = tx.open_table(TOPICS).map_err(other)?;
            for t in topics {
                let keep = std::str::from_utf8(&t)
                    .ok()
                    .and_then(|s| TopicName::new(s).ok())
                    .and_then(|name| rule_for(&self.rules, &name).map(|r| r.keep));
                // A topic no rule names any more goes whole.
                let cutoff = keep.map_or(u64::MAX, |k| {
                    now.saturating_sub(u64::try_from(k.as_millis()).unwrap_or(u64::MAX))
                });
                let (start, end) = (key(&t, 0), key(&t, cutoff));
                let mut seqs = Vec::new();
                for e in points
                    .range(start.as_slice()..end.as_slice())
                    .map_err(other)?
                {
                    seqs.push(u64_at(e.map_err(other)?.0.value(), t.len() + 9));
                }
                for s in &seqs {
                    log.remove(s).map_err(other)?;
                }
                gone += seqs.len();
                points
                    .retain_in(start.as_slice()..end.as_slice(), |_, _| false)
                    .map_err(other)?;
                let whole = key(&t, align(cutoff, MINUTE));
                minutes
                    .retain_in(start.as_slice()..whole.as_slice(), |_, _| false)
                    .map_err(other)?;
                if keep.is_none() {
                    names.remove(t.as_slice()).map_err(other)?;
                }
            }
        }
        tx.commit().map_err(other)?;
        Ok(gone)
    }
}

fn out_of(b: Option<Bucket>, put: &mut impl FnMut(Bucket)) {
    if let Some(b) = b {
        put(b);
    }
}
