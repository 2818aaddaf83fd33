//! Space under queue churn: a store that keeps turning over (messages
//! queued for many sessions and taken away, a standing backlog) must not
//! grow beyond a small multiple of what it holds.
//!
//! ```text
//! cargo run --release -p tern-store --example churn -- [sessions] [live per session] [appended]
//! ```
//!
//! Writes through the engine exactly what `KvStore` writes for queued and
//! removed messages (keys and values from `format`), in durable batches of
//! 100, and prints the file's size against the live data (the records'
//! keys and values) as it goes, after the upkeep an idle server gives the
//! store (`Engine::maintain`: a compaction when the file holds more than
//! twice its live data), and after a reopen.

#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tern_broker::durable::StoredDelivery;
use tern_broker::Envelope;
use tern_codec::{Message, QoS, TopicName};
use tern_store::format::{self, Table};
use tern_store::{Engine, Op, RedbEngine};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let sessions = args.first().copied().unwrap_or(10_000) as usize;
    let live = args.get(1).copied().unwrap_or(10);
    let appended = args.get(2).copied().unwrap_or(2_000_000);
    let dir = std::env::temp_dir().join(format!("tern-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut engine = RedbEngine::open(&dir).expect("opens");
    let message = |s: usize, id: u64| {
        let topic = TopicName::new(&format!("home/device/{s}/state")).expect("valid");
        let payload = format!("{id:064}");
        let d = StoredDelivery {
            id,
            message: Arc::new(Envelope::from(
                Message::new(topic, payload).with_qos(QoS::AtLeastOnce),
            )),
            expires_at: None,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
        };
        let cid = format!("device-{s:05}");
        (
            format::message_key(cid.as_bytes(), id),
            format::delivery(&d),
        )
    };
    let mut queues: Vec<VecDeque<(Vec<u8>, usize)>> = vec![VecDeque::new(); sessions];
    let mut next = vec![0u64; sessions];
    let mut live_bytes = 0usize;
    let mut batch = Vec::with_capacity(200);
    let started = Instant::now();
    let mut dice = 0x9e37_79b9_7f4a_7c15u64;
    let mut peak = 0u64;
    for n in 0..appended {
        dice ^= dice << 13;
        dice ^= dice >> 7;
        dice ^= dice << 17;
        let s = (dice % sessions as u64) as usize;
        let (k, v) = message(s, next[s]);
        next[s] += 1;
        live_bytes += k.len() + v.len();
        queues[s].push_back((k.clone(), k.len() + v.len()));
        batch.push(Op::Put(Table::Messages, k, v));
        if queues[s].len() as u64 > live {
            let (k, size) = queues[s].pop_front().expect("more than live");
            live_bytes -= size;
            batch.push(Op::Delete(Table::Messages, k));
        }
        if batch.len() >= 100 {
            engine.write(&batch, true).expect("writes");
            batch.clear();
        }
        if (n + 1) % (appended / 10).max(1) == 0 {
            let size = engine.size();
            peak = peak.max(size);
            println!(
                "{:>9} appended  file {:>7.2} MB  live {:>7.2} MB  {:.2}x",
                n + 1,
                size as f64 / 1e6,
                live_bytes as f64 / 1e6,
                size as f64 / live_bytes as f64
            );
        }
    }
    engine.write(&batch, true).expect("writes");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{appended} appended in {secs:.1} s ({:.0}/s); peak file {:.2} MB",
        appended as f64 / secs,
        peak as f64 / 1e6
    );
    let size = engine.size();
    println!(
        "end: file {:.2} MB, live {:.2} MB: {:.2}x",
        size as f64 / 1e6,
        live_bytes as f64 / 1e6,
        size as f64 / live_bytes as f64
    );
    let t = Instant::now();
    let done = engine.maintain().expect("maintains");
    println!(
        "after the store's upkeep (compacted: {done}, {:.0} ms): file {:.2} MB: {:.2}x",
        t.elapsed().as_secs_f64() * 1e3,
        engine.size() as f64 / 1e6,
        engine.size() as f64 / live_bytes as f64
    );
    drop(engine);
    let t = Instant::now();
    let engine = RedbEngine::open(&dir).expect("reopens");
    println!(
        "after a reopen ({:.0} ms): file {:.2} MB: {:.2}x",
        t.elapsed().as_secs_f64() * 1e3,
        engine.size() as f64 / 1e6,
        engine.size() as f64 / live_bytes as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
}
