//! Property tests of the codec: every packet representable in a protocol
//! version survives encode → decode; incremental decoding is independent of
//! how the bytes are split; hostile bytes never panic a decoder, and whatever
//! decodes re-encodes to the same packet.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;
use tern_codec::{
    Ack, AckProperties, Auth, AuthProperties, ConnAck, ConnAckProperties, Connect,
    ConnectProperties, DecodeError, Decoder, Disconnect, DisconnectProperties, MqttString, Packet,
    PacketId, PacketType, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, ReasonCode,
    RetainHandling, Role, SubAck, Subscribe, SubscribeFilter, SubscribeProperties,
    SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe, UnsubscribeProperties,
    UserProperty, Will, WillProperties,
};

use ProtocolVersion::{V3_1, V3_1_1, V5};

const VERSIONS: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];

// ---------------------------------------------------------------------------
// Leaf strategies
// ---------------------------------------------------------------------------

fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

/// Any MQTT string: well-formed UTF-8 without U+0000, mostly short.
fn mqtt_string() -> impl Strategy<Value = MqttString> {
    prop_oneof![
        3 => "[a-zA-Z0-9 /_-]{0,8}",
        1 => "[^\\x00]{0,6}",
    ]
    .prop_map(|s| MqttString::from_str(&s).expect("generated a valid MQTT string"))
}

fn bytes_any() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => vec(any::<u8>(), 0..16),
        1 => vec(any::<u8>(), 100..300),
    ]
    .prop_map(Bytes::from)
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    prop_oneof![
        3 => vec("[a-z0-9$ ]{0,4}", 1..5).prop_map(|l| l.join("/")),
        1 => "[^\\x00+#]{1,8}",
    ]
    .prop_filter_map("a valid topic name", |s| TopicName::new(&s).ok())
}

/// Topic filters with wildcards, sometimes shared (`$share/{group}/...`).
fn topic_filter() -> impl Strategy<Value = TopicFilter> {
    let level = prop_oneof![
        4 => "[a-z0-9 ]{0,3}",
        1 => "[^\\x00+#/]{1,3}",
        2 => Just("+".to_string()),
    ];
    (
        vec(level, 1..4),
        any::<bool>(),
        option::weighted(0.25, "[a-z0-9]{1,4}"),
    )
        .prop_map(|(levels, hash, group)| {
            let mut s = levels.join("/");
            if hash {
                s.push_str("/#");
            }
            match group {
                Some(g) => format!("$share/{g}/{s}"),
                None => s,
            }
        })
        .prop_filter_map("a valid topic filter", |s| TopicFilter::new(&s).ok())
}

fn packet_id() -> impl Strategy<Value = PacketId> {
    (1u16..=u16::MAX).prop_map(|n| PacketId::new(n).expect("non-zero"))
}

fn nz_u16() -> impl Strategy<Value = NonZeroU16> {
    (1u16..=u16::MAX).prop_map(|n| NonZeroU16::new(n).expect("non-zero"))
}

fn nz_u32() -> impl Strategy<Value = NonZeroU32> {
    (1u32..=u32::MAX).prop_map(|n| NonZeroU32::new(n).expect("non-zero"))
}

