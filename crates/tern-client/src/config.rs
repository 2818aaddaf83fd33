//! What a [`Client`](crate::Client) asks for when it connects, and the
//! limits it keeps itself.

use std::time::Duration;

use bytes::Bytes;
use tern_codec::{MqttString, ProtocolVersion, UserProperty, Will};

/// A configuration the spec or the chosen protocol version does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// MQTT 3.1.1 allows a password only with a user name.
    #[error("MQTT 3.1.1 allows a password only with a user name")]
    PasswordWithoutUsername,
    /// MQTT 3.1.1 allows an empty client id only with clean session.
    #[error("MQTT 3.1.1 allows an empty client id only with clean session")]
    EmptyClientIdKeepsNoSession,
    /// This setting cannot be zero.
    #[error("{0} cannot be zero")]
    Zero(&'static str),
    /// Keep alive is at most 65,535 seconds.
    #[error("keep alive of {0:?} is over 65,535 s")]
    KeepAliveTooLong(Duration),
    /// This needs MQTT 5.0.
    #[error("{0} needs MQTT 5.0")]
    NeedsV5(&'static str),
    /// CONNECT cannot be encoded (a string or property too long).
    #[error("CONNECT cannot be encoded: {0}")]
    Encode(String),
}

/// What to do with a new message when the queue of messages waiting to be
/// sent is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueuePolicy {
    /// Refuse the new message: [`Client::publish`](crate::Client::publish)
    /// returns [`PublishError::QueueFull`](crate::PublishError::QueueFull).
    #[default]
    RejectNew,
    /// Drop the oldest waiting message (its
    /// [`ClientEvent::Published`](crate::ClientEvent::Published) reports
    /// [`PublishError::Dropped`](crate::PublishError::Dropped)) and queue the
    /// new one.
    DropOldest,
}

/// The configuration of a [`Client`](crate::Client).
///
/// `ClientConfig::new("id")` gives MQTT 5.0, clean start, a 60 s keep
/// alive and automatic acknowledgements; change fields as needed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The protocol version to speak.
    pub version: ProtocolVersion,
    /// The client identifier. Empty asks the server to assign one (MQTT 5.0
    /// reports it in [`ClientEvent::Connected`](crate::ClientEvent::Connected); 3.1.1
    /// requires `clean_start` for an empty id).
    pub client_id: MqttString,
    /// Clean start (5.0) / clean session (3.1.1) on the first connection.
    /// Reconnections of a 5.0 client ask to resume the session (its expiry
    /// decides whether the server kept it); a 3.1.1 client sends this flag
    /// every time, since clean session there discards the session.
    pub clean_start: bool,
    /// Keep alive, in whole seconds (at most 65,535); zero turns it off.
    /// The server may override it (5.0 Server Keep Alive).
    pub keep_alive: Duration,
    /// How long to wait for PINGRESP after PINGREQ before declaring the
    /// connection lost.
    pub ping_timeout: Duration,
    /// How long to wait for CONNACK after CONNECT (the transport's own
    /// handshake is the adapter's business).
    pub connect_timeout: Duration,
    /// User name.
    pub username: Option<MqttString>,
    /// Password.
    pub password: Option<Bytes>,
    /// The will, published by the server if the connection ends without
    /// DISCONNECT.
    pub will: Option<Will>,
    /// Session Expiry Interval in seconds (5.0): 0 ends the session with the
    /// connection, `u32::MAX` never expires.
    pub session_expiry_interval: u32,
    /// Receive Maximum (5.0): how many QoS 1/2 messages the server may have
    /// in flight towards us.
    pub receive_maximum: u16,
    /// The largest packet we accept, announced to a 5.0 server (which then
    /// drops what is larger) and enforced by our decoder (a larger packet
    /// closes the connection). `None`: the protocol's limit, 256 MiB.
    pub maximum_packet_size: Option<u32>,
    /// Topic Alias Maximum (5.0): how many topic aliases the server may set
    /// towards us. Zero means none.
    pub topic_alias_maximum: u16,
    /// Use topic aliases towards the server, when it allows some (5.0).
    pub use_topic_aliases: bool,
    /// Our own cap on QoS 1/2 messages in flight towards the server. A 5.0
    /// server's Receive Maximum lowers it further.
    pub max_inflight: u16,
    /// How many messages may wait to be sent (offline, or beyond the
    /// in-flight window).
    pub max_queued: usize,
    /// What happens to a message when `max_queued` are waiting.
    pub queue_policy: QueuePolicy,
    /// Whether the application acknowledges each QoS 1/2 message itself
    /// ([`Client::ack`](crate::Client::ack)); acknowledgements then go out
    /// in the order the messages came, as the spec requires.
    pub manual_ack: bool,
    /// After reconnecting to a server that did not keep the session,
    /// subscribe again to every filter the server had granted.
    pub resubscribe: bool,
    /// User properties of CONNECT (5.0).
    pub user_properties: Vec<UserProperty>,
    /// Authentication Method for enhanced authentication (5.0).
    pub authentication_method: Option<MqttString>,
    /// Authentication Data sent with CONNECT (5.0).
    pub authentication_data: Option<Bytes>,
}

