//! What the application learns from the client: events, errors, states.

use tern_codec::{
    AuthProperties, ConnAckProperties, DisconnectProperties, Message, QoS, ReasonCode, TopicFilter,
};

use crate::store::RequestId;
use crate::ConfigError;

/// Names a received QoS 1/2 message for [`Client::ack`](crate::Client::ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AckId(pub(super) u64);

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The server marked it as a possible resend.
    pub dup: bool,
    /// With manual acknowledgement, what to pass to [`Client::ack`](crate::Client::ack) once
    /// the message is handled (QoS 1/2 only).
    pub ack: Option<AckId>,
}

/// Why a publish did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The server refused the message (PUBACK or PUBREC with a reason code
    /// of 0x80 or more).
    #[error("the server refused the message: {0:?}")]
    Rejected(ReasonCode),
    /// The queue of messages waiting to be sent is full
    /// ([`QueuePolicy::RejectNew`](crate::QueuePolicy::RejectNew)).
    #[error("the queue of messages waiting to be sent is full")]
    QueueFull,
    /// Dropped from a full queue to make room for a newer message
    /// ([`QueuePolicy::DropOldest`](crate::QueuePolicy::DropOldest)).
    #[error("dropped from a full queue to make room for a newer message")]
    Dropped,
    /// The server accepts messages of at most this QoS (5.0 Maximum QoS).
    #[error("the server accepts messages of at most QoS {0:?}")]
    QosNotSupported(QoS),
    /// The server does not accept retained messages (5.0 Retain Available).
    #[error("the server does not accept retained messages")]
    RetainNotSupported,
    /// The PUBLISH would exceed the server's Maximum Packet Size.
    #[error("a PUBLISH of {size} bytes exceeds the server's maximum packet size of {max}")]
    PacketTooLarge {
        /// Size of the PUBLISH.
        size: usize,
        /// The server's maximum.
        max: u32,
    },
    /// The message cannot be encoded for this protocol version.
    #[error("the message cannot be encoded: {0}")]
    Invalid(String),
}

/// Why a subscribe or unsubscribe request was refused before it was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A SUBSCRIBE or UNSUBSCRIBE needs at least one filter.
    #[error("a request needs at least one topic filter")]
    NoFilters,
    /// Too many requests wait to be sent.
    #[error("too many requests wait to be sent")]
    QueueFull,
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The server refused the connection in CONNACK.
    Refused(ReasonCode),
    /// The server sent DISCONNECT (5.0).
    Server {
        /// Its reason code.
        reason: ReasonCode,
        /// Its properties (Reason String, Server Reference, ...).
        properties: DisconnectProperties,
    },
    /// The server broke the protocol; the client sent DISCONNECT with this
    /// reason code (5.0) and closes.
    ProtocolError(ReasonCode),
    /// No PINGRESP within the ping timeout.
    KeepAliveTimeout,
    /// No CONNACK within the connect timeout.
    ConnectTimeout,
    /// The transport closed ([`Client::handle_closed`](crate::Client::handle_closed)).
    TransportClosed,
    /// The configuration cannot be sent ([`ClientConfig::validate`](crate::ClientConfig::validate)); no
    /// connection will succeed until it changes.
    InvalidConfig(ConfigError),
    /// The application disconnected ([`Client::disconnect`](crate::Client::disconnect)).
    Local,
}

impl std::fmt::Display for DisconnectReason {
    /// Why, in words a person reading a log or a terminal follows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use DisconnectReason::*;
        match self {
            Refused(code) => write!(f, "connection refused: {}", code.description()),
            Server { reason, .. } => {
                write!(f, "disconnected by the server: {}", reason.description())
            }
            ProtocolError(code) => write!(f, "protocol error: {}", code.description()),
            KeepAliveTimeout => f.write_str("no answer to keep alive"),
            ConnectTimeout => f.write_str("no CONNACK in time"),
            TransportClosed => f.write_str("connection lost"),
            Local => f.write_str("disconnected"),
            InvalidConfig(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl DisconnectReason {
    /// Whether connecting again cannot help until something changes on
    /// our side: an invalid configuration, or a CONNACK refusal about who
    /// we are or what we speak (protocol version, client id, credentials,
    /// authorization, ban, authentication method). Busy or unavailable
    /// servers, lost links and timeouts are not permanent.
    pub fn is_permanent(&self) -> bool {
        match self {
            DisconnectReason::InvalidConfig(_) => true,
            DisconnectReason::Refused(code) => matches!(
                code,
                ReasonCode::UnsupportedProtocolVersion
                    | ReasonCode::ClientIdentifierNotValid
                    | ReasonCode::BadUserNameOrPassword
                    | ReasonCode::NotAuthorized
                    | ReasonCode::Banned
                    | ReasonCode::BadAuthenticationMethod
            ),
            _ => false,
        }
    }
}

/// What the application should know; see [`Client::poll_event`](crate::Client::poll_event).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// CONNACK accepted the connection.
    Connected {
        /// The server resumed the session.
        session_present: bool,
        /// The CONNACK's properties (5.0).
        properties: ConnAckProperties,
    },
    /// The connection ended; [`Client::connect`](crate::Client::connect) again on a new transport.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
    /// A message from the server.
    Message(Delivery),
    /// A publish completed: for QoS 0 when it was encoded for the transport,
    /// for QoS 1 at PUBACK, for QoS 2 at PUBCOMP, or it failed.
    Published {
        /// The request, as [`Client::publish`](crate::Client::publish) returned it.
        id: RequestId,
        /// The server's reason code (0x00, or 0x10 No matching
        /// subscribers), or why it failed.
        result: Result<ReasonCode, PublishError>,
    },
    /// SUBACK.
    Subscribed {
        /// The request.
        id: RequestId,
        /// One code per filter, in order: the granted QoS or a failure.
        reason_codes: Vec<ReasonCode>,
    },
    /// SUBACK of the subscription the client made again, by itself, after
    /// a server that lost the session ([`ClientConfig::resubscribe`](crate::ClientConfig::resubscribe)).
    Resubscribed {
        /// The filters, each with its reason code.
        results: Vec<(TopicFilter, ReasonCode)>,
    },
    /// UNSUBACK.
    Unsubscribed {
        /// The request.
        id: RequestId,
        /// One code per filter (3.1.1: all Success).
        reason_codes: Vec<ReasonCode>,
    },
    /// AUTH from the server (5.0 enhanced authentication): answer a
    /// Continue Authentication with [`Client::auth`](crate::Client::auth).
    Auth {
        /// Continue Authentication, or Success after a re-authentication.
        reason: ReasonCode,
        /// Method and data.
        properties: AuthProperties,
    },
}

/// Where the client is in its connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No transport, or the transport must be closed.
    Disconnected,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// CONNACK accepted the connection.
    Connected,
}
