//! PUBLISH (§3.3): the packet on the hot path.

use bytes::{Buf, BufMut, Bytes};
use tern_topic::TopicName;

use super::{encoded_len_of, Body, PacketType};
use crate::primitives::{length_prefixed, packet_id, put_prefixed, put_vbi, vbi_len, Res, VBI_MAX};
use crate::{DecodeError, EncodeError, ProtocolVersion, PublishProperties, QoS, QosPid};

/// PUBLISH: an application message.
///
/// Topic and payload share the buffer the packet was decoded from; encoding
/// knows its length in advance, so one PUBLISH fanned out to many
/// subscribers can be encoded once per version and shared as `Bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP: this is a resend (QoS 1/2 only).
    pub dup: bool,
    /// QoS, with the packet identifier QoS 1/2 need.
    pub qos: QosPid,
    /// RETAIN.
    pub retain: bool,
    /// The topic. Empty only in a 5.0 PUBLISH that carries a Topic Alias
    /// standing for a topic set earlier on the connection.
    pub topic: TopicName,
    /// The application payload.
    pub payload: Bytes,
    /// Properties (5.0 only).
    pub properties: PublishProperties,
}

impl Publish {
    /// A PUBLISH of `payload` to `topic` with no flags and no properties.
    pub fn new(topic: TopicName, qos: QosPid, payload: impl Into<Bytes>) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            payload: payload.into(),
            properties: PublishProperties::default(),
        }
    }

    fn first_byte(&self) -> u8 {
        let mut b = (PacketType::Publish as u8) << 4 | (self.qos.qos() as u8) << 1;
        if self.dup {
            b |= 0b1000;
        }
        if self.retain {
            b |= 1;
        }
        b
    }

    /// The exact number of bytes [`Publish::encode`] writes.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        encoded_len_of(self, version)
    }

    /// Writes the packet as `version` speaks it.
    ///
    /// The hot path of a broker's fan-out, so it walks the properties once
    /// for their length, and not at all when there are none. (Gathering the
    /// fixed header in a stack buffer first was measured slower than
    /// writing it byte by byte.)
    #[inline]
    pub fn encode<B: BufMut>(
        &self,
        version: ProtocolVersion,
        out: &mut B,
    ) -> Result<(), EncodeError> {
        if self.dup && self.qos == QosPid::AtMostOnce {
            return Err(EncodeError::DupWithQoS0);
        }
        let v5 = version.is_v5();
        if self.topic.is_empty() && !(v5 && self.properties.topic_alias.is_some()) {
            return Err(EncodeError::EmptyTopicWithoutAlias);
        }
        let props = if v5 { self.properties.len() } else { 0 };
        if props > 0 {
            self.properties.check()?;
        }
        let topic = self.topic.as_bytes();
        let mut n = 2 + topic.len() + self.payload.len();
        if self.qos != QosPid::AtMostOnce {
            n += 2;
        }
        if v5 {
            n += vbi_len(props) + props;
        }
        if n > VBI_MAX as usize {
            return Err(EncodeError::PacketTooLarge(n));
        }
        out.put_u8(self.first_byte());
        put_vbi(out, n);
        out.put_u16(topic.len() as u16);
        out.put_slice(topic);
        if let Some(id) = self.qos.packet_id() {
            out.put_u16(id.get());
        }
        if v5 {
            put_vbi(out, props);
            if props > 0 {
                self.properties.put_fields(out);
            }
        }
        out.put_slice(&self.payload);
        Ok(())
    }

    /// Decodes a PUBLISH body. Takes the body by value: the topic is split
    /// off it and the payload is what remains, so no extra reference to the
    /// buffer is taken beyond the topic's.
    #[inline]
    pub(crate) fn decode(
        flags: u8,
        mut body: Bytes,
        v: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let Some(qos) = QoS::from_u8((flags >> 1) & 0b11) else {
            return Err(DecodeError::InvalidQoS);
        };
        let dup = flags & 0b1000 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQoS0);
        }
        let (rest, raw_topic) = length_prefixed(&body)?;
        let empty_topic = raw_topic.is_empty();
        let mut topic = body.split_to(body.len() - rest.len());
        topic.advance(2);
        let (i, (qos, properties)) = parse(&body, &body, qos, v)?;
        let topic = if empty_topic {
            if properties.topic_alias.is_none() {
                return Err(DecodeError::EmptyTopicWithoutAlias);
            }
            TopicName::empty()
        } else {
            TopicName::from_bytes(topic).map_err(DecodeError::InvalidTopicName)?
        };
        // The payload is the rest of the packet: the body itself, advanced.
        body.advance(body.len() - i.len());
        Ok(Publish {
            dup,
            qos,
            retain: flags & 1 != 0,
            topic,
            payload: body,
            properties,
        })
    }
}

/// The packet identifier and properties after the topic.
#[inline]
fn parse<'a>(
    buf: &Bytes,
    i: &'a [u8],
    qos: QoS,
    v: ProtocolVersion,
) -> Res<'a, (QosPid, PublishProperties)> {
    let (i, qos) = match qos {
        QoS::AtMostOnce => (i, QosPid::AtMostOnce),
        QoS::AtLeastOnce => {
            let (i, id) = packet_id(i)?;
            (i, QosPid::AtLeastOnce(id))
        }
        QoS::ExactlyOnce => {
            let (i, id) = packet_id(i)?;
            (i, QosPid::ExactlyOnce(id))
        }
    };
    if v.is_v5() {
        // Most PUBLISHes carry no properties: a single zero length byte.
        if let Some((0, rest)) = i.split_first() {
            return Ok((rest, (qos, PublishProperties::default())));
        }
        let (i, properties) = PublishProperties::parse(buf, i)?;
        Ok((i, (qos, properties)))
    } else {
        Ok((i, (qos, PublishProperties::default())))
    }
}

impl Body for Publish {
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError> {
        if self.dup && self.qos == QosPid::AtMostOnce {
            return Err(EncodeError::DupWithQoS0);
        }
        if self.topic.is_empty() && !(v.is_v5() && self.properties.topic_alias.is_some()) {
            return Err(EncodeError::EmptyTopicWithoutAlias);
        }
        if v.is_v5() {
            self.properties.check()?;
        }
        Ok(())
    }

    #[inline]
    fn body_len(&self, v: ProtocolVersion) -> usize {
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.qos != QosPid::AtMostOnce {
            n += 2;
        }
        if v.is_v5() {
            n += self.properties.wire_len();
        }
        n
    }

    #[inline]
    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B) {
        put_prefixed(out, self.topic.as_bytes());
        if let Some(id) = self.qos.packet_id() {
            out.put_u16(id.get());
        }
        if v.is_v5() {
            self.properties.put(out);
        }
        out.put_slice(&self.payload);
    }
}