/// A subscription identifier: 1 to 268,435,455, spread over every VBI length.
fn subscription_id() -> impl Strategy<Value = NonZeroU32> {
    prop_oneof![
        1u32..128,
        128u32..16_384,
        16_384u32..2_097_152,
        2_097_152u32..=268_435_455,
    ]
    .prop_map(|n| NonZeroU32::new(n).expect("non-zero"))
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn qos_pid() -> impl Strategy<Value = QosPid> {
    prop_oneof![
        Just(QosPid::AtMostOnce),
        packet_id().prop_map(QosPid::AtLeastOnce),
        packet_id().prop_map(QosPid::ExactlyOnce),
    ]
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    prop_oneof![
        1 => Just(Vec::new()),
        1 => vec((mqtt_string(), mqtt_string()), 1..4),
    ]
}

/// Every reason code MQTT 5.0 allows in `ty`.
fn codes_for(ty: PacketType) -> Vec<ReasonCode> {
    (0..=u8::MAX)
        .filter_map(ReasonCode::from_u8)
        .filter(|c| c.allowed_in(ty))
        .collect()
}

fn reason_code(ty: PacketType) -> impl Strategy<Value = ReasonCode> {
    select(codes_for(ty))
}

/// The six CONNACK return codes of 3.1.1.
const V3_CONNACK_CODES: [ReasonCode; 6] = [
    ReasonCode::Success,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::ServerUnavailable,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
];

/// The SUBACK return codes of 3.1.1.
const V3_SUBACK_CODES: [ReasonCode; 4] = [
    ReasonCode::Success,
    ReasonCode::GrantedQoS1,
    ReasonCode::GrantedQoS2,
    ReasonCode::UnspecifiedError,
];

// ---------------------------------------------------------------------------
// Properties (5.0); before 5.0 every property struct is empty
// ---------------------------------------------------------------------------

/// Authentication method and data, the data only with a method.
fn auth_method_data() -> impl Strategy<Value = (Option<MqttString>, Option<Bytes>)> {
    (option::of(mqtt_string()), option::of(bytes_any())).prop_map(|(m, d)| {
        if m.is_some() {
            (m, d)
        } else {
            (None, None)
        }
    })
}

fn connect_properties(v: ProtocolVersion) -> BoxedStrategy<ConnectProperties> {
    if !v.is_v5() {
        return Just(ConnectProperties::default()).boxed();
    }
    (
        option::of(any::<u32>()),
        option::of(nz_u16()),
        option::of(nz_u32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        auth_method_data(),
        user_properties(),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, (am, ad), up)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                authentication_method: am,
                authentication_data: ad,
                user_properties: up,
            },
        )
        .boxed()
}

fn will_properties(v: ProtocolVersion) -> BoxedStrategy<WillProperties> {
    if !v.is_v5() {
        return Just(WillProperties::default()).boxed();
    }
    (
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        option::of(topic_name()),
        option::of(bytes_any()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
        .boxed()
}

fn connack_properties(v: ProtocolVersion) -> BoxedStrategy<ConnAckProperties> {
    if !v.is_v5() {
        return Just(ConnAckProperties::default()).boxed();
    }
    let numbers = (
        option::of(any::<u32>()),
        option::of(nz_u16()),
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        option::of(nz_u32()),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
    );
    let strings = (
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        auth_method_data(),
        user_properties(),
    );
    (numbers, strings)
        .prop_map(
            |((sei, rm, mq, ra, mps, tam, wsa, sia, ssa, ska), (aci, rs, ri, sr, (am, ad), up))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    topic_alias_maximum: tam,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    assigned_client_identifier: aci,
                    reason_string: rs,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                    user_properties: up,
                }
            },
        )
        .boxed()
}

/// PUBLISH properties; subscription identifiers only when `sub_ids` (a
/// PUBLISH from the server).
fn publish_properties(v: ProtocolVersion, sub_ids: bool) -> BoxedStrategy<PublishProperties> {
    if !v.is_v5() {
        return Just(PublishProperties::default()).boxed();
    }
    let max_ids = if sub_ids { 4 } else { 1 };
    (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(nz_u16()),
        option::of(topic_name()),
        option::of(bytes_any()),
        vec(subscription_id(), 0..max_ids),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, si, ct, up)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            subscription_identifiers: si,
            content_type: ct,
            user_properties: up,
        })
        .boxed()
}

fn ack_properties(v: ProtocolVersion) -> BoxedStrategy<AckProperties> {
    if !v.is_v5() {
        return Just(AckProperties::default()).boxed();
    }
    (option::of(mqtt_string()), user_properties())
        .prop_map(|(rs, up)| AckProperties {
            reason_string: rs,
            user_properties: up,
        })
        .boxed()
}

