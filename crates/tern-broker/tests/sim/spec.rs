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

/// A policy refusing everything with `code`: the SUBACK, PUBACK and PUBREC
/// each say 0x80 Unspecified error.
fn refusals_say_0x80(code: ReasonCode) {
    let mut sim = Sim::default();
    sim.broker.set_authorizer(DenyWith(code));
    let c = connected(&mut sim, V5, "c", true);
    sim.send(c, subscribe(1, &[("a", 1)]));
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
fn a_policy_code_a_packet_cannot_carry_becomes_0x80() {
    // [MQTT-3.4.2-1], [MQTT-3.9.3-2]: only the codes of the packet's table.
    refusals_say_0x80(ReasonCode::Banned);
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
    // [MQTT-2.2.1-4]: a new PUBLISH takes an id not in use.
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
    refusals_say_0x80(ReasonCode::Success);
}

#[test]
fn a_will_is_published_once_and_not_for_a_later_connection_without_one() {
    // [MQTT-3.1.2-10]; 3.1.1 [MQTT-3.1.2-10], [MQTT-3.1.2-12].
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "will/#", 0);
        let mut cn = with_will(v, "dev", "will/dev");
        cn.clean_start = false;
        cn.properties.session_expiry_interval = v.is_v5().then_some(600);
        let c = sim.client(v);
        sim.connect_with(c, cn.clone());
        sim.kill(c);
        assert_eq!(payloads(&mut sim, s), ["gone"], "{v}");
        cn.will = None;
        let c = sim.client(v);
        sim.connect_with(c, cn);
        sim.kill(c);
        expect_nothing(&mut sim, s);
    }
}

#[test]
fn client_ids_of_23_bytes_are_always_accepted() {
    // [MQTT-3.1.3-5], whatever the configured limit.
    let cfg = Config {
        max_client_id_len: 5,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    for v in VERSIONS {
        let c = sim.client(v);
        assert_eq!(
            sim.connect(c, &"a".repeat(23), true).reason_code,
            ReasonCode::Success
        );
        let c = sim.client(v);
        assert_eq!(
            sim.connect(c, &"a".repeat(24), true).reason_code,
            ReasonCode::ClientIdentifierNotValid
        );
    }
}

#[test]
fn a_retained_message_keeps_its_qos() {
    // 3.1.1 [MQTT-3.3.1-5]: stored with its QoS, delivered at the lower of
    // it and the granted QoS.
    for v in VERSIONS {
        let mut sim = Sim::default();
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, retained("r", 1, 1, "x"));
        let s = connected(&mut sim, v, "s", true);
        sim.send(s, subscribe(1, &[("r", 2)]));
        expect_suback(&mut sim, s);
        assert_eq!(
            expect_publish(&mut sim, s).qos.qos(),
            QoS::AtLeastOnce,
            "{v}"
        );
    }
}

#[test]
fn a_qos0_retained_message_over_the_limit_is_delivered_not_kept() {
    let cfg = Config {
        max_retained_messages: 1,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V5, "s", "r/#", 0);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, retained("r/1", 0, 0, "kept"));
    sim.send(p, retained("r/2", 0, 0, "passing"));
    assert_eq!(payloads(&mut sim, s), ["kept", "passing"]);
    assert!(sim.is_open(p));
    assert_eq!(sim.broker.stats().retained, 1);
}

#[test]
fn resubscribing_to_the_same_filter_loses_no_message() {
    // 3.1.1 [MQTT-3.8.4-3]; [MQTT-3.8.4-4].
    let cfg = Config {
        max_inflight: 1,
        ..Config::default()
    };
    let mut sim = Sim::new(cfg);
    let s = subscriber(&mut sim, V5, "s", "t", 1);
    let p = connected(&mut sim, V5, "p", true);
    for i in 1..=3 {
        sim.send(p, publish("t", 1, i, &i.to_string()));
    }
    let first = expect_publish(&mut sim, s);
    sim.send(s, subscribe(7, &[("t", 1)]));
    expect_suback(&mut sim, s);
    let mut got = vec![String::from_utf8(first.payload.to_vec()).expect("utf-8")];
    let mut id = first.qos.packet_id().expect("QoS 1");
    for _ in 0..2 {
        sim.send(s, puback(id));
        let m = expect_publish(&mut sim, s);
        id = m.qos.packet_id().expect("QoS 1");
        got.push(String::from_utf8(m.payload.to_vec()).expect("utf-8"));
    }
    assert_eq!(got, ["1", "2", "3"]);
}

#[test]
fn packet_ids_are_reused_after_acknowledgement() {
    // 3.1.1 [MQTT-4.3.2-2]; [MQTT-4.3.2-5]: once acknowledged, an id is
    // free; after 65535 the ids wrap around and are used again.
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V3, "s", "t", 1);
    let p = connected(&mut sim, V3, "p", true);
    let mut first = None;
    for i in 0..65_536u32 {
        sim.send(p, publish("t", 1, (i % 65_535 + 1) as u16, "x"));
        sim.take(p);
        let m = expect_publish(&mut sim, s);
        let id = m.qos.packet_id().expect("QoS 1");
        if i == 0 {
            first = Some(id);
        }
        if i == 65_535 {
            assert_eq!(Some(id), first, "the first id comes round again");
        }
        sim.send(s, puback(id));
    }
}

