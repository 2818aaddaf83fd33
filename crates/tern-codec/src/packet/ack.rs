//! PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4 to §3.7): one shape.

use bytes::{BufMut, Bytes};

use super::{Body, PacketType};
use crate::primitives::{end, fail, packet_id, u8_, Res};
use crate::{AckProperties, DecodeError, EncodeError, PacketId, ProtocolVersion, ReasonCode};

/// The body of PUBACK, PUBREC, PUBREL and PUBCOMP; the [`Packet`](crate::Packet)
/// variant says which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The identifier of the flow being acknowledged.
    pub packet_id: PacketId,
    /// The outcome (5.0 only; success before).
    pub reason_code: ReasonCode,
    /// Properties (5.0 only).
    pub properties: AckProperties,
}

impl Ack {
    /// A successful acknowledgement of `packet_id`.
    pub fn new(packet_id: PacketId) -> Ack {
        Ack {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    pub(crate) fn decode(
        ty: PacketType,
        body: &Bytes,
        v: ProtocolVersion,
    ) -> Result<Ack, DecodeError> {
        let (i, ack) = parse(ty, body, body, v)?;
        end(i)?;
        Ok(ack)
    }

    pub(crate) fn check_type(&self, ty: PacketType) -> Result<(), EncodeError> {
        if self.reason_code.allowed_in(ty) {
            Ok(())
        } else {
            Err(EncodeError::ReasonCodeNotAllowed {
                packet: ty,
                code: self.reason_code,
            })
        }
    }
}

fn parse<'a>(ty: PacketType, buf: &Bytes, i: &'a [u8], v: ProtocolVersion) -> Res<'a, Ack> {
    let (i, packet_id) = packet_id(i)?;
    if !v.is_v5() || i.is_empty() {
        // 5.0 allows leaving out the reason code when it is 0x00.
        return Ok((i, Ack::new(packet_id)));
    }
    let (i, code) = u8_(i)?;
    let Some(reason_code) = ReasonCode::from_u8(code).filter(|c| c.allowed_in(ty)) else {
        return fail(DecodeError::InvalidReasonCode { packet: ty, code });
    };
    let (i, properties) = if i.is_empty() {
        (i, AckProperties::default())
    } else {
        AckProperties::parse(buf, i)?
    };
    let ack = Ack {
        packet_id,
        reason_code,
        properties,
    };
    Ok((i, ack))
}

impl Body for Ack {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if v.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        if !v.is_v5() {
            2
        } else if self.properties.is_empty() {
            if self.reason_code == ReasonCode::Success {
                2
            } else {
                3
            }
        } else {
            3 + self.properties.wire_len()
        }
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        out.put_u16(self.packet_id.get());
        if !v.is_v5() {
            return;
        }
        let props = !self.properties.is_empty();
        if props || self.reason_code != ReasonCode::Success {
            out.put_u8(self.reason_code.as_u8());
        }
        if props {
            self.properties.put(out);
        }
    }
}
