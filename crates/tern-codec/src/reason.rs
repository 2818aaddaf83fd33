//! MQTT 5 reason codes, and which packet may carry which.

use std::fmt;

use crate::PacketType;

macro_rules! reason_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal, $text:literal, [$($pkt:ident),*];)*) => {
        /// A reason code of MQTT 5.0 (§2.4). MQTT 3.1.1 return codes are
        /// mapped onto these by the codec (CONNACK and SUBACK).
        ///
        /// 0x00 reads as "Success", "Normal disconnection" or "Granted QoS 0"
        /// depending on the packet; the associated constants give those names.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum ReasonCode {
            $($(#[$doc])* $name = $value,)*
        }

        impl ReasonCode {
            /// The code for a byte, if the spec defines one.
            pub const fn from_u8(v: u8) -> Option<ReasonCode> {
                match v {
                    $($value => Some(ReasonCode::$name),)*
                    _ => None,
                }
            }

            /// The spec's name for the code.
            pub const fn description(self) -> &'static str {
                match self {
                    $(ReasonCode::$name => $text,)*
                }
            }

            /// Whether the spec allows this code in a packet of type `packet`.
            pub const fn allowed_in(self, packet: PacketType) -> bool {
                let mask = match self {
                    $(ReasonCode::$name => 0 $(| (1u16 << PacketType::$pkt as u8))*,)*
                };
                mask & (1u16 << packet as u8) != 0
            }
        }
    };
}

reason_codes! {
    /// Success, Normal disconnection, Granted QoS 0.
    #[default]
    Success = 0x00, "Success", [ConnAck, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, Disconnect, Auth];
    /// Granted QoS 1.
    GrantedQoS1 = 0x01, "Granted QoS 1", [SubAck];
    /// Granted QoS 2.
    GrantedQoS2 = 0x02, "Granted QoS 2", [SubAck];
    /// Disconnect with Will Message.
    DisconnectWithWillMessage = 0x04, "Disconnect with Will Message", [Disconnect];
    /// No matching subscribers.
    NoMatchingSubscribers = 0x10, "No matching subscribers", [PubAck, PubRec];
    /// No subscription existed.
    NoSubscriptionExisted = 0x11, "No subscription existed", [UnsubAck];
    /// Continue authentication.
    ContinueAuthentication = 0x18, "Continue authentication", [Auth];
    /// Re-authenticate.
    ReAuthenticate = 0x19, "Re-authenticate", [Auth];
    /// Unspecified error.
    UnspecifiedError = 0x80, "Unspecified error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// Malformed Packet.
    MalformedPacket = 0x81, "Malformed Packet", [ConnAck, Disconnect];
    /// Protocol Error.
    ProtocolError = 0x82, "Protocol Error", [ConnAck, Disconnect];
    /// Implementation specific error.
    ImplementationSpecificError = 0x83, "Implementation specific error", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84, "Unsupported Protocol Version", [ConnAck];
    /// Client Identifier not valid.
    ClientIdentifierNotValid = 0x85, "Client Identifier not valid", [ConnAck];
    /// Bad User Name or Password.
    BadUserNameOrPassword = 0x86, "Bad User Name or Password", [ConnAck];
    /// Not authorized.
    NotAuthorized = 0x87, "Not authorized", [ConnAck, PubAck, PubRec, SubAck, UnsubAck, Disconnect];
    /// Server unavailable.
    ServerUnavailable = 0x88, "Server unavailable", [ConnAck];
    /// Server busy.
    ServerBusy = 0x89, "Server busy", [ConnAck, Disconnect];
    /// Banned.
    Banned = 0x8A, "Banned", [ConnAck];
    /// Server shutting down.
    ServerShuttingDown = 0x8B, "Server shutting down", [Disconnect];
    /// Bad authentication method.
    BadAuthenticationMethod = 0x8C, "Bad authentication method", [ConnAck, Disconnect];
    /// Keep Alive timeout.
    KeepAliveTimeout = 0x8D, "Keep Alive timeout", [Disconnect];
    /// Session taken over.
    SessionTakenOver = 0x8E, "Session taken over", [Disconnect];
    /// Topic Filter invalid.
    TopicFilterInvalid = 0x8F, "Topic Filter invalid", [SubAck, UnsubAck, Disconnect];
    /// Topic Name invalid.
    TopicNameInvalid = 0x90, "Topic Name invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// Packet Identifier in use.
    PacketIdentifierInUse = 0x91, "Packet Identifier in use", [PubAck, PubRec, SubAck, UnsubAck];
    /// Packet Identifier not found.
    PacketIdentifierNotFound = 0x92, "Packet Identifier not found", [PubRel, PubComp];
    /// Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93, "Receive Maximum exceeded", [Disconnect];
    /// Topic Alias invalid.
    TopicAliasInvalid = 0x94, "Topic Alias invalid", [Disconnect];
    /// Packet too large.
    PacketTooLarge = 0x95, "Packet too large", [ConnAck, Disconnect];
    /// Message rate too high.
    MessageRateTooHigh = 0x96, "Message rate too high", [Disconnect];
    /// Quota exceeded.
    QuotaExceeded = 0x97, "Quota exceeded", [ConnAck, PubAck, PubRec, SubAck, Disconnect];
    /// Administrative action.
    AdministrativeAction = 0x98, "Administrative action", [Disconnect];
    /// Payload format invalid.
    PayloadFormatInvalid = 0x99, "Payload format invalid", [ConnAck, PubAck, PubRec, Disconnect];
    /// Retain not supported.
    RetainNotSupported = 0x9A, "Retain not supported", [ConnAck, Disconnect];
    /// QoS not supported.
    QoSNotSupported = 0x9B, "QoS not supported", [ConnAck, Disconnect];
    /// Use another server.
    UseAnotherServer = 0x9C, "Use another server", [ConnAck, Disconnect];
    /// Server moved.
    ServerMoved = 0x9D, "Server moved", [ConnAck, Disconnect];
    /// Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E, "Shared Subscriptions not supported", [SubAck, Disconnect];
    /// Connection rate exceeded.
    ConnectionRateExceeded = 0x9F, "Connection rate exceeded", [ConnAck, Disconnect];
    /// Maximum connect time.
    MaximumConnectTime = 0xA0, "Maximum connect time", [Disconnect];
    /// Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1, "Subscription Identifiers not supported", [SubAck, Disconnect];
    /// Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2, "Wildcard Subscriptions not supported", [SubAck, Disconnect];
}