impl ClientConfig {
    /// MQTT 5.0, clean start, keep alive 60 s, automatic acknowledgements,
    /// 100 messages in flight and 10,000 queued.
    ///
    /// # Panics
    ///
    /// If `client_id` is not an MQTT string (it holds U+0000 or is longer
    /// than 65,535 bytes); set [`ClientConfig::client_id`] from a checked
    /// [`MqttString`] to handle that as an error.
    pub fn new(client_id: &str) -> ClientConfig {
        let client_id = match MqttString::from_str(client_id) {
            Ok(id) => id,
            Err(e) => panic!("ClientConfig::new({client_id:?}): not an MQTT string: {e}"),
        };
        ClientConfig {
            version: ProtocolVersion::V5,
            client_id,
            clean_start: true,
            keep_alive: Duration::from_secs(60),
            ping_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            username: None,
            password: None,
            will: None,
            session_expiry_interval: 0,
            receive_maximum: 100,
            maximum_packet_size: None,
            topic_alias_maximum: 0,
            use_topic_aliases: false,
            max_inflight: 100,
            max_queued: 10_000,
            queue_policy: QueuePolicy::RejectNew,
            manual_ack: false,
            resubscribe: true,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        }
    }

    /// The same, for `version`.
    pub fn with_version(mut self, version: ProtocolVersion) -> ClientConfig {
        self.version = version;
        self
    }

    /// Checks what the spec or the protocol version forbids, before any
    /// byte is sent. [`Client::connect`](crate::Client::connect) refuses an
    /// invalid configuration with this error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let v5 = self.version.is_v5();
        if !v5 && self.password.is_some() && self.username.is_none() {
            // [MQTT-3.1.2-22]
            return Err(ConfigError::PasswordWithoutUsername);
        }
        if !v5 && self.client_id.is_empty() && !self.clean_start {
            // [MQTT-3.1.3-7]
            return Err(ConfigError::EmptyClientIdKeepsNoSession);
        }
        if self.receive_maximum == 0 {
            return Err(ConfigError::Zero("receive_maximum"));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::Zero("max_inflight"));
        }
        if self.maximum_packet_size == Some(0) {
            return Err(ConfigError::Zero("maximum_packet_size"));
        }
        if self.keep_alive.as_secs() > u64::from(u16::MAX) {
            return Err(ConfigError::KeepAliveTooLong(self.keep_alive));
        }
        if !v5 && (self.authentication_method.is_some() || self.authentication_data.is_some()) {
            return Err(ConfigError::NeedsV5("enhanced authentication"));
        }
        Ok(())
    }

    /// Whether a reconnection can resume the session.
    pub(crate) fn keeps_session(&self) -> bool {
        if self.version.is_v5() {
            self.session_expiry_interval > 0
        } else {
            !self.clean_start
        }
    }
}
