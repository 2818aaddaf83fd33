//! The fifteen control packets: one file each, holding its decode and its
//! encode side by side.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
mod publish;
mod subscribe;
mod unsubscribe;

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

pub use ack::Ack;
pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use publish::Publish;
pub use subscribe::{RetainHandling, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions};
pub use unsubscribe::{UnsubAck, Unsubscribe};

use crate::primitives::{put_vbi, vbi_len, VBI_MAX};
use crate::{DecodeError, EncodeError, ProtocolVersion};

/// The type of a control packet: the high nibble of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PacketType {
    /// CONNECT, client to server.
    Connect = 1,
    /// CONNACK, server to client.
    ConnAck = 2,
    /// PUBLISH, both ways.
    Publish = 3,
    /// PUBACK, both ways.
    PubAck = 4,
    /// PUBREC, both ways.
    PubRec = 5,
    /// PUBREL, both ways.
    PubRel = 6,
    /// PUBCOMP, both ways.
    PubComp = 7,
    /// SUBSCRIBE, client to server.
    Subscribe = 8,
    /// SUBACK, server to client.
    SubAck = 9,
    /// UNSUBSCRIBE, client to server.
    Unsubscribe = 10,
    /// UNSUBACK, server to client.
    UnsubAck = 11,
    /// PINGREQ, client to server.
    PingReq = 12,
    /// PINGRESP, server to client.
    PingResp = 13,
    /// DISCONNECT, client to server (both ways on 5.0).
    Disconnect = 14,
    /// AUTH, both ways, MQTT 5.0 only.
    Auth = 15,
}

