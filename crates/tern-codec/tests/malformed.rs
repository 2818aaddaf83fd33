//! Every rule of the specs the decoder enforces, each with the error it
//! gives and the reason code the spec asks for.

use bytes::{Bytes, BytesMut};
use tern_codec::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn server(version: ProtocolVersion) -> Decoder {
    let mut d = Decoder::server();
    let connect = Packet::from(Connect::new(version, MqttString::from_static("c")));
    let mut buf = BytesMut::from(&connect.to_bytes(version).unwrap()[..]);
    d.decode(&mut buf).unwrap().unwrap();
    d
}

fn decode_err(mut d: Decoder, wire: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(wire);
    match d.decode(&mut buf) {
        Err(e) => e,
        Ok(p) => panic!("expected an error, decoded {p:?}"),
    }
}

fn assert_err(d: Decoder, wire: &[u8], expected: DecodeError, code: ReasonCode) {
    let e = decode_err(d, wire);
    assert_eq!(e, expected);
    assert_eq!(e.reason_code(), code, "reason code for {e}");
}

/// A 3.1.1 or 5.0 CONNECT with the given flags and a body after the
/// keep alive (properties for 5.0 included by the caller).
fn connect(level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let body = cat(&[&[0, 4], b"MQTT", &[level, flags, 0, 60], rest]);
    cat(&[&[0x10, body.len() as u8], &body])
}

