//! CONNACK (§3.2).

use bytes::{BufMut, Bytes};

use super::{Body, PacketType};
use crate::primitives::{end, fail, u8_, Res};
use crate::{ConnAckProperties, DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// CONNACK: the server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server resumed a session it had for this client. Not
    /// part of MQTT 3.1, where it is always sent and read as false.
    pub session_present: bool,
    /// The outcome. Before 5.0 it is carried as the 3.1.1 return code
    /// (see [`ReasonCode::to_v3_connack`]).
    pub reason_code: ReasonCode,
    /// Properties (5.0 only).
    pub properties: ConnAckProperties,
}

impl ConnAck {
    /// A successful CONNACK.
    pub fn new(session_present: bool) -> ConnAck {
        ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(body: &Bytes, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let (i, c) = parse(body, body, v)?;
        end(i)?;
        Ok(c)
    }
}

fn parse<'a>(buf: &Bytes, i: &'a [u8], v: ProtocolVersion) -> Res<'a, ConnAck> {
    let (i, flags) = u8_(i)?;
    let (i, code) = u8_(i)?;
    let reason_code = if v.is_v5() {
        ReasonCode::from_u8(code).filter(|c| c.allowed_in(PacketType::ConnAck))
    } else {
        ReasonCode::from_v3_connack(code)
    };
    let Some(reason_code) = reason_code else {
        return fail(DecodeError::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        });
    };
    // Bits 7-1 are reserved; Session Present only goes with success.
    if flags & 0xfe != 0 || (flags & 1 != 0 && reason_code.is_error()) {
        return fail(DecodeError::InvalidConnAckFlags(flags));
    }
    let (i, properties) = if v.is_v5() {
        ConnAckProperties::parse(buf, i)?
    } else {
        (i, ConnAckProperties::default())
    };
    if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
        return fail(DecodeError::InvalidPropertyValue(0x16));
    }
    let connack = ConnAck {
        // MQTT 3.1 has no Session Present: the byte is reserved there.
        session_present: flags & 1 != 0 && v != ProtocolVersion::V3_1,
        reason_code,
        properties,
    };
    Ok((i, connack))
}

impl Body for ConnAck {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if !self.reason_code.allowed_in(PacketType::ConnAck) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::ConnAck,
                code: self.reason_code,
            });
        }
        if self.session_present && self.reason_code.is_error() {
            return Err(EncodeError::SessionPresentWithError);
        }
        if v.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        if v.is_v5() {
            2 + self.properties.wire_len()
        } else {
            2
        }
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        out.put_u8(u8::from(self.session_present && v != ProtocolVersion::V3_1));
        if v.is_v5() {
            out.put_u8(self.reason_code.as_u8());
            self.properties.put(out);
        } else {
            out.put_u8(self.reason_code.to_v3_connack());
        }
    }
}
