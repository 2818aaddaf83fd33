//! Shared inputs for the benchmarks: the same MQTT packets built with
//! `tern-codec` and with each peer codec, and one decode and one encode
//! function per implementation, so every bench target measures the same
//! work the same way.
//!
//! Peers:
//!
//! - `rumqttc` 0.25: `rumqttc::mqttbytes::v4` for 3.1.1 and
//!   `rumqttc::v5::mqttbytes::v5` for 5.0.
//! - `mqtt5-protocol` 0.16 (`mqtt5_protocol::packet`), which speaks both
//!   3.1.1 and 5.0.
//!
//! Every decoder reads from a `BytesMut` and splits the packet off it, which
//! is what a framed reader does. Every encoder writes into a `BytesMut` that
//! the caller reuses. Each peer gets its fastest public path (documented on
//! each function), so the comparison favours the peer, never tern.
//!
//! [`check_all`] verifies, before anything is measured, that every
//! implementation decodes the same bytes to the same fields and encodes the
//! same packet to the same number of bytes.

use bytes::{Bytes, BytesMut};

/// The largest packet any decoder here accepts.
pub const MAX_PACKET: usize = 1024 * 1024;

/// The topic of every PUBLISH (39 bytes, a typical telemetry topic).
pub const TOPIC: &str = "sensors/building-7/floor-3/temperature";

/// The packet identifier of QoS 1 PUBLISH packets.
pub const PKID: u16 = 4242;

/// The payload sizes measured.
pub const PAYLOAD_SIZES: [usize; 4] = [16, 256, 1024, 4096];

/// Message Expiry Interval of the 5.0 PUBLISH with properties.
pub const EXPIRY: u32 = 3600;
/// Content Type of the 5.0 PUBLISH with properties.
pub const CONTENT_TYPE: &str = "application/json";
/// The user property of the 5.0 PUBLISH with properties.
pub const USER_PROPERTY: (&str, &str) = ("trace-id", "4bf92f3577b34da6");

/// Client identifier of CONNECT.
pub const CLIENT_ID: &str = "tern-bench-client-0001";
/// Will topic of CONNECT.
pub const WILL_TOPIC: &str = "clients/tern-bench-client-0001/status";
/// Will payload of CONNECT.
pub const WILL_PAYLOAD: &str = "offline";
/// User name of CONNECT.
pub const USERNAME: &str = "bench-user";
/// Password of CONNECT (ASCII: rumqttc keeps passwords as `String`).
pub const PASSWORD: &str = "correct horse battery staple";

/// Packet identifier of SUBSCRIBE.
pub const SUB_PKID: u16 = 17;
/// The five filters of SUBSCRIBE with their QoS (0, 1 or 2).
pub const FILTERS: [(&str, u8); 5] = [
    ("sensors/+/floor-3/temperature", 1),
    ("sensors/building-7/#", 0),
    ("alerts/critical", 2),
    ("home/+/+/humidity", 1),
    ("$SYS/broker/clients/connected", 0),
];

/// The protocol versions compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.0.
    V5,
}

impl Version {
    /// A short name for benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Version::V311 => "v3.1.1",
            Version::V5 => "v5",
        }
    }

    /// The protocol level byte (4 or 5).
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }

    fn tern(self) -> tern_codec::ProtocolVersion {
        match self {
            Version::V311 => tern_codec::ProtocolVersion::V3_1_1,
            Version::V5 => tern_codec::ProtocolVersion::V5,
        }
    }
}

/// One PUBLISH shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishCase {
    /// Protocol version.
    pub version: Version,
    /// QoS 1 (with a packet identifier) rather than QoS 0.
    pub qos1: bool,
    /// With message expiry, content type and one user property (5.0 only).
    pub props: bool,
    /// Payload size in bytes.
    pub payload: usize,
}

