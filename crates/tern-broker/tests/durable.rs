//! A durable broker (`Config::durable`) on a simulated disk that loses
//! what was not synced when the broker crashes, with real `tern-client`
//! clients: what the broker acknowledged survives, deadlines continue on
//! the wall clock.

use std::time::Duration;

use bytes::Bytes;
use tern_broker::Config;
use tern_client::{ClientConfig, ClientEvent, Message, RequestId};
use tern_codec::{
    ProtocolVersion, QoS, SubscribeFilter, SubscribeProperties, SubscriptionOptions, TopicFilter,
    TopicName, Will,
};
use tern_sim::{Net, PeerRef};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn durable() -> Net {
    Net::new(Config {
        durable: true,
        ..Config::default()
    })
}

/// A client whose session outlives its connections (an hour on 5.0).
fn persistent(id: &str, version: ProtocolVersion) -> ClientConfig {
    let mut c = ClientConfig::new(id).with_version(version);
    if version.is_v5() {
        c.session_expiry_interval = 3600;
    } else {
        c.clean_start = false;
    }
    c
}

fn add(net: &mut Net, config: ClientConfig) -> PeerRef {
    net.add(tern_client::Client::new(config))
}

/// Opens the link and runs the network; whether the session was present,
/// and the events that came with the connection.
fn connect_with(net: &mut Net, p: PeerRef) -> (Option<bool>, Vec<ClientEvent>) {
    net.open(p);
    net.run();
    let events = net.events(p);
    let present = events.iter().find_map(|e| match e {
        ClientEvent::Connected {
            session_present, ..
        } => Some(*session_present),
        _ => None,
    });
    (present, events)
}

fn connect(net: &mut Net, p: PeerRef) -> Option<bool> {
    connect_with(net, p).0
}

fn subscribe(net: &mut Net, p: PeerRef, f: &str, qos: QoS) -> RequestId {
    let now = net.now();
    let filter = SubscribeFilter {
        filter: TopicFilter::new(f).expect("valid"),
        options: SubscriptionOptions::new(qos),
    };
    let id = net
        .client(p)
        .subscribe(vec![filter], SubscribeProperties::default(), now)
        .expect("subscribes");
    net.run();
    id
}

fn publish(net: &mut Net, p: PeerRef, payload: &str, qos: QoS) -> RequestId {
    let now = net.now();
    let topic = TopicName::new("t/x").expect("valid");
    let m = Message::new(topic, Bytes::copy_from_slice(payload.as_bytes())).with_qos(qos);
    net.client(p).publish(m, now).expect("accepted")
}

fn subscribed(events: &[ClientEvent], id: RequestId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::Subscribed { id: i, .. } if *i == id))
}

fn acked(events: &[ClientEvent], id: RequestId) -> bool {
    events
        .iter()
        .any(|e| matches!(e, ClientEvent::Published { id: i, result: Ok(_) } if *i == id))
}

fn payloads(events: &[ClientEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(d) => Some(String::from_utf8_lossy(&d.message.payload).into()),
            _ => None,
        })
        .collect()
}

#[test]
fn acknowledgements_wait_for_the_store() {
    let mut net = durable();
    let s = add(&mut net, persistent("s", V5));
    let p = add(&mut net, persistent("p", V5));
    assert_eq!(connect(&mut net, s), Some(false));
    assert_eq!(connect(&mut net, p), Some(false));
    net.set_auto_sync(false);
    // The SUBACK waits for the subscription to be durable...
    let sub = subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
    assert!(!subscribed(&net.events(s), sub));
    net.sync();
    net.run();
    assert!(subscribed(&net.events(s), sub));
    // ...and the PUBACK for the message to be stored for the subscriber.
    net.cut(s);
    let id = publish(&mut net, p, "kept", QoS::AtLeastOnce);
    net.run();
    assert!(!acked(&net.events(p), id), "no PUBACK before the fsync");
    net.sync();
    net.run();
    assert!(acked(&net.events(p), id));
}

