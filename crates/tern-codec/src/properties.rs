//! MQTT 5 properties (§2.2.2): one struct per packet, so a property that a
//! packet may not carry cannot be represented, and decoding one is an error.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, Bytes};
use nom::bytes::complete::take;
use tern_topic::TopicName;

use crate::primitives::{
    binary, fail, put_prefixed, put_vbi, string, topic_name, u16_, u32_, u8_, vbi, vbi_len, Res,
    VBI_MAX,
};
use crate::{DecodeError, EncodeError, MqttString, QoS, UserProperty};

/// How one property's value is read and written.
pub(crate) trait Kind {
    type V;
    fn parse<'a>(id: u8, buf: &Bytes, i: &'a [u8]) -> Res<'a, Self::V>;
    fn len(v: &Self::V) -> usize;
    fn put<B: BufMut>(v: &Self::V, out: &mut B);
    fn check(_id: u8, _v: &Self::V) -> Result<(), EncodeError> {
        Ok(())
    }
}

/// A Byte that must be 0 or 1.
pub(crate) struct Flag;
impl Kind for Flag {
    type V = bool;
    fn parse<'a>(id: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, bool> {
        match u8_(i)? {
            (i, 0) => Ok((i, false)),
            (i, 1) => Ok((i, true)),
            _ => fail(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(_: &bool) -> usize {
        1
    }
    fn put<B: BufMut>(v: &bool, out: &mut B) {
        out.put_u8(u8::from(*v));
    }
}

/// Maximum QoS: a Byte of 0 or 1.
pub(crate) struct MaxQoS;
impl Kind for MaxQoS {
    type V = QoS;
    fn parse<'a>(id: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, QoS> {
        match u8_(i)? {
            (i, 0) => Ok((i, QoS::AtMostOnce)),
            (i, 1) => Ok((i, QoS::AtLeastOnce)),
            _ => fail(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(_: &QoS) -> usize {
        1
    }
    fn put<B: BufMut>(v: &QoS, out: &mut B) {
        out.put_u8(*v as u8);
    }
    fn check(id: u8, v: &QoS) -> Result<(), EncodeError> {
        match v {
            QoS::ExactlyOnce => Err(EncodeError::InvalidPropertyValue(id)),
            _ => Ok(()),
        }
    }
}

/// A Two Byte Integer.
pub(crate) struct U16;
impl Kind for U16 {
    type V = u16;
    fn parse<'a>(_: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, u16> {
        u16_(i)
    }
    fn len(_: &u16) -> usize {
        2
    }
    fn put<B: BufMut>(v: &u16, out: &mut B) {
        out.put_u16(*v);
    }
}

/// A Two Byte Integer that must not be 0.
pub(crate) struct NzU16;
impl Kind for NzU16 {
    type V = NonZeroU16;
    fn parse<'a>(id: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, NonZeroU16> {
        let (i, v) = u16_(i)?;
        match NonZeroU16::new(v) {
            Some(v) => Ok((i, v)),
            None => fail(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(_: &NonZeroU16) -> usize {
        2
    }
    fn put<B: BufMut>(v: &NonZeroU16, out: &mut B) {
        out.put_u16(v.get());
    }
}

/// A Four Byte Integer.
pub(crate) struct U32;
impl Kind for U32 {
    type V = u32;
    fn parse<'a>(_: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, u32> {
        u32_(i)
    }
    fn len(_: &u32) -> usize {
        4
    }
    fn put<B: BufMut>(v: &u32, out: &mut B) {
        out.put_u32(*v);
    }
}

/// A Four Byte Integer that must not be 0.
pub(crate) struct NzU32;
impl Kind for NzU32 {
    type V = NonZeroU32;
    fn parse<'a>(id: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, NonZeroU32> {
        let (i, v) = u32_(i)?;
        match NonZeroU32::new(v) {
            Some(v) => Ok((i, v)),
            None => fail(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(_: &NonZeroU32) -> usize {
        4
    }
    fn put<B: BufMut>(v: &NonZeroU32, out: &mut B) {
        out.put_u32(v.get());
    }
}

/// A Variable Byte Integer from 1 to 268,435,455 (Subscription Identifier).
pub(crate) struct NzVbi;
impl Kind for NzVbi {
    type V = NonZeroU32;
    fn parse<'a>(id: u8, _: &Bytes, i: &'a [u8]) -> Res<'a, NonZeroU32> {
        let (i, v) = vbi(i)?;
        match NonZeroU32::new(v) {
            Some(v) => Ok((i, v)),
            None => fail(DecodeError::InvalidPropertyValue(id)),
        }
    }
    fn len(v: &NonZeroU32) -> usize {
        vbi_len(v.get() as usize)
    }
    fn put<B: BufMut>(v: &NonZeroU32, out: &mut B) {
        put_vbi(out, v.get() as usize);
    }
    fn check(id: u8, v: &NonZeroU32) -> Result<(), EncodeError> {
        if v.get() > VBI_MAX {
            Err(EncodeError::InvalidPropertyValue(id))
        } else {
            Ok(())
        }
    }
}

/// A UTF-8 Encoded String.
pub(crate) struct Str;
impl Kind for Str {
    type V = MqttString;
    fn parse<'a>(_: u8, buf: &Bytes, i: &'a [u8]) -> Res<'a, MqttString> {
        string(buf, i)
    }
    fn len(v: &MqttString) -> usize {
        2 + v.len()
    }
    fn put<B: BufMut>(v: &MqttString, out: &mut B) {
        put_prefixed(out, v.as_bytes());
    }
}

/// A UTF-8 string that must be a topic name (Response Topic).
pub(crate) struct Topic;
impl Kind for Topic {
    type V = TopicName;
    fn parse<'a>(_: u8, buf: &Bytes, i: &'a [u8]) -> Res<'a, TopicName> {
        topic_name(buf, i)
    }
    fn len(v: &TopicName) -> usize {
        2 + v.len()
    }
    fn put<B: BufMut>(v: &TopicName, out: &mut B) {
        put_prefixed(out, v.as_bytes());
    }
}

