//! AUTH (§3.15, MQTT 5.0 only).

use bytes::{BufMut, Bytes};

use super::disconnect::{reason_and_properties, reason_len};
use super::{Body, PacketType};
use crate::primitives::end;
use crate::{AuthProperties, DecodeError, EncodeError, ProtocolVersion, ReasonCode};

/// AUTH: one step of an enhanced authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties: the method and data of the exchange.
    pub properties: AuthProperties,
}

impl Auth {
    pub(crate) fn decode(body: &Bytes) -> Result<Auth, DecodeError> {
        let (reason_code, props) =
            reason_and_properties(PacketType::Auth, body, ProtocolVersion::V5)?;
        let properties = match props {
            Some(i) => {
                let (i, p) = AuthProperties::parse(body, i)?;
                end(i)?;
                p
            }
            None => AuthProperties::default(),
        };
        if properties.authentication_data.is_some() && properties.authentication_method.is_none() {
            return Err(DecodeError::InvalidPropertyValue(0x16));
        }
        Ok(Auth {
            reason_code,
            properties,
        })
    }
}

impl Body for Auth {
    fn check(&self, _: ProtocolVersion) -> Result<(), EncodeError> {
        if !self.reason_code.allowed_in(PacketType::Auth) {
            return Err(EncodeError::ReasonCodeNotAllowed {
                packet: PacketType::Auth,
                code: self.reason_code,
            });
        }
        self.properties.check()
    }

    fn body_len(&self, _: ProtocolVersion) -> usize {
        let empty = self.properties.is_empty();
        let wire = if empty { 0 } else { self.properties.wire_len() };
        reason_len(self.reason_code, empty, wire)
    }

    fn put_body<B: BufMut>(&self, _: ProtocolVersion, out: &mut B) {
        let empty = self.properties.is_empty();
        if !empty || self.reason_code != ReasonCode::Success {
            out.put_u8(self.reason_code.as_u8());
        }
        if !empty {
            self.properties.put(out);
        }
    }
}
