//! Normative statements of the specs checked one by one (the ids are
//! 5.0's unless marked 3.1.1).

use std::num::{NonZeroU16, NonZeroU32};

use tern_broker::policy::{ClientInfo, Verdict};
use tern_broker::{policy::Authorizer, Config};
use tern_codec::{Ack, MqttString, Packet, QoS, QosPid, ReasonCode, TopicFilter, TopicName};
use tern_sim::Sim;

use crate::common::*;

#[test]
fn an_assigned_client_id_never_collides_with_a_chosen_one() {
    // [MQTT-3.1.3-6]: the assigned id is unique on the server.
    let mut sim = Sim::default();
    let first = sim.client(V5);
    let id = sim
        .connect(first, "", true)
        .properties
        .assigned_client_identifier
        .expect("assigned");
    // Someone picks the next id the counter would give.
    let next = format!("tern-0000{:012x}", 2);
    let squatter = connected(&mut sim, V5, &next, true);
    let second = sim.client(V5);
    let id2 = sim
        .connect(second, "", true)
        .properties
        .assigned_client_identifier
        .expect("assigned");
    assert_ne!(id2.as_str(), next);
    assert_ne!(id2, id);
    assert!(sim.is_open(squatter));
}

struct DenyWith(ReasonCode);

impl Authorizer for DenyWith {
    fn publish(&mut self, _: &ClientInfo, _: &TopicName) -> Verdict {
        Verdict::Deny(self.0)
    }
    fn subscribe(&mut self, _: &ClientInfo, _: &TopicFilter) -> Verdict {
        Verdict::Deny(self.0)
    }
}

#[test]
fn a_policy_code_a_packet_cannot_carry_becomes_0x80() {
    // [MQTT-3.4.2-1], [MQTT-3.9.3-2]: only the codes of the packet's table.
    let mut sim = Sim::default();
    sim.broker.set_authorizer(DenyWith(ReasonCode::Banned));
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a", 0)]));
    assert_eq!(expect_suback(&mut sim, c), [ReasonCode::UnspecifiedError]);
    sim.send(c, publish("a", 1, 1, "x"));
    let Some(Packet::PubAck(a)) = sim.recv(c) else {
        panic!("expected PUBACK")
    };
    assert_eq!(a.reason_code, ReasonCode::UnspecifiedError);
    sim.send(c, publish("a", 2, 2, "x"));
    let Some(Packet::PubRec(a)) = sim.recv(c) else {
        panic!("expected PUBREC")
    };
    assert_eq!(a.reason_code, ReasonCode::UnspecifiedError);
}

#[test]
fn no_packet_exceeds_the_clients_maximum_packet_size() {
    // [MQTT-3.1.2-24]: a SUBACK that cannot fit ends the connection.
    let mut sim = Sim::default();
    let mut cn = connect(V5, "c", true);
    cn.properties.maximum_packet_size = NonZeroU32::new(16);
    let c = sim.client(V5);
    sim.connect_with(c, cn);
    let many: Vec<_> = (0..20).map(|i| format!("t/{i}")).collect();
    let filters: Vec<_> = many.iter().map(|f| (f.as_str(), 0)).collect();
    sim.send(c, subscribe(1, &filters));
    expect_nothing(&mut sim, c);
    assert_eq!(sim.closed(c), Some(ReasonCode::PacketTooLarge));
}

#[test]
fn a_full_retained_store_refuses_on_v5_and_still_delivers_on_v311() {
    let cfg = Config {
        max_retained_messages: 1,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s5 = subscriber(&mut sim, V5, "s5", "r/#", 1);
    let p5 = connected(&mut sim, V5, "p5", true);
    sim.send(p5, retained("r/1", 1, 1, "kept"));
    assert_eq!(sim.recv(p5), Some(puback(pid(1))));
    sim.send(p5, retained("r/2", 1, 2, "refused"));
    let Some(Packet::PubAck(a)) = sim.recv(p5) else {
        panic!("expected PUBACK")
    };
    assert_eq!(a.reason_code, ReasonCode::QuotaExceeded);
    assert_eq!(payloads(&mut sim, s5), ["kept"]);

    let p3 = connected(&mut sim, V3, "p3", true);
    sim.send(p3, retained("r/3", 1, 3, "delivered"));
    assert_eq!(sim.recv(p3), Some(puback(pid(3))));
    assert_eq!(payloads(&mut sim, s5), ["delivered"]);
    assert_eq!(sim.broker.stats().retained, 1);
}

#[test]
fn a_non_retained_publish_leaves_the_retained_message_alone() {
    // [MQTT-3.3.1-8]; 3.1.1 [MQTT-3.3.1-12].
    for v in VERSIONS {
        let mut sim = Sim::default();
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, retained("r", 0, 0, "retained"));
        sim.send(p, publish("r", 0, 0, "live"));
        sim.send(p, publish("r", 0, 0, ""));
        let s = connected(&mut sim, v, "s", true);
        sim.send(s, subscribe(1, &[("r", 0)]));
        expect_suback(&mut sim, s);
        assert_eq!(payloads(&mut sim, s), ["retained"], "{v}");
    }
}

