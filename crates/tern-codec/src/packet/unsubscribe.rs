//! UNSUBSCRIBE (§3.10) and UNSUBACK (§3.11).

use bytes::{BufMut, Bytes};
use tern_topic::TopicFilter;

use super::subscribe::{check_codes, reason_codes};
use super::{Body, PacketType};
use crate::primitives::{end, length_prefixed, packet_id, put_prefixed};
use crate::{
    AckProperties, DecodeError, EncodeError, PacketId, ProtocolVersion, ReasonCode,
    UnsubscribeProperties,
};

/// UNSUBSCRIBE: remove one or more subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The identifier UNSUBACK answers with.
    pub packet_id: PacketId,
    /// The filters, at least one.
    pub filters: Vec<TopicFilter>,
    /// Properties (5.0 only).
    pub properties: UnsubscribeProperties,
}

impl Unsubscribe {
    pub(crate) fn decode(body: &Bytes, v: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
        let (mut i, packet_id) = packet_id(body)?;
        let mut properties = UnsubscribeProperties::default();
        if v.is_v5() {
            (i, properties) = UnsubscribeProperties::parse(body, i)?;
        }
        if i.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Unsubscribe));
        }
        let mut filters = Vec::new();
        while !i.is_empty() {
            let (r, raw) = length_prefixed(i)?;
            let filter = TopicFilter::from_bytes(body.slice_ref(raw))
                .map_err(DecodeError::InvalidTopicFilter)?;
            filters.push(filter);
            i = r;
        }
        Ok(Unsubscribe {
            packet_id,
            filters,
            properties,
        })
    }
}

impl Body for Unsubscribe {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Empty(PacketType::Unsubscribe));
        }
        if v.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        let mut n = 2;
        if v.is_v5() {
            n += self.properties.wire_len();
        }
        n + self.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        out.put_u16(self.packet_id.get());
        if v.is_v5() {
            self.properties.put(out);
        }
        for f in &self.filters {
            put_prefixed(out, f.as_bytes());
        }
    }
}

/// UNSUBACK: the answer to UNSUBSCRIBE. Before 5.0 it carries no reason codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The UNSUBSCRIBE being answered.
    pub packet_id: PacketId,
    /// One code per filter (5.0 only; empty before).
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: AckProperties,
}

impl UnsubAck {
    pub(crate) fn decode(body: &Bytes, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        let (mut i, packet_id) = packet_id(body)?;
        let mut properties = AckProperties::default();
        let mut codes = Vec::new();
        if v.is_v5() {
            (i, properties) = AckProperties::parse(body, i)?;
            codes = reason_codes(PacketType::UnsubAck, i, v)?;
        } else {
            end(i)?;
        }
        Ok(UnsubAck {
            packet_id,
            reason_codes: codes,
            properties,
        })
    }
}

impl Body for UnsubAck {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if v.is_v5() {
            check_codes(PacketType::UnsubAck, &self.reason_codes)?;
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        if v.is_v5() {
            2 + self.properties.wire_len() + self.reason_codes.len()
        } else {
            2
        }
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        out.put_u16(self.packet_id.get());
        if v.is_v5() {
            self.properties.put(out);
            for c in &self.reason_codes {
                out.put_u8(c.as_u8());
            }
        }
    }
}
