//! The incremental decoder: bytes in, packets out, state kept between calls.

use bytes::{Buf, Bytes, BytesMut};

use crate::packet::PacketType;
use crate::{DecodeError, Packet, ProtocolVersion};

/// Which end of the connection a [`Decoder`] reads for. A server reads what
/// clients send, and learns the protocol version from CONNECT; a client
/// reads what servers send, in the version it connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reads client-to-server packets.
    Server,
    /// Reads server-to-client packets.
    Client,
}

/// The default maximum packet size: 1 MiB.
pub const DEFAULT_MAX_PACKET_SIZE: u32 = 1024 * 1024;

/// The largest packet MQTT can express: a 5-byte fixed header and a
/// remaining length of 268,435,455.
pub const PROTOCOL_MAX_PACKET_SIZE: u32 = 268_435_460;

/// A fixed header read and checked, waiting for its body.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: u8,
    header_len: usize,
    total: usize,
}

/// Decodes a stream of packets incrementally.
///
/// Call [`Decoder::decode`] whenever bytes arrive. It returns `Ok(None)`
/// without consuming anything while a packet is incomplete, and keeps the
/// fixed header it already checked, so a partial packet is never parsed
/// twice. The maximum packet size is enforced from the fixed header, before
/// the body arrives. After an error the stream is unusable: close it.
///
/// ```
/// use bytes::BytesMut;
/// use tern_codec::{Decoder, Packet, ProtocolVersion};
///
/// let mut decoder = Decoder::client(ProtocolVersion::V3_1_1);
/// let mut buf = BytesMut::from(&[0xd0, 0x00][..]); // PINGRESP
/// assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Packet::PingResp));
/// assert_eq!(decoder.decode(&mut buf).unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    role: Role,
    version: Option<ProtocolVersion>,
    max_packet_size: u32,
    pending: Option<Pending>,
}

impl Decoder {
    /// A decoder for a server: the first packet must be CONNECT, which sets
    /// the protocol version.
    pub fn server() -> Decoder {
        Decoder {
            role: Role::Server,
            version: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            pending: None,
        }
    }

    /// A decoder for a client that connected with `version`.
    pub fn client(version: ProtocolVersion) -> Decoder {
        Decoder {
            role: Role::Client,
            version: Some(version),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            pending: None,
        }
    }

    /// Sets the largest packet accepted, fixed header included (the MQTT 5
    /// Maximum Packet Size). Values above what MQTT can express are capped.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max.min(PROTOCOL_MAX_PACKET_SIZE);
    }

    /// Builder form of [`Decoder::set_max_packet_size`].
    pub fn with_max_packet_size(mut self, max: u32) -> Decoder {
        self.set_max_packet_size(max);
        self
    }

    /// The largest packet accepted.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// The protocol version, once known.
    pub fn version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// Which side this decoder reads for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Sets the protocol version (a client that reconnects with another one).
    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = Some(version);
    }

    /// Total size of the packet whose fixed header has been read but whose
    /// body has not fully arrived, so the caller can size its buffer.
    pub fn pending_len(&self) -> Option<usize> {
        self.pending.map(|p| p.total)
    }

    /// Decodes the next packet from `buf`, removing its bytes. The packet's
    /// topic, payload and strings share `buf`'s memory.
    #[inline]
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(p) = self.header(buf)? else {
            return Ok(None);
        };
        if buf.len() < p.total {
            return Ok(None);
        }
        self.pending = None;
        let mut frame = buf.split_to(p.total).freeze();
        frame.advance(p.header_len);
        self.body(p.first, frame).map(Some)
    }

    /// Like [`Decoder::decode`], from an immutable buffer: the packet's
    /// fields are slices of `buf`, which is advanced past the packet.
    pub fn decode_bytes(&mut self, buf: &mut Bytes) -> Result<Option<Packet>, DecodeError> {
        let Some(p) = self.header(buf)? else {
            return Ok(None);
        };
        if buf.len() < p.total {
            return Ok(None);
        }
        self.pending = None;
        let body = buf.slice(p.header_len..p.total);
        buf.advance(p.total);
        self.body(p.first, body).map(Some)
    }

    #[inline]
    fn body(&mut self, first: u8, body: Bytes) -> Result<Packet, DecodeError> {
        // `header` has checked that the version is known unless this is a
        // server's CONNECT, which carries its own.
        let version = self.version.unwrap_or(ProtocolVersion::V5);
        let packet = Packet::decode_body(first, body, version)?;
        match &packet {
            Packet::Connect(c) if self.version.is_none() => self.version = Some(c.protocol),
            Packet::Publish(p)
                if self.role == Role::Server
                    && !p.properties.subscription_identifiers.is_empty() =>
            {
                // [MQTT-3.3.4-6]: only servers send subscription identifiers.
                return Err(DecodeError::PropertyNotAllowed {
                    id: 0x0B,
                    context: "PUBLISH from a client",
                });
            }
            _ => {}
        }
        Ok(packet)
    }

    /// Reads and checks the fixed header, or returns the one already read.
    #[inline]
    fn header(&mut self, buf: &[u8]) -> Result<Option<Pending>, DecodeError> {
        if let Some(p) = self.pending {
            return Ok(Some(p));
        }
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        self.check_first_byte(first)?;
        let mut remaining = 0usize;
        for n in 0..4 {
            let Some(&b) = buf.get(1 + n) else {
                return Ok(None);
            };
            remaining |= usize::from(b & 0x7f) << (7 * n);
            if b & 0x80 == 0 {
                let header_len = 2 + n;
                let total = header_len + remaining;
                if total > self.max_packet_size as usize {
                    return Err(DecodeError::PacketTooLarge {
                        size: total,
                        max: self.max_packet_size,
                    });
                }
                let p = Pending {
                    first,
                    header_len,
                    total,
                };
                self.pending = Some(p);
                return Ok(Some(p));
            }
        }
        Err(DecodeError::VariableByteIntegerTooLong)
    }

    /// Type, flags and direction, checked before any of the body is read.
    fn check_first_byte(&self, first: u8) -> Result<(), DecodeError> {
        let Some(ty) = PacketType::from_u8(first >> 4) else {
            return Err(DecodeError::ReservedPacketType(first >> 4));
        };
        let flags = first & 0x0f;
        // MQTT 3.1 gave PUBREL, SUBSCRIBE and UNSUBSCRIBE QoS 1 and a DUP
        // flag, which its clients set on a resend; 3.1.1 fixed the flags.
        let dup_ok = self.version == Some(ProtocolVersion::V3_1);
        let fixed = ty.fixed_flags();
        let valid = flags == fixed || (dup_ok && fixed == 0b0010 && flags == 0b1010);
        if ty != PacketType::Publish && !valid {
            return Err(DecodeError::InvalidFlags { packet: ty, flags });
        }
        let Some(version) = self.version else {
            // Only a server waiting for CONNECT has no version yet.
            return match ty {
                PacketType::Connect => Ok(()),
                other => Err(DecodeError::ExpectedConnect(other)),
            };
        };
        if ty == PacketType::Auth && !version.is_v5() {
            return Err(DecodeError::ReservedPacketType(15));
        }
        let allowed = match self.role {
            Role::Server => ty.from_client(version),
            Role::Client => ty.from_server(version),
        };
        if allowed {
            Ok(())
        } else {
            Err(DecodeError::UnexpectedPacket(ty))
        }
    }
}
