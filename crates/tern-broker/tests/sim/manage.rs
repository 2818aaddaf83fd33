//! What an administrator asks and does through the core: sessions listed,
//! a client kicked, a retained message cleared.

use std::time::Duration;

use tern_codec::{Packet, QoS, ReasonCode, TopicName};
use tern_sim::Sim;

use crate::common::*;

#[test]
fn sessions_are_listed_and_a_kick_ends_the_connection_then_the_session() {
    let mut sim = Sim::default();
    let c = sim.client(V5);
    let mut cn = connect(V5, "dev", false);
    cn.properties.session_expiry_interval = Some(600);
    assert_eq!(sim.connect_with(c, cn).reason_code, ReasonCode::Success);
    sim.send(c, subscribe(1, &[("home/#", 1)]));
    expect_suback(&mut sim, c);
    let other = connected(&mut sim, V5, "another", true);
    let now = sim.now();
    let all = sim.broker.sessions(None, 10, now);
    let ids: Vec<&str> = all.iter().map(|s| s.client_id.as_str()).collect();
    assert_eq!(ids, ["another", "dev"]);
    let after: Vec<String> = sim
        .broker
        .sessions(Some("another"), 10, now)
        .into_iter()
        .map(|s| s.client_id)
        .collect();
    assert_eq!(after, ["dev"]);
    let dev = sim.broker.session("dev", now).expect("listed");
    assert!(dev.connected);
    assert_eq!(dev.subscriptions.len(), 1);
    assert_eq!(dev.subscriptions[0].1, QoS::AtLeastOnce);
    assert_eq!(dev.expires_in, None);

    // Kicked: DISCONNECT 0x98, the session waits offline for its expiry.
    assert!(sim.broker.kick("dev", false, now));
    match sim.recv(c) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, ReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    // Nobody else is touched.
    expect_nothing(&mut sim, other);
    sim.advance(Duration::from_secs(100));
    let now = sim.now();
    let dev = sim.broker.session("dev", now).expect("kept");
    assert!(!dev.connected);
    assert_eq!(dev.expires_in, Some(Duration::from_secs(500)));
    assert_eq!(dev.offline_for, Some(Duration::from_secs(100)));
    // Kicked with its session: gone.
    assert!(sim.broker.kick("dev", true, now));
    assert_eq!(sim.broker.session("dev", now), None);
    assert!(!sim.broker.kick("dev", true, now));
}

#[test]
fn an_admin_clears_a_retained_message_as_an_empty_publish_would() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "lights/#", 0);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, retained("lights/hall", 0, 0, "on"));
    assert_eq!(payloads(&mut sim, s), ["on"]);
    let now = sim.now();
    let topic = TopicName::new("lights/hall").expect("valid");
    assert!(sim.broker.clear_retained(&topic, now));
    // Subscribers get the empty message, as for any clear.
    let got = expect_publish(&mut sim, s);
    assert!(got.payload.is_empty());
    // Nothing is retained any more.
    let late = subscriber(&mut sim, V5, "late", "lights/#", 0);
    expect_nothing(&mut sim, late);
    assert!(!sim.broker.clear_retained(&topic, now));
}
