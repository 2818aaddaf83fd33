//! The history file: what is recorded, read back by topic, by sequence
//! number and by time, bucketed, expired, and kept across a reopen.

use std::time::Duration;

use tern_codec::{Message, TopicFilter, TopicName};
use tern_store::history::{History, Rule, MINUTE};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-history-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join("history.redb")
}

fn rule(filter: &str, keep_s: u64, value: Option<&str>) -> Rule {
    Rule {
        filter: TopicFilter::new(filter).expect("valid"),
        keep: Duration::from_secs(keep_s),
        value: value.map(str::to_owned),
    }
}

fn msg(topic: &str, payload: &str) -> Message {
    Message::new(TopicName::new(topic).expect("valid"), payload.to_owned())
}

/// Messages that all arrived at `t`.
fn at(ms: Vec<Message>, t: u64) -> Vec<(Message, u64)> {
    ms.into_iter().map(|m| (m, t)).collect()
}

fn topic(t: &str) -> TopicName {
    TopicName::new(t).expect("valid")
}

fn filters(fs: &[&str]) -> Vec<TopicFilter> {
    fs.iter()
        .map(|f| TopicFilter::new(f).expect("valid"))
        .collect()
}

const T0: u64 = 1_800_000_000_000; // a whole minute

#[test]
fn recorded_messages_are_read_back_by_topic_sequence_and_time() {
    let path = scratch("read");
    let mut h = History::open(&path, vec![rule("sensors/#", 3600, None)]).expect("opens");
    let r = h
        .append(at(
            vec![
                msg("sensors/a/temp", "20"),
                msg("other/x", "no"),
                msg("sensors/b/temp", "30"),
            ],
            T0,
        ))
        .expect("written");
    // Only what a rule names is recorded; sequence numbers have no gaps.
    let seqs: Vec<u64> = r.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2]);
    h.append(at(vec![msg("sensors/a/temp", "21")], T0 + 1000))
        .expect("written");
    // The clock going back does not take the time back.
    let r = h
        .append(at(vec![msg("sensors/a/temp", "22")], T0 + 500))
        .expect("written");
    assert_eq!(r[0].time, T0 + 1000);
    assert_eq!(h.last_seq(), 4);

    let (got, last) = h.after(0, &filters(&["sensors/a/#"]), 10).expect("read");
    let payloads: Vec<&[u8]> = got.iter().map(|r| &r.message.payload[..]).collect();
    assert_eq!(payloads, [&b"20"[..], b"21", b"22"]);
    assert_eq!(last, 4);
    let (got, _) = h.after(1, &filters(&["sensors/#"]), 1).expect("read");
    assert_eq!(got[0].seq, 2);
    assert_eq!(h.seq_before(T0).expect("found"), 0);
    assert_eq!(h.seq_before(T0 + 1).expect("found"), 2);
    assert_eq!(h.seq_before(T0 + 1000).expect("found"), 2);
    assert_eq!(h.seq_before(T0 + 5000).expect("found"), 4);

    let got = h
        .range(&topic("sensors/a/temp"), T0, T0 + 1000, 10)
        .expect("read");
    assert_eq!(got.len(), 1);
    let got = h
        .range(&topic("sensors/a/temp"), T0, T0 + 1001, 10)
        .expect("read");
    assert_eq!(got.len(), 3);
    let got = h
        .range(&topic("sensors/a/temp"), T0, T0 + 1001, 2)
        .expect("read");
    assert_eq!(got.len(), 2);
    assert!(h
        .range(&topic("sensors/a"), T0, T0 + 9999, 10)
        .expect("read")
        .is_empty());

    // Reopened: the numbering goes on.
    drop(h);
    let mut h = History::open(&path, vec![rule("sensors/#", 3600, None)]).expect("opens");
    assert_eq!(h.last_seq(), 4);
    let r = h
        .append(at(vec![msg("sensors/a/temp", "23")], T0 + 2000))
        .expect("written");
    assert_eq!(r[0].seq, 5);
}