impl PublishCase {
    /// Every case measured: {3.1.1, 5.0, 5.0 with properties} x {QoS 0, QoS 1}
    /// x [`PAYLOAD_SIZES`].
    pub fn all() -> Vec<PublishCase> {
        let mut v = Vec::new();
        for (version, props) in [
            (Version::V311, false),
            (Version::V5, false),
            (Version::V5, true),
        ] {
            for qos1 in [false, true] {
                for payload in PAYLOAD_SIZES {
                    v.push(PublishCase {
                        version,
                        qos1,
                        props,
                        payload,
                    });
                }
            }
        }
        v
    }

    /// The variant: `v3.1.1`, `v5` or `v5+props`.
    pub fn variant(&self) -> &'static str {
        match (self.version, self.props) {
            (Version::V311, _) => "v3.1.1",
            (Version::V5, false) => "v5",
            (Version::V5, true) => "v5+props",
        }
    }

    /// QoS and payload size, e.g. `qos1/1KiB`.
    pub fn shape(&self) -> String {
        let size = match self.payload {
            n if n >= 1024 && n % 1024 == 0 => format!("{}KiB", n / 1024),
            n => format!("{n}B"),
        };
        format!("qos{}/{size}", u8::from(self.qos1))
    }

    /// The payload: `payload` bytes of printable ASCII.
    pub fn payload_bytes(&self) -> Bytes {
        (0..self.payload)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>()
            .into()
    }
}

/// Which packet a decode or encode benchmark handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// A PUBLISH.
    Publish(PublishCase),
    /// CONNECT with will, user name and password.
    Connect(Version),
    /// SUBSCRIBE with the five [`FILTERS`].
    Subscribe(Version),
}

impl Case {
    /// The protocol version.
    pub fn version(&self) -> Version {
        match *self {
            Case::Publish(p) => p.version,
            Case::Connect(v) | Case::Subscribe(v) => v,
        }
    }
}

/// tern-codec: `Decoder::decode` from a `BytesMut`, `Packet::encode` /
/// `Publish::encode` into a `BytesMut`.
pub mod tern {
    use super::*;
    use tern_codec::{
        Connect, Decoder, MqttString, Packet, PacketId, Publish, PublishProperties, QoS, QosPid,
        Subscribe, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName, Will,
    };

    fn qos(q: u8) -> QoS {
        QoS::from_u8(q).expect("QoS 0, 1 or 2")
    }

    /// The packet for `case`.
    pub fn packet(case: Case) -> Packet {
        match case {
            Case::Publish(c) => Packet::Publish(publish(c)),
            Case::Connect(v) => {
                let mut c = Connect::new(v.tern(), MqttString::from_static(CLIENT_ID));
                c.will = Some(Will {
                    topic: TopicName::from_static(WILL_TOPIC),
                    payload: Bytes::from_static(WILL_PAYLOAD.as_bytes()),
                    qos: QoS::AtLeastOnce,
                    retain: true,
                    properties: Default::default(),
                });
                c.username = Some(MqttString::from_static(USERNAME));
                c.password = Some(Bytes::from_static(PASSWORD.as_bytes()));
                Packet::Connect(Box::new(c))
            }
            Case::Subscribe(_) => Packet::Subscribe(Subscribe {
                packet_id: PacketId::new(SUB_PKID).expect("non-zero"),
                filters: FILTERS
                    .iter()
                    .map(|&(f, q)| SubscribeFilter {
                        filter: TopicFilter::from_static(f),
                        options: SubscriptionOptions::new(qos(q)),
                    })
                    .collect(),
                properties: Default::default(),
            }),
        }
    }

    /// The PUBLISH for `case`.
    pub fn publish(case: PublishCase) -> Publish {
        let qos = if case.qos1 {
            QosPid::AtLeastOnce(PacketId::new(PKID).expect("non-zero"))
        } else {
            QosPid::AtMostOnce
        };
        let mut p = Publish::new(TopicName::from_static(TOPIC), qos, case.payload_bytes());
        if case.props {
            p.properties = PublishProperties {
                message_expiry_interval: Some(EXPIRY),
                content_type: Some(MqttString::from_static(CONTENT_TYPE)),
                user_properties: vec![(
                    MqttString::from_static(USER_PROPERTY.0),
                    MqttString::from_static(USER_PROPERTY.1),
                )],
                ..Default::default()
            };
        }
        p
    }

