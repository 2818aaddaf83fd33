//! tern-codec against peer codecs: decode and encode of PUBLISH, CONNECT
//! and SUBSCRIBE, each group holding tern and its peers side by side.
//!
//! Decoding is measured the way a framed reader decodes: a 64 KiB read
//! buffer (`BytesMut`) is filled with copies of one pre-encoded packet
//! (untimed), then packets are decoded off it one by one (timed), each
//! result passed through `black_box` and dropped inside the timed region.
//! The buffer is refilled in place once every packet of the last fill has
//! been dropped, as `FramedRead` does, so steady state is what is measured.
//! Every implementation goes through the very same loop; only the decode
//! call differs. tern uses `Decoder::decode(&mut BytesMut)`.
//!
//! Encoding writes into one reused `BytesMut`, cleared each iteration.
//!
//! Before anything is measured, `tern_benches::check_all` checks that every
//! implementation decodes the same bytes to the same fields and encodes the
//! same packets to the same lengths.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use tern_benches::{all_cases, mqtt5, rumqttc, tern, wire, Case, PublishCase, Version};

/// The size of the read buffer decoders work on.
const READ_BUF: usize = 64 * 1024;

/// Decodes `iters` packets and returns the time spent decoding them.
// A benchmark is the one place that reads the clock itself.
#[allow(clippy::disallowed_methods)]
fn decode_loop<P>(iters: u64, wire: &[u8], mut decode: impl FnMut(&mut BytesMut) -> P) -> Duration {
    let per_fill = (READ_BUF / wire.len()).max(1) as u64;
    let mut buf = BytesMut::with_capacity(per_fill as usize * wire.len());
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_fill);
        // Every packet of the last fill has been dropped: this reclaims the
        // same storage without allocating.
        buf.reserve(n as usize * wire.len());
        for _ in 0..n {
            buf.extend_from_slice(wire);
        }
        let start = Instant::now();
        for _ in 0..n {
            black_box(decode(black_box(&mut buf)));
        }
        total += start.elapsed();
        debug_assert!(buf.is_empty());
        left -= n;
    }
    total
}

fn case_id(case: Case) -> String {
    match case {
        Case::Publish(c) => c.shape(),
        Case::Connect(v) | Case::Subscribe(v) => v.name().to_string(),
    }
}

fn bench_decode(g: &mut BenchmarkGroup<'_, WallTime>, case: Case) {
    let bytes = wire(case);
    let v = case.version();
    let id = case_id(case);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function(BenchmarkId::new("tern", &id), |b| {
        let mut d = tern::decoder(case);
        b.iter_custom(|iters| decode_loop(iters, &bytes, |buf| tern::decode(&mut d, buf)));
    });
    g.bench_function(BenchmarkId::new("rumqttc", &id), |b| {
        b.iter_custom(|iters| decode_loop(iters, &bytes, |buf| rumqttc::decode(v, buf)));
    });
    g.bench_function(BenchmarkId::new("mqtt5-protocol", &id), |b| {
        b.iter_custom(|iters| decode_loop(iters, &bytes, |buf| mqtt5::decode(v, buf)));
    });
}

fn bench_encode(g: &mut BenchmarkGroup<'_, WallTime>, case: Case) {
    let len = wire(case).len();
    let v = case.version();
    let id = case_id(case);
    g.throughput(Throughput::Bytes(len as u64));
    let mut buf = BytesMut::with_capacity(2 * len);

    let p = tern::packet(case);
    g.bench_function(BenchmarkId::new("tern", &id), |b| {
        b.iter(|| {
            buf.clear();
            tern::encode(black_box(&p), v, &mut buf);
            black_box(&buf);
        });
    });
    let p = rumqttc::packet(case);
    g.bench_function(BenchmarkId::new("rumqttc", &id), |b| {
        b.iter(|| {
            buf.clear();
            rumqttc::encode(black_box(&p), &mut buf);
            black_box(&buf);
        });
    });
    let p = mqtt5::packet(case);
    g.bench_function(BenchmarkId::new("mqtt5-protocol", &id), |b| {
        b.iter(|| {
            buf.clear();
            mqtt5::encode(black_box(&p), &mut buf);
            black_box(&buf);
        });
    });
}

fn publish_groups(c: &mut Criterion, op: &str, bench: fn(&mut BenchmarkGroup<'_, WallTime>, Case)) {
    let cases = PublishCase::all();
    for variant in ["v3.1.1", "v5", "v5+props"] {
        let mut g = c.benchmark_group(format!("{op}_publish_{variant}"));
        for case in cases.iter().filter(|c| c.variant() == variant) {
            bench(&mut g, Case::Publish(*case));
        }
        g.finish();
    }
}

fn other_groups(c: &mut Criterion, op: &str, bench: fn(&mut BenchmarkGroup<'_, WallTime>, Case)) {
    for (name, make) in [
        ("connect", Case::Connect as fn(Version) -> Case),
        ("subscribe", Case::Subscribe as fn(Version) -> Case),
    ] {
        let mut g = c.benchmark_group(format!("{op}_{name}"));
        for v in [Version::V311, Version::V5] {
            bench(&mut g, make(v));
        }
        g.finish();
    }
}

fn main() {
    tern_benches::check_all();
    debug_assert_eq!(all_cases().len(), 28);
    let mut c = Criterion::default().configure_from_args();
    publish_groups(&mut c, "decode", bench_decode);
    other_groups(&mut c, "decode", bench_decode);
    publish_groups(&mut c, "encode", bench_encode);
    other_groups(&mut c, "encode", bench_encode);
    c.final_summary();
}