#[test]
fn a_will_carries_its_properties_and_is_not_retained_unless_asked() {
    // [MQTT-3.1.3-10]: user properties in order; [MQTT-3.1.2-14].
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "will/#", 1);
    let mut cn = with_will(V5, "dev", "will/dev");
    let w = &mut cn.will.as_mut().expect("will").properties;
    w.content_type = Some(MqttString::from_static("text/plain"));
    w.user_properties = vec![
        (MqttString::from_static("b"), MqttString::from_static("2")),
        (MqttString::from_static("a"), MqttString::from_static("1")),
    ];
    let c = sim.client(V5);
    sim.connect_with(c, cn);
    sim.kill(c);
    let m = expect_publish(&mut sim, s);
    assert_eq!(
        m.properties.content_type.as_ref().map(|c| c.as_str()),
        Some("text/plain")
    );
    let keys: Vec<_> = m
        .properties
        .user_properties
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(keys, ["b", "a"]);
    assert!(!m.retain);
    assert_eq!(sim.broker.stats().retained, 0);
}

#[test]
fn a_shared_member_gets_its_granted_qos_and_a_failed_puback_is_not_resent() {
    // [MQTT-4.8.2-3], [MQTT-4.8.2-6].
    let mut sim = Sim::default();
    let m = subscriber(&mut sim, V5, "m", "$share/g/t", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 2, 1, "x"));
    let got = expect_publish(&mut sim, m);
    let QosPid::AtLeastOnce(id) = got.qos else {
        panic!("granted QoS 1, got {:?}", got.qos)
    };
    sim.send(
        m,
        Packet::PubAck(Ack {
            reason_code: ReasonCode::UnspecifiedError,
            ..Ack::new(id)
        }),
    );
    sim.kill(m);
    let again = sim.client(V5);
    sim.connect(again, "m", false);
    expect_nothing(&mut sim, again);
}

#[test]
fn a_shared_and_a_plain_subscription_give_two_copies_with_their_own_ids() {
    // [MQTT-3.3.4-5] (one copy per shared subscription, own identifier).
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe_with_id(1, "t", 0, 1));
    expect_suback(&mut sim, c);
    sim.send(c, subscribe_with_id(2, "$share/g/t", 0, 2));
    expect_suback(&mut sim, c);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 0, 0, "x"));
    let mut ids: Vec<Vec<u32>> = sim
        .take(c)
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => p
                .properties
                .subscription_identifiers
                .iter()
                .map(|i| i.get())
                .collect(),
            other => panic!("{other:?}"),
        })
        .collect();
    ids.sort();
    assert_eq!(ids, [vec![1], vec![2]]);
}

#[test]
fn an_unsubscribe_does_not_stop_a_flow_in_progress() {
    // [MQTT-3.10.4-3] (both versions).
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "t", 2);
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, publish("t", 2, 1, "x"));
        let m = expect_publish(&mut sim, s);
        let id = m.qos.packet_id().expect("QoS 2");
        sim.send(s, unsubscribe(2, &["t"]));
        let Some(Packet::UnsubAck(u)) = sim.recv(s) else {
            panic!("expected UNSUBACK")
        };
        assert_eq!(u.packet_id, pid(2));
        sim.send(s, pubrec(id));
        assert_eq!(sim.recv(s), Some(pubrel(id)), "{v}");
        sim.send(s, pubcomp(id));
        expect_nothing(&mut sim, s);
    }
}

#[test]
fn suback_and_unsuback_echo_the_packet_identifier() {
    // [MQTT-3.8.4-2], [MQTT-3.10.4-5]; 3.1.1 [MQTT-3.8.4-2], [MQTT-3.10.4-4].
    for v in VERSIONS {
        let mut sim = Sim::default();
        let c = connected(&mut sim, v, "c", true);
        sim.send(c, subscribe(4321, &[("a", 0)]));
        let Some(Packet::SubAck(a)) = sim.recv(c) else {
            panic!("expected SUBACK")
        };
        assert_eq!(a.packet_id, pid(4321));
        sim.send(c, unsubscribe(999, &["a"]));
        let Some(Packet::UnsubAck(a)) = sim.recv(c) else {
            panic!("expected UNSUBACK")
        };
        assert_eq!(a.packet_id, pid(999));
    }
}

