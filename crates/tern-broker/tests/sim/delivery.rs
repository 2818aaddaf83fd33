//! Delivery: QoS 0/1/2 in both directions, windows, queues, resend.

use std::num::NonZeroU16;
use std::time::Duration;

use tern_broker::{Config, QueueFullPolicy};
use tern_codec::{Ack, Packet, QoS, QosPid, ReasonCode};
use tern_sim::Sim;

use crate::common::*;

#[test]
fn qos0_is_delivered_without_acknowledgement() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "t", 0);
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, publish("t", 0, 0, "hello"));
        expect_nothing(&mut sim, p);
        let got = expect_publish(&mut sim, s);
        assert_eq!(got.qos, QosPid::AtMostOnce);
        assert_eq!(&got.payload[..], b"hello");
        assert_eq!(got.topic, "t");
    }
}

#[test]
fn qos1_is_acknowledged_and_delivered_until_puback() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "t", 1);
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, publish("t", 1, 10, "m"));
        assert_eq!(sim.recv(p), Some(puback(pid(10))), "{v}");
        let got = expect_publish(&mut sim, s);
        let QosPid::AtLeastOnce(id) = got.qos else {
            panic!("expected QoS 1, got {:?}", got.qos)
        };
        assert!(!got.dup);
        sim.send(s, puback(id));
        assert_eq!(sim.broker.stats().messages_dropped, 0);
    }
}

#[test]
fn qos2_flows_complete_in_both_directions() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "t", 2);
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, publish("t", 2, 5, "once"));
        assert_eq!(sim.recv(p), Some(pubrec(pid(5))));
        // Routed at PUBLISH time (method A of the spec).
        let got = expect_publish(&mut sim, s);
        let QosPid::ExactlyOnce(id) = got.qos else {
            panic!("expected QoS 2")
        };
        sim.send(p, pubrel(pid(5)));
        assert_eq!(sim.recv(p), Some(pubcomp(pid(5))));
        sim.send(s, pubrec(id));
        assert_eq!(sim.recv(s), Some(pubrel(id)));
        sim.send(s, pubcomp(id));
        expect_nothing(&mut sim, s);
    }
}

#[test]
fn qos2_inbound_duplicate_publish_before_pubrel_is_delivered_once() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "t", 2);
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, publish("t", 2, 9, "x"));
        let mut dup = publish("t", 2, 9, "x");
        dup.dup = true;
        sim.send(p, dup.clone());
        sim.send(p, dup);
        assert_eq!(sim.take(p), vec![pubrec(pid(9)); 3], "{v}");
        assert_eq!(payloads(&mut sim, s), ["x"]);
        // After PUBREL the id is free: the same id is a new message.
        sim.send(p, pubrel(pid(9)));
        sim.send(p, publish("t", 2, 9, "y"));
        assert_eq!(payloads(&mut sim, s), ["y"]);
    }
}

#[test]
fn qos2_duplicate_survives_a_reconnect_before_pubrel() {
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "t", 2);
    let p = connected(&mut sim, V3, "p", false);
    sim.send(p, publish("t", 2, 3, "x"));
    sim.kill(p);
    let p = sim.client(V3);
    assert!(sim.connect(p, "p", false).session_present);
    let mut dup = publish("t", 2, 3, "x");
    dup.dup = true;
    sim.send(p, dup);
    assert_eq!(sim.recv(p), Some(pubrec(pid(3))));
    assert_eq!(payloads(&mut sim, s), ["x"]);
}

#[test]
fn pubrel_for_an_unknown_id_gets_pubcomp_0x92_on_v5() {
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, pubrel(pid(77)));
    let Some(Packet::PubComp(a)) = sim.recv(c) else {
        panic!("expected PUBCOMP")
    };
    assert_eq!(a.reason_code, ReasonCode::PacketIdentifierNotFound);
}

#[test]
fn delivery_qos_is_downgraded_to_the_granted_qos() {
    for (published, granted, expect) in [(2, 1, 1), (1, 0, 0), (0, 2, 0), (2, 2, 2)] {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, V5, "s", "t", granted);
        let p = connected(&mut sim, V5, "p", true);
        sim.send(p, publish("t", published, 1, "m"));
        assert_eq!(expect_publish(&mut sim, s).qos.qos(), qos(expect));
    }
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let mut sim = Sim::default();
    let s = connected(&mut sim, V5, "s", true);
    sim.send(s, subscribe(1, &[("a/+", 0), ("a/#", 2), ("a/b", 1)]));
    assert_eq!(
        expect_suback(&mut sim, s),
        [
            ReasonCode::Success,
            ReasonCode::GrantedQoS2,
            ReasonCode::GrantedQoS1
        ]
    );
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("a/b", 2, 1, "m"));
    let got = sim.take(s);
    assert_eq!(got.len(), 1, "{got:?}");
    let Packet::Publish(m) = &got[0] else {
        panic!()
    };
    assert_eq!(m.qos.qos(), QoS::ExactlyOnce);
}