    /// A decoder for `case`: a client decoder for PUBLISH (what a broker
    /// sends), a server decoder for CONNECT and SUBSCRIBE.
    pub fn decoder(case: Case) -> Decoder {
        let d = match case {
            Case::Publish(c) => Decoder::client(c.version.tern()),
            Case::Connect(_) => Decoder::server(),
            Case::Subscribe(v) => {
                let mut d = Decoder::server();
                d.set_version(v.tern());
                d
            }
        };
        d.with_max_packet_size(MAX_PACKET as u32)
    }

    /// Decodes one complete packet, splitting it off `buf`.
    #[inline]
    pub fn decode(d: &mut Decoder, buf: &mut BytesMut) -> Packet {
        match d.decode(buf) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("tern: incomplete packet"),
            Err(e) => panic!("tern: {e}"),
        }
    }

    /// Encodes `p` into `buf` (PUBLISH through `Publish::encode`, the rest
    /// through `Packet::encode`).
    #[inline]
    pub fn encode(p: &Packet, v: Version, buf: &mut BytesMut) {
        let r = match p {
            Packet::Publish(p) => p.encode(v.tern(), buf),
            p => p.encode(v.tern(), buf),
        };
        r.expect("tern: encode");
    }
}

/// rumqttc 0.25: `mqttbytes::v4` (3.1.1) and `v5::mqttbytes::v5` (5.0).
pub mod rumqttc {
    use super::*;
    use ::rumqttc::mqttbytes::v4;
    use ::rumqttc::v5::mqttbytes::v5;

    /// A rumqttc packet of either version.
    // Unboxed on purpose: boxing would add an allocation to the peer's decode.
    #[allow(clippy::large_enum_variant)]
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Packet {
        /// 3.1.1.
        V4(v4::Packet),
        /// 5.0.
        V5(v5::Packet),
    }

    fn qos4(q: u8) -> ::rumqttc::mqttbytes::QoS {
        ::rumqttc::mqttbytes::qos(q).expect("QoS")
    }

    fn qos5(q: u8) -> ::rumqttc::v5::mqttbytes::QoS {
        ::rumqttc::v5::mqttbytes::qos(q).expect("QoS")
    }

    /// The packet for `case`.
    pub fn packet(case: Case) -> Packet {
        match (case, case.version()) {
            (Case::Publish(c), Version::V311) => {
                let mut p = v4::Publish::from_bytes(TOPIC, qos4(c.qos1.into()), c.payload_bytes());
                if c.qos1 {
                    p.pkid = PKID;
                }
                Packet::V4(v4::Packet::Publish(p))
            }
            (Case::Publish(c), Version::V5) => {
                let props = c.props.then(|| v5::PublishProperties {
                    message_expiry_interval: Some(EXPIRY),
                    content_type: Some(CONTENT_TYPE.into()),
                    user_properties: vec![(USER_PROPERTY.0.into(), USER_PROPERTY.1.into())],
                    ..Default::default()
                });
                let mut p = v5::Publish::new(TOPIC, qos5(c.qos1.into()), c.payload_bytes(), props);
                if c.qos1 {
                    p.pkid = PKID;
                }
                Packet::V5(v5::Packet::Publish(p))
            }
            (Case::Connect(_), Version::V311) => {
                let mut c = v4::Connect::new(CLIENT_ID);
                c.keep_alive = 60;
                c.last_will = Some(v4::LastWill::new(WILL_TOPIC, WILL_PAYLOAD, qos4(1), true));
                c.set_login(USERNAME, PASSWORD);
                Packet::V4(v4::Packet::Connect(c))
            }
            (Case::Connect(_), Version::V5) => {
                let c = v5::Connect {
                    keep_alive: 60,
                    client_id: CLIENT_ID.into(),
                    clean_start: true,
                    properties: None,
                };
                let will = v5::LastWill::new(WILL_TOPIC, WILL_PAYLOAD, qos5(1), true, None);
                let login = v5::Login::new(USERNAME, PASSWORD);
                Packet::V5(v5::Packet::Connect(c, Some(will), Some(login)))
            }
            (Case::Subscribe(_), Version::V311) => {
                let mut s = v4::Subscribe::new_many(
                    FILTERS
                        .iter()
                        .map(|&(f, q)| v4::SubscribeFilter::new(f.into(), qos4(q))),
                );
                s.pkid = SUB_PKID;
                Packet::V4(v4::Packet::Subscribe(s))
            }
            (Case::Subscribe(_), Version::V5) => {
                let mut s = v5::Subscribe::new_many(
                    FILTERS.iter().map(|&(f, q)| v5::Filter::new(f, qos5(q))),
                    None,
                );
                s.pkid = SUB_PKID;
                Packet::V5(v5::Packet::Subscribe(s))
            }
        }
    }

