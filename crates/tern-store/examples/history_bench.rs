//! History: 1 million points of one topic (one a second, 11.6 days),
//! written in batches, then bucketed by minute over the whole range.
//!
//! ```sh
//! cargo run --release -p tern-store --example history_bench [POINTS]
//! ```

use std::time::{Duration, Instant};

use tern_codec::{Message, TopicFilter, TopicName};
use tern_store::history::{History, Rule, MINUTE};

#[allow(clippy::disallowed_methods)]
fn main() {
    let points: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("tern-history-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rules = vec![Rule {
        filter: TopicFilter::new("sensors/#").expect("valid"),
        keep: Duration::from_secs(365 * 86_400),
        value: None,
    }];
    let mut h = History::open(&dir.join("history.redb"), rules).expect("opens");
    let topic = TopicName::new("sensors/hall/temp").expect("valid");
    let t0: u64 = 1_800_000_000_000;
    let batch = 1_000;
    let started = Instant::now();
    let mut n = 0;
    while n < points {
        let k = batch.min(points - n);
        // One a second.
        let mut msgs = Vec::with_capacity(k as usize);
        for i in 0..k {
            let v = 20.0 + ((n + i) % 600) as f64 / 100.0;
            msgs.push((
                Message::new(topic.clone(), v.to_string()),
                t0 + (n + i) * 1000,
            ));
        }
        h.append(msgs).expect("written");
        n += k;
    }
    let wrote = started.elapsed();
    let end = t0 + points * 1000;
    let mut best = Duration::MAX;
    let mut buckets = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let b = h.buckets(&topic, t0, end, MINUTE, None).expect("read");
        best = best.min(t.elapsed());
        buckets = b.len();
    }
    let t = Instant::now();
    let hour = h.buckets(&topic, t0, end, 60 * MINUTE, None).expect("read");
    let by_hour = t.elapsed();
    let t = Instant::now();
    let raw = h.buckets(&topic, t0, end, 30_000, None).expect("read");
    let by_raw = t.elapsed();
    let file = std::fs::metadata(dir.join("history.redb")).map_or(0, |m| m.len());
    println!(
        "{points} points written in {:.2} s ({:.0}/s, batches of {batch}); file {:.1} MB",
        wrote.as_secs_f64(),
        points as f64 / wrote.as_secs_f64(),
        file as f64 / 1e6
    );
    println!(
        "bucketed by minute: {buckets} buckets in {:.2} ms (best of 5); by hour: {} buckets in {:.2} ms",
        best.as_secs_f64() * 1000.0,
        hour.len(),
        by_hour.as_secs_f64() * 1000.0
    );
    println!(
        "by 30 s, from every point: {} buckets in {:.1} ms",
        raw.len(),
        by_raw.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
