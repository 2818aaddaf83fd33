//! Packet builders and expectations shared by the simulation tests.

use std::num::NonZeroU32;

use bytes::Bytes;
use tern_codec::{
    Ack, Connect, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, ReasonCode,
    Subscribe, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName, Unsubscribe, Will,
};
use tern_sim::{ClientRef, Sim};

pub use ProtocolVersion::{V3_1_1 as V3, V5};

/// Both versions the tests run on.
pub const VERSIONS: [ProtocolVersion; 2] = [V3, V5];

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

pub fn topic(s: &str) -> TopicName {
    TopicName::new(s).expect("valid topic")
}

pub fn qos(q: u8) -> QoS {
    QoS::from_u8(q).expect("0, 1 or 2")
}

/// A PUBLISH; `id` is used for QoS 1 and 2.
pub fn publish(t: &str, q: u8, id: u16, payload: &str) -> Publish {
    let qp = match q {
        0 => QosPid::AtMostOnce,
        1 => QosPid::AtLeastOnce(pid(id)),
        _ => QosPid::ExactlyOnce(pid(id)),
    };
    Publish::new(topic(t), qp, payload.to_owned())
}

pub fn retained(t: &str, q: u8, id: u16, payload: &str) -> Publish {
    Publish {
        retain: true,
        ..publish(t, q, id, payload)
    }
}

pub fn subscribe_opts(id: u16, filters: &[(&str, SubscriptionOptions)]) -> Subscribe {
    Subscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|(f, o)| SubscribeFilter {
                filter: TopicFilter::new(f).expect("valid filter"),
                options: *o,
            })
            .collect(),
        properties: Default::default(),
    }
}

pub fn subscribe(id: u16, filters: &[(&str, u8)]) -> Subscribe {
    let f: Vec<_> = filters
        .iter()
        .map(|&(f, q)| (f, SubscriptionOptions::new(qos(q))))
        .collect();
    subscribe_opts(id, &f)
}

pub fn subscribe_with_id(id: u16, filter: &str, q: u8, sub_id: u32) -> Subscribe {
    let mut s = subscribe(id, &[(filter, q)]);
    s.properties.subscription_identifier = NonZeroU32::new(sub_id);
    s
}

pub fn unsubscribe(id: u16, filters: &[&str]) -> Unsubscribe {
    Unsubscribe {
        packet_id: pid(id),
        filters: filters
            .iter()
            .map(|f| TopicFilter::new(f).expect("valid filter"))
            .collect(),
        properties: Default::default(),
    }
}

pub fn connect(v: ProtocolVersion, id: &str, clean: bool) -> Connect {
    let mut c = Connect::new(v, MqttString::from_str(id).expect("valid id"));
    c.clean_start = clean;
    c
}

/// A client connected with `id`; the CONNACK is checked and consumed.
pub fn connected(sim: &mut Sim, v: ProtocolVersion, id: &str, clean: bool) -> ClientRef {
    let c = sim.client(v);
    let ack = sim.connect(c, id, clean);
    assert_eq!(ack.reason_code, ReasonCode::Success, "{ack:?}");
    c
}

/// A connected client holding one subscription (SUBACK consumed).
pub fn subscriber(sim: &mut Sim, v: ProtocolVersion, id: &str, filter: &str, q: u8) -> ClientRef {
    let c = connected(sim, v, id, true);
    sim.send(c, subscribe(1, &[(filter, q)]));
    expect_suback(sim, c);
    c
}

pub fn expect_suback(sim: &mut Sim, c: ClientRef) -> Vec<ReasonCode> {
    match sim.recv(c) {
        Some(Packet::SubAck(a)) => a.reason_codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

pub fn expect_publish(sim: &mut Sim, c: ClientRef) -> Publish {
    match sim.recv(c) {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

pub fn expect_nothing(sim: &mut Sim, c: ClientRef) {
    let got = sim.take(c);
    assert!(got.is_empty(), "expected nothing, got {got:?}");
}

/// The payloads of every PUBLISH received, other packets ignored.
pub fn payloads(sim: &mut Sim, c: ClientRef) -> Vec<String> {
    sim.take(c)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(String::from_utf8(p.payload.to_vec()).expect("utf-8")),
            _ => None,
        })
        .collect()
}

pub fn puback(id: PacketId) -> Packet {
    Packet::PubAck(Ack::new(id))
}

pub fn pubrec(id: PacketId) -> Packet {
    Packet::PubRec(Ack::new(id))
}

pub fn pubrel(id: PacketId) -> Packet {
    Packet::PubRel(Ack::new(id))
}

pub fn pubcomp(id: PacketId) -> Packet {
    Packet::PubComp(Ack::new(id))
}

/// A CONNECT with a QoS 1 will "gone" on `will_topic`.
pub fn with_will(v: ProtocolVersion, id: &str, will_topic: &str) -> Connect {
    let mut c = connect(v, id, true);
    c.will = Some(Will {
        topic: topic(will_topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    c
}

/// The next packet is DISCONNECT with `code`, and the connection is closed.
pub fn expect_disconnect(sim: &mut Sim, c: ClientRef, code: ReasonCode) {
    match sim.recv(c) {
        Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, code),
        other => panic!("expected DISCONNECT {code}, got {other:?}"),
    }
    assert!(!sim.is_open(c));
}
