//! Heap allocations per decode and per encode, for tern and each peer, on
//! the cases of the `codec` bench. Prints a Markdown table.
//!
//! Run with `cargo bench -p tern-benches --bench alloc`. This target swaps
//! in a counting global allocator (`allocation-counter`), which is why it is
//! a target of its own: the `codec` timings run on the system allocator.
//!
//! Decoding is counted in steady state, as in the `codec` bench: a read
//! buffer is filled (not counted), then `N` packets are decoded off it and
//! dropped (counted). The one allocation a `BytesMut` makes when it is first
//! split (its shared header) happens during the untimed warm-up fill.
#![allow(missing_docs)]

use std::hint::black_box;

use allocation_counter::{measure, AllocationInfo};
use bytes::BytesMut;
use tern_benches::{all_cases, mqtt5, rumqttc, tern, wire, Case};

const N: u64 = 64;

fn per_op(info: &AllocationInfo) -> (f64, f64) {
    (
        info.count_total as f64 / N as f64,
        info.bytes_total as f64 / N as f64,
    )
}

fn decode_allocs<P>(wire: &[u8], mut decode: impl FnMut(&mut BytesMut) -> P) -> (f64, f64) {
    let mut buf = BytesMut::with_capacity(N as usize * wire.len());
    let fill = |buf: &mut BytesMut| {
        buf.reserve(N as usize * wire.len());
        for _ in 0..N {
            buf.extend_from_slice(wire);
        }
    };
    // Warm-up: the first split makes the buffer shared (one allocation).
    fill(&mut buf);
    for _ in 0..N {
        black_box(decode(&mut buf));
    }
    fill(&mut buf);
    let info = measure(|| {
        for _ in 0..N {
            black_box(decode(&mut buf));
        }
    });
    per_op(&info)
}

fn encode_allocs(mut encode: impl FnMut(&mut BytesMut)) -> (f64, f64) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    encode(&mut buf);
    let info = measure(|| {
        for _ in 0..N {
            buf.clear();
            encode(&mut buf);
            black_box(&buf);
        }
    });
    per_op(&info)
}

fn name(case: Case) -> String {
    match case {
        Case::Publish(c) => format!("PUBLISH {} {}", c.variant(), c.shape()),
        Case::Connect(v) => format!("CONNECT {}", v.name()),
        Case::Subscribe(v) => format!("SUBSCRIBE {}", v.name()),
    }
}

fn fmt((count, bytes): (f64, f64)) -> String {
    format!("{count:.0} ({bytes:.0} B)")
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to configure.
    tern_benches::check_all();
    println!("Allocations per operation (bytes allocated per operation):\n");
    println!("| case | op | tern | rumqttc | mqtt5-protocol |");
    println!("|---|---|---|---|---|");
    for case in all_cases() {
        let bytes = wire(case);
        let v = case.version();
        let mut d = tern::decoder(case);
        let t = decode_allocs(&bytes, |b| tern::decode(&mut d, b));
        let r = decode_allocs(&bytes, |b| rumqttc::decode(v, b));
        let m = decode_allocs(&bytes, |b| mqtt5::decode(v, b));
        println!(
            "| {} | decode | {} | {} | {} |",
            name(case),
            fmt(t),
            fmt(r),
            fmt(m)
        );
        let (tp, rp, mp) = (
            tern::packet(case),
            rumqttc::packet(case),
            mqtt5::packet(case),
        );
        let t = encode_allocs(|b| tern::encode(&tp, v, b));
        let r = encode_allocs(|b| rumqttc::encode(&rp, b));
        let m = encode_allocs(|b| mqtt5::encode(&mp, b));
        println!(
            "| {} | encode | {} | {} | {} |",
            name(case),
            fmt(t),
            fmt(r),
            fmt(m)
        );
    }
}
