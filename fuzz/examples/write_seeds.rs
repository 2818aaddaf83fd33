//! Writes hand-made seed inputs for the fuzz targets, in the format of
//! `src/lib.rs` (a role/version byte, then a byte stream), into every
//! directory given on the command line (scripts of `src/broker.rs` into a
//! directory named `broker_script`):
//!
//! ```text
//! cargo run --example write_seeds -- corpus/decode corpus/roundtrip
//! ```
//!
//! A server stream starts with CONNECT and goes on with what a client sends
//! in that version; a client stream holds what a server sends.

use std::num::{NonZeroU16, NonZeroU32};
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use tern_codec::{
    Ack, Auth, ConnAck, Connect, Disconnect, MqttString, Packet, PacketId, ProtocolVersion,
    Publish, QoS, QosPid, ReasonCode, RetainHandling, SubAck, Subscribe, SubscribeFilter,
    SubscriptionOptions, TopicFilter, TopicName, UnsubAck, Unsubscribe, Will,
};
use tern_fuzz::Input;

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

fn s(v: &'static str) -> MqttString {
    MqttString::from_static(v)
}

fn connect(v: ProtocolVersion, full: bool) -> Packet {
    let mut c = Connect::new(v, s("tern-seed"));
    if full {
        c.clean_start = false;
        c.keep_alive = 30;
        c.username = Some(s("user"));
        c.password = Some(Bytes::from_static(b"secret"));
        let mut will = Will {
            topic: TopicName::from_static("clients/tern-seed/status"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
        };
        if v.is_v5() {
            will.properties.will_delay_interval = Some(5);
            will.properties.content_type = Some(s("text/plain"));
            will.properties.payload_format_indicator = Some(true);
            c.properties.session_expiry_interval = Some(3600);
            c.properties.receive_maximum = NonZeroU16::new(16);
            c.properties.maximum_packet_size = NonZeroU32::new(65536);
            c.properties.topic_alias_maximum = Some(8);
            c.properties.request_problem_information = Some(false);
            c.properties.user_properties.push((s("k"), s("v")));
        }
        c.will = Some(will);
    }
    c.into()
}

fn publish(v: ProtocolVersion, qos: QosPid, from_server: bool) -> Packet {
    let mut p = Publish::new(
        TopicName::from_static("sensors/kitchen/temp"),
        qos,
        Bytes::from_static(b"21.5"),
    );
    p.retain = matches!(qos, QosPid::AtMostOnce);
    p.dup = matches!(qos, QosPid::ExactlyOnce(_));
    if v.is_v5() {
        p.properties.message_expiry_interval = Some(60);
        p.properties.topic_alias = NonZeroU16::new(3);
        p.properties.response_topic = Some(TopicName::from_static("reply/here"));
        p.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        if from_server {
            p.properties.subscription_identifiers = vec![NonZeroU32::new(200).unwrap()];
        }
    }
    p.into()
}

fn alias_only_publish() -> Packet {
    let mut p = Publish::new(
        TopicName::empty(),
        QosPid::AtMostOnce,
        Bytes::from_static(b"x"),
    );
    p.properties.topic_alias = NonZeroU16::new(3);
    p.into()
}

fn subscribe(v: ProtocolVersion) -> Packet {
    let mut options = SubscriptionOptions::new(QoS::ExactlyOnce);
    if v.is_v5() {
        options.no_local = true;
        options.retain_as_published = true;
        options.retain_handling = RetainHandling::DoNotSend;
    }
    let mut sub = Subscribe {
        packet_id: pid(10),
        filters: vec![
            SubscribeFilter {
                filter: TopicFilter::from_static("sensors/+/temp"),
                options,
            },
            SubscribeFilter {
                filter: TopicFilter::from_static("$share/group/alerts/#"),
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
            },
        ],
        properties: Default::default(),
    };
    if v.is_v5() {
        sub.properties.subscription_identifier = NonZeroU32::new(200);
    }
    sub.into()
}

fn unsubscribe() -> Packet {
    Unsubscribe {
        packet_id: pid(11),
        filters: vec![
            TopicFilter::from_static("sensors/+/temp"),
            TopicFilter::from_static("#"),
        ],
        properties: Default::default(),
    }
    .into()
}

fn ack(v: ProtocolVersion, code: ReasonCode) -> Ack {
    let mut a = Ack::new(pid(7));
    if v.is_v5() {
        a.reason_code = code;
        a.properties.reason_string = Some(s("why"));
    }
    a
}

fn connack(v: ProtocolVersion) -> Packet {
    let mut c = ConnAck::new(true);
    if v.is_v5() {
        c.properties.maximum_qos = Some(QoS::AtLeastOnce);
        c.properties.assigned_client_identifier = Some(s("auto-1"));
        c.properties.topic_alias_maximum = Some(10);
        c.properties.server_keep_alive = Some(20);
    }
    c.into()
}

fn suback(v: ProtocolVersion) -> Packet {
    SubAck {
        packet_id: pid(10),
        reason_codes: vec![
            ReasonCode::GrantedQoS2,
            if v.is_v5() {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::UnspecifiedError
            },
        ],
        properties: Default::default(),
    }
    .into()
}

fn unsuback(v: ProtocolVersion) -> Packet {
    UnsubAck {
        packet_id: pid(11),
        reason_codes: if v.is_v5() {
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        } else {
            Vec::new()
        },
        properties: Default::default(),
    }
    .into()
}

fn disconnect(v: ProtocolVersion) -> Packet {
    let mut d = Disconnect::default();
    if v.is_v5() {
        d.reason_code = ReasonCode::DisconnectWithWillMessage;
        d.properties.session_expiry_interval = Some(0);
    }
    d.into()
}

fn auth() -> Packet {
    let mut a = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: Default::default(),
    };
    a.properties.authentication_method = Some(s("SCRAM-SHA-1"));
    a.properties.authentication_data = Some(Bytes::from_static(b"n,,n=user,r=abc"));
    a.into()
}