    /// Decodes one complete packet with `Packet::read`, rumqttc's framing
    /// entry point (its tokio `Codec` calls exactly this).
    #[inline]
    pub fn decode(v: Version, buf: &mut BytesMut) -> Packet {
        match v {
            Version::V311 => Packet::V4(v4::Packet::read(buf, MAX_PACKET).expect("rumqttc v4")),
            Version::V5 => {
                Packet::V5(v5::Packet::read(buf, Some(MAX_PACKET as u32)).expect("rumqttc v5"))
            }
        }
    }

    /// Encodes with each packet struct's own `write`, which is what
    /// `Packet::write` calls after a size check that is skipped here (the
    /// peer's fastest public path).
    #[inline]
    pub fn encode(p: &Packet, buf: &mut BytesMut) {
        let n = match p {
            Packet::V4(v4::Packet::Publish(p)) => p.write(buf).expect("rumqttc v4"),
            Packet::V4(v4::Packet::Connect(c)) => c.write(buf).expect("rumqttc v4"),
            Packet::V4(v4::Packet::Subscribe(s)) => s.write(buf).expect("rumqttc v4"),
            Packet::V5(v5::Packet::Publish(p)) => p.write(buf).expect("rumqttc v5"),
            Packet::V5(v5::Packet::Connect(c, will, login)) => {
                c.write(will, login, buf).expect("rumqttc v5")
            }
            Packet::V5(v5::Packet::Subscribe(s)) => s.write(buf).expect("rumqttc v5"),
            other => panic!("not benchmarked: {other:?}"),
        };
        debug_assert!(n > 0);
    }

    /// Topic, packet id and payload of a decoded PUBLISH, for [`check_all`].
    pub fn publish_fields(p: &Packet) -> (Vec<u8>, u16, Bytes) {
        match p {
            Packet::V4(v4::Packet::Publish(p)) => {
                (p.topic.as_bytes().to_vec(), p.pkid, p.payload.clone())
            }
            Packet::V5(v5::Packet::Publish(p)) => (p.topic.to_vec(), p.pkid, p.payload.clone()),
            other => panic!("not a PUBLISH: {other:?}"),
        }
    }
}

/// mqtt5-protocol 0.16 (`mqtt5_protocol::packet`), 3.1.1 and 5.0.
pub mod mqtt5 {
    use super::*;
    use bytes::Buf;
    use mqtt5_protocol::packet::connect::ConnectPacket;
    use mqtt5_protocol::packet::publish::PublishPacket;
    use mqtt5_protocol::packet::subscribe::SubscribePacket;
    use mqtt5_protocol::packet::MqttPacket;
    use mqtt5_protocol::{
        ConnectOptions, FixedHeader, Packet, PacketType, ProtocolVersion, QoS, WillMessage,
    };

