//! The codec on its own: a gateway-style loop that encodes a client's first
//! packets, then decodes them as a server would, from bytes that arrive in
//! arbitrary pieces.
//!
//! Run with `cargo run --example codec`.

use bytes::BytesMut;
use tern::codec::{
    Connect, Decoder, MqttString, Packet, ProtocolVersion, Publish, QoS, QosPid, Subscribe,
    SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let v = ProtocolVersion::V5;

    // What a doorbell sends: CONNECT, a SUBSCRIBE, then one PUBLISH.
    let mut connect = Connect::new(v, MqttString::from_static("doorbell"));
    connect.properties.session_expiry_interval = Some(3600);
    let subscribe = Subscribe {
        packet_id: tern::codec::PacketId::new(1).expect("non-zero"),
        filters: vec![SubscribeFilter {
            filter: TopicFilter::new("home/doorbell/config/#")?,
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
        }],
        properties: Default::default(),
    };
    let mut publish = Publish::new(
        TopicName::new("home/doorbell/pressed")?,
        QosPid::AtMostOnce,
        "1",
    );
    publish.properties.content_type = Some(MqttString::from_static("text/plain"));

    let mut wire = BytesMut::new();
    for packet in [connect.into(), subscribe.into(), Packet::from(publish)] {
        packet.encode(v, &mut wire)?;
    }
    println!("{} bytes on the wire", wire.len());

    // The server side: bytes arrive three at a time; the decoder learns the
    // version from CONNECT and yields each packet once it is complete.
    let mut decoder = Decoder::server();
    let mut inbox = BytesMut::new();
    for chunk in wire.chunks(3) {
        inbox.extend_from_slice(chunk);
        while let Some(packet) = decoder.decode(&mut inbox)? {
            println!("{} ({} bytes)", packet.packet_type(), packet.encoded_len(v));
        }
    }
    println!("version learned from CONNECT: {:?}", decoder.version());
    Ok(())
}
