//! The store holds what the core's reference copy holds: random workloads
//! with real clients against a durable broker, every change committed to a
//! `KvStore`, which loads back the same sessions and retained messages as
//! the broker's `Image` after the same changes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tern_broker::durable::{Image, StoredDelivery, StoredRetained, StoredSession};
use tern_broker::{Config, Envelope};
use tern_client::{Client, ClientConfig};
use tern_codec::{
    Message, ProtocolVersion, QoS, RetainHandling, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName, Will,
};
use tern_sim::{Net, PeerRef};
use tern_store::{Engine, KvStore, MemEngine, Store};

/// A value as stored: what a message is, not which `Arc` or instant of
/// this process it came with.
fn plain(mut s: StoredSession) -> StoredSession {
    let d =
        |d: &mut StoredDelivery| d.message = Arc::new(Envelope::from(d.message.message.clone()));
    s.queued.iter_mut().for_each(d);
    s.inflight.iter_mut().for_each(|(_, _, x)| d(x));
    s
}

fn plain_delivery(mut d: StoredDelivery) -> StoredDelivery {
    d.message = Arc::new(Envelope::from(d.message.message.clone()));
    d
}

fn plain_retained(r: StoredRetained) -> StoredRetained {
    StoredRetained {
        message: Arc::new(Envelope::from(r.message.message.clone())),
        ..r
    }
}

fn same<E: Engine>(store: &mut KvStore<E>, image: &Image, what: &str) {
    // Loaded with a window of one queued message a session: the rest are
    // counted, and fetched as the image would give them.
    let windowed = store.load(1).expect("loads");
    let want: Vec<_> = image.sessions().into_iter().map(plain).collect();
    for (got, want) in windowed.sessions.iter().zip(&want) {
        assert_eq!(got.client_id, want.client_id, "{what}");
        assert_eq!(plain(got.clone()).inflight, want.inflight, "{what}");
        let n = want.queued.len().min(1);
        assert_eq!(got.queued.len(), n, "{what}: {}", got.client_id);
        assert_eq!(got.spilled.count as usize, want.queued.len() - n, "{what}");
        if let Some(last) = want.queued.get(1..).and_then(|r| r.last()) {
            assert_eq!(got.spilled.last_id, last.id, "{what}");
        }
        for from in want.queued.iter().map(|d| d.id).chain([0, u64::MAX]) {
            for max in [1, 2, 100] {
                let id = &want.client_id;
                let got: Vec<_> = store.fetch(id, from, max).expect("fetches");
                let got: Vec<_> = got.into_iter().map(plain_delivery).collect();
                let want = image.fetch(id, from, max);
                let want: Vec<_> = want.into_iter().map(plain_delivery).collect();
                assert_eq!(got, want, "{what}: fetch {from} {max}");
            }
        }
    }
    assert_eq!(windowed.sessions.len(), want.len(), "{what}");
    let loaded = store.load(usize::MAX).expect("loads");
    assert!(loaded.problems.is_empty(), "{what}: {:?}", loaded.problems);
    let got: Vec<_> = loaded.sessions.into_iter().map(plain).collect();
    assert_eq!(got, want, "{what}: sessions");
    let got: Vec<_> = loaded.retained.into_iter().map(plain_retained).collect();
    let want: Vec<_> = image.retained().into_iter().map(plain_retained).collect();
    assert_eq!(got, want, "{what}: retained");
}

struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn persistent(id: &str, v: ProtocolVersion) -> ClientConfig {
    let mut c = ClientConfig::new(id).with_version(v);
    if v.is_v5() {
        c.session_expiry_interval = 30;
    } else {
        c.clean_start = false;
    }
    c
}

fn subscribe(net: &mut Net, p: PeerRef, filter: &str, options: SubscriptionOptions, id: u32) {
    let now = net.now();
    let f = SubscribeFilter {
        filter: TopicFilter::new(filter).expect("valid"),
        options,
    };
    let props = SubscribeProperties {
        subscription_identifier: std::num::NonZeroU32::new(id),
        ..Default::default()
    };
    let _ = net.client(p).subscribe(vec![f], props, now);
}

/// A random workload: every kind of change the core makes.
fn workload<E: Engine>(seed: u64, store: KvStore<E>) {
    workload_failing(seed, store, |_, _| false);
}

