//! The sans-IO MQTT client: a complete MQTT 3.1, 3.1.1 and 5.0 client
//! session as one value, with no I/O and no clock.
//!
//! [`Client`] speaks CONNECT/CONNACK (will, credentials, session expiry,
//! receive maximum, maximum packet size, topic aliases, enhanced auth),
//! allocates packet identifiers, runs QoS 1 and 2 in both directions with
//! exactly-once delivery of inbound QoS 2, honours the server's limits
//! (Receive Maximum, Maximum QoS, Retain Available, Maximum Packet Size,
//! Topic Alias Maximum), keeps the connection alive, and after a reconnect
//! sends again what the server has not acknowledged, or starts clean when
//! the server lost the session. Messages wait in a bounded queue while
//! offline. The session state that must survive lives behind [`Store`].
//!
//! The call contract (the same shape as `tern-broker`):
//! - a transport opened: [`Client::connect`];
//! - bytes arrived: [`Client::handle_read`]; the transport closed:
//!   [`Client::handle_closed`]; time passed: [`Client::handle_timeout`];
//! - the application: [`Client::publish`], [`Client::subscribe`],
//!   [`Client::unsubscribe`], [`Client::ack`], [`Client::disconnect`];
//! - then drain [`Client::poll_transmit`] (bytes to write),
//!   [`Client::poll_event`], and call `handle_timeout` at
//!   [`Client::poll_timeout`]. When [`Client::state`] is
//!   [`State::Disconnected`] after the writes, close the transport.
//!
//! ```
//! use std::time::Instant;
//! use bytes::BytesMut;
//! use tern_client::{Client, ClientConfig, ClientEvent, Message};
//! use tern_codec::{ConnAck, Packet, ProtocolVersion, QoS, TopicName};
//!
//! let now = Instant::now();
//! let mut client = Client::new(ClientConfig::new("doorbell"));
//! client.connect(now);
//! let connect = client.poll_transmit().expect("CONNECT");
//! assert_eq!(connect[0] >> 4, 1);
//!
//! // Offline or not, a publish is accepted and queued...
//! let msg = Message::new(TopicName::new("home/doorbell/pressed")?, "1").with_qos(QoS::AtLeastOnce);
//! let id = client.publish(msg, now)?;
//!
//! // ...and sent once the server's CONNACK arrives.
//! let mut input = BytesMut::from(&Packet::from(ConnAck::new(false)).to_bytes(ProtocolVersion::V5)?[..]);
//! client.handle_read(&mut input, now);
//! assert!(matches!(client.poll_event(), Some(ClientEvent::Connected { .. })));
//! let publish = client.poll_transmit().expect("PUBLISH");
//! assert_eq!(publish[0] >> 4, 3);
//! assert_eq!(client.inflight(), 1); // until PUBACK: then ClientEvent::Published { id, .. }
//! # let _ = id;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod config;
pub mod store;

pub use client::{
    AckId, Client, ClientEvent, Delivery, DisconnectReason, PublishError, RequestError, State,
};
pub use config::{ClientConfig, ConfigError, QueuePolicy};
pub use store::{InflightState, MemoryStore, RequestId, Store};
pub use tern_codec::Message;
