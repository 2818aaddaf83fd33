//! Packets of MQTT 3.1, 3.1.1 and 5.0: decode from bytes, encode to bytes.
//!
//! `tern-codec` is sans-IO: it performs no I/O, reads no clock and spawns
//! nothing. It is deterministic: the same bytes give the same packets.
//!
//! - One packet model for every version: [`Packet`] holds a struct per
//!   control packet; the [`ProtocolVersion`] is a parameter of decoding and
//!   encoding, never a parallel type tree. MQTT 5 properties are typed
//!   structs per packet, reason codes are [`ReasonCode`].
//! - Zero-copy: topics, payloads, strings and binary properties of a decoded
//!   packet are `Bytes` slices of the read buffer.
//! - Hostile input is expected: every malformed packet is a [`DecodeError`]
//!   that names the [`ReasonCode`] to answer with, never a panic, and the
//!   maximum packet size is checked from the fixed header.
//!
//! ```
//! use bytes::BytesMut;
//! use tern_codec::{Decoder, Packet, ProtocolVersion, Publish, QosPid, TopicName};
//!
//! let publish = Publish::new(TopicName::new("home/doorbell/pressed")?, QosPid::AtMostOnce, "1");
//! let mut wire = BytesMut::new();
//! publish.encode(ProtocolVersion::V3_1_1, &mut wire)?;
//! assert_eq!(wire.len(), publish.encoded_len(ProtocolVersion::V3_1_1));
//!
//! let mut decoder = Decoder::client(ProtocolVersion::V3_1_1);
//! let packet = decoder.decode(&mut wire)?;
//! assert_eq!(packet, Some(Packet::Publish(publish)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod decoder;
mod error;
mod message;
mod packet;
mod primitives;
mod properties;
mod reason;
mod types;

pub use decoder::{Decoder, Role, DEFAULT_MAX_PACKET_SIZE, PROTOCOL_MAX_PACKET_SIZE};
pub use error::{DecodeError, EncodeError};
pub use message::Message;
pub use packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketType, Publish, RetainHandling, SubAck,
    Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};
pub use reason::ReasonCode;
pub use tern_topic::{TopicError, TopicFilter, TopicName, Utf8Error};
pub use types::{MqttString, PacketId, ProtocolVersion, QoS, QosPid, UserProperty};