/// Binary Data.
pub(crate) struct Bin;
impl Kind for Bin {
    type V = Bytes;
    fn parse<'a>(_: u8, buf: &Bytes, i: &'a [u8]) -> Res<'a, Bytes> {
        binary(buf, i)
    }
    fn len(v: &Bytes) -> usize {
        2 + v.len()
    }
    fn put<B: BufMut>(v: &Bytes, out: &mut B) {
        put_prefixed(out, v);
    }
    fn check(_: u8, v: &Bytes) -> Result<(), EncodeError> {
        check_binary(v)
    }
}

pub(crate) fn check_binary(v: &[u8]) -> Result<(), EncodeError> {
    if v.len() > usize::from(u16::MAX) {
        Err(EncodeError::BinaryTooLong(v.len()))
    } else {
        Ok(())
    }
}

/// Every property identifier MQTT 5.0 defines (Table 2-4).
const KNOWN: [u8; 27] = [
    0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1C,
    0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A,
];

fn unexpected<'a, T>(id: u32, context: &'static str) -> Res<'a, T> {
    match u8::try_from(id) {
        Ok(id) if KNOWN.contains(&id) => fail(DecodeError::PropertyNotAllowed { id, context }),
        _ => fail(DecodeError::UnknownProperty(
            u8::try_from(id).unwrap_or(u8::MAX),
        )),
    }
}

const USER_PROPERTY: u32 = 0x26;

