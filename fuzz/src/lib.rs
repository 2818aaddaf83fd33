//! Harness code shared by the fuzz targets: the codec targets' input format
//! below, and the broker scripts in [`broker`].
//!
//! # Input format
//!
//! Every target reads the same input, so a corpus entry or a regression file
//! is meaningful to all of them:
//!
//! ```text
//! byte 0   bits 0-1  decoder: 0 = server (version learnt from CONNECT),
//!                             1 = client 3.1, 2 = client 3.1.1, 3 = client 5.0
//!          bits 2-4  maximum packet size: 0-3 = default (1 MiB), 4 = 2,
//!                    5 = 16, 6 = 256, 7 = u32::MAX (capped by the decoder)
//!          bits 5-7  chunking: 0 = one byte at a time, k = pseudo-random
//!                    chunks of 1..=2^k bytes, seeded from the input
//! byte 1.. the byte stream fed to the decoder
//! ```
//!
//! An empty input is ignored.

pub mod broker;

use bytes::{Bytes, BytesMut};
use tern_codec::{
    DecodeError, Decoder, Packet, ProtocolVersion, Role, DEFAULT_MAX_PACKET_SIZE,
    PROTOCOL_MAX_PACKET_SIZE,
};

/// All protocol versions, in order.
pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

/// A decoded input: the decoder to start from, the chunking and the stream.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// A fresh decoder, configured from the first byte.
    pub decoder: Decoder,
    /// The chunking strategy (bits 5-7 of the first byte).
    pub chunking: u8,
    /// The byte stream.
    pub stream: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits a fuzzer input; `None` when it is empty.
    pub fn parse(data: &'a [u8]) -> Option<Input<'a>> {
        let (&first, stream) = data.split_first()?;
        let decoder = match first & 0b11 {
            0 => Decoder::server(),
            1 => Decoder::client(ProtocolVersion::V3_1),
            2 => Decoder::client(ProtocolVersion::V3_1_1),
            _ => Decoder::client(ProtocolVersion::V5),
        };
        let max = match (first >> 2) & 0b111 {
            0..=3 => DEFAULT_MAX_PACKET_SIZE,
            4 => 2,
            5 => 16,
            6 => 256,
            _ => u32::MAX,
        };
        Some(Input {
            decoder: decoder.with_max_packet_size(max),
            chunking: first >> 5,
            stream,
        })
    }

    /// The prefix byte selecting `role`/`version` with the default maximum
    /// packet size and the given chunking (0..=7). Used to write seeds.
    pub fn prefix(client: Option<ProtocolVersion>, chunking: u8) -> u8 {
        let role = match client {
            None => 0,
            Some(ProtocolVersion::V3_1) => 1,
            Some(ProtocolVersion::V3_1_1) => 2,
            Some(ProtocolVersion::V5) => 3,
        };
        role | (chunking & 0b111) << 5
    }

    /// The chunk sizes the stream is fed in; they add up to its length.
    pub fn chunks(&self) -> Vec<usize> {
        let len = self.stream.len();
        if self.chunking == 0 {
            return vec![1; len];
        }
        let max = 1u64 << self.chunking;
        // FNV-1a of the stream and the strategy: the chunking is a function
        // of the input, so a crash reproduces from its file alone.
        let mut state = 0xcbf2_9ce4_8422_2325u64;
        for &b in self.stream.iter().chain(&[self.chunking]) {
            state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        state |= 1;
        let mut sizes = Vec::new();
        let mut left = len;
        while left > 0 {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (1 + state % max) as usize;
            let n = n.min(left);
            sizes.push(n);
            left -= n;
        }
        sizes
    }
}

/// One call of the decoder that returned something other than `Ok(None)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The packet or the error.
    pub result: Result<Packet, DecodeError>,
    /// Bytes the call consumed from the buffer.
    pub consumed: usize,
    /// The decoder's protocol version after the call.
    pub version: Option<ProtocolVersion>,
}

/// Everything a run of the decoder over a stream produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Packets and the error that ended the stream, if any.
    pub steps: Vec<Step>,
    /// Bytes left in the buffer at the end (an incomplete packet), or not
    /// consumed because an error stopped the stream.
    pub leftover: usize,
    /// [`Decoder::pending_len`] at the end.
    pub pending_len: Option<usize>,
    /// [`Decoder::version`] at the end.
    pub version: Option<ProtocolVersion>,
}

