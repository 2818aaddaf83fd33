//! PUBLISH (§3.3): the packet on the hot path.

use bytes::{BufMut, Bytes};
use tern_topic::TopicName;

use super::{encode_with, encoded_len_of, Body, PacketType};
use crate::primitives::{fail, length_prefixed, packet_id, put_prefixed, Res};
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
    pub fn encode<B: BufMut>(
        &self,
        version: ProtocolVersion,
        out: &mut B,
    ) -> Result<(), EncodeError> {
        encode_with(self.first_byte(), self, version, out)
    }

    pub(crate) fn decode(
        flags: u8,
        body: &Bytes,
        v: ProtocolVersion,
    ) -> Result<Publish, DecodeError> {
        let Some(qos) = QoS::from_u8((flags >> 1) & 0b11) else {
            return Err(DecodeError::InvalidQoS);
        };
        let dup = flags & 0b1000 != 0;
        if dup && qos == QoS::AtMostOnce {
            return Err(DecodeError::DupWithQoS0);
        }
        let (i, (topic, qos, properties)) = parse(body, body, qos, v)?;
        // The payload is the rest of the packet: no copy, just a slice.
        let payload = body.slice_ref(i);
        Ok(Publish {
            dup,
            qos,
            retain: flags & 1 != 0,
            topic,
            payload,
            properties,
        })
    }
}

fn parse<'a>(
    buf: &Bytes,
    i: &'a [u8],
    qos: QoS,
    v: ProtocolVersion,
) -> Res<'a, (TopicName, QosPid, PublishProperties)> {
    let (i, raw_topic) = length_prefixed(i)?;
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
    let (i, properties) = if v.is_v5() {
        PublishProperties::parse(buf, i)?
    } else {
        (i, PublishProperties::default())
    };
    let topic = if raw_topic.is_empty() {
        if properties.topic_alias.is_none() {
            return fail(DecodeError::EmptyTopicWithoutAlias);
        }
        TopicName::empty()
    } else {
        match TopicName::from_bytes(buf.slice_ref(raw_topic)) {
            Ok(t) => t,
            Err(e) => return fail(DecodeError::InvalidTopicName(e)),
        }
    };
    Ok((i, (topic, qos, properties)))
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