/// The workload; `fail(store, on)` makes the engine's writes fail (or not)
/// and says whether it can.
fn workload_failing<E: Engine>(
    seed: u64,
    mut store: KvStore<E>,
    fail: impl Fn(&mut KvStore<E>, bool) -> bool,
) {
    let mut dice = Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut net = Net::new(Config {
        durable: true,
        max_inflight: 3,
        ..Config::default()
    });
    let mut will = Will {
        topic: TopicName::new("w/dev").expect("valid"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(5);
    will.properties.content_type = tern_codec::MqttString::from_str("text/plain").ok();
    let mut dev = persistent("dev", ProtocolVersion::V5);
    dev.will = Some(will);
    let peers: Vec<PeerRef> = [
        persistent("s5", ProtocolVersion::V5),
        persistent("s3", ProtocolVersion::V3_1_1),
        persistent("p5", ProtocolVersion::V5),
        dev,
        ClientConfig::new("clean").with_version(ProtocolVersion::V5),
    ]
    .into_iter()
    .map(|c| net.add(Client::new(c)))
    .collect();
    for &p in &peers {
        net.open(p);
    }
    net.run();
    let mut o = SubscriptionOptions::new(QoS::ExactlyOnce);
    o.no_local = true;
    o.retain_handling = RetainHandling::SendIfNew;
    subscribe(&mut net, peers[0], "t/#", o, 7);
    subscribe(
        &mut net,
        peers[1],
        "t/+",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        0,
    );
    net.run();
    for n in 0..80 {
        let p = peers[dice.roll(peers.len() as u64) as usize];
        match dice.roll(10) {
            0..=3 => {
                let qos = QoS::from_u8(dice.roll(3) as u8).expect("0..=2");
                let retain = dice.roll(3) == 0;
                let mut m = Message::new(TopicName::new("t/x").expect("valid"), format!("{n}"))
                    .with_qos(qos)
                    .with_retain(retain);
                if dice.roll(2) == 0 {
                    m.properties.message_expiry_interval = Some(60);
                    m.properties.user_properties.push((
                        tern_codec::MqttString::from_static("k"),
                        tern_codec::MqttString::from_static("v"),
                    ));
                }
                let now = net.now();
                let _ = net.client(peers[2]).publish(m, now);
            }
            4 if net.is_linked(p) => net.cut(p),
            5 if !net.is_linked(p) => net.open(p),
            6 => net.advance(Duration::from_secs(dice.roll(20))),
            7 => {
                let now = net.now();
                let f = TopicFilter::new("t/+").expect("valid");
                let _ = net.client(peers[1]).unsubscribe(vec![f], now);
            }
            8 => subscribe(
                &mut net,
                peers[1],
                "t/+",
                SubscriptionOptions::new(QoS::AtLeastOnce),
                0,
            ),
            _ => {}
        }
        net.run();
        // Batches of any size: one round's changes or several, one commit.
        if dice.roll(3) == 0 || n % 10 == 9 {
            let mut changes = net.take_changes();
            // A write that fails (a full disk) is tried again with the same
            // changes and those that came since, as the server's writer does.
            if dice.roll(3) == 0 && fail(&mut store, true) {
                let failed = store.commit(&changes, true).is_err();
                fail(&mut store, false);
                if !failed {
                    // Nothing to write: nothing failed.
                    changes.clear();
                }
                net.run();
                changes.extend(net.take_changes());
            }
            store.commit(&changes, true).expect("commits");
        }
        if n % 10 == 9 {
            same(&mut store, net.disk(), &format!("seed {seed}, step {n}"));
        }
    }
    same(&mut store, net.disk(), &format!("seed {seed}, end"));
    // After a crash the broker writes again (its sessions' records under
    // new ids): the store follows.
    net.crash(Duration::from_secs(3));
    let changes = net.take_changes();
    store.commit(&changes, true).expect("commits");
    same(
        &mut store,
        net.disk(),
        &format!("seed {seed}, after the crash"),
    );
}

#[test]
fn a_store_holds_what_the_image_holds_after_every_change() {
    for seed in 1..=60 {
        workload(seed, KvStore::new(MemEngine::default()));
    }
}

#[test]
fn a_failed_write_tried_again_leaves_the_store_as_the_image() {
    for seed in 1..=60 {
        workload_failing(seed, KvStore::new(MemEngine::default()), |s, on| {
            s.engine_mut().full = on;
            true
        });
    }
}

#[test]
fn a_redb_store_holds_what_the_image_holds_after_every_change() {
    for seed in 1..=8 {
        let dir = std::env::temp_dir().join(format!("tern-store-w{seed}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        workload(seed, tern_store::open(&dir).expect("opens"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_damaged_record_is_left_out_and_named_and_the_rest_loads() {
    let mut net = Net::new(Config {
        durable: true,
        ..Config::default()
    });
    let mut store = KvStore::new(MemEngine::default());
    let s = net.add(Client::new(persistent("s", ProtocolVersion::V5)));
    let p = net.add(Client::new(persistent("p", ProtocolVersion::V5)));
    net.open(s);
    net.open(p);
    net.run();
    subscribe(
        &mut net,
        s,
        "t/#",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        0,
    );
    net.run();
    net.cut(s);
    for i in 0..3 {
        let now = net.now();
        let m = Message::new(TopicName::new("t/x").expect("valid"), format!("m{i}"))
            .with_qos(QoS::AtLeastOnce);
        let _ = net.client(p).publish(m, now);
    }
    net.run();
    store.commit(&net.take_changes(), true).expect("commits");
    // One message's bytes are cut short, another's format byte is unknown.
    let mut keys = Vec::new();
    store
        .engine_mut()
        .scan(tern_store::format::Table::Messages, &mut |k, _| {
            keys.push(k.to_vec())
        })
        .expect("scans");
    let messages = tern_store::format::Table::Messages;
    store
        .engine_mut()
        .write(
            &[
                tern_store::Op::Put(messages, keys[0].clone(), vec![1, 1]),
                tern_store::Op::Put(messages, keys[1].clone(), vec![9]),
            ],
            true,
        )
        .expect("writes");
    let loaded = store.load(usize::MAX).expect("loads");
    let reasons: Vec<_> = loaded.problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, ["truncated", "unknown format"]);
    assert!(loaded.problems[0].to_string().starts_with("messages "));
    let s = loaded
        .sessions
        .iter()
        .find(|x| x.client_id.as_str() == "s")
        .expect("the session loads");
    let payloads: Vec<_> = s.queued.iter().map(|d| d.message.payload.clone()).collect();
    assert_eq!(payloads, [Bytes::from_static(b"m2")]);
    assert_eq!(s.subscriptions.len(), 1);
}

/// The same workload through the redb engine, on a real file: what it
/// loads back, and what it loads after being closed and opened again.
#[test]
fn a_redb_store_holds_what_the_image_holds_and_reopens_to_it() {
    let dir = std::env::temp_dir().join(format!("tern-store-redb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut net = Net::new(Config {
        durable: true,
        ..Config::default()
    });
    let mut store = tern_store::open(&dir).expect("opens");
    let s = net.add(Client::new(persistent("s", ProtocolVersion::V5)));
    let p = net.add(Client::new(persistent("p", ProtocolVersion::V3_1_1)));
    net.open(s);
    net.open(p);
    net.run();
    subscribe(
        &mut net,
        s,
        "t/#",
        SubscriptionOptions::new(QoS::ExactlyOnce),
        3,
    );
    net.run();
    net.cut(s);
    for i in 0..50 {
        let now = net.now();
        let m = Message::new(TopicName::new("t/x").expect("valid"), format!("m{i}"))
            .with_qos(QoS::from_u8(1 + i % 2).expect("1 or 2"))
            .with_retain(i % 10 == 0);
        let _ = net.client(p).publish(m, now);
        net.run();
        store
            .commit(&net.take_changes(), i % 3 == 0)
            .expect("commits");
    }
    net.open(s);
    net.run();
    store.commit(&net.take_changes(), true).expect("commits");
    let loaded = store.load(usize::MAX).expect("loads");
    assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
    drop(store);
    let mut again = tern_store::open(&dir).expect("opens again");
    let reloaded = again.load(usize::MAX).expect("loads");
    let plain_all = |v: Vec<StoredSession>| v.into_iter().map(plain).collect::<Vec<_>>();
    let want: Vec<_> = plain_all(net.disk().sessions());
    assert_eq!(plain_all(reloaded.sessions), want);
    let want: Vec<_> = net
        .disk()
        .retained()
        .into_iter()
        .map(plain_retained)
        .collect();
    let got: Vec<_> = reloaded.retained.into_iter().map(plain_retained).collect();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_disk_is_an_error_not_a_silent_loss() {
    let mut store = KvStore::new(MemEngine::default());
    store.engine_mut().full = true;
    let change = (
        1,
        tern_broker::durable::Change::Unretained(TopicName::new("t").expect("valid")),
    );
    let e = store.commit(&[change], true).expect_err("refused");
    assert!(
        matches!(&e, tern_store::StoreError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull),
        "{e}"
    );
}

/// An engine that keeps what it was asked to write.
#[derive(Default)]
struct Recording {
    inner: MemEngine,
    writes: Vec<Vec<tern_store::Op>>,
    syncs: usize,
}

impl Engine for Recording {
    fn write(&mut self, ops: &[tern_store::Op], sync: bool) -> std::io::Result<()> {
        self.writes.push(ops.to_vec());
        self.syncs += usize::from(sync);
        self.inner.write(ops, sync)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.syncs += 1;
        Ok(())
    }
    fn scan(
        &mut self,
        t: tern_store::format::Table,
        f: &mut dyn FnMut(&[u8], &[u8]),
    ) -> std::io::Result<()> {
        self.inner.scan(t, f)
    }
    fn scan_from(
        &mut self,
        t: tern_store::format::Table,
        start: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> std::io::Result<()> {
        self.inner.scan_from(t, start, f)
    }
}

#[test]
fn a_message_queued_and_acknowledged_within_one_batch_never_reaches_the_disk() {
    let mut net = Net::new(Config {
        durable: true,
        ..Config::default()
    });
    let s = net.add(Client::new(persistent("s", ProtocolVersion::V5)));
    let p = net.add(Client::new(persistent("p", ProtocolVersion::V5)));
    net.open(s);
    net.open(p);
    net.run();
    subscribe(
        &mut net,
        s,
        "t/#",
        SubscriptionOptions::new(QoS::AtLeastOnce),
        0,
    );
    net.run();
    let mut store = KvStore::new(Recording::default());
    store.commit(&net.take_changes(), true).expect("commits");
    let (writes, syncs) = (store.engine().writes.len(), store.engine().syncs);
    assert_eq!(syncs, writes, "every durable commit that wrote is synced");
    // Delivered and acknowledged before the batch is written: nothing to
    // write, nothing to sync.
    let now = net.now();
    let m = Message::new(TopicName::new("t/x").expect("valid"), "m").with_qos(QoS::AtLeastOnce);
    net.client(p).publish(m, now).expect("accepted");
    net.run();
    let changes = net.take_changes();
    assert!(!changes.is_empty());
    store.commit(&changes, true).expect("commits");
    assert_eq!(store.engine().writes.len(), writes);
    assert_eq!(store.engine().syncs, syncs);
    // Queued for a subscriber that is away: written, and its removal too
    // when it is delivered later.
    net.cut(s);
    let now = net.now();
    let m = Message::new(TopicName::new("t/x").expect("valid"), "n").with_qos(QoS::AtLeastOnce);
    net.client(p).publish(m, now).expect("accepted");
    net.run();
    store.commit(&net.take_changes(), true).expect("commits");
    assert_eq!(store.engine().writes.len(), writes + 1);
    net.open(s);
    net.run();
    store.commit(&net.take_changes(), true).expect("commits");
    let last = store.engine().writes.last().expect("written");
    assert!(
        last.iter().any(|op| matches!(
            op,
            tern_store::Op::Delete(tern_store::format::Table::Messages, _)
        )),
        "{last:?}"
    );
    same(&mut store, net.disk(), "after the delivery");
}

#[test]
fn an_idle_store_gives_back_what_churn_left_free() {
    use tern_store::format::Table;
    use tern_store::Op;
    let dir = std::env::temp_dir().join(format!("tern-store-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut engine = tern_store::RedbEngine::open(&dir).expect("opens");
    let value = vec![7u8; 120];
    let key =
        |n: u32| tern_store::format::message_key(format!("c{}", n % 500).as_bytes(), n.into());
    // 100,000 records written in durable batches, then all but 4,000
    // taken away: the file keeps the pages churn freed.
    for chunk in (0..100_000u32).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&n| Op::Put(Table::Messages, key(n), value.clone()))
            .collect();
        engine.write(&ops, true).expect("writes");
    }
    for chunk in (4_000..100_000u32).collect::<Vec<_>>().chunks(1000) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|&n| Op::Delete(Table::Messages, key(n)))
            .collect();
        engine.write(&ops, true).expect("writes");
    }
    let live = 4_000 * (key(0).len() + value.len()) as u64;
    let before = engine.size();
    assert!(before > 2 * live, "{before} bytes for {live} live");
    assert!(engine.maintain().expect("maintains"), "compacted");
    let after = engine.size();
    assert!(
        after <= 2 * live,
        "{after} bytes for {live} live after the upkeep"
    );
    // Nothing live was lost, and a second upkeep finds nothing to do.
    let mut n = 0;
    engine
        .scan(Table::Messages, &mut |_, v| {
            assert_eq!(v, value.as_slice());
            n += 1;
        })
        .expect("scans");
    assert_eq!(n, 4_000);
    assert!(!engine.maintain().expect("maintains"));
    let _ = std::fs::remove_dir_all(&dir);
}
