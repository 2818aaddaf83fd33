//! What `TopicName` and `TopicFilter` share: a validated string held in
//! `Bytes`, and the same set of string-like trait impls.

/// Returns the `&str` view of bytes that a constructor already validated.
///
/// Why this validates again: the newtypes hold `Bytes` so that a decoder can
/// hand them a slice of its read buffer without copying, and with
/// `unsafe_code` forbidden there is no safe way to turn `&[u8]` into `&str`
/// without checking it (`from_utf8_unchecked` is unsafe; keeping a `String`
/// beside the `Bytes` would cost the copy that `Bytes` avoids). The check is
/// cheap for topics: about 6 to 12 ns for 3 to 256 ASCII bytes on the
/// development machine. The hot paths do not call this: equality, ordering,
/// `len` and `TopicFilter::matches` all work on the bytes.
pub(crate) fn validated_str(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => unreachable!("topic bytes were validated as UTF-8 when constructed"),
    }
}

/// Implements the string-like traits shared by the topic newtypes.
///
/// The type must have `as_bytes(&self) -> &[u8]`, `as_str(&self) -> &str`,
/// `new(&str) -> Result<Self, TopicError>` and
/// `from_bytes(Bytes) -> Result<Self, TopicError>`. Equality and ordering
/// compare bytes, which agrees with `str` (its ordering is bytewise), so
/// `Borrow<str>` keeps its contract; `Hash` goes through `str` for the same
/// reason.
macro_rules! str_newtype_impls {
    ($ty:ident) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<[u8]> for $ty {
            fn as_ref(&self) -> &[u8] {
                self.as_bytes()
            }
        }

        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl std::ops::Deref for $ty {
            type Target = str;

            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialEq for $ty {
            fn eq(&self, other: &Self) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl Eq for $ty {}

        impl PartialOrd for $ty {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $ty {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_bytes().cmp(other.as_bytes())
            }
        }

        impl std::hash::Hash for $ty {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.as_str().hash(state)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl PartialEq<$ty> for str {
            fn eq(&self, other: &$ty) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl PartialEq<$ty> for &str {
            fn eq(&self, other: &$ty) -> bool {
                self.as_bytes() == other.as_bytes()
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = $crate::TopicError;

            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $crate::TopicError;

            /// Takes over the `String`'s buffer without copying it.
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::from_bytes(bytes::Bytes::from(s))
            }
        }

        impl TryFrom<bytes::Bytes> for $ty {
            type Error = $crate::TopicError;

            fn try_from(b: bytes::Bytes) -> Result<Self, Self::Error> {
                Self::from_bytes(b)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::TopicError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl From<$ty> for bytes::Bytes {
            fn from(t: $ty) -> bytes::Bytes {
                t.into_bytes()
            }
        }
    };
}

pub(crate) use str_newtype_impls;
