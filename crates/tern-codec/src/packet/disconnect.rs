//! DISCONNECT (§3.14).

use bytes::{BufMut, Bytes};

use super::{Body, PacketType};
use crate::primitives::{end, u8_};
use crate::{DecodeError, DisconnectProperties, EncodeError, ProtocolVersion, ReasonCode};

/// DISCONNECT: the end of a connection. Before 5.0 it has no body and only
/// the client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// Why (5.0 only; normal disconnection before).
    pub reason_code: ReasonCode,
    /// Properties (5.0 only).
    pub properties: DisconnectProperties,
}

impl Disconnect {
    /// A DISCONNECT with `reason_code` and no properties.
    pub fn new(reason_code: ReasonCode) -> Disconnect {
        Disconnect {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(body: &Bytes, v: ProtocolVersion) -> Result<Disconnect, DecodeError> {
        let (code, properties) = reason_and_properties(PacketType::Disconnect, body, v)?;
        let properties = match properties {
            Some(i) => {
                let (i, p) = DisconnectProperties::parse(body, i)?;
                end(i)?;
                p
            }
            None => DisconnectProperties::default(),
        };
        Ok(Disconnect {
            reason_code: code,
            properties,
        })
    }
}

/// The shared start of DISCONNECT and AUTH: an optional reason code, then
/// optional properties (the remaining slice, if any).
pub(crate) fn reason_and_properties(
    ty: PacketType,
    body: &Bytes,
    v: ProtocolVersion,
) -> Result<(ReasonCode, Option<&[u8]>), DecodeError> {
    if !v.is_v5() || body.is_empty() {
        end(body)?;
        return Ok((ReasonCode::Success, None));
    }
    let (i, code) = u8_(body)?;
    let reason = ReasonCode::from_u8(code)
        .filter(|c| c.allowed_in(ty))
        .ok_or(DecodeError::InvalidReasonCode { packet: ty, code })?;
    Ok((reason, (!i.is_empty()).then_some(i)))
}

/// Length of a reason code and properties in their shortest form.
pub(crate) fn reason_len(code: ReasonCode, props_empty: bool, props_wire: usize) -> usize {
    if !props_empty {
        1 + props_wire
    } else if code != ReasonCode::Success {
        1
    } else {
        0
    }
}

impl Body for Disconnect {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if !v.is_v5() {
            return Ok(());
        }
        if !self.reason_code.allowed_in(PacketType::Disconnect) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::Disconnect,
                code: self.reason_code,
            });
        }
        self.properties.check()
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        if !v.is_v5() {
            return 0;
        }
        let empty = self.properties.is_empty();
        let wire = if empty { 0 } else { self.properties.wire_len() };
        reason_len(self.reason_code, empty, wire)
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        if !v.is_v5() {
            return;
        }
        let empty = self.properties.is_empty();
        if !empty || self.reason_code != ReasonCode::Success {
            out.put_u8(self.reason_code.as_u8());
        }
        if !empty {
            self.properties.put(out);
        }
    }
}