    fn qos(q: u8) -> QoS {
        match q {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// The packet for `case`.
    pub fn packet(case: Case) -> Packet {
        let v5 = case.version() == Version::V5;
        match case {
            Case::Publish(c) => {
                let mut p = if v5 {
                    PublishPacket::new(TOPIC, c.payload_bytes(), qos(c.qos1.into()))
                } else {
                    PublishPacket::new_v311(TOPIC, c.payload_bytes(), qos(c.qos1.into()))
                };
                if c.qos1 {
                    p = p.with_packet_id(PKID);
                }
                if c.props {
                    p = p
                        .with_message_expiry_interval(EXPIRY)
                        .with_content_type(CONTENT_TYPE.into())
                        .with_user_property(USER_PROPERTY.0.into(), USER_PROPERTY.1.into());
                }
                Packet::Publish(p)
            }
            Case::Connect(_) => {
                let will = WillMessage::new(WILL_TOPIC, WILL_PAYLOAD)
                    .with_qos(QoS::AtLeastOnce)
                    .with_retain(true);
                let mut o = ConnectOptions::new(CLIENT_ID)
                    .with_keep_alive(std::time::Duration::from_secs(60))
                    .with_will(will)
                    .with_credentials(USERNAME, PASSWORD.as_bytes());
                if v5 {
                    Packet::Connect(Box::new(ConnectPacket::new(o)))
                } else {
                    o = o.with_protocol_version(ProtocolVersion::V311);
                    Packet::Connect(Box::new(ConnectPacket::new_v311(o)))
                }
            }
            Case::Subscribe(_) => {
                let mut s = if v5 {
                    SubscribePacket::new(SUB_PKID)
                } else {
                    SubscribePacket::new_v311(SUB_PKID)
                };
                for (f, q) in FILTERS {
                    s = s.add_filter(f, qos(q));
                }
                Packet::Subscribe(s)
            }
        }
    }

    /// Decodes one complete packet: the fixed header is read from a slice
    /// of `buf`, the packet is split off `buf` (zero-copy, as the others
    /// do) and its body decoded with `Packet::decode_from_body_with_version`.
    /// The payload stays a slice of `buf`: `copy_to_bytes` on `Bytes` does
    /// not copy. (The `mqtt5` client itself copies each body into a fresh
    /// `Vec` first; this path is the peer's fastest.)
    #[inline]
    pub fn decode(v: Version, buf: &mut BytesMut) -> Packet {
        let mut head: &[u8] = &buf[..];
        let fh = FixedHeader::decode(&mut head).expect("mqtt5: fixed header");
        let header_len = buf.len() - head.len();
        let total = header_len + fh.remaining_length as usize;
        assert!(
            total <= MAX_PACKET && buf.len() >= total,
            "mqtt5: incomplete"
        );
        let mut body = buf.split_to(total).freeze();
        body.advance(header_len);
        Packet::decode_from_body_with_version(fh.packet_type, &fh, &mut body, v.level())
            .expect("mqtt5: decode")
    }

    /// Encodes a PUBLISH with its allocation-free path
    /// (`FixedHeader::encode` + `encode_body_direct`); CONNECT and SUBSCRIBE
    /// have only `MqttPacket::encode`, which builds the body in a `Vec`
    /// first.
    #[inline]
    pub fn encode(p: &Packet, buf: &mut BytesMut) {
        let r = match p {
            Packet::Publish(p) => {
                let len = u32::try_from(p.body_encoded_size()).expect("fits");
                FixedHeader::new(PacketType::Publish, p.flags(), len)
                    .encode(buf)
                    .and_then(|()| p.encode_body_direct(buf))
            }
            Packet::Connect(c) => c.encode(buf),
            Packet::Subscribe(s) => s.encode(buf),
            other => panic!("not benchmarked: {other:?}"),
        };
        r.expect("mqtt5: encode");
    }

    /// Topic, packet id and payload of a decoded PUBLISH, for [`check_all`].
    pub fn publish_fields(p: &Packet) -> (Vec<u8>, u16, Bytes) {
        match p {
            Packet::Publish(p) => (
                p.topic_name.as_bytes().to_vec(),
                p.packet_id.unwrap_or(0),
                p.payload.clone(),
            ),
            other => panic!("not a PUBLISH: {other:?}"),
        }
    }
}

/// Every benchmarked case: the PUBLISH cases, then CONNECT and SUBSCRIBE in
/// 3.1.1 and 5.0.
pub fn all_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = PublishCase::all().into_iter().map(Case::Publish).collect();
    for v in [Version::V311, Version::V5] {
        cases.push(Case::Connect(v));
    }
    for v in [Version::V311, Version::V5] {
        cases.push(Case::Subscribe(v));
    }
    cases
}

/// The wire bytes every decoder reads for `case`: tern's encoding, which
/// [`check_all`] checks each peer decodes to the same fields.
pub fn wire(case: Case) -> Bytes {
    let mut buf = BytesMut::new();
    tern::encode(&tern::packet(case), case.version(), &mut buf);
    buf.freeze()
}

/// Checks that all implementations agree on every case: each peer decodes
/// tern's bytes to the same PUBLISH fields (or, for CONNECT and SUBSCRIBE,
/// re-encodes what it decoded to the same length), and each encodes the
/// packet to as many bytes as tern. Panics on any disagreement.
pub fn check_all() {
    for case in all_cases() {
        let v = case.version();
        let bytes = wire(case);
        let len = bytes.len();

        // Encoded lengths agree.
        let mut b = BytesMut::new();
        rumqttc::encode(&rumqttc::packet(case), &mut b);
        assert_eq!(b.len(), len, "rumqttc encodes {case:?} to another length");
        let mut b = BytesMut::new();
        mqtt5::encode(&mqtt5::packet(case), &mut b);
        assert_eq!(b.len(), len, "mqtt5 encodes {case:?} to another length");

        // Every decoder reads tern's bytes, all of them.
        let mut buf = BytesMut::from(&bytes[..]);
        let t = tern::decode(&mut tern::decoder(case), &mut buf);
        assert!(buf.is_empty());
        assert_eq!(t, tern::packet(case), "tern round trip of {case:?}");
        let mut buf = BytesMut::from(&bytes[..]);
        let r = rumqttc::decode(v, &mut buf);
        assert!(buf.is_empty());
        let mut buf = BytesMut::from(&bytes[..]);
        let m = mqtt5::decode(v, &mut buf);
        assert!(buf.is_empty());

        match case {
            Case::Publish(c) => {
                let want = (TOPIC.as_bytes().to_vec(), if c.qos1 { PKID } else { 0 });
                let payload = c.payload_bytes();
                let (rt, rp, rpay) = rumqttc::publish_fields(&r);
                assert_eq!((rt, rp), want, "rumqttc {case:?}");
                assert_eq!(rpay, payload);
                let (mt, mp, mpay) = mqtt5::publish_fields(&m);
                assert_eq!((mt, mp), want, "mqtt5 {case:?}");
                assert_eq!(mpay, payload);
                if c.props {
                    check_props(&r, &m);
                }
            }
            _ => {
                // What each peer decoded, encoded again, is as long as the
                // original: nothing was dropped.
                let mut b = BytesMut::new();
                rumqttc::encode(&r, &mut b);
                assert_eq!(b.len(), len, "rumqttc re-encodes {case:?}");
                let mut b = BytesMut::new();
                mqtt5::encode(&m, &mut b);
                assert_eq!(b.len(), len, "mqtt5 re-encodes {case:?}");
            }
        }
    }
}

fn check_props(r: &rumqttc::Packet, m: &mqtt5_protocol::Packet) {
    use ::rumqttc::v5::mqttbytes::v5;
    let rumqttc::Packet::V5(v5::Packet::Publish(p)) = r else {
        panic!("rumqttc: not a 5.0 PUBLISH");
    };
    let props = p.properties.as_ref().expect("rumqttc: properties");
    assert_eq!(props.message_expiry_interval, Some(EXPIRY));
    assert_eq!(props.content_type.as_deref(), Some(CONTENT_TYPE));
    assert_eq!(props.user_properties.len(), 1);
    let mqtt5_protocol::Packet::Publish(p) = m else {
        panic!("mqtt5: not a PUBLISH");
    };
    assert_eq!(p.message_expiry_interval(), Some(EXPIRY));
    assert_eq!(p.properties.len(), 3, "mqtt5: three properties");
}
