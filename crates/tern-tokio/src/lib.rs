//! Tokio adapters for Tern: the MQTT codec framed over tokio-util, the
//! async client that puts `tern-client` on the network ([`AsyncClient`]),
//! and the broker server that puts `tern-broker` there.
//!
//! The server ([`Server`]) runs broker cores ("shards"; by default one per
//! CPU core but one), each on its own OS thread with its own poll, owning
//! its plain TCP connections; TLS and WebSocket connections are tokio tasks
//! linked to a shard. A session lives on the shard its client id hashes
//! to, and messages cross shards as tern-broker's `Router` decides, as
//! shared `Arc<Message>`s. The adapter moves bytes, time and messages
//! between threads: every MQTT decision is the core's or the router's.
//!
//! ```no_run
//! use tern_tokio::{Server, ServerConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! // 127.0.0.1:1883, anonymous clients, safe limits.
//! let server = Server::bind(ServerConfig::default()).await?;
//! server
//!     .run(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod codec;
mod server;
mod transport;

pub use client::{
    AsyncClient, AsyncEvent, Backoff, ClientError, ClientOptions, Connected, Events, Transport,
};
pub use codec::{CodecError, MqttCodec};
pub use server::{BrokerHandle, CredentialCheck, Persistence, PolicyFactory, Server, ServerConfig};
pub use transport::{tls_client_config, TlsSettings};
