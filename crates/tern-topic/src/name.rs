//! Topic names: the topic a PUBLISH is sent to.

use bytes::Bytes;

use crate::newtype::{str_newtype_impls, validated_str};
use crate::utf8::validate_mqtt_str;
use crate::TopicError;

/// A valid MQTT topic name, the topic of a PUBLISH (MQTT 5.0 §4.7).
///
/// The invariant, checked by every constructor: a valid MQTT string (UTF-8,
/// no U+0000, at most 65535 bytes), at least one byte long, with no `+` or
/// `#` anywhere. Empty levels are allowed (`a//b`, `/a`, `a/`, `/`), and so
/// are names starting with `$` (whether a client may publish to them is the
/// broker's policy, not a syntax rule). The one exception is
/// [`TopicName::empty`].
///
/// The name is held in [`Bytes`], so cloning it is cheap and
/// [`TopicName::from_bytes`] can wrap a slice of a read buffer without a copy.
///
/// ```
/// use tern_topic::TopicName;
///
/// let name = TopicName::new("sport/tennis/player1")?;
/// assert_eq!(name.levels().collect::<Vec<_>>(), ["sport", "tennis", "player1"]);
/// assert!(TopicName::new("sport/+").is_err());
/// # Ok::<(), tern_topic::TopicError>(())
/// ```
#[derive(Clone)]
pub struct TopicName(Bytes);

impl TopicName {
    /// Validates `s` and copies it into a new topic name.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        validate_name(s.as_bytes())?;
        Ok(Self(Bytes::copy_from_slice(s.as_bytes())))
    }

    /// Validates `b` (UTF-8 included) and wraps it without copying.
    pub fn from_bytes(b: Bytes) -> Result<Self, TopicError> {
        validate_name(&b)?;
        Ok(Self(b))
    }

    /// Wraps a string literal without copying.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic name; meant for names written in the code.
    pub fn from_static(s: &'static str) -> Self {
        if let Err(e) = validate_name(s.as_bytes()) {
            panic!("TopicName::from_static({s:?}): invalid topic name: {e}");
        }
        Self(Bytes::from_static(s.as_bytes()))
    }

    /// The empty topic name, which is not a valid name anywhere but in one
    /// place: an MQTT 5 PUBLISH that carries a Topic Alias may send an empty
    /// topic name, meaning "the topic this alias was set to" (MQTT 5.0
    /// §3.3.2.3.4). A decoder produces it there and nowhere else;
    /// [`TopicName::new`] and [`TopicName::from_bytes`] reject the empty
    /// string with [`TopicError::Empty`].
    ///
    /// No [`TopicFilter`](crate::TopicFilter) matches the empty name: resolve
    /// the alias before routing.
    pub const fn empty() -> Self {
        Self(Bytes::new())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        validated_str(&self.0)
    }

    /// The name's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `Bytes` holding the name, to share it without a copy.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the `Bytes` holding the name.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether this is the [empty name](TopicName::empty) of a PUBLISH that
    /// uses a Topic Alias.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the name starts with `$`, as server-specific topics such as
    /// `$SYS/...` do; filters starting with a wildcard do not match these.
    pub fn is_system(&self) -> bool {
        self.0.first() == Some(&b'$')
    }

    /// The levels of the name, split on `/`; empty levels are yielded as
    /// `""` (`/a` yields `""`, `"a"`).
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.as_str().split('/')
    }
}

str_newtype_impls!(TopicName);

