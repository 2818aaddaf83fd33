//! The MQTT "UTF-8 Encoded String" rules (MQTT 3.1.1 §1.5.3, MQTT 5.0 §1.5.4).

use std::fmt;

/// The longest MQTT string, in bytes: its length travels as a two-byte prefix.
pub const MAX_MQTT_STR_LEN: usize = u16::MAX as usize;

/// Why a byte string is not an MQTT UTF-8 Encoded String.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Utf8Error {
    /// Longer than 65535 bytes, so its length does not fit the two-byte prefix.
    TooLong {
        /// The length found, in bytes.
        len: usize,
    },
    /// Not well-formed UTF-8 (this includes encoded surrogates U+D800..U+DFFF
    /// and overlong encodings) [MQTT-1.5.4-1].
    InvalidUtf8,
    /// Contains the null character U+0000 [MQTT-1.5.4-2].
    NullCharacter,
}

impl fmt::Display for Utf8Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { len } => write!(
                f,
                "string is {len} bytes long; an MQTT string holds at most {MAX_MQTT_STR_LEN}"
            ),
            Self::InvalidUtf8 => f.write_str("string is not well-formed UTF-8"),
            Self::NullCharacter => f.write_str("string contains the null character U+0000"),
        }
    }
}

impl std::error::Error for Utf8Error {}

/// Checks `bytes` against the rules of an MQTT UTF-8 Encoded String and
/// returns it as a `&str`.
///
/// The rules that are MUSTs are enforced: at most 65535 bytes, well-formed
/// UTF-8, no U+0000. Control characters (U+0001..U+001F, U+007F..U+009F) and
/// Unicode non-characters are only SHOULD NOTs in the specification (5.0
/// §1.5.4, 3.1.1 §1.5.3) and are accepted. A byte order mark (U+FEFF) is an
/// ordinary character, never stripped [MQTT-1.5.4-3].
///
/// ```
/// use tern_topic::{validate_mqtt_str, Utf8Error};
///
/// assert_eq!(validate_mqtt_str(b"sport/tennis"), Ok("sport/tennis"));
/// assert_eq!(validate_mqtt_str(b"a\0b"), Err(Utf8Error::NullCharacter));
/// assert_eq!(validate_mqtt_str(&[0xed, 0xa0, 0x80]), Err(Utf8Error::InvalidUtf8));
/// ```
pub fn validate_mqtt_str(bytes: &[u8]) -> Result<&str, Utf8Error> {
    // Length first: it is O(1) and bounds the work of the two scans below.
    if bytes.len() > MAX_MQTT_STR_LEN {
        return Err(Utf8Error::TooLong { len: bytes.len() });
    }
    let s = std::str::from_utf8(bytes).map_err(|_| Utf8Error::InvalidUtf8)?;
    // In well-formed UTF-8 the byte 0 only ever encodes U+0000, and
    // `contains` on bytes is vectorised.
    if bytes.contains(&0) {
        return Err(Utf8Error::NullCharacter);
    }
    Ok(s)
}

/// Whether `b` holds only ASCII bytes other than NUL (and, with
/// `no_wildcards`, other than `+` and `#`), eight bytes at a time (the
/// classic "has a zero byte" bit trick, exact for telling whether any byte
/// matches). Such bytes are a valid MQTT string with nothing else to check.
#[inline(always)]
pub(crate) fn plain_ascii(b: &[u8], no_wildcards: bool) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    #[inline(always)]
    fn has_zero(x: u64) -> u64 {
        x.wrapping_sub(LO) & !x & HI
    }
    let rejects = |x: u64| -> u64 {
        let mut r = (x & HI) | has_zero(x);
        if no_wildcards {
            r |= has_zero(x ^ (LO * u64::from(b'+'))) | has_zero(x ^ (LO * u64::from(b'#')));
        }
        r
    };
    #[inline(always)]
    fn word(b: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(w)
    }
    if b.len() < 8 {
        return b
            .iter()
            .all(|&c| c != 0 && c < 0x80 && !(no_wildcards && (c == b'+' || c == b'#')));
    }
    let mut bad = 0;
    let mut at = 0;
    while at + 8 <= b.len() {
        bad |= rejects(word(b, at));
        at += 8;
    }
    // The last, partial word: re-read the final eight bytes (overlapping).
    if at < b.len() {
        bad |= rejects(word(b, b.len() - 8));
    }
    bad == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_ascii_and_multibyte() {
        assert_eq!(validate_mqtt_str(b""), Ok(""));
        assert_eq!(validate_mqtt_str("a/ü/€/𝄞".as_bytes()), Ok("a/ü/€/𝄞"));
    }

    #[test]
    fn rejects_null_character() {
        assert_eq!(validate_mqtt_str(b"\0"), Err(Utf8Error::NullCharacter));
        assert_eq!(validate_mqtt_str(b"abc\0"), Err(Utf8Error::NullCharacter));
    }

    #[test]
    fn rejects_overlong_null() {
        // The "modified UTF-8" spelling of U+0000 is not well-formed UTF-8.
        assert_eq!(
            validate_mqtt_str(&[0xc0, 0x80]),
            Err(Utf8Error::InvalidUtf8)
        );
    }

    #[test]
    fn rejects_surrogates() {
        // U+D800 and U+DFFF encoded as if they were scalar values.
        assert_eq!(
            validate_mqtt_str(&[0xed, 0xa0, 0x80]),
            Err(Utf8Error::InvalidUtf8)
        );
        assert_eq!(
            validate_mqtt_str(&[0xed, 0xbf, 0xbf]),
            Err(Utf8Error::InvalidUtf8)
        );
    }

    #[test]
    fn rejects_malformed_utf8() {
        assert_eq!(validate_mqtt_str(&[0xff]), Err(Utf8Error::InvalidUtf8));
        assert_eq!(
            validate_mqtt_str(&[b'a', 0xe2, 0x82]),
            Err(Utf8Error::InvalidUtf8)
        );
        assert_eq!(validate_mqtt_str(&[0x80]), Err(Utf8Error::InvalidUtf8));
    }

    #[test]
    fn accepts_control_characters_and_noncharacters() {
        for s in [
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "\u{9f}",
            "\u{fffe}",
            "\u{ffff}",
            "\u{10ffff}",
        ] {
            assert_eq!(validate_mqtt_str(s.as_bytes()), Ok(s));
        }
    }

    #[test]
    fn accepts_exactly_65535_bytes() {
        let s = "a".repeat(65535);
        assert_eq!(validate_mqtt_str(s.as_bytes()), Ok(s.as_str()));
    }

    #[test]
    fn rejects_65536_bytes() {
        let s = "a".repeat(65536);
        assert_eq!(
            validate_mqtt_str(s.as_bytes()),
            Err(Utf8Error::TooLong { len: 65536 })
        );
    }

    #[test]
    fn displays_which_rule_failed() {
        assert!(Utf8Error::TooLong { len: 70000 }
            .to_string()
            .contains("70000"));
        assert!(Utf8Error::NullCharacter.to_string().contains("U+0000"));
        assert!(Utf8Error::InvalidUtf8.to_string().contains("UTF-8"));
    }
}
