//! The sans-IO MQTT broker core: a complete MQTT 3.1, 3.1.1 and 5.0 broker
//! as one value, with no I/O and no clock.
//!
//! [`Broker`] keeps connections, sessions, subscriptions, retained messages
//! and wills, runs the QoS 1/2 flows in both directions, enforces keep
//! alive, expiry and every limit of [`Config`], and asks its embedding about
//! authentication and authorization through [`policy`] verdicts and request
//! events. It is deterministic and sans-IO: it does no networking, reads no
//! clock (every input carries `now`) and spawns nothing. The embedding
//! feeds it bytes and writes out what it polls: see the call contract on
//! [`Broker`].
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::BytesMut;
//! use tern_broker::{Broker, Config, BrokerEvent};
//! use tern_codec::{Connect, MqttString, Packet, ProtocolVersion};
//!
//! let now = Instant::now();
//! let mut broker = Broker::new(Config::default(), now);
//! let conn = broker.accept(now).expect("below the connection limit");
//!
//! // The client's CONNECT arrives...
//! let connect = Connect::new(ProtocolVersion::V5, MqttString::from_static("doorbell"));
//! let mut input = BytesMut::from(&Packet::from(connect).to_bytes(ProtocolVersion::V5)?[..]);
//! broker.handle_read(conn, &mut input, now);
//!
//! // ...and the broker answers with CONNACK, to be written to the socket.
//! let out = broker.poll_transmit().expect("CONNACK");
//! assert_eq!(out.conn, conn);
//! assert_eq!(out.data[0] >> 4, 2); // CONNACK
//! assert!(matches!(broker.poll_event(), Some(BrokerEvent::Connected { .. })));
//!
//! // Without a packet for 1.5 times the keep alive, the connection closes.
//! let later = now + Duration::from_secs(91);
//! broker.handle_timeout(later);
//! assert!(matches!(broker.poll_event(), Some(BrokerEvent::Close { .. })));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod broker;
mod config;
pub mod durable;
pub mod policy;
pub mod router;
mod session;
mod stamp;

pub use broker::{
    Broker, BrokerEvent, ConnId, RetainedAnswer, SessionId, SessionInfo, Stats, Token, Transmit,
    RESERVED_PREFIX,
};
pub use config::{Config, QueueFullPolicy};
pub use policy::AuthStep;
pub use session::Envelope;
pub use tern_codec::Message;