fn subscribe_properties(v: ProtocolVersion) -> BoxedStrategy<SubscribeProperties> {
    if !v.is_v5() {
        return Just(SubscribeProperties::default()).boxed();
    }
    (option::of(subscription_id()), user_properties())
        .prop_map(|(si, up)| SubscribeProperties {
            subscription_identifier: si,
            user_properties: up,
        })
        .boxed()
}

fn unsubscribe_properties(v: ProtocolVersion) -> BoxedStrategy<UnsubscribeProperties> {
    if !v.is_v5() {
        return Just(UnsubscribeProperties::default()).boxed();
    }
    user_properties()
        .prop_map(|up| UnsubscribeProperties {
            user_properties: up,
        })
        .boxed()
}

fn disconnect_properties(v: ProtocolVersion) -> BoxedStrategy<DisconnectProperties> {
    if !v.is_v5() {
        return Just(DisconnectProperties::default()).boxed();
    }
    (
        option::of(any::<u32>()),
        option::of(mqtt_string()),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|(sei, rs, sr, up)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            server_reference: sr,
            user_properties: up,
        })
        .boxed()
}

fn auth_properties() -> impl Strategy<Value = AuthProperties> {
    (
        auth_method_data(),
        option::of(mqtt_string()),
        user_properties(),
    )
        .prop_map(|((am, ad), rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        })
}

// ---------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    (
        topic_name(),
        bytes_any(),
        qos(),
        any::<bool>(),
        will_properties(v),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        mqtt_string(),
        option::of(will(v)),
        option::of(mqtt_string()),
        option::of(bytes_any()),
        connect_properties(v),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // Before 5.0 a password needs a user name.
                let password = if v.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason_code(PacketType::ConnAck).boxed()
    } else {
        select(V3_CONNACK_CODES.to_vec()).boxed()
    };
    (any::<bool>(), code, connack_properties(v)).prop_map(
        move |(session_present, reason_code, properties)| {
            Packet::ConnAck(ConnAck {
                // Session Present only goes with success, and 3.1 has none.
                session_present: session_present
                    && !reason_code.is_error()
                    && v != ProtocolVersion::V3_1,
                reason_code,
                properties,
            })
        },
    )
}

/// A PUBLISH; `from_server` allows subscription identifiers.
fn publish(v: ProtocolVersion, from_server: bool) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        qos_pid(),
        any::<bool>(),
        topic_name(),
        any::<bool>(),
        bytes_any(),
        publish_properties(v, from_server),
    )
        .prop_map(
            move |(dup, qos, retain, topic, empty_topic, payload, properties)| {
                // An empty topic only stands for a topic alias (5.0).
                let topic = if empty_topic && properties.topic_alias.is_some() {
                    TopicName::empty()
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && qos != QosPid::AtMostOnce,
                    qos,
                    retain,
                    topic,
                    payload,
                    properties,
                })
            },
        )
}

fn ack(v: ProtocolVersion, ty: PacketType) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason_code(ty).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (packet_id(), code, ack_properties(v)).prop_map(move |(packet_id, reason_code, properties)| {
        let ack = Ack {
            packet_id,
            reason_code,
            properties,
        };
        match ty {
            PacketType::PubAck => Packet::PubAck(ack),
            PacketType::PubRec => Packet::PubRec(ack),
            PacketType::PubRel => Packet::PubRel(ack),
            PacketType::PubComp => Packet::PubComp(ack),
            other => unreachable!("{other} is not an acknowledgement"),
        }
    })
}

fn acks(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    prop_oneof![
        ack(v, PacketType::PubAck),
        ack(v, PacketType::PubRec),
        ack(v, PacketType::PubRel),
        ack(v, PacketType::PubComp),
    ]
}