impl ReasonCode {
    /// 0x00 in DISCONNECT.
    pub const NORMAL_DISCONNECTION: ReasonCode = ReasonCode::Success;
    /// 0x00 in SUBACK.
    pub const GRANTED_QOS_0: ReasonCode = ReasonCode::Success;

    /// The byte on the wire.
    #[inline]
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// Whether the code reports a failure (0x80 and above).
    #[inline]
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// The SUBACK code granting `qos`.
    pub const fn granted(qos: crate::QoS) -> ReasonCode {
        match qos {
            crate::QoS::AtMostOnce => ReasonCode::Success,
            crate::QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
            crate::QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
        }
    }

    /// The MQTT 3.1/3.1.1 CONNACK return code standing for this reason
    /// (§3.2.2.3 of 3.1.1). Codes 3.1.1 lacks map onto the nearest one.
    pub const fn to_v3_connack(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::UnsupportedProtocolVersion => 1,
            ReasonCode::ClientIdentifierNotValid => 2,
            ReasonCode::BadUserNameOrPassword | ReasonCode::BadAuthenticationMethod => 4,
            ReasonCode::NotAuthorized | ReasonCode::Banned => 5,
            _ => 3,
        }
    }

    /// The reason code standing for an MQTT 3.1/3.1.1 CONNACK return code.
    pub const fn from_v3_connack(code: u8) -> Option<ReasonCode> {
        Some(match code {
            0 => ReasonCode::Success,
            1 => ReasonCode::UnsupportedProtocolVersion,
            2 => ReasonCode::ClientIdentifierNotValid,
            3 => ReasonCode::ServerUnavailable,
            4 => ReasonCode::BadUserNameOrPassword,
            5 => ReasonCode::NotAuthorized,
            _ => return None,
        })
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02X})", self.description(), *self as u8)
    }
}