/// What a client sends after CONNECT, in `v`.
fn client_packets(v: ProtocolVersion) -> Vec<Packet> {
    let mut out = vec![
        publish(v, QosPid::AtMostOnce, false),
        publish(v, QosPid::AtLeastOnce(pid(1)), false),
        publish(v, QosPid::ExactlyOnce(pid(2)), false),
        Packet::PubAck(ack(v, ReasonCode::NoMatchingSubscribers)),
        Packet::PubRec(ack(v, ReasonCode::Success)),
        Packet::PubRel(ack(v, ReasonCode::PacketIdentifierNotFound)),
        Packet::PubComp(ack(v, ReasonCode::Success)),
        subscribe(v),
        unsubscribe(),
        Packet::PingReq,
    ];
    if v.is_v5() {
        out.push(alias_only_publish());
        out.push(auth());
    }
    out.push(disconnect(v));
    out
}

/// What a server sends, in `v`.
fn server_packets(v: ProtocolVersion) -> Vec<Packet> {
    let mut out = vec![
        connack(v),
        publish(v, QosPid::AtMostOnce, true),
        publish(v, QosPid::ExactlyOnce(pid(9)), true),
        Packet::PubAck(ack(v, ReasonCode::QuotaExceeded)),
        Packet::PubRec(ack(v, ReasonCode::Success)),
        Packet::PubRel(ack(v, ReasonCode::Success)),
        Packet::PubComp(ack(v, ReasonCode::PacketIdentifierNotFound)),
        suback(v),
        unsuback(v),
        Packet::PingResp,
    ];
    if v.is_v5() {
        out.push(auth());
        out.push(disconnect(v));
    }
    out
}

fn encode(packets: &[Packet], v: ProtocolVersion, out: &mut BytesMut) {
    for p in packets {
        p.encode(v, out)
            .unwrap_or_else(|e| panic!("seed {p:?} in {v}: {e}"));
    }
}

fn single(prefix: u8, p: &Packet, v: ProtocolVersion, tag: &str) -> (String, Vec<u8>) {
    let mut wire = BytesMut::new();
    encode(std::slice::from_ref(p), v, &mut wire);
    let mut seed = vec![prefix];
    seed.put_slice(&wire);
    (format!("{tag}-{v}-{:?}", p.packet_type()), seed)
}

fn main() {
    let dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        eprintln!("usage: write_seeds DIR...");
        std::process::exit(2);
    }
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (n, v) in tern_fuzz::VERSIONS.into_iter().enumerate() {
        let name = v.to_string();
        // A server: CONNECT then a whole session, one byte at a time and in
        // larger chunks.
        for full in [false, true] {
            let mut wire = BytesMut::new();
            encode(&[connect(v, full)], v, &mut wire);
            encode(&client_packets(v), v, &mut wire);
            for chunking in [0, 3 + n as u8] {
                let mut seed = vec![Input::prefix(None, chunking)];
                seed.put_slice(&wire);
                seeds.push((format!("server-{name}-{full}-{chunking}"), seed));
            }
        }
        // One packet per seed, on its own.
        seeds.push(single(
            Input::prefix(None, 5),
            &connect(v, true),
            v,
            "server-single",
        ));
        // A client of `v`.
        let mut wire = BytesMut::new();
        encode(&server_packets(v), v, &mut wire);
        for chunking in [0, 2, 7] {
            let mut seed = vec![Input::prefix(Some(v), chunking)];
            seed.put_slice(&wire);
            seeds.push((format!("client-{name}-{chunking}"), seed));
        }
        for (i, p) in server_packets(v).iter().enumerate() {
            let tag = format!("client-single-{i}");
            seeds.push(single(Input::prefix(Some(v), 1), p, v, &tag));
        }
    }
    let scripts: Vec<(String, Vec<u8>)> = tern_fuzz::broker::seed_scripts()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("script-{i}"), s))
        .collect();
    for dir in &dirs {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        // The broker target reads scripts, the codec targets byte streams.
        let seeds = if dir.trim_end_matches('/').ends_with("broker_script") {
            &scripts
        } else {
            &seeds
        };
        for (name, seed) in seeds {
            let path = Path::new(dir).join(format!("seed-{name}"));
            std::fs::write(&path, seed).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    println!(
        "wrote {} codec seeds and {} broker scripts into {}",
        seeds.len(),
        scripts.len(),
        dirs.join(", ")
    );
}
