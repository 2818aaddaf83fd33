//! What can go wrong reading or writing packets, and what the peer is owed.

use tern_topic::{TopicError, Utf8Error};

use crate::{PacketType, ProtocolVersion, ReasonCode};

/// A packet could not be decoded. Every variant is fatal for the
/// connection: [`DecodeError::reason_code`] names the reason code the spec
/// wants sent (in CONNACK before the session exists, DISCONNECT after, on
/// MQTT 5.0) before the network connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The fixed header announces a packet larger than the configured
    /// maximum. Detected before the body is read.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max}")]
    PacketTooLarge {
        /// Size of the whole packet, fixed header included.
        size: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A Variable Byte Integer (the remaining length, a property length, a
    /// subscription identifier) continues past its fourth byte.
    #[error("variable byte integer longer than four bytes")]
    VariableByteIntegerTooLong,
    /// Packet type 0, or 15 (AUTH) before MQTT 5.0.
    #[error("reserved packet type {0}")]
    ReservedPacketType(u8),
    /// The low nibble of the first byte is not what the packet type requires.
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidFlags {
        /// The packet whose flags are wrong.
        packet: PacketType,
        /// The flags received.
        flags: u8,
    },
    /// A QoS of 3 in PUBLISH, a will, or subscription options.
    #[error("QoS 3 is not a valid QoS")]
    InvalidQoS,
    /// A QoS 0 PUBLISH with the DUP flag set ([MQTT-3.3.1-2]).
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A field runs past the end of the packet.
    #[error("a field runs past the end of the packet")]
    Truncated,
    /// Bytes remain after the last field of a packet.
    #[error("{0} unexpected bytes after the last field of the packet")]
    TrailingBytes(usize),
    /// A UTF-8 encoded string breaks the rules of §1.5.4.
    #[error("invalid string: {0}")]
    InvalidString(#[from] Utf8Error),
    /// The topic name of a PUBLISH or a will is not a valid topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// A topic filter of SUBSCRIBE or UNSUBSCRIBE is not a valid filter.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// CONNECT names a protocol other than `MQTT` or `MQIsdp`.
    #[error("protocol name is neither MQTT nor MQIsdp")]
    InvalidProtocolName,
    /// CONNECT names a protocol level this codec does not speak, or one that
    /// does not go with the protocol name.
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocolVersion(u8),
    /// The reserved bit 0 of the CONNECT flags is set ([MQTT-3.1.2-3]).
    #[error("reserved CONNECT flag is set")]
    ReservedConnectFlag,
    /// Will QoS or Will Retain set without the Will Flag ([MQTT-3.1.2-11], [MQTT-3.1.2-13]).
    #[error("will QoS or will retain set without a will")]
    WillFlagsWithoutWill,
    /// Password flag without the user name flag, before MQTT 5.0 ([MQTT-3.1.2-22]).
    #[error("password without user name")]
    PasswordWithoutUsername,
    /// Packet identifier 0 where one is required ([MQTT-2.3.1-1]).
    #[error("packet identifier 0")]
    ZeroPacketId,
    /// SUBSCRIBE or UNSUBSCRIBE without a topic filter ([MQTT-3.8.3-3], [MQTT-3.10.3-2]).
    #[error("{0} carries no topic filter")]
    NoTopicFilters(PacketType),
    /// Reserved bits of the subscription options are set ([MQTT-3.8.3-5]).
    #[error("reserved subscription option bits are set")]
    ReservedSubscriptionOptions,
    /// Retain Handling is 3, a Protocol Error in 5.0 (§3.8.3.1).
    #[error("retain handling 3 is not defined")]
    InvalidRetainHandling,
    /// No Local on a shared subscription ([MQTT-3.8.3-4]).
    #[error("no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A property identifier the spec does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u8),
    /// A property not allowed in this packet (§2.2.2.2: Malformed Packet).
    #[error("property {id:#04x} is not allowed in {context}")]
    PropertyNotAllowed {
        /// The property identifier.
        id: u8,
        /// The packet (or "will") it appeared in.
        context: &'static str,
    },
    /// A property that may appear once appeared again.
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A property has a value the spec forbids (0 for Receive Maximum,
    /// Topic Alias, Maximum Packet Size or Subscription Identifier; a byte
    /// other than 0 or 1 for a flag; Maximum QoS 2...).
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// A reason code the spec does not allow in this packet.
    #[error("reason code {code:#04x} is not allowed in {packet}")]
    InvalidReasonCode {
        /// The packet.
        packet: PacketType,
        /// The code received.
        code: u8,
    },
    /// Reserved bits of the CONNACK acknowledge flags are set, or Session
    /// Present is set with a failure code ([MQTT-3.2.2-6]).
    #[error("invalid CONNACK acknowledge flags {0:#04x}")]
    InvalidConnAckFlags(u8),
    /// A PUBLISH with an empty topic name and no Topic Alias.
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// The first packet a server reads is not CONNECT ([MQTT-3.1.0-1]).
    #[error("expected CONNECT as the first packet, got {0}")]
    ExpectedConnect(PacketType),
    /// A packet that does not travel in this direction (a client sending
    /// CONNACK, a server sending SUBSCRIBE, a 3.1.1 server sending DISCONNECT).
    #[error("{0} is not sent in this direction")]
    UnexpectedPacket(PacketType),
}

impl DecodeError {
    /// The reason code the spec asks for when closing over this error.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion(_) => ReasonCode::UnsupportedProtocolVersion,
            InvalidTopicName(e) if !is_encoding_error(e) => ReasonCode::TopicNameInvalid,
            // §3.3.4: a Topic Alias of 0 is answered with 0x94.
            InvalidPropertyValue(0x23) => ReasonCode::TopicAliasInvalid,
            ZeroPacketId
            | NoTopicFilters(_)
            | InvalidRetainHandling
            | NoLocalOnSharedSubscription
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | EmptyTopicWithoutAlias
            | ExpectedConnect(_)
            | UnexpectedPacket(_)
            | InvalidConnAckFlags(_)
            | WillFlagsWithoutWill => ReasonCode::ProtocolError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}

fn is_encoding_error(e: &TopicError) -> bool {
    matches!(
        e,
        TopicError::InvalidUtf8 | TopicError::NullCharacter | TopicError::TooLong { .. }
    )
}

/// A packet could not be encoded. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The remaining length would exceed 268,435,455 bytes.
    #[error("packet body of {0} bytes exceeds the MQTT limit of 268435455")]
    PacketTooLarge(usize),
    /// The packet does not exist in this protocol version (AUTH before 5.0).
    #[error("{packet} does not exist in MQTT {version}")]
    NotInVersion {
        /// The packet.
        packet: PacketType,
        /// The version asked for.
        version: ProtocolVersion,
    },
    /// A reason code the spec does not allow in this packet.
    #[error("reason code {code} is not allowed in {packet}")]
    ReasonCodeNotAllowed {
        /// The packet.
        packet: PacketType,
        /// The code.
        code: ReasonCode,
    },
    /// DUP set on a QoS 0 PUBLISH.
    #[error("DUP flag set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// A property value the spec forbids (Maximum QoS 2, a subscription
    /// identifier above 268,435,455).
    #[error("property {0:#04x} has an invalid value")]
    InvalidPropertyValue(u8),
    /// SUBSCRIBE or UNSUBSCRIBE without a topic filter.
    #[error("{0} needs at least one topic filter")]
    Empty(PacketType),
    /// A PUBLISH with an empty topic name and no topic alias, or an empty
    /// topic name before MQTT 5.0.
    #[error("empty topic name without a topic alias")]
    EmptyTopicWithoutAlias,
    /// Binary data (a password, a will payload, correlation or
    /// authentication data) longer than 65,535 bytes.
    #[error("binary field of {0} bytes exceeds 65535")]
    BinaryTooLong(usize),
    /// A password without a user name, before MQTT 5.0.
    #[error("password without user name before MQTT 5.0")]
    PasswordWithoutUsername,
    /// Session Present set in a CONNACK that refuses the connection.
    #[error("session present set with a failure reason code")]
    SessionPresentWithError,
    /// No Local set on a shared subscription.
    #[error("no local set on a shared subscription")]
    NoLocalOnSharedSubscription,
}