#[test]
fn an_in_flight_message_is_resent_even_after_it_expired() {
    // [MQTT-4.3.3-7]: expiry no longer applies once the PUBLISH was sent.
    let mut sim = Sim::default();
    let mut cn = connect(V5, "s", false);
    cn.properties.session_expiry_interval = Some(600);
    let s = sim.client(V5);
    sim.connect_with(s, cn.clone());
    sim.send(s, subscribe(1, &[("t", 1)]));
    expect_suback(&mut sim, s);
    let p = connected(&mut sim, V5, "p", true);
    let mut m = publish("t", 1, 1, "brief");
    m.properties.message_expiry_interval = Some(5);
    sim.send(p, m);
    expect_publish(&mut sim, s);
    sim.kill(s);
    sim.advance(std::time::Duration::from_secs(10));
    let s = sim.client(V5);
    sim.connect_with(s, cn);
    let again = expect_publish(&mut sim, s);
    assert!(again.dup);
    assert_eq!(&again.payload[..], b"brief");
}

#[test]
fn after_a_refused_qos2_publish_its_id_starts_a_new_message() {
    // [MQTT-4.3.3-9].
    let mut sim = Sim::default();
    let s = subscriber(&mut sim, V5, "s", "t", 2);
    sim.broker.set_authorizer(tern_broker::policy::AskEmbedding);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 2, 5, "refused"));
    let t = sim.take_requests()[0].token;
    sim.answer(t, Err(ReasonCode::NotAuthorized));
    let Some(Packet::PubRec(a)) = sim.recv(p) else {
        panic!("expected PUBREC")
    };
    assert_eq!(a.reason_code, ReasonCode::NotAuthorized);
    sim.send(p, publish("t", 2, 5, "accepted"));
    let t = sim.take_requests()[0].token;
    sim.answer(t, Ok(()));
    assert_eq!(sim.recv(p), Some(pubrec(pid(5))));
    assert_eq!(payloads(&mut sim, s), ["accepted"]);
}

#[test]
fn a_shared_qos2_delivery_is_finished_with_the_same_member_after_a_reconnect() {
    // [MQTT-4.8.2-4].
    let mut sim = Sim::default();
    let mut cn = connect(V5, "m1", false);
    cn.properties.session_expiry_interval = Some(600);
    let m1 = sim.client(V5);
    sim.connect_with(m1, cn.clone());
    sim.send(m1, subscribe(1, &[("$share/g/t", 2)]));
    expect_suback(&mut sim, m1);
    let m2 = subscriber(&mut sim, V5, "m2", "$share/g/t", 2);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 2, 1, "x"));
    let m = expect_publish(&mut sim, m1);
    sim.kill(m1);
    let m1 = sim.client(V5);
    sim.connect_with(m1, cn);
    let again = expect_publish(&mut sim, m1);
    assert!(again.dup);
    assert_eq!(again.qos, m.qos);
    expect_nothing(&mut sim, m2);
}

#[test]
fn a_shared_message_in_flight_is_not_sent_elsewhere_when_the_session_ends() {
    // [MQTT-4.8.2-5].
    let mut sim = Sim::default();
    let m1 = subscriber(&mut sim, V5, "m1", "$share/g/t", 1);
    let m2 = subscriber(&mut sim, V5, "m2", "$share/g/t", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 1, 1, "x"));
    expect_publish(&mut sim, m1);
    // m1's session has expiry 0: it ends with the connection.
    sim.kill(m1);
    sim.advance(std::time::Duration::from_secs(60));
    expect_nothing(&mut sim, m2);
}

#[test]
fn a_refused_shared_delivery_is_not_sent_to_another_member() {
    // [MQTT-4.8.2-6].
    let mut sim = Sim::default();
    let m1 = subscriber(&mut sim, V5, "m1", "$share/g/t", 1);
    let m2 = subscriber(&mut sim, V5, "m2", "$share/g/t", 1);
    let p = connected(&mut sim, V5, "p", true);
    sim.send(p, publish("t", 1, 1, "x"));
    let m = expect_publish(&mut sim, m1);
    sim.send(
        m1,
        Packet::PubAck(Ack {
            reason_code: ReasonCode::UnspecifiedError,
            ..Ack::new(m.qos.packet_id().expect("QoS 1"))
        }),
    );
    expect_nothing(&mut sim, m2);
    expect_nothing(&mut sim, m1);
}

#[test]
fn without_an_authentication_method_there_is_no_auth_exchange() {
    // [MQTT-4.12.0-6].
    let mut sim = Sim::default();
    sim.broker
        .set_authenticator(tern_broker::policy::AskEmbedding);
    let c = sim.client(V5);
    sim.send(c, connect(V5, "dev", true));
    let t = sim.take_requests()[0].token;
    sim.answer_auth(
        t,
        tern_broker::AuthStep::Continue(bytes::Bytes::from_static(b"?")),
    );
    let got = sim.take(c);
    assert!(
        matches!(&got[..], [Packet::ConnAck(a)] if a.reason_code == ReasonCode::BadAuthenticationMethod
            && a.properties.authentication_method.is_none()),
        "{got:?}"
    );
    let mut sim = Sim::default();
    let c = sim.client(V5);
    let ack = sim.connect(c, "plain", true);
    assert_eq!(ack.properties.authentication_method, None);
}

#[test]
fn an_acknowledged_inbound_packet_id_is_a_new_message_when_reused() {
    // 3.1.1 [MQTT-4.3.2-2]; [MQTT-4.3.2-5].
    for v in VERSIONS {
        let mut sim = Sim::default();
        let s = subscriber(&mut sim, v, "s", "t", 1);
        let p = connected(&mut sim, v, "p", true);
        sim.send(p, publish("t", 1, 1, "first"));
        assert_eq!(sim.recv(p), Some(puback(pid(1))));
        let mut again = publish("t", 1, 1, "second");
        again.dup = true;
        sim.send(p, again);
        assert_eq!(payloads(&mut sim, s), ["first", "second"], "{v}");
    }
}