fn subscribe_filter(v: ProtocolVersion) -> impl Strategy<Value = SubscribeFilter> {
    let retain_handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ]);
    (
        topic_filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        retain_handling,
    )
        .prop_map(move |(filter, qos, no_local, rap, rh)| {
            let options = if v.is_v5() {
                SubscriptionOptions {
                    qos,
                    // No Local never goes on a shared subscription.
                    no_local: no_local && !filter.is_shared(),
                    retain_as_published: rap,
                    retain_handling: rh,
                }
            } else {
                SubscriptionOptions::new(qos)
            };
            SubscribeFilter { filter, options }
        })
}

fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec(subscribe_filter(v), 1..4),
        subscribe_properties(v),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn suback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() {
        reason_code(PacketType::SubAck).boxed()
    } else {
        select(V3_SUBACK_CODES.to_vec()).boxed()
    };
    (packet_id(), vec(codes, 1..5), ack_properties(v)).prop_map(
        |(packet_id, reason_codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        },
    )
}

fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (
        packet_id(),
        vec(topic_filter(), 1..4),
        unsubscribe_properties(v),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        })
}

fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let codes = if v.is_v5() {
        vec(reason_code(PacketType::UnsubAck), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), codes, ack_properties(v)).prop_map(|(packet_id, reason_codes, properties)| {
        Packet::UnsubAck(UnsubAck {
            packet_id,
            reason_codes,
            properties,
        })
    })
}

fn disconnect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let code = if v.is_v5() {
        reason_code(PacketType::Disconnect).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (code, disconnect_properties(v)).prop_map(|(reason_code, properties)| {
        Packet::Disconnect(Disconnect {
            reason_code,
            properties,
        })
    })
}

fn auth() -> impl Strategy<Value = Packet> {
    (reason_code(PacketType::Auth), auth_properties()).prop_map(|(reason_code, properties)| {
        Packet::Auth(Auth {
            reason_code,
            properties,
        })
    })
}

/// Packets a client sends in `v`, CONNECT included.
fn client_packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        1 => connect(v),
        3 => publish(v, false),
        3 => acks(v),
        2 => subscribe(v),
        2 => unsubscribe(v),
        1 => Just(Packet::PingReq),
        1 => disconnect(v),
    ];
    if v.is_v5() {
        prop_oneof![6 => common, 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

/// Packets a server sends in `v`.
fn server_packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        1 => connack(v),
        3 => publish(v, true),
        3 => acks(v),
        2 => suback(v),
        2 => unsuback(v),
        1 => Just(Packet::PingResp),
    ];
    if v.is_v5() {
        prop_oneof![6 => common, 1 => disconnect(v), 1 => auth()].boxed()
    } else {
        common.boxed()
    }
}

fn role() -> impl Strategy<Value = Role> {
    select(vec![Role::Server, Role::Client])
}

/// A version and a packet travelling towards `role`.
fn packet_for(role: Role) -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(move |v| {
        let p = match role {
            Role::Server => client_packet(v),
            Role::Client => server_packet(v),
        };
        (Just(v), p)
    })
}