#[test]
fn reserved_fixed_header_flags_are_malformed() {
    // PUBREL must carry 0b0010; PUBACK 0b0000.
    assert_err(
        server(V4),
        &[0x60, 2, 0, 1],
        DecodeError::InvalidFlags {
            packet: PacketType::PubRel,
            flags: 0,
        },
        ReasonCode::MalformedPacket,
    );
    assert_err(
        server(V5),
        &[0x41, 2, 0, 1],
        DecodeError::InvalidFlags {
            packet: PacketType::PubAck,
            flags: 1,
        },
        ReasonCode::MalformedPacket,
    );
    assert_err(
        server(V4),
        &[0x80, 6, 0, 1, 0, 1, b'a', 0],
        DecodeError::InvalidFlags {
            packet: PacketType::Subscribe,
            flags: 0,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn a_mqtt_3_1_resend_may_set_dup_on_pubrel_subscribe_and_unsubscribe() {
    // MQTT 3.1 gave these packets QoS 1 and a DUP flag; its clients set
    // DUP when they send one again. 3.1.1 and 5.0 fixed the flags.
    let wires: [&[u8]; 3] = [
        &[0x6A, 2, 0, 1],
        &[0x8A, 6, 0, 1, 0, 1, b'a', 0],
        &[0xAA, 5, 0, 1, 0, 1, b'a'],
    ];
    for wire in wires {
        let mut d = server(ProtocolVersion::V3_1);
        let mut buf = BytesMut::from(wire);
        assert!(d.decode(&mut buf).expect("accepted").is_some(), "{wire:?}");
        for v in [V4, V5] {
            let e = decode_err(server(v), wire);
            assert!(matches!(e, DecodeError::InvalidFlags { .. }), "{v}: {e}");
        }
    }
    // Only DUP: other flags stay malformed on 3.1 too.
    let e = decode_err(server(ProtocolVersion::V3_1), &[0x6B, 2, 0, 1]);
    assert!(matches!(e, DecodeError::InvalidFlags { .. }), "{e}");
}

#[test]
fn flags_are_checked_before_the_body_arrives() {
    // Only the first byte: the error comes at once, not after waiting.
    assert!(matches!(
        decode_err(server(V4), &[0xA0]),
        DecodeError::InvalidFlags { .. }
    ));
}

#[test]
fn packet_type_zero_is_reserved() {
    assert_err(
        server(V4),
        &[0x00, 0],
        DecodeError::ReservedPacketType(0),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn auth_does_not_exist_before_v5() {
    assert_err(
        server(V4),
        &[0xF0, 0],
        DecodeError::ReservedPacketType(15),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn publish_qos_3_is_malformed() {
    assert_err(
        server(V4),
        &[0x36, 5, 0, 1, b't', 0, 1],
        DecodeError::InvalidQoS,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn dup_on_qos0_is_malformed() {
    assert_err(
        server(V4),
        &[0x38, 3, 0, 1, b't'],
        DecodeError::DupWithQoS0,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn fifth_remaining_length_byte_is_malformed() {
    assert_err(
        server(V4),
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        DecodeError::VariableByteIntegerTooLong,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn field_overrunning_the_packet_is_malformed() {
    // Topic length 9, but only three bytes follow.
    assert_err(
        server(V4),
        &[0x30, 5, 0, 9, b'a', b'b', b'c'],
        DecodeError::Truncated,
        ReasonCode::MalformedPacket,
    );
    // Property length beyond the end.
    assert_err(
        server(V5),
        &[0x30, 5, 0, 1, b't', 9, 0x02],
        DecodeError::Truncated,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn trailing_bytes_are_malformed() {
    assert_err(
        server(V4),
        &[0x40, 3, 0, 1, 0],
        DecodeError::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
    assert_err(
        server(V4),
        &[0xC0, 1, 0],
        DecodeError::TrailingBytes(1),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn ill_formed_utf8_and_null_are_rejected() {
    let e = decode_err(server(V4), &[0x30, 4, 0, 2, 0xC3, 0x28]);
    assert_eq!(e, DecodeError::InvalidTopicName(TopicError::InvalidUtf8));
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    // An encoded surrogate (U+D800) is not well-formed UTF-8.
    let e = decode_err(server(V4), &[0x30, 5, 0, 3, 0xED, 0xA0, 0x80]);
    assert_eq!(e, DecodeError::InvalidTopicName(TopicError::InvalidUtf8));
    // U+0000 in a client identifier.
    let e = decode_err(Decoder::server(), &connect(4, 0x02, &[0, 2, b'a', 0]));
    assert_eq!(e, DecodeError::InvalidString(Utf8Error::NullCharacter));
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn wildcard_in_topic_name_is_topic_name_invalid() {
    let e = decode_err(server(V5), &[0x30, 6, 0, 3, b'a', b'/', b'#', 0]);
    assert_eq!(e, DecodeError::InvalidTopicName(TopicError::WildcardInName));
    assert_eq!(e.reason_code(), ReasonCode::TopicNameInvalid);
}

#[test]
fn protocol_name_and_level_must_match() {
    let mqisdp4 = cat(&[&[0x10, 15, 0, 6], b"MQIsdp", &[4, 0x02, 0, 60, 0, 1], b"x"]);
    assert_err(
        Decoder::server(),
        &mqisdp4,
        DecodeError::UnsupportedProtocolVersion(4),
        ReasonCode::UnsupportedProtocolVersion,
    );
    assert_err(
        Decoder::server(),
        &connect(6, 0x02, &[0, 0]),
        DecodeError::UnsupportedProtocolVersion(6),
        ReasonCode::UnsupportedProtocolVersion,
    );
    let wrong_name = cat(&[&[0x10, 13, 0, 4], b"MQTX", &[4, 0x02, 0, 60, 0, 1], b"x"]);
    assert_err(
        Decoder::server(),
        &wrong_name,
        DecodeError::InvalidProtocolName,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn reserved_connect_flag_is_malformed() {
    assert_err(
        Decoder::server(),
        &connect(4, 0x03, &[0, 1, b'x']),
        DecodeError::ReservedConnectFlag,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn will_qos_or_retain_without_will_is_rejected() {
    for flags in [0x22, 0x0A, 0x12] {
        assert_err(
            Decoder::server(),
            &connect(4, flags, &[0, 1, b'x']),
            DecodeError::WillFlagsWithoutWill,
            ReasonCode::ProtocolError,
        );
    }
}

#[test]
fn will_qos_3_is_malformed() {
    let rest = cat(&[&[0, 1, b'x'], &[0, 1, b'w'], &[0, 0]]);
    assert_err(
        Decoder::server(),
        &connect(4, 0x1E, &rest),
        DecodeError::InvalidQoS,
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn password_without_username_is_rejected_before_v5_only() {
    let rest = cat(&[&[0, 1, b'x'], &[0, 2, b'p', b'w']]);
    assert_err(
        Decoder::server(),
        &connect(4, 0x42, &rest),
        DecodeError::PasswordWithoutUsername,
        ReasonCode::MalformedPacket,
    );
    let rest5 = cat(&[&[0], &rest]);
    let mut buf = BytesMut::from(&connect(5, 0x42, &rest5)[..]);
    let Some(Packet::Connect(c)) = Decoder::server().decode(&mut buf).unwrap() else {
        panic!("expected CONNECT");
    };
    assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
    assert_eq!(c.username, None);
}

#[test]
fn packet_identifier_zero_is_rejected() {
    assert_err(
        server(V4),
        &[0x40, 2, 0, 0],
        DecodeError::ZeroPacketId,
        ReasonCode::ProtocolError,
    );
    assert_err(
        server(V4),
        &[0x32, 5, 0, 1, b't', 0, 0],
        DecodeError::ZeroPacketId,
        ReasonCode::ProtocolError,
    );
    assert_err(
        server(V4),
        &[0x82, 6, 0, 0, 0, 1, b'a', 0],
        DecodeError::ZeroPacketId,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn subscribe_and_unsubscribe_need_a_filter() {
    assert_err(
        server(V4),
        &[0x82, 2, 0, 1],
        DecodeError::NoTopicFilters(PacketType::Subscribe),
        ReasonCode::ProtocolError,
    );
    assert_err(
        server(V5),
        &[0xA2, 3, 0, 1, 0],
        DecodeError::NoTopicFilters(PacketType::Unsubscribe),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn invalid_topic_filter_is_malformed() {
    let e = decode_err(server(V4), &[0x82, 8, 0, 1, 0, 3, b'a', b'#', b'b', 0]);
    assert!(matches!(e, DecodeError::InvalidTopicFilter(_)), "{e:?}");
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn subscription_option_rules() {
    let sub = |v_opts: u8, filter: &[u8]| {
        let body = cat(&[&[0, 1], &[0, filter.len() as u8], filter, &[v_opts]]);
        cat(&[&[0x82, body.len() as u8], &body])
    };
    let sub5 = |opts: u8, filter: &[u8]| {
        let body = cat(&[&[0, 1, 0], &[0, filter.len() as u8], filter, &[opts]]);
        cat(&[&[0x82, body.len() as u8], &body])
    };
    // 3.1.1: only the QoS bits exist.
    assert_err(
        server(V4),
        &sub(0x04, b"a"),
        DecodeError::ReservedSubscriptionOptions,
        ReasonCode::MalformedPacket,
    );
    assert_err(
        server(V4),
        &sub(0x03, b"a"),
        DecodeError::InvalidQoS,
        ReasonCode::MalformedPacket,
    );
    // 5.0: bits 6 and 7 are reserved; retain handling 3 is a protocol error.
    assert_err(
        server(V5),
        &sub5(0x40, b"a"),
        DecodeError::ReservedSubscriptionOptions,
        ReasonCode::MalformedPacket,
    );
    assert_err(
        server(V5),
        &sub5(0x30, b"a"),
        DecodeError::InvalidRetainHandling,
        ReasonCode::ProtocolError,
    );
    assert_err(
        server(V5),
        &sub5(0x04, b"$share/g/a"),
        DecodeError::NoLocalOnSharedSubscription,
        ReasonCode::ProtocolError,
    );
}

#[test]
fn property_not_allowed_in_packet_is_malformed() {
    // Session Expiry Interval (0x11) in PUBLISH.
    let e = decode_err(server(V5), &[0x30, 9, 0, 1, b't', 5, 0x11, 0, 0, 0, 1]);
    assert_eq!(
        e,
        DecodeError::PropertyNotAllowed {
            id: 0x11,
            context: "PUBLISH"
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn unknown_property_is_malformed() {
    assert_err(
        server(V5),
        &[0x30, 6, 0, 1, b't', 2, 0x7F, 0],
        DecodeError::UnknownProperty(0x7F),
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn repeated_property_is_a_protocol_error() {
    let wire = [0x30, 14, 0, 1, b't', 10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2];
    assert_err(
        server(V5),
        &wire,
        DecodeError::DuplicateProperty(0x02),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn user_properties_and_subscription_ids_may_repeat() {
    let wire = cat(&[
        &[0x30, 18, 0, 1, b't', 14],
        &[0x26, 0, 1, b'k', 0, 1, b'a'],
        &[0x26, 0, 1, b'k', 0, 1, b'b'],
    ]);
    let mut buf = BytesMut::from(&wire[..]);
    let Some(Packet::Publish(p)) = server(V5).decode(&mut buf).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(p.properties.user_properties.len(), 2);
    let wire = [0x30, 8, 0, 1, b't', 4, 0x0B, 1, 0x0B, 2];
    let mut buf = BytesMut::from(&wire[..]);
    let Some(Packet::Publish(p)) = Decoder::client(V5).decode(&mut buf).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert_eq!(p.properties.subscription_identifiers.len(), 2);
}

#[test]
fn zero_and_out_of_range_property_values() {
    // Receive Maximum 0 in CONNECT.
    assert_err(
        Decoder::server(),
        &connect(5, 0x02, &[3, 0x21, 0, 0, 0, 0]),
        DecodeError::InvalidPropertyValue(0x21),
        ReasonCode::ProtocolError,
    );
    // Maximum Packet Size 0 in CONNECT.
    assert_err(
        Decoder::server(),
        &connect(5, 0x02, &[5, 0x27, 0, 0, 0, 0, 0, 0]),
        DecodeError::InvalidPropertyValue(0x27),
        ReasonCode::ProtocolError,
    );
    // Request Problem Information 2.
    assert_err(
        Decoder::server(),
        &connect(5, 0x02, &[2, 0x17, 2, 0, 0]),
        DecodeError::InvalidPropertyValue(0x17),
        ReasonCode::ProtocolError,
    );
    // Maximum QoS 2 in CONNACK.
    assert_err(
        Decoder::client(V5),
        &[0x20, 5, 0, 0, 2, 0x24, 2],
        DecodeError::InvalidPropertyValue(0x24),
        ReasonCode::ProtocolError,
    );
    // Topic Alias 0 is answered with Topic Alias invalid.
    assert_err(
        server(V5),
        &[0x30, 7, 0, 1, b't', 3, 0x23, 0, 0],
        DecodeError::InvalidPropertyValue(0x23),
        ReasonCode::TopicAliasInvalid,
    );
    // Subscription Identifier 0 in SUBSCRIBE.
    assert_err(
        server(V5),
        &[0x82, 9, 0, 1, 2, 0x0B, 0, 0, 1, b'a', 0],
        DecodeError::InvalidPropertyValue(0x0B),
        ReasonCode::ProtocolError,
    );
    // Authentication Data without an Authentication Method.
    assert_err(
        Decoder::server(),
        &connect(5, 0x02, &[4, 0x16, 0, 1, 9, 0, 0]),
        DecodeError::InvalidPropertyValue(0x16),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn subscription_identifier_from_a_client_is_rejected() {
    let e = decode_err(server(V5), &[0x30, 7, 0, 1, b't', 2, 0x0B, 1, b'x']);
    assert!(matches!(
        e,
        DecodeError::PropertyNotAllowed { id: 0x0B, .. }
    ));
}

#[test]
fn empty_topic_needs_a_topic_alias() {
    assert_err(
        server(V5),
        &[0x30, 4, 0, 0, 0, b'x'],
        DecodeError::EmptyTopicWithoutAlias,
        ReasonCode::ProtocolError,
    );
    assert!(matches!(
        decode_err(server(V4), &[0x30, 3, 0, 0, b'x']),
        DecodeError::EmptyTopicWithoutAlias
    ));
}

#[test]
fn reason_code_not_allowed_in_packet() {
    // Session taken over (0x8E) is a DISCONNECT code, not a PUBACK one.
    assert_err(
        Decoder::client(V5),
        &[0x40, 3, 0, 1, 0x8E],
        DecodeError::InvalidReasonCode {
            packet: PacketType::PubAck,
            code: 0x8E,
        },
        ReasonCode::MalformedPacket,
    );
    // CONNACK return code 6 does not exist in 3.1.1.
    assert!(matches!(
        decode_err(Decoder::client(V4), &[0x20, 2, 0, 6]),
        DecodeError::InvalidReasonCode { .. }
    ));
}

#[test]
fn connack_reserved_flags_and_session_present_with_error() {
    assert_err(
        Decoder::client(V4),
        &[0x20, 2, 2, 0],
        DecodeError::InvalidConnAckFlags(2),
        ReasonCode::ProtocolError,
    );
    assert_err(
        Decoder::client(V4),
        &[0x20, 2, 1, 5],
        DecodeError::InvalidConnAckFlags(1),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn server_requires_connect_first() {
    assert_err(
        Decoder::server(),
        &[0xC0, 0],
        DecodeError::ExpectedConnect(PacketType::PingReq),
        ReasonCode::ProtocolError,
    );
}

#[test]
fn packets_in_the_wrong_direction_are_rejected() {
    assert_err(
        server(V4),
        &[0x20, 2, 0, 0],
        DecodeError::UnexpectedPacket(PacketType::ConnAck),
        ReasonCode::ProtocolError,
    );
    assert_err(
        Decoder::client(V4),
        &[0xC0, 0],
        DecodeError::UnexpectedPacket(PacketType::PingReq),
        ReasonCode::ProtocolError,
    );
    // A 3.1.1 server never sends DISCONNECT; a 5.0 server may.
    assert_err(
        Decoder::client(V4),
        &[0xE0, 0],
        DecodeError::UnexpectedPacket(PacketType::Disconnect),
        ReasonCode::ProtocolError,
    );
    let mut buf = BytesMut::from(&[0xE0, 0][..]);
    assert!(Decoder::client(V5).decode(&mut buf).unwrap().is_some());
}

#[test]
fn packet_too_large_is_refused_from_the_fixed_header() {
    let mut d = server(V4).with_max_packet_size(100);
    // The fixed header announces 200 bytes; none of the body has arrived.
    let mut buf = BytesMut::from(&[0x30, 0xC8, 0x01][..]);
    let e = d.decode(&mut buf).unwrap_err();
    assert_eq!(
        e,
        DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    // Exactly at the limit is fine.
    let mut d = server(V4).with_max_packet_size(7);
    let mut buf = BytesMut::from(&[0x30, 5, 0, 1, b't', b'a', b'b'][..]);
    assert!(d.decode(&mut buf).unwrap().is_some());
}

#[test]
fn partial_input_consumes_nothing_and_resumes() {
    let wire = [
        0x32, 12, 0, 3, b'a', b'/', b'b', 0, 10, b'h', b'e', b'l', b'l', b'o',
    ];
    let mut d = server(V4);
    let mut buf = BytesMut::new();
    for (n, &b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        let got = d.decode(&mut buf).unwrap();
        if n + 1 < wire.len() {
            assert_eq!(got, None);
            assert_eq!(
                buf.len(),
                n + 1,
                "bytes consumed before the packet was complete"
            );
        } else {
            assert!(matches!(got, Some(Packet::Publish(_))));
            assert!(buf.is_empty());
        }
    }
    assert_eq!(d.pending_len(), None);
}

#[test]
fn decode_bytes_shares_the_buffer() {
    let wire = Bytes::from(vec![0x30, 6, 0, 1, b't', b'a', b'b', b'c']);
    let mut buf = wire.clone();
    let Some(Packet::Publish(p)) = server(V4).decode_bytes(&mut buf).unwrap() else {
        panic!("expected PUBLISH");
    };
    assert!(buf.is_empty());
    // Same memory, not a copy.
    assert_eq!(p.payload.as_ptr(), wire[5..].as_ptr());
    assert_eq!(p.topic.as_bytes().as_ptr(), wire[4..].as_ptr());
}

#[test]
fn encoder_refuses_what_the_spec_forbids() {
    let t = TopicName::from_static("t");
    let mut p = Publish::new(t.clone(), QosPid::AtMostOnce, "x");
    p.dup = true;
    assert_eq!(Packet::from(p).to_bytes(V4), Err(EncodeError::DupWithQoS0));
    let p = Publish::new(TopicName::empty(), QosPid::AtMostOnce, "x");
    assert_eq!(
        Packet::from(p).to_bytes(V5),
        Err(EncodeError::EmptyTopicWithoutAlias)
    );
    let ack = Ack {
        packet_id: PacketId::new(1).unwrap(),
        reason_code: ReasonCode::SessionTakenOver,
        properties: Default::default(),
    };
    assert!(matches!(
        Packet::PubAck(ack).to_bytes(V5),
        Err(EncodeError::ReasonCodeNotAllowed { .. })
    ));
    assert!(matches!(
        Packet::Auth(Auth::default()).to_bytes(V4),
        Err(EncodeError::NotInVersion { .. })
    ));
    let sub = Subscribe {
        packet_id: PacketId::new(1).unwrap(),
        filters: vec![],
        properties: Default::default(),
    };
    assert_eq!(
        Packet::from(sub).to_bytes(V4),
        Err(EncodeError::Empty(PacketType::Subscribe))
    );
    let mut c = Connect::new(V4, MqttString::from_static("c"));
    c.password = Some(Bytes::from_static(b"pw"));
    assert_eq!(
        Packet::from(c).to_bytes(V4),
        Err(EncodeError::PasswordWithoutUsername)
    );
    let mut c = Connect::new(V5, MqttString::from_static("c"));
    c.username = Some(MqttString::from_static("u"));
    c.password = Some(Bytes::from(vec![0; 70_000]));
    assert_eq!(
        Packet::from(c).to_bytes(V5),
        Err(EncodeError::BinaryTooLong(70_000))
    );
    let mut ca = ConnAck::new(false);
    ca.properties.maximum_qos = Some(QoS::ExactlyOnce);
    assert_eq!(
        Packet::from(ca).to_bytes(V5),
        Err(EncodeError::InvalidPropertyValue(0x24))
    );
}

#[test]
fn reserved_flags_of_disconnect_and_auth_are_malformed() {
    // 5.0 [MQTT-3.14.1-1], [MQTT-3.15.1-1].
    assert_err(
        server(V5),
        &[0xe1, 0],
        DecodeError::InvalidFlags {
            packet: PacketType::Disconnect,
            flags: 1,
        },
        ReasonCode::MalformedPacket,
    );
    assert_err(
        server(V5),
        &[0xf2, 0],
        DecodeError::InvalidFlags {
            packet: PacketType::Auth,
            flags: 2,
        },
        ReasonCode::MalformedPacket,
    );
}

#[test]
fn a_byte_order_mark_is_kept_not_stripped() {
    // [MQTT-1.5.4-3] (5.0; 3.1.1 [MQTT-1.5.3-3]): U+FEFF is a character.
    let topic = "\u{feff}a";
    let wire = cat(&[
        &[0x30, 2 + topic.len() as u8, 0, topic.len() as u8],
        topic.as_bytes(),
    ]);
    let mut buf = BytesMut::from(&wire[..]);
    let Some(Packet::Publish(p)) = server(V4).decode(&mut buf).unwrap() else {
        panic!("expected PUBLISH")
    };
    assert_eq!(p.topic.as_str(), topic);
}

#[test]
fn an_ill_formed_user_property_is_malformed() {
    // [MQTT-1.5.7-1]: both strings of a pair are UTF-8 strings.
    // PUBLISH "t", properties: user property ("k", 0xff).
    let props: &[u8] = &[0x26, 0, 1, b'k', 0, 1, 0xff];
    let body = cat(&[&[0, 1, b't', props.len() as u8], props]);
    let wire = cat(&[&[0x30, body.len() as u8], &body]);
    let e = decode_err(server(V5), &wire);
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket, "{e}");
}

#[test]
fn a_response_topic_with_a_wildcard_is_refused() {
    // [MQTT-3.3.2-14]: the Response Topic is a topic name.
    let props: &[u8] = &[0x08, 0, 3, b'a', b'/', b'+'];
    let body = cat(&[&[0, 1, b't', props.len() as u8], props]);
    let wire = cat(&[&[0x30, body.len() as u8], &body]);
    let e = decode_err(server(V5), &wire);
    assert!(matches!(e, DecodeError::InvalidTopicName(_)), "{e}");
}