/// Checks the topic name rules on raw bytes.
fn validate_name(b: &[u8]) -> Result<(), TopicError> {
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    // Fast path, one vectorisable pass: printable-or-control ASCII without
    // NUL or wildcards is valid UTF-8 with nothing else to check. Topics on
    // the hot path (every PUBLISH decoded) are nearly always like that.
    if b.len() <= crate::MAX_MQTT_STR_LEN && crate::utf8::plain_ascii(b, true) {
        return Ok(());
    }
    validate_mqtt_str(b)?;
    if b.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn name_must_not_be_empty() {
        assert_eq!(TopicName::new(""), Err(TopicError::Empty));
        assert_eq!(TopicName::from_bytes(Bytes::new()), Err(TopicError::Empty));
    }

    #[test]
    fn empty_name_exists_only_through_empty() {
        let e = TopicName::empty();
        assert!(e.is_empty());
        assert_eq!(e.len(), 0);
        assert_eq!(e.as_str(), "");
        assert_eq!(e.levels().collect::<Vec<_>>(), [""]);
    }

    #[test]
    fn name_must_not_contain_wildcards() {
        for s in ["+", "#", "a/+", "a/#", "a+b", "sport/tennis#", "+/x", "#/x"] {
            assert_eq!(TopicName::new(s), Err(TopicError::WildcardInName), "{s}");
        }
    }

    #[test]
    fn name_allows_empty_levels() {
        for s in ["/", "//", "/a", "a/", "a//b", "/finance"] {
            assert_eq!(TopicName::new(s).unwrap().as_str(), s);
        }
        let name = TopicName::new("/a//b/").unwrap();
        assert_eq!(name.levels().collect::<Vec<_>>(), ["", "a", "", "b", ""]);
    }

    #[test]
    fn name_allows_spaces_and_is_case_sensitive() {
        let a = TopicName::new("ACCOUNTS").unwrap();
        let b = TopicName::new("Accounts").unwrap();
        assert_ne!(a, b);
        assert!(TopicName::new("Accounts payable").is_ok());
    }

    #[test]
    fn dollar_names_are_system_names() {
        assert!(TopicName::new("$SYS/broker/uptime").unwrap().is_system());
        assert!(TopicName::new("$").unwrap().is_system());
        assert!(!TopicName::new("a/$SYS").unwrap().is_system());
        assert!(!TopicName::empty().is_system());
    }

    #[test]
    fn name_must_be_a_valid_mqtt_string() {
        assert_eq!(TopicName::new("a\0b"), Err(TopicError::NullCharacter));
        assert_eq!(
            TopicName::from_bytes(Bytes::from_static(&[b'a', 0xff])),
            Err(TopicError::InvalidUtf8)
        );
        assert_eq!(
            TopicName::from_bytes(Bytes::from_static(&[0xed, 0xa0, 0x80])),
            Err(TopicError::InvalidUtf8)
        );
    }

    #[test]
    fn name_of_65535_bytes_is_accepted() {
        let s = "a".repeat(65535);
        assert_eq!(TopicName::new(&s).unwrap().len(), 65535);
    }

    #[test]
    fn name_of_65536_bytes_is_rejected() {
        let s = "a".repeat(65536);
        assert_eq!(TopicName::new(&s), Err(TopicError::TooLong { len: 65536 }));
    }

    #[test]
    fn from_bytes_does_not_copy() {
        let buf = Bytes::from_static(b"xxsport/tennisyy");
        let slice = buf.slice(2..14);
        let ptr = slice.as_ptr();
        let name = TopicName::from_bytes(slice).unwrap();
        assert_eq!(name.as_bytes().as_ptr(), ptr);
        assert_eq!(name.bytes().as_ptr(), ptr);
        assert_eq!(name.into_bytes().as_ptr(), ptr);
    }

    #[test]
    fn from_static_accepts_valid_names() {
        let n = TopicName::from_static("sport/tennis");
        assert_eq!(n, "sport/tennis");
    }

    #[test]
    #[should_panic(expected = "invalid topic name")]
    fn from_static_panics_on_invalid_names() {
        let _ = TopicName::from_static("sport/#");
    }

    #[test]
    fn conversions_agree() {
        let a = TopicName::new("a/b").unwrap();
        assert_eq!(TopicName::try_from("a/b").unwrap(), a);
        assert_eq!(TopicName::try_from(String::from("a/b")).unwrap(), a);
        assert_eq!(TopicName::try_from(Bytes::from_static(b"a/b")).unwrap(), a);
        assert_eq!("a/b".parse::<TopicName>().unwrap(), a);
        assert_eq!(Bytes::from(a.clone()), Bytes::from_static(b"a/b"));
        assert!("a/+".parse::<TopicName>().is_err());
    }

    #[test]
    fn behaves_like_its_string() {
        let a = TopicName::new("a/b").unwrap();
        assert_eq!(format!("{a:?}"), "\"a/b\"");
        assert_eq!(a.to_string(), "a/b");
        assert_eq!(a, "a/b");
        assert_eq!(*"a/b", a);
        assert!(a.starts_with("a/"));
        let as_ref: &str = a.as_ref();
        assert_eq!(as_ref, "a/b");
        assert!(TopicName::new("a").unwrap() < a);
    }

    #[test]
    fn hash_map_lookup_by_str() {
        let mut map = HashMap::new();
        map.insert(TopicName::new("a/b").unwrap(), 1);
        assert_eq!(map.get("a/b"), Some(&1));
        assert_eq!(map.get("a/c"), None);
    }
}

#[cfg(test)]
mod fast_path_tests {
    use crate::utf8::plain_ascii;

    #[test]
    fn fast_path_agrees_with_a_byte_loop() {
        let bytes: Vec<u8> = (0..=255).collect();
        for len in 0..20 {
            for &c in &bytes {
                for at in 0..len.max(1) {
                    let mut b = vec![b'a'; len];
                    if len > 0 {
                        b[at] = c;
                    }
                    let want = b
                        .iter()
                        .all(|&c| c != 0 && c < 0x80 && c != b'+' && c != b'#');
                    assert_eq!(plain_ascii(&b, true), want, "{b:?}");
                    let want = b.iter().all(|&c| c != 0 && c < 0x80);
                    assert_eq!(plain_ascii(&b, false), want, "{b:?}");
                }
            }
        }
    }
}
