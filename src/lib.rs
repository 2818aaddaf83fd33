//! Tern: MQTT for Rust, done properly.
//!
//! This facade re-exports Tern's layers behind cargo features, so one
//! dependency brings what an application needs:
//!
//! - `topic` (default): [`topic`], validated topic names and filters, the
//!   subscription index and the retained index.
//! - `codec` (default): [`codec`], every MQTT 3.1 / 3.1.1 / 5.0 packet,
//!   decoded zero-copy and encoded into any `BufMut`.
//! - `broker` (default): [`broker`], the sans-IO broker core: a complete
//!   MQTT broker as one value, fed bytes and time, polled for output.
//! - `client` (default): [`client`], the sans-IO client: a complete MQTT
//!   client session as one value, with QoS 1/2, reconnects and a bounded
//!   offline queue.
//! - `tokio` (default): [`tokio`], the adapters on the tokio runtime: the
//!   async client ([`tokio::AsyncClient`], TCP, TLS and WebSocket) and the
//!   broker server ([`tokio::Server`]), as `tern broker` runs it. Turn the
//!   default features off for the sans-IO layers without tokio.
//!
//! ```
//! use tern::codec::{Packet, ProtocolVersion};
//!
//! let ping = Packet::PingReq.to_bytes(ProtocolVersion::V5)?;
//! assert_eq!(&ping[..], &[0xc0, 0x00]);
//! # Ok::<(), tern::codec::EncodeError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "broker")]
pub use tern_broker as broker;
#[cfg(feature = "client")]
pub use tern_client as client;
#[cfg(feature = "codec")]
pub use tern_codec as codec;
#[cfg(feature = "tokio")]
pub use tern_tokio as tokio;
#[cfg(feature = "topic")]
pub use tern_topic as topic;

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
