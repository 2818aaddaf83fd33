//! SUBSCRIBE (§3.8) and SUBACK (§3.9).

use bytes::{BufMut, Bytes};
use tern_topic::TopicFilter;

use super::{Body, PacketType};
use crate::primitives::{fail, length_prefixed, packet_id, put_prefixed, u8_, Res};
use crate::{
    AckProperties, DecodeError, EncodeError, PacketId, ProtocolVersion, QoS, ReasonCode,
    SubscribeProperties,
};

/// When retained messages are sent for a new subscription (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist.
    SendIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// The options byte of one subscription (§3.8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// No Local (5.0): do not send the client its own publishes.
    pub no_local: bool,
    /// Retain As Published (5.0): keep the RETAIN flag when forwarding.
    pub retain_as_published: bool,
    /// Retain Handling (5.0).
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with `qos` and the defaults of 3.1.1.
    pub fn new(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    fn to_byte(self, v: ProtocolVersion) -> u8 {
        let mut b = self.qos as u8;
        if v.is_v5() {
            b |= u8::from(self.no_local) << 2
                | u8::from(self.retain_as_published) << 3
                | (self.retain_handling as u8) << 4;
        }
        b
    }

    fn from_byte(b: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let reserved = if v.is_v5() { 0b1100_0000 } else { 0b1111_1100 };
        if b & reserved != 0 {
            return Err(DecodeError::ReservedSubscriptionOptions);
        }
        let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::InvalidQoS)?;
        let retain_handling = match (b >> 4) & 0b11 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: b & 0b100 != 0,
            retain_as_published: b & 0b1000 != 0,
            retain_handling,
        })
    }
}

/// One topic filter of a SUBSCRIBE with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The filter, possibly a shared one.
    pub filter: TopicFilter,
    /// Its options.
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE: add one or more subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The identifier SUBACK answers with.
    pub packet_id: PacketId,
    /// The filters, at least one.
    pub filters: Vec<SubscribeFilter>,
    /// Properties (5.0 only).
    pub properties: SubscribeProperties,
}

impl Subscribe {
    pub(crate) fn decode(body: &Bytes, v: ProtocolVersion) -> Result<Subscribe, DecodeError> {
        let (mut i, packet_id) = packet_id(body)?;
        let mut properties = SubscribeProperties::default();
        if v.is_v5() {
            (i, properties) = SubscribeProperties::parse(body, i)?;
        }
        if i.is_empty() {
            return Err(DecodeError::NoTopicFilters(PacketType::Subscribe));
        }
        // Each entry takes at least 4 bytes; most SUBSCRIBEs carry a few.
        let mut filters = Vec::with_capacity((i.len() / 16).clamp(1, 16));
        while !i.is_empty() {
            let (r, entry) = parse_filter(body, i, v)?;
            filters.push(entry);
            i = r;
        }
        Ok(Subscribe {
            packet_id,
            filters,
            properties,
        })
    }
}

fn parse_filter<'a>(buf: &Bytes, i: &'a [u8], v: ProtocolVersion) -> Res<'a, SubscribeFilter> {
    let (i, raw) = length_prefixed(i)?;
    let filter = match TopicFilter::from_bytes(buf.slice_ref(raw)) {
        Ok(f) => f,
        Err(e) => return fail(DecodeError::InvalidTopicFilter(e)),
    };
    let (i, b) = u8_(i)?;
    let options = match SubscriptionOptions::from_byte(b, v) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if options.no_local && filter.is_shared() {
        return fail(DecodeError::NoLocalOnSharedSubscription);
    }
    Ok((i, SubscribeFilter { filter, options }))
}

impl Body for Subscribe {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.filters.is_empty() {
            return Err(EncodeError::Empty(PacketType::Subscribe));
        }
        if v.is_v5() {
            if self
                .filters
                .iter()
                .any(|f| f.options.no_local && f.filter.is_shared())
            {
                return Err(EncodeError::NoLocalOnSharedSubscription);
            }
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        let mut n = 2;
        if v.is_v5() {
            n += self.properties.wire_len();
        }
        for f in &self.filters {
            n += 2 + f.filter.len() + 1;
        }
        n
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        out.put_u16(self.packet_id.get());
        if v.is_v5() {
            self.properties.put(out);
        }
        for f in &self.filters {
            put_prefixed(out, f.filter.as_bytes());
            out.put_u8(f.options.to_byte(v));
        }
    }
}

/// SUBACK: one reason code per filter of the SUBSCRIBE, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE being answered.
    pub packet_id: PacketId,
    /// Granted QoS or failure, one per filter. Before 5.0 every failure is
    /// sent as 0x80.
    pub reason_codes: Vec<ReasonCode>,
    /// Properties (5.0 only).
    pub properties: AckProperties,
}

impl SubAck {
    pub(crate) fn decode(body: &Bytes, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let (mut i, packet_id) = packet_id(body)?;
        let mut properties = AckProperties::default();
        if v.is_v5() {
            (i, properties) = AckProperties::parse(body, i)?;
        }
        let reason_codes = reason_codes(PacketType::SubAck, i, v)?;
        Ok(SubAck {
            packet_id,
            reason_codes,
            properties,
        })
    }
}

/// The payload of SUBACK and UNSUBACK: one code a byte.
pub(crate) fn reason_codes(
    ty: PacketType,
    i: &[u8],
    v: ProtocolVersion,
) -> Result<Vec<ReasonCode>, DecodeError> {
    i.iter()
        .map(|&code| {
            let rc = if v.is_v5() {
                ReasonCode::from_u8(code).filter(|c| c.allowed_in(ty))
            } else {
                match code {
                    0 => Some(ReasonCode::Success),
                    1 => Some(ReasonCode::GrantedQoS1),
                    2 => Some(ReasonCode::GrantedQoS2),
                    0x80 => Some(ReasonCode::UnspecifiedError),
                    _ => None,
                }
            };
            rc.ok_or(DecodeError::InvalidReasonCode { packet: ty, code })
        })
        .collect()
}

/// Checks codes against the packet they go in.
pub(crate) fn check_codes(ty: PacketType, codes: &[ReasonCode]) -> Result<(), EncodeError> {
    match codes.iter().find(|c| !c.allowed_in(ty)) {
        Some(&code) => Err(EncodeError::ReasonCodeNotAllowed { packet: ty, code }),
        None => Ok(()),
    }
}

impl Body for SubAck {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        check_codes(PacketType::SubAck, &self.reason_codes)?;
        if v.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    fn body_len(&self, v: ProtocolVersion) -> usize {
        let mut n = 2 + self.reason_codes.len();
        if v.is_v5() {
            n += self.properties.wire_len();
        }
        n
    }

    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        out.put_u16(self.packet_id.get());
        if v.is_v5() {
            self.properties.put(out);
            for c in &self.reason_codes {
                out.put_u8(c.as_u8());
            }
        } else {
            for c in &self.reason_codes {
                out.put_u8(if c.is_error() { 0x80 } else { c.as_u8() });
            }
        }
    }
}