#[test]
fn outgoing_window_honours_the_clients_receive_maximum() {
    let mut sim = Sim::default();
    let mut cn = connect(V5, "s", true);
    cn.properties.receive_maximum = NonZeroU16::new(2);
    let s = sim.client(V5);
    sim.connect_with(s, cn);
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V5, "p", true);
    for i in 1..=5 {
        sim.send(p, publish("t", 1, i, &i.to_string()));
    }
    let first = sim.take(s);
    assert_eq!(first.len(), 2, "{first:?}");
    // Each PUBACK opens the window for one more, in order.
    let Packet::Publish(m) = &first[0] else {
        panic!()
    };
    sim.send(s, puback(m.qos.packet_id().expect("QoS 1")));
    assert_eq!(payloads(&mut sim, s), ["3"]);
}

#[test]
fn outgoing_window_is_capped_by_the_brokers_max_inflight() {
    let cfg = Config {
        max_inflight: 3,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V3, "s", "t", 2);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=10 {
        sim.send(p, publish("t", 1, i, "m"));
    }
    assert_eq!(payloads(&mut sim, s).len(), 3);
}

#[test]
fn qos0_is_not_queued_for_an_offline_session_by_default() {
    let mut sim = Sim::default();
    let s = connected(&mut sim, V3, "s", false);
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    sim.kill(s);
    let p = connected(&mut sim, V3, "p", true);
    sim.send(p, publish("t", 0, 0, "lost"));
    sim.send(p, publish("t", 1, 1, "kept"));
    let s = sim.client(V3);
    sim.connect(s, "s", false);
    assert_eq!(payloads(&mut sim, s), ["kept"]);
}

