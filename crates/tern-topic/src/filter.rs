//! Topic filters: what a SUBSCRIBE asks for, and matching them against names.

use bytes::Bytes;

use crate::newtype::{str_newtype_impls, validated_str};
use crate::utf8::validate_mqtt_str;
use crate::{TopicError, TopicName};

/// The prefix that marks a shared subscription (MQTT 5.0 §4.8.2).
const SHARE_PREFIX: &[u8] = b"$share/";

/// A valid MQTT topic filter, what a SUBSCRIBE asks for (MQTT 5.0 §4.7).
///
/// The invariant, checked by every constructor: a valid MQTT string (UTF-8,
/// no U+0000, at most 65535 bytes), at least one byte long; `+` occupies a
/// whole level; `#` occupies a whole level and is the last one. Empty levels
/// are allowed.
///
/// A filter of the form `$share/{ShareName}/{filter}` is a shared
/// subscription (MQTT 5.0 §4.8.2): the ShareName is at least one character
/// and holds none of `/`, `+`, `#`, and `{filter}` is a non-empty filter that
/// is not itself shared. The accessors [`filter`](Self::filter),
/// [`levels`](Self::levels), [`has_wildcards`](Self::has_wildcards) and
/// [`matches`](Self::matches) look at that inner filter; `$share` alone or
/// `$shared/...` are ordinary filters.
///
/// ```
/// use tern_topic::TopicFilter;
///
/// let f = TopicFilter::new("$share/workers/jobs/+")?;
/// assert!(f.is_shared());
/// assert_eq!(f.share_group(), Some("workers"));
/// assert_eq!(f.filter(), "jobs/+");
/// assert!(TopicFilter::new("sport/tennis#").is_err());
/// # Ok::<(), tern_topic::TopicError>(())
/// ```
#[derive(Clone)]
pub struct TopicFilter {
    bytes: Bytes,
    /// Where the inner filter starts: 0 for an ordinary filter, just past
    /// `$share/{ShareName}/` for a shared one. A u16 suffices because the
    /// whole string is at most 65535 bytes.
    inner: u16,
    /// Whether the inner filter has a `+` or `#` level.
    wildcards: bool,
}

impl TopicFilter {
    /// Validates `s` and copies it into a new topic filter.
    pub fn new(s: &str) -> Result<Self, TopicError> {
        let (inner, wildcards) = parse_filter(s.as_bytes())?;
        Ok(Self {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            inner,
            wildcards,
        })
    }

    /// Validates `b` (UTF-8 included) and wraps it without copying.
    pub fn from_bytes(b: Bytes) -> Result<Self, TopicError> {
        let (inner, wildcards) = parse_filter(&b)?;
        Ok(Self {
            bytes: b,
            inner,
            wildcards,
        })
    }

    /// Wraps a string literal without copying.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic filter; meant for filters written in the
    /// code.
    pub fn from_static(s: &'static str) -> Self {
        match parse_filter(s.as_bytes()) {
            Ok((inner, wildcards)) => Self {
                bytes: Bytes::from_static(s.as_bytes()),
                inner,
                wildcards,
            },
            Err(e) => panic!("TopicFilter::from_static({s:?}): invalid topic filter: {e}"),
        }
    }

    /// The whole filter as a string, `$share/{ShareName}/` included.
    pub fn as_str(&self) -> &str {
        validated_str(&self.bytes)
    }

    /// The whole filter's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `Bytes` holding the whole filter, to share it without a copy.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Unwraps the `Bytes` holding the whole filter.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The length in bytes of the whole filter.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a valid filter is at least one character long. Present
    /// because `len` is.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether this is a shared subscription, `$share/{ShareName}/{filter}`.
    pub fn is_shared(&self) -> bool {
        self.inner != 0
    }

    /// The ShareName of a shared subscription, `None` for an ordinary filter.
    pub fn share_group(&self) -> Option<&str> {
        let inner = usize::from(self.inner);
        // The group sits between the prefix and the `/` before the filter.
        (inner != 0).then(|| validated_str(&self.bytes[SHARE_PREFIX.len()..inner - 1]))
    }

