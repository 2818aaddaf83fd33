//! Byte vectors written by hand from the packet layouts of the MQTT 3.1,
//! 3.1.1 and 5.0 specifications: each must decode to the expected packet and
//! the packet must encode back to exactly these bytes.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use tern_codec::*;

/// Concatenates byte pieces.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn s(v: &'static str) -> MqttString {
    MqttString::from_static(v)
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// Decodes `wire` with `decoder` (which must consume it whole), compares
/// with `expected`, and re-encodes.
fn check(mut decoder: Decoder, version: ProtocolVersion, wire: &[u8], expected: Packet) {
    let mut buf = BytesMut::from(wire);
    let got = decoder
        .decode(&mut buf)
        .expect("decodes")
        .expect("complete");
    assert_eq!(got, expected);
    assert!(buf.is_empty(), "trailing input left");
    assert_eq!(expected.encoded_len(version), wire.len());
    assert_eq!(&expected.to_bytes(version).unwrap()[..], wire);
}

/// A server-side decoder that has already read a CONNECT of `version`.
fn server(version: ProtocolVersion) -> Decoder {
    let mut d = Decoder::server();
    let connect = Packet::from(Connect::new(version, s("c")));
    let mut buf = BytesMut::from(&connect.to_bytes(version).unwrap()[..]);
    d.decode(&mut buf).unwrap().unwrap();
    assert_eq!(d.version(), Some(version));
    d
}

fn client(version: ProtocolVersion) -> Decoder {
    Decoder::client(version)
}

