//! tokio-util's `Decoder` / `Encoder` over tern-codec: the one place where
//! `io::Error` meets the codec.

use bytes::BytesMut;
use tern_codec::{DecodeError, EncodeError, Packet, ProtocolVersion};

/// What can go wrong reading or writing framed MQTT.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a malformed packet: close the connection (after
    /// telling a 5.0 peer `DecodeError::reason_code`).
    #[error("decode error: {0}")]
    Decode(#[from] DecodeError),
    /// A packet could not be encoded for the connection's version.
    #[error("encode error: {0}")]
    Encode(#[from] EncodeError),
}

/// MQTT packets framed over a byte stream, for `tokio_util::codec::Framed`.
///
/// ```
/// use tern_codec::{Connect, MqttString, Packet, ProtocolVersion};
/// use tern_tokio::MqttCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let connect = Packet::from(Connect::new(ProtocolVersion::V5, MqttString::from_static("lamp")));
/// let mut wire = bytes::BytesMut::new();
/// MqttCodec::client(ProtocolVersion::V5).encode(&connect, &mut wire)?;
///
/// // The server side learns the version from CONNECT and answers in it.
/// let mut server = MqttCodec::server();
/// assert_eq!(server.decode(&mut wire)?, Some(connect));
/// assert_eq!(server.version(), ProtocolVersion::V5);
/// # Ok::<(), tern_tokio::CodecError>(())
/// ```
#[derive(Debug, Clone)]
pub struct MqttCodec {
    decoder: tern_codec::Decoder,
    version: ProtocolVersion,
}

impl MqttCodec {
    /// The server side: the version is learnt from CONNECT.
    pub fn server() -> MqttCodec {
        MqttCodec {
            decoder: tern_codec::Decoder::server(),
            version: ProtocolVersion::V3_1_1,
        }
    }

    /// The client side of a connection speaking `version`.
    pub fn client(version: ProtocolVersion) -> MqttCodec {
        MqttCodec {
            decoder: tern_codec::Decoder::client(version),
            version,
        }
    }

    /// Sets the largest packet accepted.
    pub fn with_max_packet_size(mut self, max: u32) -> MqttCodec {
        self.decoder = self.decoder.with_max_packet_size(max);
        self
    }

    /// The version packets are encoded with: the client's, or for a server
    /// the one its CONNECT used.
    pub fn version(&self) -> ProtocolVersion {
        self.decoder.version().unwrap_or(self.version)
    }
}

impl tokio_util::codec::Decoder for MqttCodec {
    type Item = Packet;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Packet>, CodecError> {
        if let Some(total) = self.decoder.pending_len() {
            src.reserve(total.saturating_sub(src.len()));
        }
        Ok(self.decoder.decode(src)?)
    }
}

impl tokio_util::codec::Encoder<Packet> for MqttCodec {
    type Error = CodecError;

    fn encode(&mut self, p: Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode(&p, dst)
    }
}

impl tokio_util::codec::Encoder<&Packet> for MqttCodec {
    type Error = CodecError;

    fn encode(&mut self, p: &Packet, dst: &mut BytesMut) -> Result<(), CodecError> {
        let v = self.version();
        dst.reserve(p.encoded_len(v));
        Ok(p.encode(v, dst)?)
    }
}