#[test]
fn qos_1_is_forwarded_before_the_fsync_and_qos_2_after_it() {
    let mut net = durable();
    let s = add(&mut net, persistent("s", V5));
    let p = add(&mut net, persistent("p", V5));
    assert_eq!(connect(&mut net, s), Some(false));
    assert_eq!(connect(&mut net, p), Some(false));
    subscribe(&mut net, s, "t/#", QoS::ExactlyOnce);
    net.set_auto_sync(false);
    // QoS 1: the subscriber may have it at once (a crash can only make it
    // come again, which QoS 1 allows); the publisher's PUBACK still waits.
    let one = publish(&mut net, p, "one", QoS::AtLeastOnce);
    net.run();
    assert_eq!(payloads(&net.events(s)), ["one"]);
    assert!(!acked(&net.events(p), one));
    // QoS 2: the PUBLISH waits, or a crash could have it delivered twice.
    let two = publish(&mut net, p, "two", QoS::ExactlyOnce);
    net.run();
    assert!(payloads(&net.events(s)).is_empty());
    net.sync();
    net.run();
    assert!(acked(&net.events(p), one));
    assert_eq!(payloads(&net.events(s)), ["two"]);
    net.sync();
    net.run();
    assert!(acked(&net.events(p), two));
}

#[test]
fn a_queue_beyond_the_window_waits_on_the_disk_and_comes_back_in_order() {
    for crash in [false, true] {
        let mut net = Net::new(Config {
            durable: true,
            queue_window: 4,
            ..Config::default()
        });
        let s = add(&mut net, persistent("s", V5));
        let p = add(&mut net, persistent("p", V5));
        connect(&mut net, s);
        connect(&mut net, p);
        subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
        net.cut(s);
        for n in 0..50 {
            publish(&mut net, p, &format!("{n}"), QoS::AtLeastOnce);
            net.run();
        }
        // Offline, the queue is on the disk only.
        let held = net.broker.export_sessions();
        let h = held
            .iter()
            .find(|x| x.client_id.as_str() == "s")
            .expect("held");
        assert_eq!((h.queued.len(), h.spilled.count), (0, 50));
        let on_disk = net.disk().sessions();
        let d = on_disk
            .iter()
            .find(|x| x.client_id.as_str() == "s")
            .expect("stored");
        assert_eq!(d.queued.len(), 50);
        if crash {
            net.crash(Duration::from_secs(1));
            let held = net.broker.export_sessions();
            let h = held
                .iter()
                .find(|x| x.client_id.as_str() == "s")
                .expect("held");
            assert_eq!((h.queued.len(), h.spilled.count), (0, 50));
        }
        let (present, events) = connect_with(&mut net, s);
        assert_eq!(present, Some(true));
        let want: Vec<String> = (0..50).map(|n| n.to_string()).collect();
        assert_eq!(payloads(&events), want, "crash {crash}");
        let held = net.broker.export_sessions();
        let h = held
            .iter()
            .find(|x| x.client_id.as_str() == "s")
            .expect("held");
        assert_eq!((h.queued.len(), h.spilled.count), (0, 0));
    }
}

#[test]
fn a_full_queue_on_the_disk_drops_by_its_policy() {
    for (policy, kept) in [
        (tern_broker::QueueFullPolicy::DropNewest, 0..5),
        (tern_broker::QueueFullPolicy::DropOldest, 5..10),
    ] {
        let mut net = Net::new(Config {
            durable: true,
            queue_window: 2,
            max_queued_messages: 5,
            queue_full: policy,
            ..Config::default()
        });
        let s = add(&mut net, persistent("s", V5));
        let p = add(&mut net, persistent("p", V5));
        connect(&mut net, s);
        connect(&mut net, p);
        subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
        net.cut(s);
        for n in 0..10 {
            publish(&mut net, p, &format!("{n}"), QoS::AtLeastOnce);
            net.run();
        }
        let (_, events) = connect_with(&mut net, s);
        let want: Vec<String> = kept.map(|n: i32| n.to_string()).collect();
        assert_eq!(payloads(&events), want, "{policy:?}");
    }
}

#[test]
fn messages_spilled_while_a_fetch_is_on_its_way_are_not_forgotten() {
    let mut net = Net::new(Config {
        durable: true,
        queue_window: 4,
        ..Config::default()
    });
    let s = add(&mut net, persistent("s", V5));
    let p = add(&mut net, persistent("p", V5));
    connect(&mut net, s);
    connect(&mut net, p);
    subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
    net.cut(s);
    for n in 0..2 {
        publish(&mut net, p, &format!("{n}"), QoS::AtLeastOnce);
        net.run();
    }
    // The subscriber comes back while more arrive: its first fetch finds
    // the two on disk, and more are spilled before the answer is in.
    net.open(s);
    for n in 2..30 {
        publish(&mut net, p, &format!("{n}"), QoS::AtLeastOnce);
    }
    net.run();
    let want: Vec<String> = (0..30).map(|n| n.to_string()).collect();
    assert_eq!(payloads(&net.events(s)), want);
}