#[test]
fn offline_persistent_session_receives_queued_messages_in_order() {
    for v in VERSIONS {
        let mut sim = Sim::default();
        let mut cn = connect(v, "s", false);
        cn.properties.session_expiry_interval = v.is_v5().then_some(3600);
        let s = sim.client(v);
        sim.connect_with(s, cn);
        sim.send(s, subscribe(1, &[("t/#", 2)]));
        expect_suback(&mut sim, s);
        sim.kill(s);
        let p = connected(&mut sim, v, "p", true);
        for i in 1..=5u16 {
            sim.send(p, publish("t/x", (i % 2 + 1) as u8, i, &i.to_string()));
        }
        let s = sim.client(v);
        assert!(sim.connect(s, "s", false).session_present);
        assert_eq!(payloads(&mut sim, s), ["1", "2", "3", "4", "5"], "{v}");
    }
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_in_order_on_resume() {
    let mut sim = Sim::default();
    let s = connected(&mut sim, V3, "s", false);
    sim.send(s, subscribe(1, &[("t", 2)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V3, "p", true);
    sim.send(p, publish("t", 1, 1, "a"));
    sim.send(p, publish("t", 2, 2, "b"));
    sim.send(p, publish("t", 2, 3, "c"));
    let first = sim.take(s);
    let ids: Vec<_> = first
        .iter()
        .map(|p| match p {
            Packet::Publish(p) => p.qos.packet_id().expect("QoS > 0"),
            other => panic!("{other:?}"),
        })
        .collect();
    // "c" goes on to PUBREL; "a" and "b" stay unacknowledged.
    sim.send(s, pubrec(ids[2]));
    assert_eq!(sim.recv(s), Some(pubrel(ids[2])));
    sim.kill(s);

    let s = sim.client(V3);
    assert!(sim.connect(s, "s", false).session_present);
    let again = sim.take(s);
    assert_eq!(again.len(), 3, "{again:?}");
    for (i, want) in ["a", "b"].iter().enumerate() {
        let Packet::Publish(m) = &again[i] else {
            panic!("{again:?}")
        };
        assert!(m.dup);
        assert_eq!(m.qos.packet_id(), Some(ids[i]));
        assert_eq!(&m.payload[..], want.as_bytes());
    }
    assert_eq!(again[2], pubrel(ids[2]));
}

#[test]
fn full_queue_drops_the_newest_message_observably() {
    let cfg = Config {
        max_queued_messages: 2,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = connected(&mut sim, V3, "s", false);
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    sim.kill(s);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=4 {
        sim.send(p, publish("t", 1, i, &i.to_string()));
    }
    assert_eq!(sim.broker.stats().messages_dropped, 2);
    assert_eq!(sim.dropped().len(), 2);
    assert_eq!(sim.dropped()[0].0, "s");
    let s = sim.client(V3);
    sim.connect(s, "s", false);
    assert_eq!(payloads(&mut sim, s), ["1", "2"]);
}

#[test]
fn full_queue_can_drop_the_oldest_message_instead() {
    let cfg = Config {
        max_queued_messages: 2,
        queue_full: QueueFullPolicy::DropOldest,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = connected(&mut sim, V3, "s", false);
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    sim.kill(s);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=4 {
        sim.send(p, publish("t", 1, i, &i.to_string()));
    }
    assert_eq!(sim.dropped().len(), 2);
    let s = sim.client(V3);
    sim.connect(s, "s", false);
    assert_eq!(payloads(&mut sim, s), ["3", "4"]);
}

#[test]
fn queue_byte_limit_is_enforced() {
    let cfg = Config {
        max_queued_bytes: 100,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = connected(&mut sim, V3, "s", false);
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    sim.kill(s);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=3 {
        sim.send(p, publish("t", 1, i, &"x".repeat(40)));
    }
    assert_eq!(sim.dropped().len(), 1);
}

#[test]
fn a_slow_subscriber_does_not_delay_others() {
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    // `slow` never acknowledges; `fast` does.
    let slow = subscriber(&mut sim, V3, "slow", "t", 1);
    let fast = subscriber(&mut sim, V3, "fast", "t", 1);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=5 {
        sim.send(p, publish("t", 1, i, &i.to_string()));
        let m = expect_publish(&mut sim, fast);
        sim.send(fast, puback(m.qos.packet_id().expect("QoS 1")));
    }
    assert_eq!(payloads(&mut sim, slow), ["1"]);
}

#[test]
fn pubrec_with_an_error_code_ends_the_exchange_on_v5() {
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V5, "s", "t", 2);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 2, 1, "a"));
    sim.send(p, publish("t", 2, 2, "b"));
    let m = expect_publish(&mut sim, s);
    let id = m.qos.packet_id().expect("QoS 2");
    sim.send(
        s,
        Packet::PubRec(Ack {
            reason_code: ReasonCode::UnspecifiedError,
            ..Ack::new(id)
        }),
    );
    // No PUBREL; the window opened for "b".
    assert_eq!(payloads(&mut sim, s), ["b"]);
}

#[test]
fn expired_queued_messages_are_dropped_and_the_rest_carry_remaining_lifetime() {
    let mut sim = Sim::default();
    let mut cn = connect(V5, "s", false);
    cn.properties.session_expiry_interval = Some(3600);
    let s = sim.client(V5);
    sim.connect_with(s, cn);
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    sim.kill(s);
    let p = connected(&mut sim, V5, "p", true);
    let mut short = publish("t", 1, 1, "short");
    short.properties.message_expiry_interval = Some(10);
    let mut long = publish("t", 1, 2, "long");
    long.properties.message_expiry_interval = Some(100);
    sim.send(p, short);
    sim.send(p, long);
    sim.advance(Duration::from_secs(30));
    let s = sim.client(V5);
    sim.connect(s, "s", false);
    let got = expect_publish(&mut sim, s);
    assert_eq!(&got.payload[..], b"long");
    assert_eq!(got.properties.message_expiry_interval, Some(70));
    expect_nothing(&mut sim, s);
}

#[test]
fn messages_larger_than_a_subscribers_maximum_packet_size_are_dropped_for_it() {
    let mut sim = Sim::default();
    let mut cn = connect(V5, "small", true);
    cn.properties.maximum_packet_size = std::num::NonZeroU32::new(50);
    let small = sim.client(V5);
    sim.connect_with(small, cn);
    sim.send(small, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, small);
    let big = subscriber(&mut sim, V5, "big", "t", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 1, 1, &"x".repeat(100)));
    sim.send(p, publish("t", 1, 2, "fits"));
    assert_eq!(payloads(&mut sim, small), ["fits"]);
    assert_eq!(payloads(&mut sim, big).len(), 2);
}

#[test]
fn our_receive_maximum_is_enforced_on_unreleased_qos2() {
    let cfg = Config {
        receive_maximum: 2,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let p = sim.client(V5);
    let ack = sim.connect(p, "p", true);
    assert_eq!(ack.properties.receive_maximum.map(|r| r.get()), Some(2));
    sim.send(p, publish("t", 2, 1, "a"));
    sim.send(p, publish("t", 2, 2, "b"));
    sim.send(p, publish("t", 2, 3, "c"));
    let got = sim.take(p);
    assert_eq!(
        got.last(),
        Some(&Packet::Disconnect(tern_codec::Disconnect::new(
            ReasonCode::ReceiveMaximumExceeded
        )))
    );
    assert!(!sim.is_open(p));
}

fn slow_config(max: usize) -> Config {
    Config {
        max_unwritten_bytes: Some(max),
        ..Config::default()
    }
}

#[test]
fn a_slow_consumer_loses_qos0_messages_and_nobody_else_does() {
    let mut sim = Sim::new(slow_config(1000));
    let slow = subscriber(&mut sim, V3, "slow", "t", 0);
    let fast = subscriber(&mut sim, V3, "fast", "t", 0);
    sim.stall(slow, true);
    let p = connected(&mut sim, V3, "p", true);
    for i in 0..100 {
        sim.send(p, publish("t", 0, 0, &format!("{i:050}")));
    }
    assert_eq!(payloads(&mut sim, fast).len(), 100);
    sim.stall(slow, false);
    let got = payloads(&mut sim, slow).len();
    // 1000 bytes of 55-byte packets reach the slow one, the rest is dropped.
    assert!((18..=19).contains(&got), "{got}");
    assert_eq!(sim.dropped().len(), 100 - got);
    assert!(sim.dropped().iter().all(|(id, _)| id == "slow"));
}

#[test]
fn a_slow_consumer_gets_its_qos1_messages_late_but_all_in_order() {
    let mut sim = Sim::new(slow_config(500));
    let slow = subscriber(&mut sim, V3, "slow", "t", 1);
    sim.stall(slow, true);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=30u16 {
        sim.send(p, publish("t", 1, i, &format!("{i:02}")));
    }
    assert!(sim.dropped().is_empty());
    sim.stall(slow, false);
    let got = sim.take(slow);
    let mut payloads = Vec::new();
    for m in got {
        let Packet::Publish(m) = m else {
            panic!("{m:?}")
        };
        payloads.push(String::from_utf8(m.payload.to_vec()).expect("utf-8"));
        sim.send(slow, puback(m.qos.packet_id().expect("QoS 1")));
    }
    // What was held back while stalled follows as the acks come in.
    payloads.extend(super::common::payloads(&mut sim, slow));
    let want: Vec<_> = (1..=30).map(|i| format!("{i:02}")).collect();
    assert_eq!(payloads, want);
}

#[test]
fn a_client_that_sends_without_reading_stops_being_read() {
    let mut sim = Sim::new(slow_config(100));
    let c = connected(&mut sim, V3, "c", true);
    sim.stall(c, true);
    for _ in 0..1000 {
        sim.send(c, Packet::PingReq);
    }
    // Each PINGRESP is 2 bytes: the broker read about 50 PINGREQs and left
    // the rest unread.
    let read = sim.broker.stats().bytes_received;
    assert!(read < 200, "{read}");
    sim.stall(c, false);
    let got = sim.take(c);
    assert_eq!(got.len(), 1000);
    assert!(got.iter().all(|p| *p == Packet::PingResp));
}

#[test]
fn a_qos0_fan_out_is_encoded_once_per_wire_form() {
    let mut sim = Sim::default();
    for i in 0..3 {
        subscriber(&mut sim, V3, &format!("a{i}"), "t", 0);
    }
    subscriber(&mut sim, V5, "b", "t", 0);
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe_with_id(1, "t", 0, 9));
    expect_suback(&mut sim, c);
    let p = connected(&mut sim, V3, "p", true);
    let before = sim.transcript().len();
    sim.send(p, publish("t", 0, 0, "same bytes"));
    let sent: Vec<_> = sim.transcript()[before..]
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(sent.len(), 5);
    // The three 3.1.1 subscribers share one buffer; 5.0 is another form, and
    // a subscription identifier makes a third.
    assert!(sent[1].as_ptr() == sent[0].as_ptr() && sent[2].as_ptr() == sent[0].as_ptr());
    assert!(sent[3].as_ptr() != sent[0].as_ptr());
    assert!(sent[4].as_ptr() != sent[3].as_ptr());
    assert_ne!(sent[3], sent[4]);
}