macro_rules! properties {
    (
        $(#[$sdoc:meta])*
        $name:ident, $ctx:literal {
            $( $(#[$fdoc:meta])* $field:ident: $mult:ident $ty:ty = $id:literal as $kind:ident, )*
        }
    ) => {
        $(#[$sdoc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            $( $(#[$fdoc])* pub $field: properties!(@ty $mult $ty), )*
            /// User Properties (0x26), in the order received. Names may repeat.
            pub user_properties: Vec<UserProperty>,
        }

        impl $name {
            /// Whether no property is set.
            #[inline]
            pub fn is_empty(&self) -> bool {
                $( properties!(@empty $mult self.$field) && )* self.user_properties.is_empty()
            }

            /// Reads the property length and the properties.
            pub(crate) fn parse<'a>(buf: &Bytes, i: &'a [u8]) -> Res<'a, Self> {
                let (i, len) = vbi(i)?;
                let (rest, mut p) = take(len)(i)?;
                let mut props = Self::default();
                while !p.is_empty() {
                    let (r, id) = vbi(p)?;
                    p = match id {
                        $( $id => {
                            let (r, v) = <$kind as Kind>::parse($id, buf, r)?;
                            properties!(@set $mult props.$field, v, $id);
                            r
                        } )*
                        USER_PROPERTY => {
                            let (r, k) = string(buf, r)?;
                            let (r, v) = string(buf, r)?;
                            props.user_properties.push((k, v));
                            r
                        }
                        other => return unexpected(other, $ctx),
                    };
                }
                Ok((rest, props))
            }

            /// Length of the properties, without the length prefix.
            pub(crate) fn len(&self) -> usize {
                let mut n = 0;
                $( properties!(@len $mult self.$field, $kind, n); )*
                for (k, v) in &self.user_properties {
                    n += 1 + 2 + k.len() + 2 + v.len();
                }
                n
            }

            /// Length on the wire, with the length prefix.
            #[inline]
            pub(crate) fn wire_len(&self) -> usize {
                if self.is_empty() {
                    return 1;
                }
                let n = self.len();
                vbi_len(n) + n
            }

            /// Values the spec forbids but the types allow.
            pub(crate) fn check(&self) -> Result<(), EncodeError> {
                $( properties!(@check $mult self.$field, $kind, $id); )*
                Ok(())
            }

            /// Writes the length prefix and the properties.
            #[inline]
            pub(crate) fn put<B: BufMut>(&self, out: &mut B) {
                if self.is_empty() {
                    out.put_u8(0);
                    return;
                }
                put_vbi(out, self.len());
                self.put_fields(out);
            }

            /// Writes the properties without their length prefix.
            #[inline]
            pub(crate) fn put_fields<B: BufMut>(&self, out: &mut B) {
                $( properties!(@put $mult self.$field, $kind, $id, out); )*
                for (k, v) in &self.user_properties {
                    out.put_u8(USER_PROPERTY as u8);
                    put_prefixed(out, k.as_bytes());
                    put_prefixed(out, v.as_bytes());
                }
            }
        }
    };
    (@ty one $ty:ty) => { Option<$ty> };
    (@ty many $ty:ty) => { Vec<$ty> };
    (@empty one $f:expr) => { $f.is_none() };
    (@empty many $f:expr) => { $f.is_empty() };
    (@set one $f:expr, $v:expr, $id:literal) => {
        if $f.is_some() {
            return fail(DecodeError::DuplicateProperty($id));
        }
        $f = Some($v);
    };
    (@set many $f:expr, $v:expr, $id:literal) => { $f.push($v); };
    (@len one $f:expr, $kind:ident, $n:ident) => {
        if let Some(v) = &$f { $n += 1 + <$kind as Kind>::len(v); }
    };
    (@len many $f:expr, $kind:ident, $n:ident) => {
        for v in &$f { $n += 1 + <$kind as Kind>::len(v); }
    };
    (@check one $f:expr, $kind:ident, $id:literal) => {
        if let Some(v) = &$f { <$kind as Kind>::check($id, v)?; }
    };
    (@check many $f:expr, $kind:ident, $id:literal) => {
        for v in &$f { <$kind as Kind>::check($id, v)?; }
    };
    (@put one $f:expr, $kind:ident, $id:literal, $out:ident) => {
        if let Some(v) = &$f { $out.put_u8($id); <$kind as Kind>::put(v, $out); }
    };
    (@put many $f:expr, $kind:ident, $id:literal, $out:ident) => {
        for v in &$f { $out.put_u8($id); <$kind as Kind>::put(v, $out); }
    };
}

properties! {
    /// Properties of CONNECT (§3.1.2.11).
    ConnectProperties, "CONNECT" {
        /// Session Expiry Interval (0x11), seconds; absent means 0.
        session_expiry_interval: one u32 = 0x11 as U32,
        /// Receive Maximum (0x21): QoS 1/2 publishes the client accepts in flight.
        receive_maximum: one NonZeroU16 = 0x21 as NzU16,
        /// Maximum Packet Size (0x27) the client accepts.
        maximum_packet_size: one NonZeroU32 = 0x27 as NzU32,
        /// Topic Alias Maximum (0x22) the client accepts; absent means 0.
        topic_alias_maximum: one u16 = 0x22 as U16,
        /// Request Response Information (0x19).
        request_response_information: one bool = 0x19 as Flag,
        /// Request Problem Information (0x17); absent means true.
        request_problem_information: one bool = 0x17 as Flag,
        /// Authentication Method (0x15) for enhanced authentication.
        authentication_method: one MqttString = 0x15 as Str,
        /// Authentication Data (0x16).
        authentication_data: one Bytes = 0x16 as Bin,
    }
}

properties! {
    /// Properties of the will in CONNECT (§3.1.3.2).
    WillProperties, "will properties" {
        /// Will Delay Interval (0x18), seconds.
        will_delay_interval: one u32 = 0x18 as U32,
        /// Payload Format Indicator (0x01): `Some(true)` means UTF-8.
        payload_format_indicator: one bool = 0x01 as Flag,
        /// Message Expiry Interval (0x02), seconds.
        message_expiry_interval: one u32 = 0x02 as U32,
        /// Content Type (0x03).
        content_type: one MqttString = 0x03 as Str,
        /// Response Topic (0x08).
        response_topic: one TopicName = 0x08 as Topic,
        /// Correlation Data (0x09).
        correlation_data: one Bytes = 0x09 as Bin,
    }
}

properties! {
    /// Properties of CONNACK (§3.2.2.3).
    ConnAckProperties, "CONNACK" {
        /// Session Expiry Interval (0x11) the server chose.
        session_expiry_interval: one u32 = 0x11 as U32,
        /// Receive Maximum (0x21) of the server.
        receive_maximum: one NonZeroU16 = 0x21 as NzU16,
        /// Maximum QoS (0x24): 0 or 1; absent means 2.
        maximum_qos: one QoS = 0x24 as MaxQoS,
        /// Retain Available (0x25); absent means true.
        retain_available: one bool = 0x25 as Flag,
        /// Maximum Packet Size (0x27) the server accepts.
        maximum_packet_size: one NonZeroU32 = 0x27 as NzU32,
        /// Assigned Client Identifier (0x12).
        assigned_client_identifier: one MqttString = 0x12 as Str,
        /// Topic Alias Maximum (0x22) the server accepts.
        topic_alias_maximum: one u16 = 0x22 as U16,
        /// Reason String (0x1F).
        reason_string: one MqttString = 0x1F as Str,
        /// Wildcard Subscription Available (0x28); absent means true.
        wildcard_subscription_available: one bool = 0x28 as Flag,
        /// Subscription Identifiers Available (0x29); absent means true.
        subscription_identifiers_available: one bool = 0x29 as Flag,
        /// Shared Subscription Available (0x2A); absent means true.
        shared_subscription_available: one bool = 0x2A as Flag,
        /// Server Keep Alive (0x13), overriding the client's.
        server_keep_alive: one u16 = 0x13 as U16,
        /// Response Information (0x1A).
        response_information: one MqttString = 0x1A as Str,
        /// Server Reference (0x1C).
        server_reference: one MqttString = 0x1C as Str,
        /// Authentication Method (0x15).
        authentication_method: one MqttString = 0x15 as Str,
        /// Authentication Data (0x16).
        authentication_data: one Bytes = 0x16 as Bin,
    }
}

properties! {
    /// Properties of PUBLISH (§3.3.2.3).
    PublishProperties, "PUBLISH" {
        /// Payload Format Indicator (0x01): `Some(true)` means UTF-8.
        payload_format_indicator: one bool = 0x01 as Flag,
        /// Message Expiry Interval (0x02), seconds.
        message_expiry_interval: one u32 = 0x02 as U32,
        /// Topic Alias (0x23).
        topic_alias: one NonZeroU16 = 0x23 as NzU16,
        /// Response Topic (0x08).
        response_topic: one TopicName = 0x08 as Topic,
        /// Correlation Data (0x09).
        correlation_data: one Bytes = 0x09 as Bin,
        /// Subscription Identifiers (0x0B) of the matching subscriptions.
        subscription_identifiers: many NonZeroU32 = 0x0B as NzVbi,
        /// Content Type (0x03).
        content_type: one MqttString = 0x03 as Str,
    }
}

properties! {
    /// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
    AckProperties, "an acknowledgement" {
        /// Reason String (0x1F).
        reason_string: one MqttString = 0x1F as Str,
    }
}

properties! {
    /// Properties of SUBSCRIBE (§3.8.2.1).
    SubscribeProperties, "SUBSCRIBE" {
        /// Subscription Identifier (0x0B).
        subscription_identifier: one NonZeroU32 = 0x0B as NzVbi,
    }
}

properties! {
    /// Properties of UNSUBSCRIBE (§3.10.2.1): user properties only.
    UnsubscribeProperties, "UNSUBSCRIBE" {
    }
}

properties! {
    /// Properties of DISCONNECT (§3.14.2.2).
    DisconnectProperties, "DISCONNECT" {
        /// Session Expiry Interval (0x11), sent by the client.
        session_expiry_interval: one u32 = 0x11 as U32,
        /// Reason String (0x1F).
        reason_string: one MqttString = 0x1F as Str,
        /// Server Reference (0x1C), sent by the server.
        server_reference: one MqttString = 0x1C as Str,
    }
}

properties! {
    /// Properties of AUTH (§3.15.2.2).
    AuthProperties, "AUTH" {
        /// Authentication Method (0x15).
        authentication_method: one MqttString = 0x15 as Str,
        /// Authentication Data (0x16).
        authentication_data: one Bytes = 0x16 as Bin,
        /// Reason String (0x1F).
        reason_string: one MqttString = 0x1F as Str,
    }
}
