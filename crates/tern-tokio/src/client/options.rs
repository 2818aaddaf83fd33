//! How to reach the server, and the reconnection delays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::BrokerHandle;
use tern_client::{ClientConfig, DisconnectReason, PublishError, RequestError};

/// How to reach the server.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (1883 by convention).
        port: u16,
    },
    /// TLS over TCP.
    Tls {
        /// Host name or address; also the name the certificate must carry.
        host: String,
        /// Port (8883 by convention).
        port: u16,
        /// The rustls configuration (see [`tls_client_config`](crate::tls_client_config)).
        config: Arc<rustls::ClientConfig>,
    },
    /// WebSocket (subprotocol `mqtt`): `ws://host:port/path`, or `wss://`
    /// with a TLS configuration.
    WebSocket {
        /// The URL.
        url: String,
        /// For `wss://` URLs.
        tls: Option<Arc<rustls::ClientConfig>>,
    },
    /// An in-process connection to a [`Server`](crate::Server) running in
    /// the same process (see [`BrokerHandle::connect`]).
    Local {
        /// The server's handle.
        broker: BrokerHandle,
        /// The user name, already authenticated by the caller; `None`
        /// leaves authentication to the CONNECT, as on the network.
        identity: Option<String>,
        /// The address the server logs for the connection.
        peer: SocketAddr,
        /// A connection of the server's own (`identity` is then its name):
        /// neither authenticated nor authorized
        /// ([`BrokerHandle::connect_trusted`]).
        trusted: bool,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Transport::Tls { host, port, .. } => write!(f, "tls://{host}:{port}"),
            Transport::WebSocket { url, .. } => f.write_str(url),
            Transport::Local { identity, .. } => write!(f, "local (as {identity:?})"),
        }
    }
}

/// Reconnection delays: exponential from `initial` to `max`, each with
/// full jitter (a random delay between half and all of it).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt + 1` (from 0): `initial * 2^attempt`,
    /// at most `max`, jittered between half of it and all of it by
    /// `random`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = base / 2;
        let jitter = half.as_nanos() as u64;
        half + Duration::from_nanos(if jitter == 0 { 0 } else { random % jitter })
    }
}

/// Everything the async client needs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The MQTT session: id, version, keep alive, will, limits, ...
    pub config: ClientConfig,
    /// How to reach the server.
    pub transport: Transport,
    /// Reconnect after a lost connection; `None` ends the client instead.
    pub reconnect: Option<Backoff>,
    /// How many QoS 0 messages may wait for the application; more are
    /// dropped (counted by [`AsyncClient::dropped`](crate::AsyncClient::dropped)). QoS 1/2 messages are
    /// never dropped: they are acknowledged when the application takes them,
    /// so the server's flow control bounds them (our Receive Maximum in
    /// 5.0; in 3.1.1, at most 65,535, one per packet identifier).
    pub capacity: usize,
    /// When `capacity` QoS 0 messages wait: `false` (the default) drops
    /// the one arriving, `true` the oldest waiting (for readers that want
    /// the latest, such as a live view).
    pub drop_oldest: bool,
    /// How long to wait for the TCP, TLS and WebSocket handshakes.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Plain TCP to `host:port`, reconnecting with the default backoff.
    pub fn new(config: ClientConfig, host: impl Into<String>, port: u16) -> ClientOptions {
        ClientOptions {
            config,
            transport: Transport::Tcp {
                host: host.into(),
                port,
            },
            reconnect: Some(Backoff::default()),
            capacity: 1024,
            drop_oldest: false,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The publish failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The request could not be made.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The client has stopped (disconnected, or it does not reconnect).
    #[error("the client has stopped")]
    Closed,
    /// The transport could not be opened (the client goes on trying).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server refused or ended the connection.
    #[error("{0}")]
    Disconnected(DisconnectReason),
}