    /// The topic filter proper: the part after `$share/{ShareName}/` for a
    /// shared subscription, the whole string otherwise.
    pub fn filter(&self) -> &str {
        validated_str(self.inner_bytes())
    }

    /// The levels of the [inner filter](Self::filter), split on `/`, so
    /// `$share/g/a/+` yields `"a"`, `"+"`. Empty levels are yielded as `""`.
    pub fn levels(&self) -> std::str::Split<'_, char> {
        self.filter().split('/')
    }

    /// Whether the [inner filter](Self::filter) has a `+` or `#` level.
    pub fn has_wildcards(&self) -> bool {
        self.wildcards
    }

    /// Whether `name` matches this filter (MQTT 5.0 §4.7), using the inner
    /// filter of a shared subscription.
    ///
    /// Level by level: `+` matches exactly one level, which may be empty;
    /// `#` matches its parent level and any number of levels below it. A
    /// name starting with `$` is not matched by a filter whose first level
    /// is a wildcard [MQTT-4.7.2-1], only by one that spells that level out
    /// (`$SYS/#`). The [empty name](TopicName::empty) matches nothing.
    /// Does not allocate.
    pub fn matches(&self, name: &TopicName) -> bool {
        let filter = self.inner_bytes();
        let name = name.as_bytes();
        if !self.wildcards {
            return filter == name;
        }
        if name.is_empty() || (name[0] == b'$' && matches!(filter[0], b'+' | b'#')) {
            return false;
        }
        matches_levels(filter, name)
    }

    fn inner_bytes(&self) -> &[u8] {
        &self.bytes[usize::from(self.inner)..]
    }
}

str_newtype_impls!(TopicFilter);