const V3: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn connect_v311_with_will_username_password() {
    let wire = cat(&[
        &[0x10, 34],
        &[0, 4],
        b"MQTT",
        &[4, 0xCE, 0, 10],
        &[0, 3],
        b"cid",
        &[0, 3],
        b"a/b",
        &[0, 2],
        b"hi",
        &[0, 4],
        b"user",
        &[0, 2],
        b"pw",
    ]);
    let expected = Connect {
        protocol: V4,
        clean_start: true,
        keep_alive: 10,
        client_id: s("cid"),
        will: Some(Will {
            topic: TopicName::from_static("a/b"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties::default(),
    };
    check(Decoder::server(), V4, &wire, expected.into());
}

#[test]
fn connect_v31_mqisdp() {
    let wire = cat(&[&[0x10, 15, 0, 6], b"MQIsdp", &[3, 0x02, 0, 60, 0, 1], b"x"]);
    let expected = Connect::new(V3, s("x"));
    let mut d = Decoder::server();
    check(d.clone(), V3, &wire, expected.into());
    d.decode(&mut BytesMut::from(&wire[..])).unwrap();
    assert_eq!(d.version(), Some(V3));
}

#[test]
fn connect_v5_with_session_expiry_and_empty_client_id() {
    let wire = cat(&[
        &[0x10, 18, 0, 4],
        b"MQTT",
        &[5, 0x02, 0, 60],
        &[5, 0x11, 0, 0, 0, 120],
        &[0, 0],
    ]);
    let mut c = Connect::new(V5, s(""));
    c.properties.session_expiry_interval = Some(120);
    check(Decoder::server(), V5, &wire, c.into());
}

#[test]
fn connect_v5_with_will_properties_and_password_only() {
    // Will: delay 5 s, topic "w", payload "x"; password without user name,
    // which 5.0 allows.
    let wire = cat(&[
        &[0x10, 30, 0, 4],
        b"MQTT",
        &[5, 0x44, 0, 0],
        &[0],
        &[0, 1],
        b"c",
        &[5, 0x18, 0, 0, 0, 5],
        &[0, 1],
        b"w",
        &[0, 1],
        b"x",
        &[0, 2],
        b"pw",
    ]);
    let mut c = Connect::new(V5, s("c"));
    c.clean_start = false;
    c.keep_alive = 0;
    c.password = Some(Bytes::from_static(b"pw"));
    c.will = Some(Will {
        topic: TopicName::from_static("w"),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(5),
            ..Default::default()
        },
    });
    check(Decoder::server(), V5, &wire, c.into());
}

#[test]
fn connack_v311_session_present_and_refusal() {
    check(client(V4), V4, &[0x20, 2, 1, 0], ConnAck::new(true).into());
    let refused = ConnAck {
        session_present: false,
        reason_code: ReasonCode::NotAuthorized,
        properties: Default::default(),
    };
    check(client(V4), V4, &[0x20, 2, 0, 5], refused.into());
    let bad_version = ConnAck {
        session_present: false,
        reason_code: ReasonCode::UnsupportedProtocolVersion,
        properties: Default::default(),
    };
    check(client(V4), V4, &[0x20, 2, 0, 1], bad_version.into());
}

#[test]
fn connack_v5_with_receive_maximum() {
    let mut c = ConnAck::new(false);
    c.properties.receive_maximum = NonZeroU16::new(10);
    check(client(V5), V5, &[0x20, 6, 0, 0, 3, 0x21, 0, 10], c.into());
}

#[test]
fn publish_v311_qos0_retain_and_qos1() {
    let wire = cat(&[&[0x31, 8, 0, 3], b"a/b", b"hey"]);
    let mut p = Publish::new(TopicName::from_static("a/b"), QosPid::AtMostOnce, "hey");
    p.retain = true;
    check(client(V4), V4, &wire, p.into());

    let wire = cat(&[&[0x32, 12, 0, 3], b"a/b", &[0, 10], b"hello"]);
    let p = Publish::new(
        TopicName::from_static("a/b"),
        QosPid::AtLeastOnce(pid(10)),
        "hello",
    );
    check(server(V4), V4, &wire, p.into());
}

#[test]
fn publish_v311_qos2_dup() {
    let wire = cat(&[&[0x3C, 6, 0, 1], b"t", &[0x12, 0x34], b"x"]);
    let mut p = Publish::new(
        TopicName::from_static("t"),
        QosPid::ExactlyOnce(pid(0x1234)),
        "x",
    );
    p.dup = true;
    check(server(V4), V4, &wire, p.into());
}

#[test]
fn publish_v5_topic_alias_with_empty_topic() {
    let wire = cat(&[&[0x30, 8, 0, 0], &[3, 0x23, 0, 1], b"hi"]);
    let mut p = Publish::new(TopicName::empty(), QosPid::AtMostOnce, "hi");
    p.properties.topic_alias = NonZeroU16::new(1);
    check(server(V5), V5, &wire, p.into());
}

#[test]
fn publish_v5_qos2_with_user_property_and_subscription_ids() {
    let wire = cat(&[
        &[0x34, 19, 0, 1],
        b"t",
        &[0, 5],
        &[12, 0x0B, 7, 0x0B, 0x80, 0x01, 0x26, 0, 1],
        b"k",
        &[0, 1],
        b"v",
        b"x",
    ]);
    let mut p = Publish::new(
        TopicName::from_static("t"),
        QosPid::ExactlyOnce(pid(5)),
        "x",
    );
    p.properties.subscription_identifiers =
        vec![NonZeroU32::new(7).unwrap(), NonZeroU32::new(128).unwrap()];
    p.properties.user_properties = vec![(s("k"), s("v"))];
    check(client(V5), V5, &wire, p.into());
}

#[test]
fn pub_acks_v311() {
    check(
        client(V4),
        V4,
        &[0x40, 2, 0, 10],
        Packet::PubAck(Ack::new(pid(10))),
    );
    check(
        client(V4),
        V4,
        &[0x50, 2, 0, 10],
        Packet::PubRec(Ack::new(pid(10))),
    );
    check(
        server(V4),
        V4,
        &[0x62, 2, 0, 10],
        Packet::PubRel(Ack::new(pid(10))),
    );
    check(
        client(V4),
        V4,
        &[0x70, 2, 0, 10],
        Packet::PubComp(Ack::new(pid(10))),
    );
}

#[test]
fn pub_acks_v5_short_and_long_forms() {
    check(
        client(V5),
        V5,
        &[0x40, 2, 0, 1],
        Packet::PubAck(Ack::new(pid(1))),
    );
    let mut a = Ack::new(pid(1));
    a.reason_code = ReasonCode::NoMatchingSubscribers;
    check(
        client(V5),
        V5,
        &[0x40, 3, 0, 1, 0x10],
        Packet::PubAck(a.clone()),
    );
    a.properties.reason_string = Some(s("r"));
    let wire = [0x40, 8, 0, 1, 0x10, 4, 0x1F, 0, 1, b'r'];
    check(client(V5), V5, &wire, Packet::PubAck(a));
    let mut rel = Ack::new(pid(2));
    rel.reason_code = ReasonCode::PacketIdentifierNotFound;
    check(server(V5), V5, &[0x62, 3, 0, 2, 0x92], Packet::PubRel(rel));
}

#[test]
fn pub_ack_v5_with_explicit_success_and_no_properties_decodes() {
    // The 3-byte and 4-byte forms of a success are both legal on the wire.
    for wire in [&[0x40u8, 3, 0, 1, 0][..], &[0x40, 4, 0, 1, 0, 0][..]] {
        let got = client(V5).decode(&mut BytesMut::from(wire)).unwrap();
        assert_eq!(got, Some(Packet::PubAck(Ack::new(pid(1)))));
    }
}

#[test]
fn subscribe_and_suback_v311() {
    let wire = cat(&[
        &[0x82, 12, 0, 1],
        &[0, 3],
        b"a/b",
        &[1],
        &[0, 1],
        b"#",
        &[2],
    ]);
    let sub = Subscribe {
        packet_id: pid(1),
        filters: vec![
            SubscribeFilter {
                filter: TopicFilter::from_static("a/b"),
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
            },
            SubscribeFilter {
                filter: TopicFilter::from_static("#"),
                options: SubscriptionOptions::new(QoS::ExactlyOnce),
            },
        ],
        properties: Default::default(),
    };
    check(server(V4), V4, &wire, sub.into());
    let ack = SubAck {
        packet_id: pid(1),
        reason_codes: vec![ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError],
        properties: Default::default(),
    };
    check(client(V4), V4, &[0x90, 4, 0, 1, 1, 0x80], ack.into());
}

#[test]
fn suback_v311_sends_any_failure_as_0x80() {
    let ack = SubAck {
        packet_id: pid(1),
        reason_codes: vec![ReasonCode::NotAuthorized],
        properties: Default::default(),
    };
    assert_eq!(&ack.to_bytes_v(V4)[..], &[0x90, 3, 0, 1, 0x80]);
}

trait ToBytesV {
    fn to_bytes_v(self, v: ProtocolVersion) -> Bytes;
}
impl<T: Into<Packet>> ToBytesV for T {
    fn to_bytes_v(self, v: ProtocolVersion) -> Bytes {
        self.into().to_bytes(v).unwrap()
    }
}

#[test]
fn subscribe_and_suback_v5_with_options_and_identifier() {
    let wire = cat(&[&[0x82, 11, 0, 1], &[2, 0x0B, 5], &[0, 3], b"a/+", &[0x2D]]);
    let sub = Subscribe {
        packet_id: pid(1),
        filters: vec![SubscribeFilter {
            filter: TopicFilter::from_static("a/+"),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
        properties: SubscribeProperties {
            subscription_identifier: NonZeroU32::new(5),
            ..Default::default()
        },
    };
    check(server(V5), V5, &wire, sub.into());
    let ack = SubAck {
        packet_id: pid(1),
        reason_codes: vec![ReasonCode::GRANTED_QOS_0, ReasonCode::TopicFilterInvalid],
        properties: Default::default(),
    };
    check(client(V5), V5, &[0x90, 5, 0, 1, 0, 0, 0x8F], ack.into());
}

#[test]
fn unsubscribe_and_unsuback() {
    let wire = cat(&[&[0xA2, 7, 0, 2], &[0, 3], b"a/b"]);
    let unsub = Unsubscribe {
        packet_id: pid(2),
        filters: vec![TopicFilter::from_static("a/b")],
        properties: Default::default(),
    };
    check(server(V4), V4, &wire, unsub.clone().into());
    let wire5 = cat(&[&[0xA2, 8, 0, 2, 0], &[0, 3], b"a/b"]);
    check(server(V5), V5, &wire5, unsub.into());

    let ack = UnsubAck {
        packet_id: pid(2),
        reason_codes: vec![],
        properties: Default::default(),
    };
    check(client(V4), V4, &[0xB0, 2, 0, 2], ack.into());
    let ack5 = UnsubAck {
        packet_id: pid(2),
        reason_codes: vec![ReasonCode::NoSubscriptionExisted],
        properties: Default::default(),
    };
    check(client(V5), V5, &[0xB0, 4, 0, 2, 0, 0x11], ack5.into());
}

#[test]
fn ping_and_disconnect() {
    for v in [V3, V4, V5] {
        check(server(v), v, &[0xC0, 0], Packet::PingReq);
        check(client(v), v, &[0xD0, 0], Packet::PingResp);
        check(server(v), v, &[0xE0, 0], Disconnect::default().into());
    }
}

#[test]
fn disconnect_v5_forms() {
    let taken = Disconnect::new(ReasonCode::SessionTakenOver);
    check(client(V5), V5, &[0xE0, 1, 0x8E], taken.into());
    let mut with_reason = Disconnect::default();
    with_reason.properties.reason_string = Some(s("r"));
    let wire = [0xE0, 6, 0, 4, 0x1F, 0, 1, b'r'];
    check(client(V5), V5, &wire, with_reason.into());
}

#[test]
fn auth_v5() {
    check(server(V5), V5, &[0xF0, 0], Auth::default().into());
    let auth = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some(s("SCRAM")),
            authentication_data: Some(Bytes::from_static(&[1, 2])),
            ..Default::default()
        },
    };
    let wire = cat(&[
        &[0xF0, 15, 0x18, 13, 0x15, 0, 5],
        b"SCRAM",
        &[0x16, 0, 2, 1, 2],
    ]);
    check(client(V5), V5, &wire, auth.into());
}

#[test]
fn encoded_len_counts_multi_byte_remaining_length() {
    let payload = vec![7u8; 200];
    let p = Publish::new(TopicName::from_static("t"), QosPid::AtMostOnce, payload);
    let wire = p.clone().to_bytes_v(V4);
    // 200 + 3 bytes of topic = 203 = 0xCB 0x01 as a variable byte integer.
    assert_eq!(&wire[..3], &[0x30, 0xCB, 0x01]);
    assert_eq!(p.encoded_len(V4), wire.len());
    check(client(V4), V4, &wire, p.into());
}

#[test]
fn connack_v31_has_no_session_present() {
    // In 3.1 the first byte of CONNACK is reserved.
    let mut d = client(V3);
    let got = d.decode(&mut BytesMut::from(&[0x20, 2, 1, 0][..])).unwrap();
    assert_eq!(got, Some(ConnAck::new(false).into()));
    assert_eq!(
        &Packet::from(ConnAck::new(true)).to_bytes(V3).unwrap()[..],
        &[0x20, 2, 0, 0]
    );
}
