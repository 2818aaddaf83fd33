//! Several broker instances sharing the production `Router` (the shards of
//! one server), and the storage boundary.

use tern_broker::router::Report;
use tern_broker::Config;
use tern_codec::{Packet, SubscriptionOptions, TopicFilter};
use tern_sim::{ClientRef, Sim};

use crate::common::*;

fn shards(n: u16) -> Vec<Sim> {
    Sim::sharded(n, Config::default())
}

fn two() -> (Sim, Sim) {
    let mut v = shards(2);
    let b = v.pop().expect("two");
    let a = v.pop().expect("two");
    (a, b)
}

#[test]
fn messages_and_retained_messages_cross_shards() {
    let (mut a, mut b) = two();
    let sa = subscriber(&mut a, V5, "sa", "t/#", 1);
    let sb = subscriber(&mut b, V5, "sb", "t/#", 1);
    let p = connected(&mut a, V5, "p", true);
    a.send(p, retained("t/1", 1, 1, "hello"));
    // Beside other shards, PUBACK cannot claim "no matching subscribers".
    assert_eq!(a.recv(p), Some(puback(pid(1))));
    assert_eq!(payloads(&mut a, sa), ["hello"]);
    assert_eq!(payloads(&mut b, sb), ["hello"]);
    // The retained copy is answered by the other shard too, though no
    // subscription of its own matched when it came.
    let mut c = shards(3);
    let p = connected(&mut c[0], V3, "p", true);
    c[0].send(p, retained("r/1", 0, 0, "kept"));
    for s in &mut c[1..] {
        let late = connected(s, V3, "late", true);
        s.send(late, subscribe(1, &[("r/+", 0)]));
        expect_suback(s, late);
        assert_eq!(payloads(s, late), ["kept"]);
    }
}

#[test]
fn a_message_goes_only_to_the_shards_that_want_it() {
    let mut s = shards(3);
    let sub = subscriber(&mut s[1], V5, "sub", "t/#", 0);
    let p = connected(&mut s[0], V5, "p", true);
    let other = subscriber(&mut s[2], V5, "other", "elsewhere", 0);
    s[0].send(p, publish("t/x", 0, 0, "m"));
    assert_eq!(payloads(&mut s[1], sub), ["m"]);
    expect_nothing(&mut s[2], other);
    assert_eq!(s[2].broker.stats().messages_sent, 0);
}

#[test]
fn no_local_is_not_confused_by_session_ids_of_another_shard() {
    let (mut a, mut b) = two();
    // The first session of each shard.
    let pa = connected(&mut a, V5, "pa", true);
    let sb = connected(&mut b, V5, "sb", true);
    let mut o = SubscriptionOptions::new(qos(0));
    o.no_local = true;
    b.send(sb, subscribe_opts(1, &[("t", o)]));
    expect_suback(&mut b, sb);
    a.send(pa, publish("t", 0, 0, "from a"));
    assert_eq!(payloads(&mut b, sb), ["from a"]);
}

/// Every payload the clients got, as numbers, sorted.
fn numbers(sims: &mut [Sim], who: &[(usize, ClientRef)]) -> Vec<u32> {
    let mut got: Vec<u32> = who
        .iter()
        .flat_map(|&(i, c)| payloads(&mut sims[i], c))
        .map(|s| s.parse().expect("number"))
        .collect();
    got.sort_unstable();
    got
}

