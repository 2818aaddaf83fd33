//! Decoding PUBLISH is allocation-free: once the read buffer is shared
//! (the first packet promotes it), every further packet is slices of it.
//!
//! The counting global allocator comes from the `allocation-counter` crate:
//! the workspace forbids `unsafe_code`, which an `unsafe impl GlobalAlloc`
//! in this file would need, and `forbid` cannot be relaxed per file. Its
//! counters are per thread, so tests running in parallel do not interfere.

use std::hint::black_box;
use std::num::NonZeroU16;

use allocation_counter::measure;
use bytes::{Bytes, BytesMut};
use tern_codec::{
    Decoder, MqttString, Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QosPid,
    TopicName,
};

/// How many times the set of PUBLISH packets is repeated in the buffer.
const ROUNDS: usize = 200;

/// PUBLISH packets of QoS 0 and 1; on 5.0 with a few properties (no user
/// properties or subscription identifiers, which are `Vec`s).
fn publishes(v: ProtocolVersion) -> Vec<Packet> {
    let id = |n| PacketId::new(n).expect("non-zero");
    let mut out = vec![
        Publish::new(
            TopicName::from_static("sensors/kitchen/temperature"),
            QosPid::AtMostOnce,
            &b"21.5"[..],
        ),
        Publish::new(
            TopicName::from_static("a/b"),
            QosPid::AtLeastOnce(id(1)),
            vec![0x5a; 300],
        ),
        {
            let mut p = Publish::new(
                TopicName::from_static("c"),
                QosPid::AtLeastOnce(id(65535)),
                Bytes::new(),
            );
            p.dup = true;
            p.retain = true;
            p
        },
    ];
    if v.is_v5() {
        let props = PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(3600),
            topic_alias: NonZeroU16::new(7),
            response_topic: Some(TopicName::from_static("replies/42")),
            correlation_data: Some(Bytes::from_static(b"\x00\x01\x02\x03")),
            content_type: Some(MqttString::from_static("text/plain")),
            ..PublishProperties::default()
        };
        for p in &mut out {
            p.properties = props.clone();
        }
        // An empty topic standing for its alias.
        let mut aliased = Publish::new(TopicName::empty(), QosPid::AtMostOnce, &b"x"[..]);
        aliased.properties.topic_alias = NonZeroU16::new(7);
        aliased.properties.message_expiry_interval = Some(1);
        out.push(aliased);
    }
    out.into_iter().map(Packet::Publish).collect()
}

/// `ROUNDS` copies of `packets`, encoded back to back.
fn encode_many(v: ProtocolVersion, packets: &[Packet]) -> BytesMut {
    let len: usize = packets.iter().map(|p| p.encoded_len(v)).sum();
    let mut wire = BytesMut::with_capacity(len * ROUNDS);
    for _ in 0..ROUNDS {
        for p in packets {
            p.encode(v, &mut wire).expect("encodes");
        }
    }
    assert_eq!(wire.len(), len * ROUNDS);
    wire
}

/// Decodes every packet after the first with `next` (until it returns
/// `None`), checking each against `packets` in order, and asserts that all
/// of them together allocated nothing.
fn assert_rest_decodes_without_allocating(
    v: ProtocolVersion,
    packets: &[Packet],
    how: &str,
    mut next: impl FnMut() -> Option<Packet>,
) {
    let mut decoded = 1;
    let info = measure(|| {
        while let Some(p) = next() {
            assert_eq!(&p, &packets[decoded % packets.len()]);
            black_box(&p);
            decoded += 1;
        }
    });
    assert_eq!(decoded, packets.len() * ROUNDS, "{v}");
    assert_eq!(
        info.count_total,
        0,
        "{how} of {} PUBLISH packets in MQTT {v} allocated: {info:?}",
        decoded - 1
    );
}

/// Guards against a vacuous pass: the counter must see an allocation.
#[test]
fn the_counter_counts() {
    let info = measure(|| {
        black_box(Vec::<u8>::with_capacity(16));
    });
    assert_eq!(info.count_total, 1);
}

#[test]
fn decode_bytes_does_not_allocate() {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let packets = publishes(v);
        let mut buf = encode_many(v, &packets).freeze();
        let mut decoder = Decoder::client(v);

        // Warm-up: the first packet may promote `buf` to a shared buffer.
        let first = decoder.decode_bytes(&mut buf).expect("decodes");
        assert_eq!(first.as_ref(), Some(&packets[0]));

        assert_rest_decodes_without_allocating(v, &packets, "decode_bytes", || {
            decoder.decode_bytes(&mut buf).expect("decodes")
        });
        assert!(buf.is_empty());
    }
}

#[test]
fn decode_from_bytes_mut_does_not_allocate_after_the_first_packet() {
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let packets = publishes(v);
        let mut buf = encode_many(v, &packets);
        let mut decoder = Decoder::client(v);

        // The first split makes the buffer shared: one allocation at most.
        let mut first = None;
        let warm_up = measure(|| {
            first = decoder.decode(&mut buf).expect("decodes");
        });
        assert_eq!(first.as_ref(), Some(&packets[0]));
        assert!(warm_up.count_total <= 1, "{warm_up:?}");

        assert_rest_decodes_without_allocating(v, &packets, "decode", || {
            decoder.decode(&mut buf).expect("decodes")
        });
        assert!(buf.is_empty());
    }
}