/// A stream a decoder of `role` reads: for a server, a CONNECT of the
/// version first, then any client packets.
fn stream_for(role: Role) -> impl Strategy<Value = Stream> {
    version().prop_flat_map(move |v| {
        let p = match role {
            Role::Server => client_packet(v),
            Role::Client => server_packet(v),
        };
        (Just(v), vec(p, 0..8)).prop_map(move |(v, mut packets)| {
            if role == Role::Server {
                packets.insert(0, minimal_connect(v));
            }
            Stream::new(role, v, packets)
        })
    })
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Packets, their encoding, and the decoder they are meant for.
#[derive(Debug, Clone)]
struct Stream {
    role: Role,
    version: ProtocolVersion,
    packets: Vec<Packet>,
    lens: Vec<usize>,
    wire: Vec<u8>,
}

impl Stream {
    fn new(role: Role, version: ProtocolVersion, packets: Vec<Packet>) -> Stream {
        let mut wire = Vec::new();
        let mut lens = Vec::new();
        for p in &packets {
            let before = wire.len();
            p.encode(version, &mut wire)
                .unwrap_or_else(|e| panic!("generated an unencodable packet {p:?}: {e}"));
            lens.push(wire.len() - before);
        }
        Stream {
            role,
            version,
            packets,
            lens,
            wire,
        }
    }

    /// A fresh decoder for this stream (the CONNECT is part of the stream).
    fn decoder(&self) -> Decoder {
        match self.role {
            Role::Server => Decoder::server(),
            Role::Client => Decoder::client(self.version),
        }
    }
}

fn minimal_connect(v: ProtocolVersion) -> Packet {
    Packet::Connect(Box::new(Connect::new(v, MqttString::from_static("c"))))
}

/// A server decoder that has read a CONNECT of `v`.
fn connected_server(v: ProtocolVersion) -> Decoder {
    let mut d = Decoder::server();
    let mut buf = BytesMut::new();
    minimal_connect(v).encode(v, &mut buf).expect("encodes");
    let p = d.decode(&mut buf).expect("decodes");
    assert!(matches!(p, Some(Packet::Connect(_))), "{p:?}");
    assert!(buf.is_empty());
    assert_eq!(d.version(), Some(v));
    d
}

/// A decoder of `role` ready to read `p` in `v`.
fn decoder_for(role: Role, v: ProtocolVersion, p: &Packet) -> Decoder {
    match role {
        Role::Server if matches!(p, Packet::Connect(_)) => Decoder::server(),
        Role::Server => connected_server(v),
        Role::Client => Decoder::client(v),
    }
}

/// What decoding a buffer gave: the packets in order, then the error that
/// stopped it (if any), and how many bytes were left undecoded.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<Packet>,
    error: Option<DecodeError>,
    left: usize,
}

/// Feeds `wire` to `decoder` in pieces of the sizes in `chunks` (cycled;
/// empty means all at once) through [`Decoder::decode`], checking that
/// `Ok(None)` never consumes a byte.
fn run_chunked(
    decoder: &mut Decoder,
    wire: &[u8],
    chunks: &[usize],
) -> Result<Outcome, TestCaseError> {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    loop {
        let n = if chunks.is_empty() {
            wire.len()
        } else {
            chunks[i % chunks.len()]
        };
        i += 1;
        let end = (pos + n).min(wire.len());
        buf.extend_from_slice(&wire[pos..end]);
        pos = end;
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(p)) => {
                    prop_assert!(buf.len() < before, "a packet consumed no bytes");
                    packets.push(p);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    break;
                }
                Err(error) => {
                    return Ok(Outcome {
                        packets,
                        error: Some(error),
                        left: wire.len() - pos + buf.len(),
                    })
                }
            }
        }
        if pos == wire.len() {
            return Ok(Outcome {
                packets,
                error: None,
                left: buf.len(),
            });
        }
    }
}

/// Feeds all of `wire` at once through [`Decoder::decode_bytes`].
fn run_bytes(decoder: &mut Decoder, wire: &[u8]) -> Result<Outcome, TestCaseError> {
    let mut buf = Bytes::copy_from_slice(wire);
    let mut packets = Vec::new();
    loop {
        let before = buf.len();
        match decoder.decode_bytes(&mut buf) {
            Ok(Some(p)) => {
                prop_assert!(buf.len() < before, "a packet consumed no bytes");
                packets.push(p);
            }
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(Outcome {
                    packets,
                    error: None,
                    left: buf.len(),
                });
            }
            Err(error) => {
                return Ok(Outcome {
                    packets,
                    error: Some(error),
                    left: buf.len(),
                })
            }
        }
    }
}