#[test]
fn buckets_from_minutes_agree_with_buckets_from_messages() {
    let path = scratch("buckets");
    let mut h = History::open(
        &path,
        vec![
            rule("plain/#", 86_400, None),
            rule("json/#", 86_400, Some("/temp")),
        ],
    )
    .expect("opens");
    // Ten minutes, a message every 7 s, values that go up and down.
    let mut t = T0;
    let mut n = 0u64;
    while t < T0 + 10 * MINUTE {
        let v = (n * 37 % 23) as f64 - 5.0;
        h.append(at(
            vec![
                msg("plain/x", &v.to_string()),
                msg(
                    "json/x",
                    &format!(r#"{{"temp": {v}, "other": {}}}"#, v * 2.0),
                ),
                msg("plain/x", "not a number"),
            ],
            t,
        ))
        .expect("written");
        t += 7_000;
        n += 1;
    }
    for (topic_name, field) in [("plain/x", None), ("json/x", Some("/temp"))] {
        let t_ = topic(topic_name);
        let end = T0 + 10 * MINUTE;
        // Whole minutes: from the minute buckets.
        let minutes = h.buckets(&t_, T0, end, MINUTE, field).expect("read");
        assert_eq!(minutes.len(), 10, "{topic_name}");
        // Half minutes, merged by two: from the messages.
        let halves = h.buckets(&t_, T0, end, 30_000, field).expect("read");
        let mut merged = Vec::new();
        for pair in halves.chunks(2) {
            let mut b = pair[0];
            b.start = tern_store::history::align(b.start, MINUTE);
            if let Some(second) = pair.get(1) {
                b.merge(second);
            }
            merged.push(b);
        }
        assert_eq!(minutes, merged, "{topic_name}");
        let total: u64 = minutes.iter().map(|b| b.count).sum();
        assert_eq!(total, n, "{topic_name}: every number, nothing else");
        // Two-minute steps merge the minutes.
        let two = h.buckets(&t_, T0, end, 2 * MINUTE, field).expect("read");
        assert_eq!(two.len(), 5);
        assert_eq!(two[0].count, minutes[0].count + minutes[1].count);
        let lowest = minutes[0].min.min(minutes[1].min);
        assert_eq!(two[0].min, lowest);
    }
    // Another field than the kept one: from the messages.
    let other = h
        .buckets(&topic("json/x"), T0, T0 + MINUTE, MINUTE, Some("/other"))
        .expect("read");
    let kept = h
        .buckets(&topic("json/x"), T0, T0 + MINUTE, MINUTE, Some("/temp"))
        .expect("read");
    assert_eq!(other[0].sum, kept[0].sum * 2.0);
    assert_eq!(other[0].max_at, kept[0].max_at);
}

#[test]
fn what_is_older_than_its_rule_keeps_it_is_forgotten() {
    let path = scratch("expire");
    let mut h = History::open(
        &path,
        vec![rule("short/#", 60, None), rule("long/#", 86_400, None)],
    )
    .expect("opens");
    h.append(at(vec![msg("short/a", "1"), msg("long/a", "1")], T0))
        .expect("written");
    h.append(at(
        vec![msg("short/a", "2"), msg("long/a", "2")],
        T0 + 3 * MINUTE,
    ))
    .expect("written");
    let gone = h.expire(T0 + 3 * MINUTE + 1).expect("expired");
    assert_eq!(gone, 1);
    let short = h.range(&topic("short/a"), 0, u64::MAX, 10).expect("read");
    assert_eq!(short.len(), 1);
    assert_eq!(&short[0].message.payload[..], b"2");
    assert_eq!(
        h.range(&topic("long/a"), 0, u64::MAX, 10)
            .expect("read")
            .len(),
        2
    );
    let b = h
        .buckets(&topic("short/a"), T0, T0 + 4 * MINUTE, MINUTE, None)
        .expect("read");
    assert_eq!(b.len(), 1, "the old minute went with its messages");
    let (all, _) = h.after(0, &filters(&["#"]), 10).expect("read");
    assert_eq!(all.len(), 3);
    // A rule gone: its topics go whole.
    drop(h);
    let mut h = History::open(&path, vec![rule("long/#", 86_400, None)]).expect("opens");
    h.expire(T0 + 3 * MINUTE + 1).expect("expired");
    assert!(h
        .range(&topic("short/a"), 0, u64::MAX, 10)
        .expect("read")
        .is_empty());
}
