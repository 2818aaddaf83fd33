//! Multi-core readiness and the storage boundary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tern_broker::shard::SharedRouting;
use tern_broker::{Config, Message};
use tern_codec::{Packet, SubscriptionOptions};
use tern_sim::Sim;

use crate::common::*;

fn shard(n: u16) -> Sim {
    Sim::new(Config {
        shard: n,
        forward: true,
        ..Config::default()
    })
}

#[test]
fn messages_are_forwarded_between_shards() {
    let mut a = shard(0);
    let mut b = shard(1);
    let sa = subscriber(&mut a, V5, "sa", "t/#", 1);
    let sb = subscriber(&mut b, V5, "sb", "t/#", 1);
    let p = connected(&mut a, V5, "p", true);
    a.send(p, retained("t/1", 1, 1, "hello"));
    // With forwarding on, PUBACK cannot claim "no matching subscribers".
    assert_eq!(a.recv(p), Some(puback(pid(1))));
    assert_eq!(payloads(&mut a, sa), ["hello"]);
    let fwd = a.take_forwarded();
    assert_eq!(fwd.len(), 1);
    assert_eq!(b.route_foreign(fwd[0].clone()), 1);
    assert_eq!(payloads(&mut b, sb), ["hello"]);
    // The retained copy is answered by the other shard too.
    let late = connected(&mut b, V5, "late", true);
    b.send(late, subscribe(1, &[("t/1", 0)]));
    expect_suback(&mut b, late);
    assert_eq!(payloads(&mut b, late), ["hello"]);
}

#[test]
fn no_local_is_not_confused_by_session_ids_of_another_shard() {
    let mut a = shard(0);
    let mut b = shard(1);
    // The first session of each shard.
    let pa = connected(&mut a, V5, "pa", true);
    let sb = connected(&mut b, V5, "sb", true);
    let mut o = SubscriptionOptions::new(qos(0));
    o.no_local = true;
    b.send(sb, subscribe_opts(1, &[("t", o)]));
    expect_suback(&mut b, sb);
    a.send(pa, publish("t", 0, 0, "from a"));
    for m in a.take_forwarded() {
        b.route_foreign(m);
    }
    assert_eq!(payloads(&mut b, sb), ["from a"]);
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

    let sessions = sim.broker.export_sessions();
    let retained = sim.broker.export_retained();
    // "p" is still connected: its session is exported too.
    assert_eq!(sessions.len(), 2);
    assert_eq!(retained.len(), 1);

    let mut fresh = Sim::default();
    let now = fresh.now();
    for s in sessions {
        fresh.broker.import_session(s, now).expect("imports");
    }
    for m in retained {
        fresh.broker.import_retained(m);
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
    let sessions = sim.broker.export_sessions();
    let now = sim.now();
    assert!(sim.broker.import_session(sessions[0].clone(), now).is_err());
}

/// Where each shared group has members, as a server would keep it.
type Registry = Arc<Mutex<BTreeMap<(String, String), BTreeSet<usize>>>>;

struct Owner {
    me: usize,
    registry: Registry,
}

impl SharedRouting for Owner {
    fn delivers(&mut self, share: &str, filter: &str, msg: &Arc<Message>) -> bool {
        let r = self.registry.lock().expect("registry");
        let Some(shards) = r.get(&(share.to_owned(), filter.to_owned())) else {
            return true;
        };
        let shards: Vec<_> = shards.iter().copied().collect();
        if shards.is_empty() {
            return true;
        }
        // The same Arc on every shard: the same choice on every shard.
        let at = (Arc::as_ptr(msg) as usize >> 4) % shards.len();
        shards[at] == self.me
    }
}

fn record(sim: &mut Sim, me: usize, registry: &Registry) {
    for (share, filter, members) in sim.take_shared_members() {
        let mut r = registry.lock().expect("registry");
        let set = r.entry((share, filter)).or_default();
        if members > 0 {
            set.insert(me);
        } else {
            set.remove(&me);
        }
    }
}

#[test]
fn a_shared_group_split_across_shards_gets_each_message_once() {
    let registry = Registry::default();
    let mut shards = [shard(0), shard(1)];
    for (i, s) in shards.iter_mut().enumerate() {
        s.broker.set_shared_routing(Owner {
            me: i,
            registry: registry.clone(),
        });
    }
    let [a, b] = &mut shards;
    let ma = subscriber(a, V5, "ma", "$share/g/jobs", 1);
    let mb = subscriber(b, V5, "mb", "$share/g/jobs", 1);
    record(a, 0, &registry);
    record(b, 1, &registry);
    let p = connected(a, V5, "p", true);
    for i in 1..=20u16 {
        a.send(p, publish("jobs", 1, i, &i.to_string()));
        for m in a.take_forwarded() {
            b.route_foreign(m);
        }
    }
    let mut got: Vec<u32> = payloads(a, ma)
        .into_iter()
        .chain(payloads(b, mb))
        .map(|s| s.parse().expect("number"))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=20).collect::<Vec<_>>(),
        "each message exactly once"
    );
}

/// Records what the core reports of its subscriptions' filters.
struct Interest(Arc<Mutex<Vec<(String, bool)>>>);

impl SharedRouting for Interest {
    fn delivers(&mut self, _: &str, _: &str, _: &Arc<Message>) -> bool {
        true
    }

    fn interest(&mut self, filter: &str, subscribed: bool) {
        self.0
            .lock()
            .expect("log")
            .push((filter.to_owned(), subscribed));
    }
}

#[test]
fn a_filters_first_subscription_and_its_last_are_reported() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut a = shard(0);
    a.broker.set_shared_routing(Interest(log.clone()));
    let taken =
        |log: &Arc<Mutex<Vec<(String, bool)>>>| std::mem::take(&mut *log.lock().expect("log"));
    let s1 = subscriber(&mut a, V5, "s1", "t/+", 1);
    assert_eq!(taken(&log), [("t/+".to_owned(), true)]);
    // More subscriptions to the same inner filter say nothing new.
    let s2 = subscriber(&mut a, V5, "s2", "t/+", 0);
    a.send(s1, subscribe(2, &[("$share/g/t/+", 1)]));
    expect_suback(&mut a, s1);
    assert_eq!(taken(&log), []);
    a.send(s2, unsubscribe(3, &["t/+"]));
    a.send(s1, unsubscribe(4, &["t/+"]));
    assert_eq!(taken(&log), []);
    // The last one, a shared subscription, goes.
    a.send(s1, unsubscribe(5, &["$share/g/t/+"]));
    assert_eq!(taken(&log), [("t/+".to_owned(), false)]);
    // A clean session's subscriptions go with it.
    let s3 = subscriber(&mut a, V3, "s3", "x/#", 0);
    a.send(
        s3,
        Packet::Disconnect(tern_codec::Disconnect::new(tern_codec::ReasonCode::Success)),
    );
    assert_eq!(
        taken(&log),
        [("x/#".to_owned(), true), ("x/#".to_owned(), false)]
    );
}
