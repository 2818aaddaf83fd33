//! Connections and sessions: CONNECT, client ids, takeover, clean start,
//! expiry, keep alive, DISCONNECT, protocol errors.

use std::time::Duration;

use tern_broker::Config;
use tern_codec::{ConnAck, Disconnect, Packet, ProtocolVersion, ReasonCode};
use tern_sim::{ClientRef, Sim};

use crate::common::*;

#[test]
fn connection_without_connect_is_closed_at_the_deadline() {
    let mut sim = Sim::default();
    let c = sim.client(V5);
    sim.advance(Duration::from_millis(9_999));
    assert!(sim.is_open(c));
    sim.advance(Duration::from_millis(1));
    assert!(!sim.is_open(c));
    // Nothing is sent to a client that never said which protocol it speaks.
    expect_nothing(&mut sim, c);
}

#[test]
fn first_packet_other_than_connect_closes_the_connection() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let c = sim.client(v);
        sim.send(c, Packet::PingReq);
        assert!(!sim.is_open(c), "{v}");
        expect_nothing(&mut sim, c);
    }
}

#[test]
fn second_connect_is_a_protocol_error() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "a", true);
    sim.send(c, connect(V5, "a", true));
    expect_disconnect(&mut sim, c, ReasonCode::ProtocolError);
    assert_eq!(sim.closed(c), Some(ReasonCode::ProtocolError));

    let mut sim = Sim::default();
    let c = connected(&mut sim, V3, "a", true);
    sim.send(c, connect(V3, "a", true));
    assert!(!sim.is_open(c));
    // 3.1.1 has no server DISCONNECT: the connection just closes.
    expect_nothing(&mut sim, c);
}

#[test]
fn empty_client_id_is_assigned_on_v5() {
    let mut sim = Sim::default();
    let c = sim.client(V5);
    let ack = sim.connect(c, "", false);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id.is_empty());
    // A second client gets a different one.
    let c2 = sim.client(V5);
    let ack2 = sim.connect(c2, "", true);
    assert_ne!(ack2.properties.assigned_client_identifier, Some(id));
}

#[test]
fn empty_client_id_is_accepted_with_clean_session_on_v311() {
    let mut sim = Sim::default();
    let c = sim.client(V3);
    let ack = sim.connect(c, "", true);
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);
}

#[test]
fn empty_client_id_without_clean_session_is_rejected_on_v311() {
    let mut sim = Sim::default();
    let c = sim.client(V3);
    let ack = sim.connect(c, "", false);
    // Return code 0x02, identifier rejected: [MQTT-3.1.3-8] (3.1.1).
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!sim.is_open(c));
}

#[test]
fn overlong_client_id_is_rejected() {
    let mut sim = Sim::default();
    let c = sim.client(V5);
    let ack = sim.connect(c, &"x".repeat(257), true);
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!sim.is_open(c));
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01_and_close() {
    let mut sim = Sim::default();
    let c = sim.client(V3);
    // CONNECT, protocol "MQTT" level 6.
    sim.send_bytes(
        c,
        &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 6, 2, 0, 60, 0, 0],
    );
    let ack = match sim.recv(c) {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    };
    assert_eq!(ack.reason_code, ReasonCode::UnsupportedProtocolVersion);
    assert!(!sim.is_open(c));
}

#[test]
fn takeover_disconnects_the_old_connection_with_0x8e_on_v5() {
    let mut sim = Sim::default();
    let old = connected(&mut sim, V5, "dev", true);
    let new = connected(&mut sim, V5, "dev", true);
    expect_disconnect(&mut sim, old, ReasonCode::SessionTakenOver);
    assert!(!sim.is_open(old));
    assert!(sim.is_open(new));
}

#[test]
fn takeover_closes_the_old_connection_on_v311() {
    let mut sim = Sim::default();
    let old = connected(&mut sim, V3, "dev", false);
    let new = sim.client(V3);
    let ack = sim.connect(new, "dev", false);
    assert!(ack.session_present);
    assert!(!sim.is_open(old));
    expect_nothing(&mut sim, old);
}

#[test]
fn persistent_session_is_resumed_with_session_present_on_v311() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V3, "dev", false);
    sim.send(c, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, c);
    sim.send(c, Disconnect::new(ReasonCode::Success));
    assert!(!sim.is_open(c));

    let c = sim.client(V3);
    assert!(sim.connect(c, "dev", false).session_present);
    // The subscription survived.
    let p = connected(&mut sim, V3, "pub", true);
    sim.send(p, publish("t", 1, 1, "kept"));
    assert_eq!(payloads(&mut sim, c), ["kept"]);
}