#[test]
fn after_a_clean_shutdown_a_qos_1_message_in_flight_is_resent_as_a_resend() {
    for clean in [true, false] {
        let mut net = durable();
        let mut sc = persistent("s", V5);
        sc.manual_ack = true;
        let s = add(&mut net, sc);
        let p = add(&mut net, persistent("p", V5));
        connect(&mut net, s);
        connect(&mut net, p);
        subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
        publish(&mut net, p, "held", QoS::AtLeastOnce);
        net.run();
        // Received, never acknowledged.
        let first: Vec<bool> = dups(&net.events(s));
        assert_eq!(first, [false]);
        if clean {
            let now = net.now();
            net.broker.shutdown(now);
            net.run();
        }
        net.crash(Duration::from_secs(1));
        let (_, events) = connect_with(&mut net, s);
        // A clean shutdown kept where it stood: resent with DUP, as
        // [MQTT-4.4.0-1] asks. After a crash it comes again as new (QoS 1
        // allows a second delivery).
        assert_eq!(payloads(&events), ["held"], "clean {clean}");
        assert_eq!(dups(&events), [clean], "clean {clean}");
    }
}

fn dups(events: &[ClientEvent]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(d) => Some(d.dup),
            _ => None,
        })
        .collect()
}

#[test]
fn what_was_acknowledged_survives_a_crash_and_is_delivered_once() {
    for v in [V5, V311] {
        let mut net = durable();
        let s = add(&mut net, persistent("s", v));
        let p = add(&mut net, persistent("p", v));
        connect(&mut net, s);
        connect(&mut net, p);
        subscribe(&mut net, s, "t/#", QoS::ExactlyOnce);
        net.cut(s);
        let _ = net.events(s);
        for (i, qos) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]
            .into_iter()
            .enumerate()
        {
            publish(&mut net, p, &format!("m{i}"), qos);
        }
        net.run();
        assert_eq!(
            net.events(p)
                .iter()
                .filter(|e| matches!(e, ClientEvent::Published { result: Ok(_), .. }))
                .count(),
            3
        );
        net.crash(Duration::from_secs(5));
        let (present, events) = connect_with(&mut net, s);
        assert_eq!(present, Some(true), "{v}");
        assert_eq!(payloads(&events), ["m0", "m1", "m2"], "{v}");
    }
}

#[test]
fn a_message_not_yet_durable_is_not_acknowledged_and_the_client_sends_it_again() {
    let mut net = durable();
    let s = add(&mut net, persistent("s", V5));
    let p = add(&mut net, persistent("p", V5));
    connect(&mut net, s);
    connect(&mut net, p);
    subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
    net.cut(s);
    net.set_auto_sync(false);
    let id = publish(&mut net, p, "again", QoS::ExactlyOnce);
    net.run();
    net.crash(Duration::ZERO);
    assert!(!acked(&net.events(p), id));
    net.set_auto_sync(true);
    // The publisher's session survived: it sends the PUBLISH again (DUP).
    let (present, events) = connect_with(&mut net, p);
    assert_eq!(present, Some(true));
    assert!(acked(&events, id));
    let (present, events) = connect_with(&mut net, s);
    assert_eq!(present, Some(true));
    assert_eq!(payloads(&events), ["again"]);
}

#[test]
fn session_expiry_continues_on_the_wall_clock_across_a_restart() {
    let mut net = durable();
    let mut c = persistent("short", V5);
    c.session_expiry_interval = 60;
    let s = add(&mut net, c);
    connect(&mut net, s);
    subscribe(&mut net, s, "t/#", QoS::AtLeastOnce);
    net.cut(s);
    // Down 40 s of its 60: 20 s left after the restart.
    net.crash(Duration::from_secs(40));
    net.advance(Duration::from_secs(19));
    assert_eq!(connect(&mut net, s), Some(true));
    net.cut(s);
    // Down longer than its expiry: gone at the restart.
    net.crash(Duration::from_secs(61));
    assert_eq!(connect(&mut net, s), Some(false));
}

