//! Why a string is not a valid topic name or topic filter.

use std::fmt;

use crate::utf8::{Utf8Error, MAX_MQTT_STR_LEN};

/// Why a string is not a valid topic name or topic filter.
///
/// Each variant names the rule of MQTT 3.1.1 §4.7 / MQTT 5.0 §4.7 and §4.8.2
/// that failed.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicError {
    /// Empty: names and filters are at least one character long
    /// [MQTT-4.7.3-1].
    Empty,
    /// Longer than 65535 bytes, the limit of an MQTT string.
    TooLong {
        /// The length found, in bytes.
        len: usize,
    },
    /// Not well-formed UTF-8 [MQTT-1.5.4-1].
    InvalidUtf8,
    /// Contains the null character U+0000 [MQTT-4.7.3-2].
    NullCharacter,
    /// A topic name contains `+` or `#`, which only filters may hold
    /// [MQTT-4.7.0-1].
    WildcardInName,
    /// A filter has a `#` level that is not its last level [MQTT-4.7.1-1].
    MultiLevelWildcardNotLast,
    /// A filter has `#` next to other characters in one level, as in
    /// `sport/tennis#` [MQTT-4.7.1-1].
    MultiLevelWildcardNotWholeLevel,
    /// A filter has `+` next to other characters in one level, as in
    /// `sport+` [MQTT-4.7.1-2].
    SingleLevelWildcardNotWholeLevel,
    /// The ShareName of a `$share/{ShareName}/{filter}` filter is empty or
    /// contains `+` or `#` [MQTT-4.8.2-1, MQTT-4.8.2-2].
    InvalidShareName,
    /// A `$share/{ShareName}/` filter has no topic filter after the share name.
    EmptySharedFilter,
    /// The topic filter inside a shared subscription is itself a shared
    /// subscription, as in `$share/a/$share/b/x`.
    NestedSharedFilter,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let msg = match self {
            Self::Empty => "topic is empty; names and filters are at least one character long",
            Self::TooLong { len } => {
                return write!(
                    f,
                    "topic is {len} bytes long; the maximum is {MAX_MQTT_STR_LEN}"
                )
            }
            Self::InvalidUtf8 => "topic is not well-formed UTF-8",
            Self::NullCharacter => "topic contains the null character U+0000",
            Self::WildcardInName => "topic name contains a wildcard ('+' or '#')",
            Self::MultiLevelWildcardNotLast => "'#' is only allowed as the last level of a filter",
            Self::MultiLevelWildcardNotWholeLevel => "'#' must occupy a whole level of a filter",
            Self::SingleLevelWildcardNotWholeLevel => "'+' must occupy a whole level of a filter",
            Self::InvalidShareName => {
                "share name must be at least one character and contain no '/', '+' or '#'"
            }
            Self::EmptySharedFilter => {
                "shared subscription has no topic filter after its share name"
            }
            Self::NestedSharedFilter => "shared subscription's topic filter is itself shared",
        };
        f.write_str(msg)
    }
}

impl std::error::Error for TopicError {}

impl From<Utf8Error> for TopicError {
    fn from(e: Utf8Error) -> Self {
        match e {
            Utf8Error::TooLong { len } => Self::TooLong { len },
            Utf8Error::InvalidUtf8 => Self::InvalidUtf8,
            Utf8Error::NullCharacter => Self::NullCharacter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_errors_convert_one_to_one() {
        assert_eq!(
            TopicError::from(Utf8Error::TooLong { len: 65536 }),
            TopicError::TooLong { len: 65536 }
        );
        assert_eq!(
            TopicError::from(Utf8Error::InvalidUtf8),
            TopicError::InvalidUtf8
        );
        assert_eq!(
            TopicError::from(Utf8Error::NullCharacter),
            TopicError::NullCharacter
        );
    }

    #[test]
    fn display_names_the_rule() {
        assert!(TopicError::MultiLevelWildcardNotLast
            .to_string()
            .contains("last level"));
        assert!(TopicError::SingleLevelWildcardNotWholeLevel
            .to_string()
            .contains("'+'"));
        assert!(TopicError::TooLong { len: 65536 }
            .to_string()
            .contains("65536"));
    }
}
