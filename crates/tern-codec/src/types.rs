//! Small value types shared by every packet.

use std::fmt;
use std::num::NonZeroU16;

use bytes::Bytes;
use tern_topic::{validate_mqtt_str, Utf8Error};

/// The protocol level a connection speaks.
///
/// It is part of the codec state: the same [`Packet`](crate::Packet) model
/// encodes to and decodes from every level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    /// The protocol name of CONNECT.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            _ => "MQTT",
        }
    }

    /// Whether packets of this level carry reason codes and properties.
    #[inline]
    pub const fn is_v5(self) -> bool {
        matches!(self, ProtocolVersion::V5)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V3_1 => "3.1",
            ProtocolVersion::V3_1_1 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        })
    }
}

/// Quality of service of a message or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: at most once, no acknowledgement.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: at least once, acknowledged by PUBACK.
    AtLeastOnce = 1,
    /// QoS 2: exactly once, the PUBREC / PUBREL / PUBCOMP handshake.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS for the two-bit value on the wire; `None` for 3.
    #[inline]
    pub const fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A packet identifier: a non-zero 16-bit number naming one QoS 1/2 flow
/// or one SUBSCRIBE / UNSUBSCRIBE exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// The identifier for `id`, or `None` for 0, which the spec forbids.
    #[inline]
    pub const fn new(id: u16) -> Option<PacketId> {
        match NonZeroU16::new(id) {
            Some(id) => Some(PacketId(id)),
            None => None,
        }
    }

    /// The identifier as a number (never 0).
    #[inline]
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl From<NonZeroU16> for PacketId {
    fn from(id: NonZeroU16) -> Self {
        PacketId(id)
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The QoS of a PUBLISH together with its packet identifier, which exists
/// exactly when the QoS is above 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosPid {
    /// QoS 0: no packet identifier.
    AtMostOnce,
    /// QoS 1 with its packet identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with its packet identifier.
    ExactlyOnce(PacketId),
}

impl QosPid {
    /// The QoS alone.
    #[inline]
    pub const fn qos(self) -> QoS {
        match self {
            QosPid::AtMostOnce => QoS::AtMostOnce,
            QosPid::AtLeastOnce(_) => QoS::AtLeastOnce,
            QosPid::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier, if the QoS has one.
    #[inline]
    pub const fn packet_id(self) -> Option<PacketId> {
        match self {
            QosPid::AtMostOnce => None,
            QosPid::AtLeastOnce(id) | QosPid::ExactlyOnce(id) => Some(id),
        }
    }

    /// Builds the pair from a QoS and an identifier; `None` when the
    /// identifier is missing for QoS 1/2.
    #[inline]
    pub const fn from_parts(qos: QoS, id: Option<PacketId>) -> Option<QosPid> {
        match (qos, id) {
            (QoS::AtMostOnce, _) => Some(QosPid::AtMostOnce),
            (QoS::AtLeastOnce, Some(id)) => Some(QosPid::AtLeastOnce(id)),
            (QoS::ExactlyOnce, Some(id)) => Some(QosPid::ExactlyOnce(id)),
            _ => None,
        }
    }
}

/// An MQTT UTF-8 encoded string: well-formed UTF-8, no U+0000, at most
/// 65,535 bytes. It shares the bytes it was decoded from.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MqttString(Bytes);

impl MqttString {
    /// Validates and wraps `bytes` without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<MqttString, Utf8Error> {
        validate_mqtt_str(&bytes)?;
        Ok(MqttString(bytes))
    }

    /// Copies and validates `s`.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Result<MqttString, Utf8Error> {
        MqttString::from_bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// Wraps a static string without copying; panics if it breaks the rules.
    pub fn from_static(s: &'static str) -> MqttString {
        match MqttString::from_bytes(Bytes::from_static(s.as_bytes())) {
            Ok(s) => s,
            Err(e) => panic!("invalid MQTT string {s:?}: {e}"),
        }
    }

    /// The string. The bytes were validated on construction.
    pub fn as_str(&self) -> &str {
        // Validated in every constructor; re-checking keeps the crate free of
        // `unsafe` and costs a few nanoseconds on the short strings MQTT uses.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared buffer holding the string.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the string is empty (MQTT allows empty strings).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for MqttString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for MqttString {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl PartialEq<&str> for MqttString {
    fn eq(&self, other: &&str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl TryFrom<&str> for MqttString {
    type Error = Utf8Error;
    fn try_from(s: &str) -> Result<Self, Utf8Error> {
        MqttString::from_str(s)
    }
}

impl TryFrom<String> for MqttString {
    type Error = Utf8Error;
    fn try_from(s: String) -> Result<Self, Utf8Error> {
        MqttString::from_bytes(Bytes::from(s))
    }
}

/// A user property: a name and a value, both MQTT strings. Names may repeat.
pub type UserProperty = (MqttString, MqttString);
