//! Heap allocations per message through the broker core, in steady state:
//! what the core allocates beyond the message itself (its `Arc<Message>`).
//!
//! This test binary replaces the global allocator with a counting one
//! (`allocation-counter`, current thread only).

use std::time::Instant;

use allocation_counter::measure;
use bytes::{Bytes, BytesMut};
use tern_broker::{Broker, Config, ConnId};
use tern_codec::{
    Ack, Connect, Decoder, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid,
    Subscribe, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName,
};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;
const N: usize = 2_000;

fn wire(p: Packet) -> Bytes {
    p.to_bytes(V).expect("encodes")
}

fn client(b: &mut Broker, id: &str, filter: Option<QoS>, now: Instant) -> ConnId {
    let c = b.accept(now).expect("accepted");
    let connect = Connect::new(V, MqttString::from_str(id).expect("id"));
    b.handle_read(c, &mut BytesMut::from(&wire(connect.into())[..]), now);
    if let Some(qos) = filter {
        let s = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new("sensors/#").expect("filter"),
                options: SubscriptionOptions::new(qos),
            }],
            properties: Default::default(),
        };
        b.handle_read(c, &mut BytesMut::from(&wire(Packet::Subscribe(s))[..]), now);
    }
    drain(b, now, |_, _| {});
    c
}

fn drain(b: &mut Broker, now: Instant, mut each: impl FnMut(ConnId, Bytes)) {
    while let Some(t) = b.poll_transmit() {
        b.handle_written(t.conn, t.data.len(), now);
        each(t.conn, t.data);
    }
    while b.poll_event().is_some() {}
}

/// One buffer holding `packets` back to back, already shared (as a
/// server's read buffer is after its first read), to split packets off.
fn input(packets: impl Iterator<Item = Bytes>) -> BytesMut {
    let mut all = BytesMut::new();
    for p in packets {
        all.extend_from_slice(&p);
    }
    drop(all.split_to(0));
    all
}

/// Allocations per message for one publisher and one subscriber at `qos`.
// A test may read the clock to make its `now`.
#[allow(clippy::disallowed_methods)]
fn per_message(qos: QoS) -> f64 {
    let now = Instant::now();
    let config = Config {
        sys_interval: None,
        ..Config::default()
    };
    let mut b = Broker::new(config, now);
    let s = client(&mut b, "s", Some(qos), now);
    let p = client(&mut b, "p", None, now);
    let topic = TopicName::from_static("sensors/building-7/temperature");
    let pid = |i: usize| PacketId::new((i % 60_000 + 1) as u16).expect("non-zero");
    let publishes: Vec<Bytes> = (0..2 * N)
        .map(|i| {
            let q = match qos {
                QoS::AtMostOnce => QosPid::AtMostOnce,
                QoS::AtLeastOnce => QosPid::AtLeastOnce(pid(i)),
                QoS::ExactlyOnce => QosPid::ExactlyOnce(pid(i)),
            };
            wire(Packet::Publish(Publish::new(
                topic.clone(),
                q,
                vec![7u8; 64],
            )))
        })
        .collect();
    let one = publishes[0].len();
    let mut from_p = input(publishes.into_iter());
    // The publisher's PUBREL, the subscriber's PUBACK / PUBREC and PUBCOMP.
    let rels = input((0..2 * N).map(|i| wire(Packet::PubRel(Ack::new(pid(i))))));
    let mut from_p_rel = rels;
    let mut from_s = input((0..2 * N).flat_map(|i| {
        let id = PacketId::new((i % 60_000 + 1) as u16).expect("non-zero");
        match qos {
            QoS::AtLeastOnce => vec![wire(Packet::PubAck(Ack::new(id)))],
            QoS::ExactlyOnce => vec![
                wire(Packet::PubRec(Ack::new(id))),
                wire(Packet::PubComp(Ack::new(id))),
            ],
            QoS::AtMostOnce => vec![],
        }
    }));
    let mut run = |b: &mut Broker| {
        let mut delivered = 0;
        let mut to_s = Vec::with_capacity(4);
        let mut d = Decoder::client(V);
        for _ in 0..N {
            let mut m = from_p.split_to(one);
            b.handle_read(p, &mut m, now);
            drain(b, now, |c, data| {
                if c == s {
                    to_s.push(data)
                }
            });
            if qos == QoS::ExactlyOnce {
                let mut rel = from_p_rel.split_to(4);
                b.handle_read(p, &mut rel, now);
                drain(b, now, |_, _| {});
            }
            for mut data in to_s.drain(..) {
                while let Some(Packet::Publish(_)) = d.decode_bytes(&mut data).expect("ok") {
                    delivered += 1;
                }
            }
            for _ in 0..(qos as usize) {
                let mut ack = from_s.split_to(4);
                b.handle_read(s, &mut ack, now);
                drain(b, now, |_, _| {});
            }
        }
        assert_eq!(delivered, N);
    };
    // Warm-up: maps, queues and the encoding arena reach their size.
    run(&mut b);
    let info = measure(|| run(&mut b));
    info.count_total as f64 / N as f64
}

#[test]
fn a_message_costs_the_core_no_allocation_beyond_itself() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let per = per_message(qos);
        eprintln!("{qos:?}: {per:.3} allocations per message");
        // The message's own `Arc` (topic and payload are slices of the
        // read buffer), plus encoding chunks shared by hundreds of packets.
        assert!(per <= 1.05, "{qos:?}: {per} allocations per message");
    }
}