/// Encodes `p` in `v` and decodes it again with a fresh decoder of `role`;
/// checks the length and that the packet comes back unchanged.
fn check_roundtrip(role: Role, v: ProtocolVersion, p: &Packet) -> Result<(), TestCaseError> {
    let mut wire = BytesMut::new();
    if let Err(e) = p.encode(v, &mut wire) {
        return Err(TestCaseError::fail(format!(
            "{p:?} does not encode in {v}: {e}"
        )));
    }
    prop_assert_eq!(wire.len(), p.encoded_len(v), "encoded_len of {:?}", p);
    prop_assert_eq!(&p.to_bytes(v).expect("encodes")[..], &wire[..]);

    let mut d = decoder_for(role, v, p);
    let mut buf = wire.clone();
    let decoded = d.decode(&mut buf);
    prop_assert_eq!(decoded.as_ref(), Ok(&Some(p.clone())), "{:?} in {}", p, v);
    prop_assert!(buf.is_empty());
    prop_assert_eq!(d.decode(&mut buf), Ok(None));
    if let Packet::Connect(c) = p {
        prop_assert_eq!(d.version(), Some(c.protocol));
    }

    let mut d = decoder_for(role, v, p);
    let mut bytes = wire.freeze();
    prop_assert_eq!(d.decode_bytes(&mut bytes), Ok(Some(p.clone())));
    prop_assert!(bytes.is_empty());
    Ok(())
}

/// The version a decoder of `role` read `p` in, for encoding it back.
fn version_of(decoder: &Decoder, p: &Packet) -> ProtocolVersion {
    match p {
        Packet::Connect(c) => c.protocol,
        _ => decoder
            .version()
            .expect("a decoder that decoded a packet knows its version"),
    }
}

/// Decodes hostile bytes with `decoder` in every way (at once, a byte at a
/// time, in chunks, from `Bytes`): nothing panics, every way agrees, no
/// more packets than bytes, and every packet decoded survives a roundtrip.
fn check_hostile(
    make: impl Fn() -> Decoder,
    wire: &[u8],
    chunks: &[usize],
) -> Result<(), TestCaseError> {
    let mut d = make();
    let whole = run_chunked(&mut d, wire, &[])?;
    prop_assert!(whole.packets.len() <= wire.len() / 2);

    let mut by_byte = make();
    prop_assert_eq!(&run_chunked(&mut by_byte, wire, &[1])?, &whole);
    let mut chunked = make();
    prop_assert_eq!(&run_chunked(&mut chunked, wire, chunks)?, &whole);
    let mut from_bytes = make();
    prop_assert_eq!(&run_bytes(&mut from_bytes, wire)?, &whole);

    // Replay the packets through a fresh decoder to know the version each
    // was read in, then check decode → encode → decode.
    let role = d.role();
    let mut replay = make();
    let mut buf = BytesMut::from(wire);
    for p in &whole.packets {
        let again = replay.decode(&mut buf);
        prop_assert_eq!(again.as_ref(), Ok(&Some(p.clone())));
        check_roundtrip(role, version_of(&replay, p), p)?;
    }
    Ok(())
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    vec(1usize..12, 1..6)
}

/// A decoder of every kind: a server, and a client of each version.
fn decoder_kind() -> impl Strategy<Value = (Role, ProtocolVersion)> {
    prop_oneof![
        Just((Role::Server, V5)),
        version().prop_map(|v| (Role::Client, v)),
    ]
}

fn fresh(role: Role, v: ProtocolVersion) -> Decoder {
    match role {
        Role::Server => Decoder::server(),
        Role::Client => Decoder::client(v),
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
    ]
}