#[test]
fn clean_session_discards_the_previous_session() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let mut first = connect(v, "dev", false);
        if v.is_v5() {
            first.properties.session_expiry_interval = Some(600);
        }
        let c = sim.client(v);
        sim.connect_with(c, first);
        sim.send(c, subscribe(1, &[("t", 1)]));
        expect_suback(&mut sim, c);
        sim.kill(c);

        let c = sim.client(v);
        let ack = sim.connect(c, "dev", true);
        assert!(!ack.session_present, "{v}");
        let p = connected(&mut sim, v, "pub", true);
        sim.send(p, publish("t", 1, 1, "gone"));
        expect_nothing(&mut sim, c);
    }
}

#[test]
fn v5_session_expires_after_its_interval() {
    let mut sim = Sim::default();
    let mut cn = connect(V5, "dev", true);
    cn.properties.session_expiry_interval = Some(60);
    let c = sim.client(V5);
    sim.connect_with(c, cn);
    sim.kill(c);
    assert_eq!(sim.broker.stats().sessions, 1);

    sim.advance(Duration::from_secs(59));
    let c = sim.client(V5);
    assert!(sim.connect(c, "dev", false).session_present);
    sim.kill(c);

    sim.advance(Duration::from_secs(60));
    assert_eq!(sim.broker.stats().sessions, 0);
    let c = sim.client(V5);
    assert!(!sim.connect(c, "dev", false).session_present);
}

#[test]
fn v5_session_with_expiry_zero_ends_with_the_connection() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "dev", false);
    sim.kill(c);
    assert_eq!(sim.broker.stats().sessions, 0);
}

#[test]
fn session_expiry_is_capped_by_configuration_and_reported() {
    let cfg = Config {
        max_session_expiry: 30,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let mut cn = connect(V5, "dev", true);
    cn.properties.session_expiry_interval = Some(3600);
    let c = sim.client(V5);
    let ack = sim.connect_with(c, cn);
    assert_eq!(ack.properties.session_expiry_interval, Some(30));
}

#[test]
fn disconnect_cannot_turn_session_expiry_on() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "dev", true);
    let mut d = Disconnect::new(ReasonCode::Success);
    d.properties.session_expiry_interval = Some(10);
    sim.send(c, d);
    expect_disconnect(&mut sim, c, ReasonCode::ProtocolError);
}

#[test]
fn keep_alive_is_enforced_at_one_and_a_half_times() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let mut cn = connect(v, "dev", true);
        cn.keep_alive = 10;
        let c = sim.client(v);
        sim.connect_with(c, cn);
        sim.advance(Duration::from_secs(14));
        sim.send(c, Packet::PingReq);
        assert_eq!(sim.recv(c), Some(Packet::PingResp));
        // The clock restarts at the last packet: 15 s from now, not from CONNECT.
        sim.advance(Duration::from_millis(14_999));
        assert!(sim.is_open(c), "{v}");
        sim.advance(Duration::from_millis(1));
        assert!(!sim.is_open(c), "{v}");
        if v.is_v5() {
            expect_disconnect(&mut sim, c, ReasonCode::KeepAliveTimeout);
        }
    }
}

#[test]
fn keep_alive_zero_never_times_out() {
    let mut sim = Sim::default();
    let mut cn = connect(V3, "dev", true);
    cn.keep_alive = 0;
    let c = sim.client(V3);
    sim.connect_with(c, cn);
    sim.advance(Duration::from_secs(86_400));
    assert!(sim.is_open(c));
}