impl PacketType {
    /// The packet type for the high nibble of a first byte; `None` for 0.
    pub const fn from_u8(v: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match v {
            1 => Connect,
            2 => ConnAck,
            3 => Publish,
            4 => PubAck,
            5 => PubRec,
            6 => PubRel,
            7 => PubComp,
            8 => Subscribe,
            9 => SubAck,
            10 => Unsubscribe,
            11 => UnsubAck,
            12 => PingReq,
            13 => PingResp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags every packet but PUBLISH must carry (§2.1.3).
    pub(crate) const fn fixed_flags(self) -> u8 {
        match self {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }

    /// Whether a client may send this packet.
    pub const fn from_client(self, version: ProtocolVersion) -> bool {
        use PacketType::*;
        match self {
            ConnAck | SubAck | UnsubAck | PingResp => false,
            Auth => version.is_v5(),
            _ => true,
        }
    }

    /// Whether a server may send this packet.
    pub const fn from_server(self, version: ProtocolVersion) -> bool {
        use PacketType::*;
        match self {
            Connect | Subscribe | Unsubscribe | PingReq => false,
            Disconnect | Auth => version.is_v5(),
            _ => true,
        }
    }

    /// The spec's upper-case name.
    pub const fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            PingReq => "PINGREQ",
            PingResp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An MQTT control packet of any protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT: a client opens a session.
    Connect(Box<Connect>),
    /// CONNACK: the server answers CONNECT.
    ConnAck(ConnAck),
    /// PUBLISH: an application message.
    Publish(Publish),
    /// PUBACK: QoS 1 acknowledgement.
    PubAck(Ack),
    /// PUBREC: QoS 2, publish received.
    PubRec(Ack),
    /// PUBREL: QoS 2, publish release.
    PubRel(Ack),
    /// PUBCOMP: QoS 2, publish complete.
    PubComp(Ack),
    /// SUBSCRIBE: add subscriptions.
    Subscribe(Subscribe),
    /// SUBACK: the server answers SUBSCRIBE.
    SubAck(SubAck),
    /// UNSUBSCRIBE: remove subscriptions.
    Unsubscribe(Unsubscribe),
    /// UNSUBACK: the server answers UNSUBSCRIBE.
    UnsubAck(UnsubAck),
    /// PINGREQ: keepalive request.
    PingReq,
    /// PINGRESP: keepalive response.
    PingResp,
    /// DISCONNECT: the end of a connection.
    Disconnect(Disconnect),
    /// AUTH: an enhanced authentication exchange (5.0).
    Auth(Auth),
}

/// What a packet's body must provide to be encoded.
pub(crate) trait Body {
    /// Values the types allow but the spec or this version forbid.
    fn check(&self, v: ProtocolVersion) -> Result<(), EncodeError>;
    /// The remaining length.
    fn body_len(&self, v: ProtocolVersion) -> usize;
    /// Writes the body after the fixed header.
    fn put_body<B: BufMut>(&self, v: ProtocolVersion, out: &mut B);
}

/// A body-less packet (PINGREQ, PINGRESP).
struct Empty;

impl Body for Empty {
    fn check(&self, _: ProtocolVersion) -> Result<(), EncodeError> {
        Ok(())
    }
    fn body_len(&self, _: ProtocolVersion) -> usize {
        0
    }
    fn put_body<B: BufMut>(&self, _: ProtocolVersion, _: &mut B) {}
}

#[inline]
pub(crate) fn encoded_len_of(body: &impl Body, v: ProtocolVersion) -> usize {
    let n = body.body_len(v);
    1 + vbi_len(n) + n
}

#[inline]
pub(crate) fn encode_with<B: BufMut>(
    first: u8,
    body: &impl Body,
    v: ProtocolVersion,
    out: &mut B,
) -> Result<(), EncodeError> {
    body.check(v)?;
    let n = body.body_len(v);
    if n > VBI_MAX as usize {
        return Err(EncodeError::PacketTooLarge(n));
    }
    out.put_u8(first);
    put_vbi(out, n);
    body.put_body(v, out);
    Ok(())
}

impl Packet {
    /// The packet's type.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect(_) => PacketType::Connect,
            Packet::ConnAck(_) => PacketType::ConnAck,
            Packet::Publish(_) => PacketType::Publish,
            Packet::PubAck(_) => PacketType::PubAck,
            Packet::PubRec(_) => PacketType::PubRec,
            Packet::PubRel(_) => PacketType::PubRel,
            Packet::PubComp(_) => PacketType::PubComp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::SubAck(_) => PacketType::SubAck,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::UnsubAck(_) => PacketType::UnsubAck,
            Packet::PingReq => PacketType::PingReq,
            Packet::PingResp => PacketType::PingResp,
            Packet::Disconnect(_) => PacketType::Disconnect,
            Packet::Auth(_) => PacketType::Auth,
        }
    }

    /// The exact number of bytes [`Packet::encode`] writes for `version`.
    /// A CONNECT is always encoded in its own protocol version.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        match self {
            Packet::Connect(p) => encoded_len_of(&**p, p.protocol),
            Packet::ConnAck(p) => encoded_len_of(p, version),
            Packet::Publish(p) => encoded_len_of(p, version),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
                encoded_len_of(p, version)
            }
            Packet::Subscribe(p) => encoded_len_of(p, version),
            Packet::SubAck(p) => encoded_len_of(p, version),
            Packet::Unsubscribe(p) => encoded_len_of(p, version),
            Packet::UnsubAck(p) => encoded_len_of(p, version),
            Packet::PingReq | Packet::PingResp => 2,
            Packet::Disconnect(p) => encoded_len_of(p, version),
            Packet::Auth(p) => encoded_len_of(p, version),
        }
    }

    /// Writes the packet as `version` speaks it. Properties and reason codes
    /// are left out before 5.0, where the packet has no place for them.
    /// On error nothing has been written.
    pub fn encode<B: BufMut>(
        &self,
        version: ProtocolVersion,
        out: &mut B,
    ) -> Result<(), EncodeError> {
        let first = (self.packet_type() as u8) << 4;
        match self {
            Packet::Connect(p) => encode_with(first, &**p, p.protocol, out),
            Packet::ConnAck(p) => encode_with(first, p, version, out),
            Packet::Publish(p) => p.encode(version, out),
            Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubComp(p) => {
                p.check_type(self.packet_type())?;
                encode_with(first, p, version, out)
            }
            Packet::PubRel(p) => {
                p.check_type(PacketType::PubRel)?;
                encode_with(first | 0b0010, p, version, out)
            }
            Packet::Subscribe(p) => encode_with(first | 0b0010, p, version, out),
            Packet::SubAck(p) => encode_with(first, p, version, out),
            Packet::Unsubscribe(p) => encode_with(first | 0b0010, p, version, out),
            Packet::UnsubAck(p) => encode_with(first, p, version, out),
            Packet::PingReq | Packet::PingResp => encode_with(first, &Empty, version, out),
            Packet::Disconnect(p) => encode_with(first, p, version, out),
            Packet::Auth(p) => {
                if !version.is_v5() {
                    return Err(EncodeError::NotInVersion {
                        packet: PacketType::Auth,
                        version,
                    });
                }
                encode_with(first, p, version, out)
            }
        }
    }

    /// Encodes into a new buffer of exactly the right size.
    pub fn to_bytes(&self, version: ProtocolVersion) -> Result<Bytes, EncodeError> {
        let mut out = BytesMut::with_capacity(self.encoded_len(version));
        self.encode(version, &mut out)?;
        Ok(out.freeze())
    }

    /// Decodes the body of a packet whose fixed header was `first` (its
    /// first byte) and whose remaining bytes are `body`. CONNECT brings its
    /// own version; every other packet needs `version`.
    #[inline]
    pub(crate) fn decode_body(
        first: u8,
        body: Bytes,
        version: ProtocolVersion,
    ) -> Result<Packet, DecodeError> {
        let flags = first & 0x0f;
        let ty = PacketType::from_u8(first >> 4).ok_or(DecodeError::ReservedPacketType(0))?;
        Ok(match ty {
            PacketType::Connect => Packet::Connect(Box::new(Connect::decode(&body)?)),
            PacketType::ConnAck => Packet::ConnAck(ConnAck::decode(&body, version)?),
            PacketType::Publish => Packet::Publish(Publish::decode(flags, body, version)?),
            PacketType::PubAck => Packet::PubAck(Ack::decode(ty, &body, version)?),
            PacketType::PubRec => Packet::PubRec(Ack::decode(ty, &body, version)?),
            PacketType::PubRel => Packet::PubRel(Ack::decode(ty, &body, version)?),
            PacketType::PubComp => Packet::PubComp(Ack::decode(ty, &body, version)?),
            PacketType::Subscribe => Packet::Subscribe(Subscribe::decode(&body, version)?),
            PacketType::SubAck => Packet::SubAck(SubAck::decode(&body, version)?),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe::decode(&body, version)?),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck::decode(&body, version)?),
            PacketType::PingReq | PacketType::PingResp => {
                crate::primitives::end(&body)?;
                if ty == PacketType::PingReq {
                    Packet::PingReq
                } else {
                    Packet::PingResp
                }
            }
            PacketType::Disconnect => Packet::Disconnect(Disconnect::decode(&body, version)?),
            PacketType::Auth => Packet::Auth(Auth::decode(&body)?),
        })
    }
}

macro_rules! from_struct {
    ($($variant:ident($ty:ty)),*) => {
        $(impl From<$ty> for Packet {
            fn from(p: $ty) -> Packet {
                Packet::$variant(p)
            }
        })*
    };
}

from_struct!(
    ConnAck(ConnAck),
    Publish(Publish),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    Disconnect(Disconnect),
    Auth(Auth)
);

impl From<Connect> for Packet {
    fn from(p: Connect) -> Packet {
        Packet::Connect(Box::new(p))
    }
}