#[test]
fn a_shared_group_spread_over_shards_gets_each_message_once_and_shares_it_out() {
    let mut s = shards(3);
    // One member on shard 0, two on shard 1, none on shard 2 (where the
    // publisher is).
    let m0 = subscriber(&mut s[0], V5, "m0", "$share/g/jobs", 1);
    let m1 = subscriber(&mut s[1], V5, "m1", "$share/g/jobs", 1);
    let m2 = subscriber(&mut s[1], V5, "m2", "$share/g/jobs", 1);
    let p = connected(&mut s[2], V5, "p", true);
    for i in 1..=30u16 {
        s[2].send(p, publish("jobs", 1, i, &i.to_string()));
    }
    let per: Vec<usize> = [(0, m0), (1, m1), (1, m2)]
        .iter()
        .map(|&(i, c)| s[i].take(c).len())
        .collect();
    // Every member gets its share: turns go by members, not by shards.
    assert_eq!(per, [10, 10, 10]);
    for i in 31..=60u16 {
        s[2].send(p, publish("jobs", 1, i, &i.to_string()));
    }
    let got = numbers(&mut s, &[(0, m0), (1, m1), (1, m2)]);
    assert_eq!(
        got,
        (31..=60).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

#[test]
fn a_shared_group_on_the_publishers_shard_is_given_its_turn_by_the_router() {
    let (mut a, mut b) = two();
    let ma = subscriber(&mut a, V5, "ma", "$share/g/jobs", 1);
    let mb = subscriber(&mut b, V5, "mb", "$share/g/jobs", 1);
    let p = connected(&mut a, V5, "p", true);
    for i in 1..=20u16 {
        a.send(p, publish("jobs", 1, i, &i.to_string()));
    }
    let mut sims = [a, b];
    let got = numbers(&mut sims, &[(0, ma), (1, mb)]);
    assert_eq!(
        got,
        (1..=20).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

#[test]
fn interest_that_comes_and_goes_while_messages_flow_loses_nothing_and_leaks_nothing() {
    let mut s = shards(3);
    let p = connected(&mut s[0], V5, "p", true);
    let watcher = subscriber(&mut s[2], V5, "watcher", "t/#", 0);
    let c = connected(&mut s[1], V5, "churn", true);
    let mut expected = Vec::new();
    let mut got = Vec::new();
    let mut subscribed = false;
    for i in 0..60u16 {
        // Every third message, the subscriber on shard 1 toggles.
        if i % 3 == 0 {
            if subscribed {
                s[1].send(c, unsubscribe(i + 1, &["t/+"]));
                assert!(matches!(s[1].recv(c), Some(Packet::UnsubAck(_))));
            } else {
                s[1].send(c, subscribe(i + 1, &[("t/+", 0)]));
                expect_suback(&mut s[1], c);
            }
            subscribed = !subscribed;
        }
        s[0].send(p, publish("t/x", 0, 0, &i.to_string()));
        if subscribed {
            expected.push(i.to_string());
        }
        got.extend(payloads(&mut s[1], c));
    }
    assert_eq!(got, expected);
    // The steady subscriber on another shard saw all of them.
    assert_eq!(payloads(&mut s[2], watcher).len(), 60);
    // Interest gone, nothing goes to shard 1 any more.
    if subscribed {
        s[1].send(c, unsubscribe(999, &["t/+"]));
    }
    let sent = s[1].broker.stats().messages_sent;
    s[0].send(p, publish("t/x", 0, 0, "late"));
    s[1].sync();
    assert_eq!(s[1].broker.stats().messages_sent, sent);
}

#[test]
fn a_session_that_moves_to_another_shard_takes_its_subscriptions_along() {
    // A server restarted with more shards: a session kept by shard 0 of
    // two comes back on shard 2 of three.
    let (mut a, _b) = two();
    let s = connected(&mut a, V3, "mover", false);
    a.send(s, subscribe(1, &[("moves/#", 1)]));
    expect_suback(&mut a, s);
    a.kill(s);
    let p = connected(&mut a, V3, "p", true);
    a.send(p, publish("moves/1", 1, 1, "queued"));
    let sessions: Vec<_> = a
        .export_sessions()
        .into_iter()
        .filter(|s| s.client_id.as_str() == "mover")
        .collect();

    let mut after = shards(3);
    for stored in sessions {
        after[2].import_session(stored);
    }
    // Published on shard 0, queued for the offline session on shard 2.
    let p = connected(&mut after[0], V3, "p", true);
    after[0].send(p, publish("moves/2", 1, 1, "while away"));
    after[2].sync();
    let s = after[2].client(V3);
    assert!(after[2].connect(s, "mover", false).session_present);
    assert_eq!(payloads(&mut after[2], s), ["queued", "while away"]);
    // Shard 1 never hears of it.
    assert_eq!(after[1].broker.stats().messages_sent, 0);
}

#[test]
fn sessions_and_retained_messages_survive_export_and_import() {
    let mut sim = Sim::default();
    let s = connected(&mut sim, V3, "s", false);
    sim.send(s, subscribe(1, &[("t/#", 2)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V3, "p", true);
    sim.send(p, publish("t/a", 1, 1, "in flight"));
    sim.send(p, retained("t/r", 0, 0, "retained"));
    let first = expect_publish(&mut sim, s);
    expect_publish(&mut sim, s);
    sim.kill(s);
    sim.send(p, publish("t/b", 2, 2, "queued"));

    let sessions = sim.export_sessions();
    let retained = sim.broker.export_retained();
    // "p" is still connected: its session is exported too.
    assert_eq!(sessions.len(), 2);
    assert_eq!(retained.len(), 1);

    let mut fresh = Sim::default();
    for s in sessions {
        fresh.import_session(s);
    }
    for m in retained {
        fresh.import_retained(m);
    }
    let s = fresh.client(V3);
    assert!(fresh.connect(s, "s", false).session_present);
    let got = fresh.take(s);
    let Packet::Publish(again) = &got[0] else {
        panic!("{got:?}")
    };
    assert!(again.dup);
    assert_eq!(again.qos, first.qos);
    let Packet::Publish(queued) = &got[1] else {
        panic!("{got:?}")
    };
    assert_eq!(&queued.payload[..], b"queued");
    let late = connected(&mut fresh, V3, "late", true);
    fresh.send(late, subscribe(1, &[("t/r", 0)]));
    expect_suback(&mut fresh, late);
    assert_eq!(payloads(&mut fresh, late), ["retained"]);
}

#[test]
fn importing_an_existing_client_id_is_refused() {
    let mut sim = Sim::default();
    connected(&mut sim, V3, "s", false);
    let sessions = sim.export_sessions();
    let now = sim.now();
    assert!(sim.broker.import_session(sessions[0].clone(), now).is_err());
}

fn subs(filter: &str, count: usize) -> Report {
    Report::Subscriptions {
        filter: TopicFilter::new(filter).expect("valid"),
        count,
    }
}

#[test]
fn a_filters_first_subscription_and_its_last_are_reported_and_every_group_change() {
    let mut a = Sim::new(Config {
        forward: true,
        ..Config::default()
    });
    let s1 = subscriber(&mut a, V5, "s1", "t/+", 1);
    assert_eq!(a.take_reports(), [subs("t/+", 1)]);
    // More subscriptions to the same filter say nothing new...
    let s2 = subscriber(&mut a, V5, "s2", "t/+", 0);
    assert_eq!(a.take_reports(), []);
    // ...but a shared group's members are its weight: every change counts.
    a.send(s1, subscribe(2, &[("$share/g/t/+", 1)]));
    expect_suback(&mut a, s1);
    a.send(s2, subscribe(2, &[("$share/g/t/+", 1)]));
    expect_suback(&mut a, s2);
    assert_eq!(
        a.take_reports(),
        [subs("$share/g/t/+", 1), subs("$share/g/t/+", 2)]
    );
    a.send(s2, unsubscribe(3, &["t/+"]));
    assert_eq!(a.take_reports(), []);
    a.send(s1, unsubscribe(4, &["t/+", "$share/g/t/+"]));
    assert_eq!(a.take_reports(), [subs("t/+", 0), subs("$share/g/t/+", 1)]);
    // A clean session's subscriptions go with it.
    let s3 = subscriber(&mut a, V3, "s3", "x/#", 0);
    a.send(
        s3,
        Packet::Disconnect(tern_codec::Disconnect::new(tern_codec::ReasonCode::Success)),
    );
    assert_eq!(a.take_reports(), [subs("x/#", 1), subs("x/#", 0)]);
    // Messages published here are reported for the router.
    let p = connected(&mut a, V5, "p", true);
    a.send(p, publish("t/1", 0, 0, "m"));
    let r = a.take_reports();
    assert!(
        matches!(&r[..], [Report::Published(m)] if &m.payload[..] == b"m"),
        "{r:?}"
    );
}

#[test]
fn presence_is_published_to_every_shard_when_asked_for() {
    let config = Config {
        presence_events: true,
        ..Config::default()
    };
    let mut s = Sim::sharded(2, config);
    let watch = subscriber(&mut s[1], V5, "watch", "$SYS/broker/clients/+/+", 0);
    let dev = connected(&mut s[0], V3, "sensor-1", true);
    s[0].kill(dev);
    s[0].sync();
    let got: Vec<String> = s[1]
        .take(watch)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(format!(
                "{} {}",
                p.topic.as_str(),
                String::from_utf8_lossy(&p.payload)
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            r#"$SYS/broker/clients/sensor-1/connected {"client_id":"sensor-1","username":null}"#,
            r#"$SYS/broker/clients/sensor-1/disconnected {"client_id":"sensor-1","username":null}"#,
        ]
    );
    // Off by default.
    let mut plain = Sim::new(Config::default());
    let watch = subscriber(&mut plain, V5, "watch", "$SYS/broker/clients/+/+", 0);
    let dev = connected(&mut plain, V3, "sensor-1", true);
    plain.kill(dev);
    expect_nothing(&mut plain, watch);
}