#[test]
fn server_keep_alive_overrides_the_clients_on_v5() {
    let cfg = Config {
        server_keep_alive: Some(5),
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let (c, ack) = keeping_alive(&mut sim, V5, "dev", 600);
    assert_eq!(ack.properties.server_keep_alive, Some(5));
    closed_at(&mut sim, c, Duration::from_millis(7_500));
}

/// A client of version `v` connected with keep alive `secs`.
fn keeping_alive(sim: &mut Sim, v: ProtocolVersion, id: &str, secs: u16) -> (ClientRef, ConnAck) {
    let mut cn = connect(v, id, true);
    cn.keep_alive = secs;
    let c = sim.client(v);
    let ack = sim.connect_with(c, cn);
    (c, ack)
}

/// An idle client is still connected just before `at`, and closed at it.
fn closed_at(sim: &mut Sim, c: ClientRef, at: Duration) {
    sim.advance(at - Duration::from_millis(1));
    assert!(sim.is_open(c));
    sim.advance(Duration::from_millis(1));
    assert!(!sim.is_open(c));
}

#[test]
fn max_keep_alive_caps_a_v5_client_and_leaves_a_v3_client_its_own() {
    let cfg = Config {
        max_keep_alive: Some(60),
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    // 5.0: more than the cap, or none at all, is told the cap...
    for (asked, told) in [(600, Some(60)), (0, Some(60)), (30, None), (60, None)] {
        let (_, ack) = keeping_alive(&mut sim, V5, &format!("v5-{asked}"), asked);
        assert_eq!(ack.properties.server_keep_alive, told, "asked {asked}");
    }
    // ...and is held to it: 1.5 times 60 s.
    let (c, _) = keeping_alive(&mut sim, V5, "capped", 600);
    closed_at(&mut sim, c, Duration::from_secs(90));
    expect_disconnect(&mut sim, c, ReasonCode::KeepAliveTimeout);
    // 3.1.1 cannot be told: the client keeps its 600 s.
    let (c, _) = keeping_alive(&mut sim, V3, "v3", 600);
    closed_at(&mut sim, c, Duration::from_secs(900));
}

#[test]
fn topics_of_200_levels_are_accepted_and_201_refused() {
    let mut sim = Sim::default();
    let deep = |n: usize| vec!["l"; n].join("/");
    for v in VERSIONS {
        let s = connected(&mut sim, v, &format!("s{v}"), true);
        sim.send(
            s,
            subscribe(1, &[(deep(200).as_str(), 0), (deep(201).as_str(), 0)]),
        );
        let Some(Packet::SubAck(ack)) = sim.recv(s) else {
            panic!("SUBACK")
        };
        assert_eq!(ack.reason_codes[0], ReasonCode::Success, "{v}");
        assert!(ack.reason_codes[1].is_error(), "{v}");
        let p = connected(&mut sim, v, &format!("p{v}"), true);
        sim.send(p, publish(&deep(200), 0, 0, "deep"));
        assert_eq!(payloads(&mut sim, s), ["deep"], "{v}");
    }
}

#[test]
fn malformed_packet_closes_with_0x81_on_v5() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "dev", true);
    // PUBLISH whose topic length runs past the packet.
    sim.send_bytes(c, &[0x30, 3, 0, 9, b'a']);
    expect_disconnect(&mut sim, c, ReasonCode::MalformedPacket);
    assert!(!sim.is_open(c));
}

#[test]
fn packet_over_the_maximum_size_closes_with_0x95() {
    let cfg = Config {
        max_packet_size: 64,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let c = sim.client(V5);
    let ack = sim.connect(c, "dev", true);
    assert_eq!(
        ack.properties.maximum_packet_size.map(|m| m.get()),
        Some(64)
    );
    sim.send(c, publish("t", 0, 0, &"x".repeat(100)));
    expect_disconnect(&mut sim, c, ReasonCode::PacketTooLarge);
}

#[test]
fn garbage_from_one_client_does_not_disturb_another() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "t", 0);
    let bad = connected(&mut sim, V3, "bad", true);
    sim.send_bytes(bad, &[0xff; 32]);
    assert!(!sim.is_open(bad));
    let p = connected(&mut sim, V3, "p", true);
    sim.send(p, publish("t", 0, 0, "fine"));
    assert_eq!(payloads(&mut sim, s), ["fine"]);
}

#[test]
fn packets_fed_one_byte_at_a_time_work() {
    let mut sim = Sim::default();
    sim.set_chunk(Some(1));
    let s = subscriber(&mut sim, V5, "s", "a/+", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("a/b", 1, 7, "bytewise"));
    assert_eq!(sim.recv(p), Some(puback(pid(7))));
    assert_eq!(payloads(&mut sim, s), ["bytewise"]);
}