/// Matches `filter` against `name` level by level, with no `$` rule.
fn matches_levels(filter: &[u8], name: &[u8]) -> bool {
    let mut f = filter.split(|&c| c == b'/');
    let mut n = name.split(|&c| c == b'/');
    loop {
        match (f.next(), n.next()) {
            // `#` is last, and matches the parent too: `a/#` matches `a`.
            (Some(b"#"), _) => return true,
            (Some(b"+"), Some(_)) => {}
            (Some(fl), Some(nl)) if fl == nl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Checks the topic filter rules on raw bytes; returns where the inner
/// filter starts and whether it has wildcards.
fn parse_filter(b: &[u8]) -> Result<(u16, bool), TopicError> {
    if b.is_empty() {
        return Err(TopicError::Empty);
    }
    if b.len() > crate::MAX_MQTT_STR_LEN || !crate::utf8::plain_ascii(b, false) {
        validate_mqtt_str(b)?;
    }
    let inner = match b.strip_prefix(SHARE_PREFIX) {
        Some(rest) => shared_filter_start(rest)?,
        None => 0,
    };
    let wildcards = check_wildcards(&b[inner..])?;
    // `inner < b.len() <= 65535`, checked by `validate_mqtt_str`.
    let inner = u16::try_from(inner).map_err(|_| TopicError::TooLong { len: b.len() })?;
    Ok((inner, wildcards))
}

/// Given what follows `$share/`, checks `{ShareName}/{filter}` and returns
/// the offset of `{filter}` in the whole string.
fn shared_filter_start(rest: &[u8]) -> Result<usize, TopicError> {
    let (group, filter) = match rest.iter().position(|&c| c == b'/') {
        Some(slash) => (&rest[..slash], &rest[slash + 1..]),
        None => (rest, &[][..]),
    };
    if group.is_empty() || group.iter().any(|&c| c == b'+' || c == b'#') {
        return Err(TopicError::InvalidShareName);
    }
    if filter.is_empty() {
        return Err(TopicError::EmptySharedFilter);
    }
    if filter.starts_with(SHARE_PREFIX) {
        return Err(TopicError::NestedSharedFilter);
    }
    Ok(SHARE_PREFIX.len() + group.len() + 1)
}

/// Checks the placement of `+` and `#`; returns whether there are any.
fn check_wildcards(filter: &[u8]) -> Result<bool, TopicError> {
    if !filter.iter().any(|&c| c == b'+' || c == b'#') {
        return Ok(false);
    }
    let mut levels = filter.split(|&c| c == b'/').peekable();
    while let Some(level) = levels.next() {
        match level {
            b"#" if levels.peek().is_some() => return Err(TopicError::MultiLevelWildcardNotLast),
            b"#" | b"+" => {}
            _ if level.contains(&b'#') => return Err(TopicError::MultiLevelWildcardNotWholeLevel),
            _ if level.contains(&b'+') => return Err(TopicError::SingleLevelWildcardNotWholeLevel),
            _ => {}
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn name(s: &str) -> TopicName {
        TopicName::new(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn matches(f: &str, n: &str) -> bool {
        filter(f).matches(&name(n))
    }

    // Validation.

    #[test]
    fn filter_must_not_be_empty() {
        assert_eq!(TopicFilter::new(""), Err(TopicError::Empty));
        assert_eq!(
            TopicFilter::from_bytes(Bytes::new()),
            Err(TopicError::Empty)
        );
    }

    #[test]
    fn filter_must_be_a_valid_mqtt_string() {
        assert_eq!(TopicFilter::new("a/\0"), Err(TopicError::NullCharacter));
        assert_eq!(
            TopicFilter::from_bytes(Bytes::from_static(&[b'#', 0xc0, 0x80])),
            Err(TopicError::InvalidUtf8)
        );
    }

    #[test]
    fn filter_of_65535_bytes_is_accepted() {
        let s = "a".repeat(65535);
        assert_eq!(filter(&s).len(), 65535);
        let s = format!("$share/gg/{}#", "a/".repeat((65535 - 11) / 2));
        assert_eq!(s.len(), 65535);
        let f = filter(&s);
        assert_eq!(f.share_group(), Some("gg"));
        assert_eq!(f.filter().len(), 65535 - 10);
        assert!(f.matches(&TopicName::new(&"a/".repeat(32762)).unwrap()));
    }

    #[test]
    fn filter_of_65536_bytes_is_rejected() {
        let s = "a".repeat(65536);
        assert_eq!(
            TopicFilter::new(&s),
            Err(TopicError::TooLong { len: 65536 })
        );
    }

    #[test]
    fn hash_must_be_last_level() {
        for s in ["sport/tennis/#/ranking", "#/a", "#/", "a/#/#", "#/#"] {
            assert_eq!(
                TopicFilter::new(s),
                Err(TopicError::MultiLevelWildcardNotLast),
                "{s}"
            );
        }
    }

    #[test]
    fn hash_must_occupy_whole_level() {
        for s in ["sport/tennis#", "a#", "#a", "a/b#/c", "##", "a/#b"] {
            assert_eq!(
                TopicFilter::new(s),
                Err(TopicError::MultiLevelWildcardNotWholeLevel),
                "{s}"
            );
        }
    }

    #[test]
    fn plus_must_occupy_whole_level() {
        for s in ["sport+", "+a", "a/+b/c", "++", "a/b+"] {
            assert_eq!(
                TopicFilter::new(s),
                Err(TopicError::SingleLevelWildcardNotWholeLevel),
                "{s}"
            );
        }
    }

    #[test]
    fn valid_wildcard_placements() {
        for s in [
            "#",
            "+",
            "+/+",
            "/+",
            "+/",
            "sport/#",
            "sport/tennis/#",
            "+/tennis/#",
            "sport/+/player1",
            "/#",
            "+/#",
            "a//+//#",
            "$SYS/#",
            "$SYS/+/x",
        ] {
            assert!(filter(s).has_wildcards(), "{s}");
            assert_eq!(filter(s).as_str(), s);
        }
    }

    #[test]
    fn filter_allows_empty_levels() {
        for s in ["/", "//", "/a", "a/", "a//b"] {
            let f = filter(s);
            assert!(!f.has_wildcards());
            assert_eq!(f.as_str(), s);
        }
        assert_eq!(
            filter("a//+/").levels().collect::<Vec<_>>(),
            ["a", "", "+", ""]
        );
    }

    // Shared subscriptions.

    #[test]
    fn shared_filter_exposes_group_and_inner_filter() {
        let f = filter("$share/g/a/+/#");
        assert!(f.is_shared());
        assert_eq!(f.share_group(), Some("g"));
        assert_eq!(f.filter(), "a/+/#");
        assert_eq!(f.as_str(), "$share/g/a/+/#");
        assert_eq!(f.len(), 14);
        assert!(f.has_wildcards());
        assert_eq!(f.levels().collect::<Vec<_>>(), ["a", "+", "#"]);
    }

    #[test]
    fn shared_filter_without_wildcards() {
        let f = filter("$share/consumer1/sport/tennis");
        assert_eq!(f.share_group(), Some("consumer1"));
        assert!(!f.has_wildcards());
        assert!(f.matches(&name("sport/tennis")));
        assert!(!f.matches(&name("$share/consumer1/sport/tennis")));
    }

    #[test]
    fn shared_filter_requires_share_name() {
        assert_eq!(
            TopicFilter::new("$share//a"),
            Err(TopicError::InvalidShareName)
        );
        assert_eq!(
            TopicFilter::new("$share/"),
            Err(TopicError::InvalidShareName)
        );
    }

    #[test]
    fn share_name_must_not_contain_wildcards() {
        for s in [
            "$share/g+/a",
            "$share/+/a",
            "$share/#/a",
            "$share/g#",
            "$share/a+b/x",
        ] {
            assert_eq!(
                TopicFilter::new(s),
                Err(TopicError::InvalidShareName),
                "{s}"
            );
        }
    }

    #[test]
    fn shared_filter_requires_inner_filter() {
        assert_eq!(
            TopicFilter::new("$share/g"),
            Err(TopicError::EmptySharedFilter)
        );
        assert_eq!(
            TopicFilter::new("$share/g/"),
            Err(TopicError::EmptySharedFilter)
        );
    }

    #[test]
    fn shared_inner_filter_follows_filter_rules() {
        assert_eq!(
            TopicFilter::new("$share/g/a/#/b"),
            Err(TopicError::MultiLevelWildcardNotLast)
        );
        assert_eq!(
            TopicFilter::new("$share/g/a+"),
            Err(TopicError::SingleLevelWildcardNotWholeLevel)
        );
        // Inner filters may have empty levels: `$share/g//` has inner `/`.
        assert_eq!(filter("$share/g//").filter(), "/");
        assert_eq!(filter("$share/g/#").filter(), "#");
    }

    #[test]
    fn shared_filter_must_not_nest() {
        assert_eq!(
            TopicFilter::new("$share/a/$share/b/x"),
            Err(TopicError::NestedSharedFilter)
        );
        // An inner filter that merely starts with `$share` is not shared.
        assert_eq!(filter("$share/a/$share").filter(), "$share");
    }

    #[test]
    fn share_prefix_must_be_exact() {
        for s in [
            "$share",
            "$shared/g/a",
            "$SHARE/g/a",
            "a/$share/g",
            "$sharex",
        ] {
            let f = filter(s);
            assert!(!f.is_shared(), "{s}");
            assert_eq!(f.share_group(), None);
            assert_eq!(f.filter(), s);
        }
        assert_eq!(
            TopicFilter::new("$shared/g+/a"),
            Err(TopicError::SingleLevelWildcardNotWholeLevel)
        );
    }

    // Matching: the examples of MQTT 5.0 §4.7.

    #[test]
    fn hash_matches_parent_and_all_descendants() {
        let f = "sport/tennis/player1/#";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player1/ranking"));
        assert!(matches(f, "sport/tennis/player1/score/wimbledon"));
        assert!(!matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("a/#", "a/"));
        assert!(matches("a/#", "a/b/c"));
    }

    #[test]
    fn hash_alone_matches_every_non_dollar_name() {
        for n in ["a", "/", "//", "a/b/c", "/finance", "x$"] {
            assert!(matches("#", n), "{n}");
        }
        assert!(!matches("#", "$SYS"));
        assert!(!matches("#", "$SYS/broker"));
    }

    #[test]
    fn plus_matches_exactly_one_level() {
        let f = "sport/tennis/+";
        assert!(matches(f, "sport/tennis/player1"));
        assert!(matches(f, "sport/tennis/player2"));
        assert!(!matches(f, "sport/tennis/player1/ranking"));
        assert!(!matches(f, "sport/tennis"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
        assert!(!matches("sport/+/player1", "sport/tennis/player2"));
    }

    #[test]
    fn plus_matches_empty_level() {
        assert!(matches("a/+/c", "a//c"));
        assert!(matches("+/+", "/"));
        assert!(matches("/+", "/x"));
        assert!(matches("/+", "/"));
        assert!(matches("+", "a"));
        assert!(!matches("+", "/"));
        assert!(matches("+/#", "/"));
        assert!(matches("a/+", "a/"));
    }

    #[test]
    fn empty_levels_are_real_levels() {
        assert!(matches("a//b", "a//b"));
        assert!(!matches("a/b", "a//b"));
        assert!(!matches("a/", "a"));
        assert!(!matches("/a", "a"));
        assert!(matches("/#", "/a/b"));
        assert!(!matches("/#", "a"));
    }

    #[test]
    fn dollar_names_not_matched_by_leading_wildcard() {
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+/monitor", "$SYS/monitor"));
        assert!(!matches("+", "$"));
        assert!(!matches("+/#", "$SYS"));
        assert!(!matches("$share/g/#", "$SYS/x"));
    }

    #[test]
    fn dollar_names_matched_when_spelled_out() {
        assert!(matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(matches("$share/g/$SYS/#", "$SYS/broker"));
        // Only the first character matters: `$` later on is ordinary.
        assert!(matches("+/$x", "a/$x"));
        assert!(matches("#", "a/$SYS"));
    }

    #[test]
    fn exact_filters_match_only_equal_names() {
        assert!(matches("sport/tennis", "sport/tennis"));
        assert!(!matches("sport/tennis", "sport/tennis/"));
        assert!(!matches("sport/tennis", "Sport/tennis"));
        assert!(!matches("sport/tennis", "sport"));
    }

    #[test]
    fn empty_name_is_matched_by_nothing() {
        for f in ["#", "+", "a", "/", "$share/g/#"] {
            assert!(!filter(f).matches(&TopicName::empty()), "{f}");
        }
    }

    #[test]
    fn shared_filter_matches_like_its_inner_filter() {
        let f = filter("$share/g/sport/+/player1");
        assert!(f.matches(&name("sport/tennis/player1")));
        assert!(!f.matches(&name("sport/tennis/player2")));
        let f = filter("$share/g/#");
        assert!(f.matches(&name("a/b")));
        assert!(!f.matches(&name("$share/g/a")));
    }

    // Accessors and traits.

    #[test]
    fn from_bytes_does_not_copy() {
        let buf = Bytes::from_static(b"..$share/g/a/#..");
        let slice = buf.slice(2..14);
        let ptr = slice.as_ptr();
        let f = TopicFilter::from_bytes(slice).unwrap();
        assert_eq!(f.as_bytes().as_ptr(), ptr);
        assert_eq!(f.filter(), "a/#");
        assert_eq!(f.into_bytes().as_ptr(), ptr);
    }

    #[test]
    fn from_static_accepts_valid_filters() {
        let f = TopicFilter::from_static("$share/g/a/#");
        assert_eq!(f.share_group(), Some("g"));
        assert!(!f.is_empty());
    }

    #[test]
    #[should_panic(expected = "invalid topic filter")]
    fn from_static_panics_on_invalid_filters() {
        let _ = TopicFilter::from_static("a/#/b");
    }

    #[test]
    fn conversions_and_string_behaviour() {
        let f = filter("a/+");
        assert_eq!(TopicFilter::try_from("a/+").unwrap(), f);
        assert_eq!(TopicFilter::try_from(String::from("a/+")).unwrap(), f);
        assert_eq!(
            TopicFilter::try_from(Bytes::from_static(b"a/+")).unwrap(),
            f
        );
        assert_eq!("a/+".parse::<TopicFilter>().unwrap(), f);
        assert_eq!(f, "a/+");
        assert_eq!("a/+", f);
        assert_eq!(format!("{f:?}"), "\"a/+\"");
        assert_eq!(f.to_string(), "a/+");
        assert_eq!(&*f, "a/+");
        let mut set = std::collections::HashSet::new();
        set.insert(f);
        assert!(set.contains("a/+"));
    }
}