impl Trace {
    /// The packets decoded, each with the version it was decoded in.
    pub fn packets(&self) -> impl Iterator<Item = (&Packet, ProtocolVersion)> {
        self.steps.iter().filter_map(|s| match &s.result {
            Ok(p) => Some((p, s.version.expect("a decoded packet sets the version"))),
            Err(_) => None,
        })
    }
}

/// Calls `decode` until it returns `Ok(None)` or an error, recording steps.
/// Returns `false` once an error ended the stream.
fn drain(
    decoder: &mut Decoder,
    steps: &mut Vec<Step>,
    mut decode: impl FnMut(&mut Decoder) -> (Result<Option<Packet>, DecodeError>, usize),
) -> bool {
    loop {
        let (result, consumed) = decode(decoder);
        let version = decoder.version();
        match result {
            Ok(None) => {
                assert_eq!(consumed, 0, "Ok(None) consumed {consumed} bytes");
                return true;
            }
            Ok(Some(p)) => {
                // Every packet is at least two bytes: this is what keeps
                // the loop finite.
                assert!(consumed >= 2, "{p:?} consumed only {consumed} bytes");
                steps.push(Step {
                    result: Ok(p),
                    consumed,
                    version,
                });
            }
            Err(e) => {
                steps.push(Step {
                    result: Err(e),
                    consumed,
                    version,
                });
                return false;
            }
        }
    }
}

/// Feeds `stream` to `decoder` with [`Decoder::decode`], in chunks of the
/// given sizes (one chunk of everything if `chunks` is `None`).
pub fn run_decode(mut decoder: Decoder, stream: &[u8], chunks: Option<&[usize]>) -> Trace {
    let whole = [stream.len()];
    let chunks = chunks.unwrap_or(&whole);
    let mut buf = BytesMut::new();
    let mut steps = Vec::new();
    let mut fed = 0;
    for &n in chunks {
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;
        let live = drain(&mut decoder, &mut steps, |d| {
            let before = buf.len();
            let r = d.decode(&mut buf);
            (r, before - buf.len())
        });
        if !live {
            break;
        }
    }
    Trace {
        steps,
        leftover: buf.len() + (stream.len() - fed),
        pending_len: decoder.pending_len(),
        version: decoder.version(),
    }
}

/// Like [`run_decode`] with [`Decoder::decode_bytes`] over views of one
/// immutable buffer.
pub fn run_decode_bytes(mut decoder: Decoder, stream: &[u8], chunks: Option<&[usize]>) -> Trace {
    let whole = [stream.len()];
    let chunks = chunks.unwrap_or(&whole);
    let all = Bytes::copy_from_slice(stream);
    let mut steps = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    for &n in chunks {
        fed += n;
        let live = drain(&mut decoder, &mut steps, |d| {
            let mut view = all.slice(consumed..fed);
            let before = view.len();
            let r = d.decode_bytes(&mut view);
            let used = before - view.len();
            consumed += used;
            (r, used)
        });
        if !live {
            break;
        }
    }
    Trace {
        steps,
        leftover: stream.len() - consumed,
        pending_len: decoder.pending_len(),
        version: decoder.version(),
    }
}

/// Exercises the error's methods; they must not panic.
pub fn touch_error(e: &DecodeError) {
    let _ = e.reason_code();
    let _ = e.to_string();
}

/// The version `p` is encoded in when the decoder read it in `version`:
/// a CONNECT always brings its own.
pub fn own_version(p: &Packet, version: ProtocolVersion) -> ProtocolVersion {
    match p {
        Packet::Connect(c) => c.protocol,
        _ => version,
    }
}

/// A fresh decoder of `role` that reads `p` in `version`, with no size limit.
pub fn fresh_decoder(role: Role, p: &Packet, version: ProtocolVersion) -> Decoder {
    let d = match role {
        Role::Server => {
            let mut d = Decoder::server();
            if !matches!(p, Packet::Connect(_)) {
                d.set_version(version);
            }
            d
        }
        Role::Client => Decoder::client(version),
    };
    d.with_max_packet_size(PROTOCOL_MAX_PACKET_SIZE)
}

