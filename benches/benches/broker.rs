//! The broker core alone, no sockets: how many messages per second one
//! `Broker` routes on one core, bytes in to bytes out.
//!
//! - `fanout/N`: one QoS 0 PUBLISH (64 B payload, 3.1.1) to N subscribers
//!   of the same topic; per iteration, the publish is read and every
//!   subscriber's bytes are polled.
//! - `p2p_qos1`: a QoS 1 PUBLISH to one subscriber, the publisher's PUBACK
//!   polled and the subscriber's PUBACK fed back.
//!
//! Each iteration drains every output, so queues stay empty and the
//! measurement is steady state.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_broker::{Broker, Config, ConnId};
use tern_codec::{
    Ack, Connect, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, Subscribe,
    SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName,
};

const V: ProtocolVersion = ProtocolVersion::V3_1_1;

fn wire(p: Packet) -> Bytes {
    p.to_bytes(V).expect("encodes")
}

fn feed(b: &mut Broker, conn: ConnId, bytes: &[u8], now: Instant) {
    let mut buf = BytesMut::from(bytes);
    b.handle_read(conn, &mut buf, now);
}

fn drain(b: &mut Broker, now: Instant) -> usize {
    let mut n = 0;
    while let Some(t) = b.poll_transmit() {
        n += t.data.len();
        b.handle_written(t.conn, t.data.len(), now);
    }
    while b.poll_event().is_some() {}
    n
}

fn client(b: &mut Broker, id: &str, filter: Option<(&str, QoS)>, now: Instant) -> ConnId {
    let c = b.accept(now).expect("accepted");
    let connect = Connect::new(V, MqttString::from_str(id).expect("id"));
    feed(b, c, &wire(connect.into()), now);
    if let Some((f, qos)) = filter {
        let s = Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![SubscribeFilter {
                filter: TopicFilter::new(f).expect("filter"),
                options: SubscriptionOptions::new(qos),
            }],
            properties: Default::default(),
        };
        feed(b, c, &wire(Packet::Subscribe(s)), now);
    }
    drain(b, now);
    c
}

// A benchmark may read the clock to make its `now`.
#[allow(clippy::disallowed_methods)]
fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let config = Config {
        sys_interval: None,
        ..Config::default()
    };
    let topic = TopicName::from_static("sensors/building-7/floor-3/temperature");
    let mut g = c.benchmark_group("broker");
    for n in [1usize, 10, 100, 1000] {
        let mut b = Broker::new(config.clone(), now);
        for i in 0..n {
            client(
                &mut b,
                &format!("s{i}"),
                Some(("sensors/+/+/temperature", QoS::AtMostOnce)),
                now,
            );
        }
        let p = client(&mut b, "p", None, now);
        let publish = wire(Packet::Publish(Publish::new(
            topic.clone(),
            QosPid::AtMostOnce,
            vec![7u8; 64],
        )));
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("fanout_qos0", n), &n, |bench, _| {
            bench.iter(|| {
                feed(&mut b, p, &publish, now);
                black_box(drain(&mut b, now))
            })
        });
    }

    let mut b = Broker::new(config, now);
    let s = client(&mut b, "s", Some(("sensors/#", QoS::AtLeastOnce)), now);
    let p = client(&mut b, "p", None, now);
    let mut id = 0u16;
    g.throughput(Throughput::Elements(1));
    g.bench_function("p2p_qos1", |bench| {
        bench.iter(|| {
            id = id % 60_000 + 1;
            let pid = PacketId::new(id).expect("non-zero");
            let m = Publish::new(topic.clone(), QosPid::AtLeastOnce(pid), vec![7u8; 64]);
            feed(&mut b, p, &wire(Packet::Publish(m)), now);
            // The subscriber's packet id: read it back from its PUBLISH.
            let mut to_s = None;
            while let Some(t) = b.poll_transmit() {
                b.handle_written(t.conn, t.data.len(), now);
                if t.conn == s {
                    to_s = Some(t.data);
                }
            }
            let data = to_s.expect("delivered");
            let mut d = tern_codec::Decoder::client(V);
            let Some(Packet::Publish(m)) = d.decode(&mut BytesMut::from(&data[..])).expect("ok")
            else {
                panic!("expected PUBLISH")
            };
            let ack = Packet::PubAck(Ack::new(m.qos.packet_id().expect("QoS 1")));
            feed(&mut b, s, &wire(ack), now);
            black_box(drain(&mut b, now))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
