//! Property tests: `TopicFilter::matches` and the validators against
//! deliberately simple reference implementations written here.

use bytes::Bytes;
use proptest::prelude::*;
use tern_topic::{TopicFilter, TopicName};

/// The reference matcher: recursion over the levels, straight from the
/// wording of MQTT 5.0 §4.7.
fn reference_matches(filter: &[&str], name: &[&str]) -> bool {
    // [MQTT-4.7.2-1]: a leading wildcard does not match a `$` name.
    if name[0].starts_with('$') && (filter[0] == "+" || filter[0] == "#") {
        return false;
    }
    levels_match(filter, name)
}

fn levels_match(filter: &[&str], name: &[&str]) -> bool {
    match (filter.first(), name.first()) {
        // `#` matches the parent and any number of child levels.
        (Some(&"#"), _) => true,
        (None, None) => true,
        (Some(&"+"), Some(_)) => levels_match(&filter[1..], &name[1..]),
        (Some(f), Some(n)) => f == n && levels_match(&filter[1..], &name[1..]),
        _ => false,
    }
}

/// The reference validator for ordinary filters.
fn reference_filter_ok(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            let wild = l.contains('+') || l.contains('#');
            !wild || *l == "+" || (*l == "#" && i == levels.len() - 1)
        })
}

/// The reference validator for filters, shared subscriptions included.
fn reference_shared_or_plain_ok(filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return reference_filter_ok(filter);
    };
    let Some((group, inner)) = rest.split_once('/') else {
        return false;
    };
    !group.is_empty()
        && !group.contains(['+', '#'])
        && !inner.starts_with("$share/")
        && reference_filter_ok(inner)
}

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$x", "+", "#"])
}

fn joined_levels() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..6).prop_map(|v| v.join("/"))
}

fn maybe_shared(s: String) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(s.clone()),
        1 => Just(format!("$share/g/{s}")),
    ]
}

proptest! {
    #[test]
    fn matches_agrees_with_reference(
        filter in joined_levels().prop_flat_map(maybe_shared),
        name in joined_levels(),
    ) {
        let (Ok(f), Ok(n)) = (TopicFilter::new(&filter), TopicName::new(&name)) else {
            return Ok(());
        };
        let inner: Vec<&str> = f.filter().split('/').collect();
        let levels: Vec<&str> = name.split('/').collect();
        prop_assert_eq!(f.matches(&n), reference_matches(&inner, &levels), "{} vs {}", filter, name);
    }

    #[test]
    fn matches_agrees_with_reference_on_wildcard_free_names(
        filter in joined_levels(),
        name in prop::collection::vec(prop::sample::select(vec!["a", "b", "", "$x"]), 1..6),
    ) {
        let name = name.join("/");
        let Ok(f) = TopicFilter::new(&filter) else { return Ok(()) };
        let Ok(n) = TopicName::new(&name) else {
            // Only "" (a single empty level) is rejected here.
            prop_assert_eq!(name.as_str(), "");
            return Ok(());
        };
        let levels: Vec<&str> = name.split('/').collect();
        let expected = reference_matches(&f.filter().split('/').collect::<Vec<_>>(), &levels);
        prop_assert_eq!(f.matches(&n), expected);
    }

    #[test]
    fn filter_validation_agrees_with_reference(
        filter in prop_oneof![
            joined_levels().prop_flat_map(maybe_shared),
            "[ab+#/$]{0,10}",
            "(\\$share/)?[ab+#/]{0,4}(/[ab+#/$]{0,6})?",
        ],
    ) {
        let got = TopicFilter::new(&filter);
        prop_assert_eq!(got.is_ok(), reference_shared_or_plain_ok(&filter), "{:?}: {:?}", filter, got);
        if let Ok(f) = got {
            prop_assert_eq!(f.as_str(), filter.as_str());
            prop_assert_eq!(f.len(), filter.len());
            prop_assert_eq!(f.is_shared(), filter.starts_with("$share/"));
            let rebuilt = match f.share_group() {
                Some(g) => format!("$share/{g}/{}", f.filter()),
                None => f.filter().to_owned(),
            };
            prop_assert_eq!(rebuilt, filter.clone());
            prop_assert_eq!(f.levels().collect::<Vec<_>>(), f.filter().split('/').collect::<Vec<_>>());
            prop_assert_eq!(f.has_wildcards(), f.filter().contains(['+', '#']));
        }
    }

    #[test]
    fn name_validation_agrees_with_reference(name in "[ab+#/$\\x00é]{0,10}") {
        let got = TopicName::new(&name);
        let expected = !name.is_empty() && !name.contains(['+', '#', '\0']);
        prop_assert_eq!(got.is_ok(), expected);
        if let Ok(n) = got {
            prop_assert_eq!(n.as_str(), name.as_str());
            prop_assert_eq!(n.levels().collect::<Vec<_>>(), name.split('/').collect::<Vec<_>>());
            prop_assert_eq!(n.is_system(), name.starts_with('$'));
        }
    }

    #[test]
    fn accepted_strings_roundtrip(s in any::<String>()) {
        if let Ok(n) = TopicName::new(&s) {
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert_eq!(TopicName::from_bytes(n.clone().into_bytes()), Ok(n));
        }
        if let Ok(f) = TopicFilter::new(&s) {
            prop_assert_eq!(f.as_str(), s.as_str());
            prop_assert_eq!(TopicFilter::from_bytes(f.clone().into_bytes()), Ok(f));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..64)) {
        let b = Bytes::from(b);
        let name = TopicName::from_bytes(b.clone());
        let filter = TopicFilter::from_bytes(b.clone());
        let text = tern_topic::validate_mqtt_str(&b);
        if let (Ok(n), Ok(f)) = (&name, &filter) {
            let _ = f.matches(n);
        }
        if let Ok(f) = &filter {
            let _ = (f.share_group(), f.filter(), f.levels().count());
        }
        // Whatever the bytes, a name or filter only exists over valid text.
        if name.is_ok() || filter.is_ok() {
            prop_assert!(text.is_ok());
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(s in any::<String>(), t in any::<String>()) {
        if let (Ok(f), Ok(n)) = (TopicFilter::new(&s), TopicName::new(&t)) {
            let _ = f.matches(&n);
        }
    }
}