fn mutate(wire: &mut Vec<u8>, m: &Mutation) {
    match *m {
        Mutation::Flip(ref i, mask) if !wire.is_empty() => {
            let i = i.index(wire.len());
            wire[i] ^= mask;
        }
        Mutation::Insert(ref i, b) => {
            let i = i.index(wire.len() + 1);
            wire.insert(i, b);
        }
        Mutation::Delete(ref i) if !wire.is_empty() => {
            let i = i.index(wire.len());
            wire.remove(i);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    /// Every client-to-server packet survives encode → server decode.
    #[test]
    fn client_packets_roundtrip((v, p) in packet_for(Role::Server)) {
        check_roundtrip(Role::Server, v, &p)?;
    }

    /// Every server-to-client packet survives encode → client decode.
    #[test]
    fn server_packets_roundtrip((v, p) in packet_for(Role::Client)) {
        check_roundtrip(Role::Client, v, &p)?;
    }

    /// A stream decodes to the same packets however its bytes arrive.
    #[test]
    fn split_streams_decode_the_same(
        s in role().prop_flat_map(stream_for),
        chunks in chunk_sizes(),
    ) {
        let mut d = s.decoder();
        let whole = run_chunked(&mut d, &s.wire, &[])?;
        prop_assert_eq!(&whole, &Outcome { packets: s.packets.clone(), error: None, left: 0 });

        let mut d = s.decoder();
        prop_assert_eq!(&run_chunked(&mut d, &s.wire, &[1])?, &whole);
        let mut d = s.decoder();
        prop_assert_eq!(&run_chunked(&mut d, &s.wire, &chunks)?, &whole);
        let mut d = s.decoder();
        prop_assert_eq!(&run_bytes(&mut d, &s.wire)?, &whole);
    }

    /// While a packet is incomplete, `pending_len` (once the fixed header is
    /// in) names its full size, and nothing is consumed.
    #[test]
    fn pending_len_is_the_next_packet_size(s in role().prop_flat_map(stream_for)) {
        let mut d = s.decoder();
        let mut buf = BytesMut::new();
        let mut next = 0;
        for &b in &s.wire {
            buf.extend_from_slice(&[b]);
            loop {
                let before = buf.len();
                match d.decode(&mut buf) {
                    Ok(Some(p)) => {
                        prop_assert_eq!(&p, &s.packets[next]);
                        prop_assert_eq!(before - buf.len(), s.lens[next]);
                        next += 1;
                    }
                    Ok(None) => {
                        prop_assert_eq!(buf.len(), before);
                        if let Some(n) = d.pending_len() {
                            prop_assert_eq!(n, s.lens[next]);
                        }
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
                }
            }
        }
        prop_assert_eq!(next, s.packets.len());
        prop_assert!(buf.is_empty());
        prop_assert_eq!(d.pending_len(), None);
    }

    /// Arbitrary bytes never panic any decoder.
    #[test]
    fn arbitrary_bytes_never_panic(
        (role, v) in decoder_kind(),
        wire in vec(any::<u8>(), 0..256),
        chunks in chunk_sizes(),
    ) {
        check_hostile(|| fresh(role, v), &wire, &chunks)?;
    }

    /// Arbitrary bytes after a valid CONNECT never panic a server.
    #[test]
    fn arbitrary_bytes_after_connect_never_panic(
        v in version(),
        tail in vec(any::<u8>(), 0..256),
        chunks in chunk_sizes(),
    ) {
        let mut wire = minimal_connect(v).to_bytes(v).expect("encodes").to_vec();
        wire.extend_from_slice(&tail);
        check_hostile(Decoder::server, &wire, &chunks)?;
    }

    /// Arbitrary bytes that start like a packet a client reads.
    #[test]
    fn arbitrary_bodies_never_panic(
        v in version(),
        ty in 1u8..16,
        flags in prop_oneof![Just(0u8), Just(2u8), 0u8..16],
        body in vec(any::<u8>(), 0..64),
        chunks in chunk_sizes(),
    ) {
        let mut wire = vec![(ty << 4) | flags, body.len() as u8];
        wire.extend_from_slice(&body);
        check_hostile(|| Decoder::client(v), &wire, &chunks)?;
        let mut connected = minimal_connect(v).to_bytes(v).expect("encodes").to_vec();
        connected.extend_from_slice(&wire);
        check_hostile(Decoder::server, &connected, &chunks)?;
    }

    /// A 5.0 packet encoded in any version (dropping what the version cannot
    /// carry): an error writes nothing; success writes `encoded_len` bytes
    /// that decode, and the decoded packet encodes to the same bytes.
    #[test]
    fn packets_encode_consistently_in_every_version(
        (role, p) in role().prop_flat_map(|r| {
            let p = match r {
                Role::Server => client_packet(V5),
                Role::Client => server_packet(V5),
            };
            (Just(r), p)
        }),
        v in version(),
    ) {
        const PREFIX: &[u8] = b"prefix";
        let mut out = BytesMut::from(PREFIX);
        match p.encode(v, &mut out) {
            Err(_) => prop_assert_eq!(&out[..], PREFIX, "a failed encode wrote bytes"),
            Ok(()) => {
                let wire = out.split_off(PREFIX.len());
                prop_assert_eq!(wire.len(), p.encoded_len(v));
                if role == Role::Client && !v.is_v5() && matches!(p, Packet::Disconnect(_)) {
                    // Servers send DISCONNECT only from 5.0 on.
                    return Ok(());
                }
                let read_in = match &p {
                    Packet::Connect(c) => c.protocol,
                    _ => v,
                };
                let mut d = decoder_for(role, read_in, &p);
                let mut buf = wire.clone();
                let decoded = d.decode(&mut buf);
                let Ok(Some(q)) = decoded else {
                    return Err(TestCaseError::fail(format!("{p:?} in {v}: {decoded:?}")));
                };
                prop_assert_eq!(&q.to_bytes(v).expect("encodes")[..], &wire[..]);
            }
        }
    }

    /// Mutated valid streams never panic, and what decodes roundtrips.
    #[test]
    fn mutated_streams_never_panic(
        s in role().prop_flat_map(stream_for),
        mutations in vec(mutation(), 1..4),
        chunks in chunk_sizes(),
    ) {
        let mut wire = s.wire.clone();
        for m in &mutations {
            mutate(&mut wire, m);
        }
        check_hostile(|| s.decoder(), &wire, &chunks)?;
    }
}

// ---------------------------------------------------------------------------
// A few fixed cases the strategies would find only by luck
// ---------------------------------------------------------------------------

#[test]
fn every_reason_code_roundtrips_where_allowed() {
    for ty in [
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
    ] {
        for code in codes_for(ty) {
            let ack = Ack {
                packet_id: PacketId::new(7).expect("non-zero"),
                reason_code: code,
                properties: AckProperties::default(),
            };
            let p = match ty {
                PacketType::PubAck => Packet::PubAck(ack),
                PacketType::PubRec => Packet::PubRec(ack),
                PacketType::PubRel => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            };
            check_roundtrip(Role::Client, V5, &p).expect("roundtrips");
            check_roundtrip(Role::Server, V5, &p).expect("roundtrips");
        }
    }
    for code in codes_for(PacketType::Disconnect) {
        let p = Packet::Disconnect(Disconnect::new(code));
        check_roundtrip(Role::Client, V5, &p).expect("roundtrips");
        check_roundtrip(Role::Server, V5, &p).expect("roundtrips");
    }
    for code in codes_for(PacketType::ConnAck) {
        let mut c = ConnAck::new(false);
        c.reason_code = code;
        check_roundtrip(Role::Client, V5, &Packet::ConnAck(c)).expect("roundtrips");
    }
    for v in [V3_1, V3_1_1] {
        for code in V3_CONNACK_CODES {
            let mut c = ConnAck::new(false);
            c.reason_code = code;
            check_roundtrip(Role::Client, v, &Packet::ConnAck(c)).expect("roundtrips");
        }
    }
}

#[test]
fn large_packets_use_long_remaining_lengths() {
    // Remaining lengths of 1, 2 and 3 bytes.
    for size in [0usize, 127, 128, 16_383, 16_384, 200_000] {
        let publish = Publish::new(
            TopicName::from_static("a/b"),
            QosPid::AtLeastOnce(PacketId::new(1).expect("non-zero")),
            vec![0xa5; size],
        );
        for v in VERSIONS {
            let p = Packet::Publish(publish.clone());
            check_roundtrip(Role::Client, v, &p).expect("roundtrips");
            check_roundtrip(Role::Server, v, &p).expect("roundtrips");
        }
    }
}