#[test]
fn connection_limit_refuses_new_transports() {
    let cfg = Config {
        max_connections: 2,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let a = sim.try_client(V5);
    let b = sim.try_client(V5);
    assert!(a.is_some() && b.is_some());
    assert!(sim.try_client(V5).is_none());
    sim.kill(a.expect("open"));
    assert!(sim.try_client(V5).is_some());
}

#[test]
fn same_inputs_give_the_same_bytes() {
    fn run() -> Vec<(String, Vec<u8>)> {
        let mut sim = Sim::default();
        subscriber(&mut sim, V5, "s", "#", 2);
        let s3 = subscriber(&mut sim, V3, "s3", "a/#", 1);
        let p = connected(&mut sim, V5, "p", true);
        for i in 0..20u16 {
            sim.send(
                p,
                publish(&format!("a/{}", i % 3), (i % 3) as u8, i + 1, "x"),
            );
        }
        sim.send(p, retained("a/r", 1, 100, "r"));
        sim.kill(s3);
        sim.advance(Duration::from_secs(30));
        sim.transcript()
            .iter()
            .map(|(c, b)| (format!("{c:?}"), b.to_vec()))
            .collect()
    }
    assert_eq!(run(), run());
}

#[test]
fn session_limit_refuses_new_sessions_but_not_resumed_ones() {
    let cfg = Config {
        max_sessions: 2,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    for id in ["a", "b"] {
        let c = connected(&mut sim, V3, id, false);
        sim.kill(c);
    }
    let c = sim.client(V5);
    assert_eq!(
        sim.connect(c, "c", false).reason_code,
        ReasonCode::QuotaExceeded
    );
    let a = sim.client(V3);
    assert!(sim.connect(a, "a", false).session_present);
}

#[test]
fn link_latency_delays_delivery_until_time_passes() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "t", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.set_latency(Duration::from_millis(50));
    sim.send(p, publish("t", 1, 1, "slow link"));
    expect_nothing(&mut sim, s);
    // 50 ms to the broker, 50 ms to the subscriber.
    sim.advance(Duration::from_millis(99));
    expect_nothing(&mut sim, s);
    sim.advance(Duration::from_millis(1));
    assert_eq!(payloads(&mut sim, s), ["slow link"]);
    assert_eq!(sim.recv(p), Some(puback(pid(1))));
}

#[test]
fn mqtt_3_1_clients_publish_and_subscribe() {
    let v31 = tern_codec::ProtocolVersion::V3_1;
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, v31, "old-sub", "t/#", 2);
    let p = connected(&mut sim, V5, "new-pub", true);
    sim.send(p, publish("t/1", 2, 1, "across versions"));
    let m = expect_publish(&mut sim, s);
    assert_eq!(&m.payload[..], b"across versions");
    // 3.1 client ids are 1 to 23 characters (return code 2 otherwise).
    for id in [String::new(), "x".repeat(24)] {
        let c = sim.client(v31);
        assert_eq!(
            sim.connect(c, &id, true).reason_code,
            ReasonCode::ClientIdentifierNotValid
        );
    }
}

#[test]
fn shutdown_disconnects_everyone_and_publishes_wills() {
    let mut sim = Sim::default();
    // A persistent QoS 1 watcher: the will is queued for it while it is
    // disconnected too.
    let watcher = connected(&mut sim, V3, "watcher", false);
    sim.send(watcher, subscribe(1, &[("will/#", 1)]));
    expect_suback(&mut sim, watcher);
    let c5 = sim.client(V5);
    sim.connect_with(c5, with_will(V5, "c5", "will/c5"));
    let c3 = connected(&mut sim, V3, "c3", true);
    let now = sim.now();
    sim.broker.shutdown(now);
    sim.advance(Duration::ZERO);
    assert_eq!(
        sim.recv(c5),
        Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::ServerShuttingDown
        )))
    );
    assert!(!sim.is_open(c5) && !sim.is_open(c3) && !sim.is_open(watcher));
    expect_nothing(&mut sim, c3);
    assert_eq!(sim.broker.stats().clients_connected, 0);
    // The will was published: the watcher finds it when it comes back.
    let watcher = sim.client(V3);
    assert!(sim.connect(watcher, "watcher", false).session_present);
    assert_eq!(payloads(&mut sim, watcher), ["gone"]);
}

#[test]
fn a_mqtt_3_1_client_that_resends_pubrel_with_dup_is_answered() {
    let mut sim = Sim::default();
    let v31 = tern_codec::ProtocolVersion::V3_1;
    let c = connected(&mut sim, v31, "old-device", true);
    sim.send(c, publish("t", 2, 1, "x"));
    assert!(matches!(sim.recv(c), Some(Packet::PubRec(_))));
    // PUBREL with DUP and QoS 1, as 3.1 clients send it again.
    for _ in 0..2 {
        sim.send_bytes(c, &[0x6A, 2, 0, 1]);
        assert!(matches!(sim.recv(c), Some(Packet::PubComp(_))), "answered");
    }
    assert!(sim.is_open(c));
}