#[test]
fn topic_aliases_do_not_carry_over_to_a_new_connection() {
    // [MQTT-3.3.2-7].
    let mut sim = Sim::default();
    let c = connected(&mut sim, V5, "c", false);
    let mut m = publish("t", 0, 0, "x");
    m.properties.topic_alias = NonZeroU16::new(1);
    sim.send(c, m);
    sim.kill(c);
    let c = sim.client(V5);
    sim.connect(c, "c", false);
    let mut m = publish("t", 0, 0, "x");
    m.topic = TopicName::empty();
    m.properties.topic_alias = NonZeroU16::new(1);
    sim.send(c, m);
    assert_eq!(
        sim.recv(c),
        Some(Packet::Disconnect(tern_codec::Disconnect::new(
            ReasonCode::ProtocolError
        )))
    );
}

#[test]
fn an_inbound_dup_flag_is_not_forwarded() {
    // [MQTT-3.3.1-3].
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "t", 1);
    let p = connected(&mut sim, V3, "p", true);
    let mut m = publish("t", 1, 1, "x");
    m.dup = true;
    sim.send(p, m);
    assert!(!expect_publish(&mut sim, s).dup);
}

#[test]
fn a_packet_id_is_not_reused_while_in_flight() {
    // [MQTT-2.2.1-3]: a new PUBLISH takes an id not in use.
    let cfg = Config {
        max_inflight: 3,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V3, "s", "t", 1);
    let p = connected(&mut sim, V3, "p", true);
    for i in 1..=6 {
        sim.send(p, publish("t", 1, i, "x"));
    }
    let ids = |sim: &mut Sim| -> Vec<_> {
        sim.take(s)
            .into_iter()
            .map(|m| match m {
                Packet::Publish(m) => m.qos.packet_id().expect("QoS 1"),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let first = ids(&mut sim);
    assert_eq!(first.len(), 3);
    sim.send(s, puback(first[1]));
    let next = ids(&mut sim);
    assert_eq!(next.len(), 1);
    assert!(
        next[0] != first[0] && next[0] != first[2],
        "{next:?} reuses an id in flight"
    );
}

#[test]
fn control_packets_still_flow_while_the_window_is_full() {
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V5, "s", "t", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 1, 1, "1"));
    sim.send(p, publish("t", 1, 2, "2"));
    expect_publish(&mut sim, s);
    sim.send(s, Packet::PingReq);
    assert_eq!(sim.recv(s), Some(Packet::PingResp));
    sim.send(s, subscribe(9, &[("u", 0)]));
    expect_suback(&mut sim, s);
}

#[test]
fn data_after_a_refused_connect_is_discarded() {
    // [MQTT-3.1.4-6]; 3.1.1 [MQTT-3.1.4-5].
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "t", 0);
    let c = sim.client(V3);
    let mut bytes = Packet::from(connect(V3, "", false))
        .to_bytes(V3)
        .expect("encodes")
        .to_vec();
    bytes.extend_from_slice(
        &Packet::Publish(publish("t", 0, 0, "sneaky"))
            .to_bytes(V3)
            .expect("encodes"),
    );
    sim.send_bytes(c, &bytes);
    let got = sim.take(c);
    assert!(matches!(&got[..], [Packet::ConnAck(a)] if a.reason_code.is_error()));
    expect_nothing(&mut sim, s);
}

#[test]
fn overlapping_subscriptions_on_v311_deliver_at_the_highest_qos() {
    // 3.1.1 [MQTT-3.3.5-1].
    let mut sim = Sim::default();
    let s = connected(&mut sim, V3, "s", true);
    sim.send(s, subscribe(1, &[("a/+", 0), ("a/#", 2)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V3, "p", true);
    sim.send(p, publish("a/b", 2, 1, "x"));
    let got = sim.take(s);
    assert_eq!(got.len(), 1);
    let Packet::Publish(m) = &got[0] else {
        panic!()
    };
    assert_eq!(m.qos.qos(), QoS::ExactlyOnce);
}

#[test]
fn a_refusal_with_a_success_code_is_still_a_refusal() {
    // Found by the broker_script fuzz target: `Deny(Success)` once left a
    // subscription acknowledged but not installed.
    let mut sim = Sim::default();
    sim.broker.set_authorizer(DenyWith(ReasonCode::Success));
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a", 1)]));
    assert_eq!(expect_suback(&mut sim, c), [ReasonCode::UnspecifiedError]);
    sim.send(c, publish("a", 1, 1, "x"));
    let Some(Packet::PubAck(a)) = sim.recv(c) else {
        panic!("expected PUBACK")
    };
    assert_eq!(a.reason_code, ReasonCode::UnspecifiedError);
}
