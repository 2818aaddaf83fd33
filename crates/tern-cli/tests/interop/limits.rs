//! Limits: connection rate and count, slow readers, floods, CONNECT
//! deadlines, tern bench.

use tern_codec::{Disconnect, Packet, ProtocolVersion, ReasonCode};

use super::common::*;

#[test]
fn a_subscriber_that_never_reads_does_not_stall_anyone() {
    let tern = Tern::start(&[]);
    // A raw 3.1.1 client subscribes to everything and then never reads.
    let mut stuck = Raw::connect(&tern, ProtocolVersion::V3_1_1, "stuck");
    let sub = tern_codec::Subscribe {
        packet_id: tern_codec::PacketId::new(1).expect("non-zero"),
        filters: vec![tern_codec::SubscribeFilter {
            filter: tern_codec::TopicFilter::new("flood/#").expect("filter"),
            options: tern_codec::SubscriptionOptions::new(tern_codec::QoS::AtMostOnce),
        }],
        properties: Default::default(),
    };
    stuck.send(&Packet::Subscribe(sub));
    assert!(matches!(stuck.recv(), Some(Packet::SubAck(_))));
    let fast = Sub::start(&tern, &["-t", "flood/#"]);
    // 4 MB through the broker: far more than the stuck client's socket
    // buffers and the broker's 1 MiB unwritten limit for it.
    let payload = "x".repeat(8 * 1024);
    publish(
        &tern,
        &[
            "-t",
            "flood/a",
            "-m",
            &payload,
            "-q",
            "1",
            "--repeat",
            "500",
            "--repeat-delay",
            "0",
        ],
    );
    publish(&tern, &["-t", "flood/end", "-m", "end", "-q", "1"]);
    let mut n = 0;
    loop {
        let l = fast.next();
        if l == "flood/end end" {
            break;
        }
        n += 1;
    }
    assert_eq!(n, 500, "the reading subscriber got every message");
    drop(stuck);
}

#[test]
fn tern_bench_counts_every_message_once() {
    let tern = Tern::start(&[]);
    for (args, received) in [
        (&["p2p", "-n", "3", "-c", "200", "-q", "1"][..], 600),
        (&["p2p", "-n", "2", "-c", "100", "-q", "2"][..], 200),
        (&["fanout", "-m", "4", "-c", "50", "-q", "1"][..], 200),
        (
            &["fanin", "-n", "4", "-c", "50", "-q", "0", "-V", "5"][..],
            200,
        ),
    ] {
        let json = bench_json(&tern, args);
        assert!(
            json.contains(&format!("\"received\":{received},")),
            "{args:?}: {json}"
        );
        assert!(json.contains("\"loss\":0,"), "{args:?}: {json}");
        assert!(json.contains("\"duplicates\":0,"), "{args:?}: {json}");
    }
    let json = bench_json(&tern, &["conn", "-n", "50", "-d", "0"]);
    assert!(json.contains("\"connections\":50,"), "{json}");
}

#[test]
fn a_flood_after_an_oversized_packet_still_gets_the_disconnect() {
    // The broker closes on the fixed header, with a quarter megabyte of
    // input it will never read: the DISCONNECT is written, its side shut
    // down, and the flood drained (not read into packets) until the client
    // goes. (On loopback the reset a plain close would send does not lose
    // the DISCONNECT, so this does not show the lingering close matters;
    // it shows the close completes.)
    let tern = Tern::start(&["--max-packet-size", "1024"]);
    let mut raw = Raw::connect(&tern, ProtocolVersion::V5, "flood");
    let mut bytes = vec![0x30, 0xc0, 0x84, 0x3d]; // PUBLISH, 1,000,000 bytes
    bytes.extend(std::iter::repeat_n(b'x', 256 * 1024));
    raw.send_bytes(&bytes);
    assert_eq!(
        raw.recv(),
        Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::PacketTooLarge
        )))
    );
    assert_eq!(raw.recv(), None, "closed");
}

#[test]
fn the_connection_limit_refuses_the_excess_and_frees_slots_on_close() {
    // Over both shards: client ids land on either.
    let mut tern = Tern::with_config("limit", "[limits]\nmax_connections = 2\n");
    let first = Raw::connect(&tern, ProtocolVersion::V3_1_1, "l1");
    let _second = Raw::connect(&tern, ProtocolVersion::V3_1_1, "l2");
    assert!(
        Raw::try_connect(&tern, ProtocolVersion::V3_1_1, "l3").is_none(),
        "the third is closed without a CONNACK"
    );
    tern.wait_log("connection limit reached");
    // A closed connection gives its slot back.
    drop(first);
    tern.wait_log("the client closed the connection");
    let _fourth = Raw::connect(&tern, ProtocolVersion::V3_1_1, "l4");
}

#[test]
fn a_connection_without_connect_is_closed_at_the_deadline() {
    let tern = Tern::with_config("deadline", "[limits]\nconnect_timeout = 1\n");
    // Nothing at all, and half a CONNECT: both are closed (a read that
    // times out instead fails the test).
    let mut silent = Raw::open(&tern, ProtocolVersion::V5);
    let mut half = Raw::open(&tern, ProtocolVersion::V5);
    half.send_bytes(&[0x10, 0x20, 0x00]);
    assert_eq!(silent.recv(), None, "closed at the deadline");
    assert_eq!(half.recv(), None, "closed at the deadline");
    // Others are served as usual.
    let _ok = Raw::connect(&tern, ProtocolVersion::V5, "punctual");
}

#[test]
fn connections_that_send_no_connect_count_toward_the_limit() {
    // Otherwise sockets that never say CONNECT, each holding up to a
    // packet's worth of input, would be bounded only by descriptors.
    let mut tern = Tern::with_config("silent-limit", "[limits]\nmax_connections = 2\n");
    let silent = Raw::open(&tern, ProtocolVersion::V3_1_1);
    let _half = {
        let mut half = Raw::open(&tern, ProtocolVersion::V3_1_1);
        half.send_bytes(&[0x10, 0x20, 0x00]);
        half
    };
    tern.wait_log("new connection");
    tern.wait_log("new connection");
    assert!(
        Raw::try_connect(&tern, ProtocolVersion::V3_1_1, "late").is_none(),
        "no slot is left for a third"
    );
    tern.wait_log("connection limit reached");
    // A silent one going frees its slot.
    drop(silent);
    tern.wait_log("connection ended before CONNECT");
    let _ok = Raw::connect(&tern, ProtocolVersion::V3_1_1, "late");
}