#[test]
fn a_will_due_while_the_broker_was_down_is_published_at_the_restart() {
    let mut net = durable();
    let watcher = add(&mut net, persistent("watcher", V5));
    connect(&mut net, watcher);
    subscribe(&mut net, watcher, "w/#", QoS::AtLeastOnce);
    let mut c = persistent("dev", V5);
    let mut will = Will {
        topic: TopicName::new("w/dev").expect("valid"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    will.properties.will_delay_interval = Some(30);
    c.will = Some(will);
    let dev = add(&mut net, c);
    connect(&mut net, dev);
    net.cut(watcher);
    net.cut(dev);
    // The will is due 30 s after the link went; the broker is down for 60.
    net.crash(Duration::from_secs(60));
    let (present, events) = connect_with(&mut net, watcher);
    assert_eq!(present, Some(true));
    assert_eq!(payloads(&events), ["gone"]);
}

/// xorshift64*: the workload's dice, from a seed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What every client saw, over the whole run.
#[derive(Default)]
struct Seen {
    /// Per client: payloads delivered, in order.
    delivered: Vec<Vec<String>>,
    /// Per client: requests acknowledged.
    acked: Vec<Vec<RequestId>>,
}

impl Seen {
    fn collect(&mut self, net: &mut Net, peers: &[PeerRef]) {
        for (i, &p) in peers.iter().enumerate() {
            for e in net.events(p) {
                match e {
                    ClientEvent::Message(d) => {
                        self.delivered[i].push(String::from_utf8_lossy(&d.message.payload).into())
                    }
                    ClientEvent::Published { id, result: Ok(_) } => self.acked[i].push(id),
                    _ => {}
                }
            }
        }
    }
}

/// One random workload: persistent subscribers (5.0 at QoS 2, 3.1.1 at
/// QoS 1) and a clean one, persistent publishers of QoS 1 and 2 messages,
/// some retained; links cut and restored, the disk synced now and then,
/// and the broker crashed at random points, losing what was not synced.
fn workload(seed: u64) {
    let mut dice = Dice(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    // Half the runs hold at most two queued messages a session in memory:
    // the rest wait on the disk, and are fetched back.
    let mut net = Net::new(Config {
        durable: true,
        queue_window: if seed % 2 == 0 { 2 } else { 64 },
        ..Config::default()
    });
    let s5 = add(&mut net, persistent("s5", V5));
    let s3 = add(&mut net, persistent("s3", V311));
    let sc = add(&mut net, ClientConfig::new("sc").with_version(V5));
    let p5 = add(&mut net, persistent("p5", V5));
    let p3 = add(&mut net, persistent("p3", V311));
    let peers = [s5, s3, sc, p5, p3];
    for p in peers {
        connect(&mut net, p);
    }
    subscribe(&mut net, s5, "t/#", QoS::ExactlyOnce);
    subscribe(&mut net, s3, "t/#", QoS::AtLeastOnce);
    subscribe(&mut net, sc, "t/#", QoS::AtLeastOnce);
    let mut seen = Seen {
        delivered: vec![Vec::new(); peers.len()],
        acked: vec![Vec::new(); peers.len()],
    };
    seen.collect(&mut net, &peers);
    // One run in three syncs every change at once: then the disk is
    // compared with the broker after every step.
    net.set_auto_sync(seed % 3 == 0);
    // Every publish: who, its request, payload, QoS, retained topic.
    let mut published = Vec::new();
    for n in 0..60 {
        match dice.roll(12) {
            0..=4 => {
                let (i, p) = if dice.roll(2) == 0 { (3, p5) } else { (4, p3) };
                let qos = if dice.roll(2) == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let payload = format!("{seed}-{n}");
                let retained = dice.roll(4) == 0;
                let topic = if retained { "t/r" } else { "t/x" };
                let now = net.now();
                let m = Message::new(TopicName::new(topic).expect("valid"), payload.clone())
                    .with_qos(qos)
                    .with_retain(retained);
                let id = net.client(p).publish(m, now).expect("accepted");
                published.push((i, id, payload, qos, retained));
            }
            5 | 6 => net.sync(),
            7 => {
                let p = peers[dice.roll(peers.len() as u64) as usize];
                if net.is_linked(p) {
                    net.cut(p);
                }
            }
            8 => {
                let p = peers[dice.roll(peers.len() as u64) as usize];
                if !net.is_linked(p) {
                    net.open(p);
                }
            }
            9 => net.crash(Duration::from_millis(dice.roll(5000))),
            10 => net.advance(Duration::from_secs(1)),
            _ => {}
        }
        net.run();
        net.check_disk();
        seen.collect(&mut net, &peers);
    }
    // Recovery: the disk syncs again, everyone comes back.
    net.set_auto_sync(true);
    for p in peers {
        if !net.is_linked(p) {
            net.open(p);
        }
    }
    net.advance(Duration::from_secs(5));
    net.check_disk();
    seen.collect(&mut net, &peers);

    let acked: Vec<_> = published
        .iter()
        .filter(|(i, id, ..)| seen.acked[*i].contains(id))
        .collect();
    for (_, _, payload, qos, _) in &acked {
        let count = |who: usize| seen.delivered[who].iter().filter(|d| *d == payload).count();
        // [seed] is in every message: a failure names the run to repeat.
        assert!(
            count(1) >= 1,
            "seed {seed}: 3.1.1 subscriber lost {payload}"
        );
        match qos {
            QoS::ExactlyOnce => {
                assert_eq!(
                    count(0),
                    1,
                    "seed {seed}: QoS 2 {payload} to the 5.0 subscriber"
                )
            }
            _ => assert!(count(0) >= 1, "seed {seed}: 5.0 subscriber lost {payload}"),
        }
    }
    // The sessions and their subscriptions are intact: a message after
    // recovery reaches both persistent subscribers.
    let id = publish(&mut net, p5, "after", QoS::AtLeastOnce);
    net.run();
    seen.collect(&mut net, &peers);
    assert!(seen.acked[3].contains(&id), "seed {seed}");
    for who in [0, 1] {
        assert!(
            seen.delivered[who].iter().any(|d| d == "after"),
            "seed {seed}"
        );
    }
    // The retained message is the last retained one the broker routed and
    // kept. The 5.0 subscriber gets every routing the broker kept, first
    // in the order they were routed (later again, after a crash, as QoS 1
    // allows; and perhaps routings a crash then lost). So the retained
    // message R is one it got, and no retained message X it got first
    // after its last R can have been acknowledged: X's every routing came
    // after R's, and an acknowledged one was kept. Publish order is no
    // oracle: a QoS 1 message resent after a crash is published again.
    let retained_topic: Vec<_> = published.iter().filter(|m| m.4).map(|m| &m.2).collect();
    let acked_payload = |x: &String| {
        published
            .iter()
            .any(|m| m.4 && &m.2 == x && seen.acked[m.0].contains(&m.1))
    };
    let any_acked = retained_topic.iter().any(|x| acked_payload(x));
    let late = add(&mut net, ClientConfig::new("late").with_version(V5));
    connect(&mut net, late);
    subscribe(&mut net, late, "t/r", QoS::AtMostOnce);
    let got = payloads(&net.events(late));
    let s5_got = &seen.delivered[0];
    match got.first() {
        Some(r) => {
            let last_r = s5_got.iter().rposition(|d| d == r);
            let last_r = last_r.unwrap_or_else(|| panic!("seed {seed}: retained {r} never routed"));
            for x in retained_topic.iter().filter(|x| **x != r) {
                let first_x = s5_got.iter().position(|d| d == *x);
                if first_x.is_some_and(|i| i > last_r) {
                    assert!(
                        !acked_payload(x),
                        "seed {seed}: retained {r}, but {x} was routed after it and acknowledged"
                    );
                }
            }
        }
        None => assert!(
            !any_acked,
            "seed {seed}: an acknowledged retained message is kept"
        ),
    }
    if any_acked {
        assert_eq!(
            got.len(),
            1,
            "seed {seed}: an acknowledged retained message is kept"
        );
    }
}

#[test]
fn nothing_acknowledged_is_lost_or_doubled_across_crashes_at_random_points() {
    for seed in 1..=300 {
        workload(seed);
    }
}

#[test]
fn a_failed_store_closes_connections_rather_than_acknowledge_what_it_did_not_keep() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut net = durable();
        let s = add(&mut net, persistent("s", V5));
        let p = add(&mut net, persistent("p", V5));
        connect(&mut net, s);
        connect(&mut net, p);
        subscribe(&mut net, s, "t/#", QoS::ExactlyOnce);
        let _ = net.events(s);
        net.set_auto_sync(false);
        let id = publish(&mut net, p, "while full", qos);
        net.run();
        // The disk is full: the write fails.
        let now = net.now();
        net.broker.handle_store_failed(now);
        net.run();
        let events = net.events(p);
        assert!(!acked(&events, id), "never acknowledged");
        assert!(
            events.iter().any(|e| matches!(
                e,
                ClientEvent::Disconnected {
                    reason: tern_client::DisconnectReason::Server {
                        reason: tern_codec::ReasonCode::QuotaExceeded,
                        ..
                    }
                }
            )),
            "{events:?}"
        );
        assert!(!net.is_linked(s) && !net.is_linked(p));
        // Space again: the changes are written, the clients come back, the
        // message is sent again and acknowledged; delivered at least once,
        // and at QoS 2 exactly once.
        net.set_auto_sync(true);
        let (_, events) = connect_with(&mut net, p);
        assert!(acked(&events, id));
        let (_, events) = connect_with(&mut net, s);
        let got = payloads(&events);
        match qos {
            QoS::ExactlyOnce => assert_eq!(got, ["while full"]),
            _ => assert!(got.contains(&"while full".to_owned()), "{got:?}"),
        }
    }
}