/// Decodes exactly one packet from `wire`, which it must fill completely.
pub fn decode_one(mut decoder: Decoder, wire: &[u8]) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(wire);
    let p = decoder.decode(&mut buf)?;
    let p = p.unwrap_or_else(|| panic!("incomplete packet {wire:02x?}"));
    assert!(buf.is_empty(), "{} bytes left after {p:?}", buf.len());
    Ok(p)
}

/// Encodes `p` in `version`. On success checks that exactly
/// [`Packet::encoded_len`] bytes were written and that
/// [`Packet::to_bytes`] agrees; on error that nothing was written.
pub fn encode_checked(
    p: &Packet,
    version: ProtocolVersion,
) -> Result<BytesMut, tern_codec::EncodeError> {
    let len = p.encoded_len(version);
    let mut out = BytesMut::new();
    match p.encode(version, &mut out) {
        Ok(()) => {
            assert_eq!(
                out.len(),
                len,
                "encoded_len({version}) = {len} but encode wrote {} bytes for {p:?}",
                out.len()
            );
            let again = p
                .to_bytes(version)
                .expect("to_bytes after encode succeeded");
            assert_eq!(&again[..], &out[..], "to_bytes differs from encode");
            let mut v = Vec::new();
            p.encode(version, &mut v).expect("encode into a Vec");
            assert_eq!(&v[..], &out[..], "encode into a Vec differs");
            Ok(out)
        }
        Err(e) => {
            assert!(
                out.is_empty(),
                "encode failed with {e:?} after writing {} bytes",
                out.len()
            );
            let _ = e.to_string();
            Err(e)
        }
    }
}

/// The round trip of one decoded packet in the version it was decoded in:
/// encode (which must succeed when `strict`), check the length, decode
/// again with a fresh decoder of the same role and compare. Returns the
/// encoding when there is one.
pub fn check_roundtrip(
    role: Role,
    p: &Packet,
    decoded_in: ProtocolVersion,
    strict: bool,
) -> Option<BytesMut> {
    let v = own_version(p, decoded_in);
    let wire = match encode_checked(p, v) {
        Ok(w) => w,
        Err(e) if strict => panic!("a decoded packet does not encode in {v}: {e:?}\n{p:?}"),
        Err(_) => return None,
    };
    match decode_one(fresh_decoder(role, p, v), &wire) {
        Ok(q) => assert_eq!(
            &q,
            p,
            "decode(encode(p)) != p in {v}, wire {:02x?}",
            &wire[..]
        ),
        Err(e) => panic!(
            "decode(encode(p)) failed in {v} with {e:?}\nwire {:02x?}\n{p:?}",
            &wire[..]
        ),
    }
    Some(wire)
}

/// Encodes `p` in every other version. When that succeeds the result must
/// decode (by the side that receives the packet in that version) and encode
/// back to the same bytes. CONNECT is skipped: it has its own version.
pub fn check_other_versions(p: &Packet, decoded_in: ProtocolVersion) {
    if matches!(p, Packet::Connect(_)) {
        return;
    }
    let ty = p.packet_type();
    for w in VERSIONS {
        if w == decoded_in {
            continue;
        }
        let Ok(wire) = encode_checked(p, w) else {
            continue;
        };
        // A client reads what servers send; a server what clients send.
        let role = if ty.from_server(w) {
            Role::Client
        } else if ty.from_client(w) {
            Role::Server
        } else {
            // Encodable but sent by nobody in `w` (DISCONNECT is only
            // sent by clients before 5.0): nothing to decode it with.
            continue;
        };
        let q = match decode_one(fresh_decoder(role, p, w), &wire) {
            Ok(q) => q,
            Err(e) => panic!(
                "{ty} decoded in {decoded_in} and encoded in {w} does not decode: {e:?}\n\
                 wire {:02x?}\n{p:?}",
                &wire[..]
            ),
        };
        let again = encode_checked(&q, w)
            .unwrap_or_else(|e| panic!("{ty} re-decoded in {w} does not encode: {e:?}\n{q:?}"));
        assert_eq!(
            &again[..],
            &wire[..],
            "encoding in {w} is not a fixpoint\nfirst {p:?}\nthen {q:?}"
        );
    }
}
