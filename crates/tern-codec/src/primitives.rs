//! The data types of §1.5, parsed with nom over the packet body and turned
//! back into shared `Bytes` without copying.

use bytes::{BufMut, Bytes};
use nom::bytes::complete::take;
use nom::error::{ErrorKind, ParseError};
use nom::number::complete::{be_u16, be_u32, be_u8};
use nom::IResult;
use tern_topic::TopicName;

use crate::{DecodeError, MqttString, PacketId};

/// nom's error type inside the codec: one of our own errors.
#[derive(Debug)]
pub(crate) struct PErr(pub(crate) DecodeError);

impl ParseError<&[u8]> for PErr {
    fn from_error_kind(_: &[u8], _: ErrorKind) -> Self {
        // The body is complete, so a nom failure means a field overran it.
        PErr(DecodeError::Truncated)
    }

    fn append(_: &[u8], _: ErrorKind, other: Self) -> Self {
        other
    }
}

impl From<nom::Err<PErr>> for DecodeError {
    fn from(e: nom::Err<PErr>) -> Self {
        match e {
            nom::Err::Error(e) | nom::Err::Failure(e) => e.0,
            nom::Err::Incomplete(_) => DecodeError::Truncated,
        }
    }
}

pub(crate) type Res<'a, T> = IResult<&'a [u8], T, PErr>;

/// Stops parsing with `e`.
#[inline]
pub(crate) fn fail<'a, T>(e: DecodeError) -> Res<'a, T> {
    Err(nom::Err::Failure(PErr(e)))
}

/// Requires that `i` has been consumed completely.
#[inline]
pub(crate) fn end(i: &[u8]) -> Result<(), DecodeError> {
    if i.is_empty() {
        Ok(())
    } else {
        Err(DecodeError::TrailingBytes(i.len()))
    }
}

#[inline]
pub(crate) fn u8_(i: &[u8]) -> Res<'_, u8> {
    be_u8(i)
}

#[inline]
pub(crate) fn u16_(i: &[u8]) -> Res<'_, u16> {
    be_u16(i)
}

#[inline]
pub(crate) fn u32_(i: &[u8]) -> Res<'_, u32> {
    be_u32(i)
}

/// The largest value a Variable Byte Integer holds.
pub(crate) const VBI_MAX: u32 = 268_435_455;

/// A Variable Byte Integer (§1.5.5): at most four bytes.
#[inline]
pub(crate) fn vbi(i: &[u8]) -> Res<'_, u32> {
    let mut value = 0u32;
    for (n, &b) in i.iter().enumerate().take(4) {
        value |= u32::from(b & 0x7f) << (7 * n);
        if b & 0x80 == 0 {
            return Ok((&i[n + 1..], value));
        }
    }
    if i.len() >= 4 {
        fail(DecodeError::VariableByteIntegerTooLong)
    } else {
        fail(DecodeError::Truncated)
    }
}

/// Two-byte length then that many bytes, as a slice.
#[inline]
pub(crate) fn length_prefixed(i: &[u8]) -> Res<'_, &[u8]> {
    let (i, len) = be_u16(i)?;
    take(len)(i)
}

/// Binary Data (§1.5.6), sharing `buf`.
#[inline]
pub(crate) fn binary<'a>(buf: &Bytes, i: &'a [u8]) -> Res<'a, Bytes> {
    let (i, data) = length_prefixed(i)?;
    Ok((i, buf.slice_ref(data)))
}

/// A UTF-8 Encoded String (§1.5.4), sharing `buf`.
#[inline]
pub(crate) fn string<'a>(buf: &Bytes, i: &'a [u8]) -> Res<'a, MqttString> {
    let (i, data) = length_prefixed(i)?;
    match MqttString::from_bytes(buf.slice_ref(data)) {
        Ok(s) => Ok((i, s)),
        Err(e) => fail(DecodeError::InvalidString(e)),
    }
}

/// A non-empty topic name, sharing `buf`.
#[inline]
pub(crate) fn topic_name<'a>(buf: &Bytes, i: &'a [u8]) -> Res<'a, TopicName> {
    let (i, data) = length_prefixed(i)?;
    match TopicName::from_bytes(buf.slice_ref(data)) {
        Ok(t) => Ok((i, t)),
        Err(e) => fail(DecodeError::InvalidTopicName(e)),
    }
}

/// A packet identifier, which must not be 0.
#[inline]
pub(crate) fn packet_id(i: &[u8]) -> Res<'_, PacketId> {
    let (i, id) = be_u16(i)?;
    match PacketId::new(id) {
        Some(id) => Ok((i, id)),
        None => fail(DecodeError::ZeroPacketId),
    }
}

/// Bytes a Variable Byte Integer of `v` takes.
#[inline]
pub(crate) const fn vbi_len(v: usize) -> usize {
    if v < 128 {
        1
    } else if v < 16_384 {
        2
    } else if v < 2_097_152 {
        3
    } else {
        4
    }
}

#[inline]
pub(crate) fn put_vbi<B: BufMut>(out: &mut B, mut v: usize) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            return;
        }
    }
}

/// Writes a two-byte length and the bytes. Callers guarantee the length
/// fits: strings and topics are validated to 65,535 bytes, binary data is
/// checked by [`crate::Packet::encode`].
#[inline]
pub(crate) fn put_prefixed<B: BufMut>(out: &mut B, data: &[u8]) {
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}
