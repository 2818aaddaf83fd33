//! The subscription and retained indexes: one test per matching rule of
//! MQTT 5.0 §4.7 / §4.8.2, and property tests against a plain reference
//! matcher on random filters, names and subscribe/unsubscribe sequences.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tern_topic::*;

fn f(s: &str) -> TopicFilter {
    TopicFilter::new(s).unwrap()
}

fn n(s: &str) -> TopicName {
    TopicName::new(s).unwrap()
}

/// Keys matching `name`, sorted, duplicates kept.
fn who(index: &SubscriptionIndex<u32, u8>, name: &str) -> Vec<u32> {
    let mut m = Matches::new();
    index.matches(&n(name), &mut m);
    let mut keys: Vec<u32> = m.subscriptions().iter().map(|(k, _)| *k).collect();
    keys.sort();
    keys
}

fn index_of(filters: &[&str]) -> SubscriptionIndex<u32, u8> {
    let mut index = SubscriptionIndex::new();
    for (key, filter) in filters.iter().enumerate() {
        index.subscribe(&f(filter), key as u32, 0);
    }
    index
}

#[test]
fn plus_matches_exactly_one_level_including_empty() {
    let index = index_of(&["a/+/c", "+", "+/+", "/+"]);
    assert_eq!(who(&index, "a/b/c"), [0]);
    assert_eq!(who(&index, "a//c"), [0]);
    assert_eq!(who(&index, "a/b/c/d"), Vec::<u32>::new());
    assert_eq!(who(&index, "x"), [1]);
    // `/x` has two levels: "" and "x".
    assert_eq!(who(&index, "/x"), [2, 3]);
    assert_eq!(who(&index, "/"), [2, 3]);
}

#[test]
fn hash_matches_parent_and_all_below() {
    let index = index_of(&["sport/tennis/player1/#", "#", "sport/#"]);
    assert_eq!(who(&index, "sport/tennis/player1"), [0, 1, 2]);
    assert_eq!(who(&index, "sport/tennis/player1/ranking"), [0, 1, 2]);
    assert_eq!(
        who(&index, "sport/tennis/player1/score/wimbledon"),
        [0, 1, 2]
    );
    assert_eq!(who(&index, "sport"), [1, 2]);
    assert_eq!(who(&index, "sport/"), [1, 2]);
    assert_eq!(who(&index, "other"), [1]);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let index = index_of(&["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "+"]);
    assert_eq!(who(&index, "$SYS/monitor/Clients"), [2, 3]);
    assert_eq!(who(&index, "$SYS"), [2]);
    assert_eq!(who(&index, "$x"), Vec::<u32>::new());
    // Only the first level counts: `a/$b` is an ordinary topic.
    assert_eq!(who(&index, "a/$b"), [0]);
}

#[test]
fn empty_levels_are_real_levels() {
    let index = index_of(&["a//b", "a/b", "a/+/b"]);
    assert_eq!(who(&index, "a//b"), [0, 2]);
    assert_eq!(who(&index, "a/b"), [1]);
}

#[test]
fn resubscribe_replaces_and_unsubscribe_removes() {
    let mut index = SubscriptionIndex::new();
    assert_eq!(index.subscribe(&f("a/b"), 1u32, 1u8), None);
    assert_eq!(index.subscribe(&f("a/b"), 1, 2), Some(1));
    assert_eq!(index.len(), 1);
    assert_eq!(index.get(&f("a/b"), &1), Some(&2));
    assert_eq!(index.unsubscribe(&f("a/b"), &2), None);
    assert_eq!(index.unsubscribe(&f("a/+"), &1), None);
    assert_eq!(index.unsubscribe(&f("a/b"), &1), Some(2));
    assert!(index.is_empty());
    assert_eq!(who(&index, "a/b"), Vec::<u32>::new());
}

#[test]
fn unsubscribing_everything_frees_every_node() {
    let mut index = SubscriptionIndex::new();
    let filters = [
        "a/b/c",
        "a/+/c",
        "a/#",
        "#",
        "+/+",
        "$share/g/a/b",
        "x/y/z/w",
    ];
    for (k, filter) in filters.iter().enumerate() {
        for key in 0..40u32 {
            index.subscribe(&f(filter), key * 10 + k as u32, 0u8);
        }
    }
    assert!(index.node_count() > 1);
    for (k, filter) in filters.iter().enumerate() {
        for key in 0..40u32 {
            assert!(index
                .unsubscribe(&f(filter), &(key * 10 + k as u32))
                .is_some());
        }
    }
    assert_eq!(index.node_count(), 1, "only the root is left");
    assert!(index.is_empty());
}

#[test]
fn overlapping_subscriptions_group_per_subscriber() {
    let mut index = SubscriptionIndex::new();
    index.subscribe(&f("a/+"), 7u32, 1u8);
    index.subscribe(&f("a/#"), 7, 2);
    index.subscribe(&f("a/b"), 3, 0);
    index.subscribe(&f("#"), 7, 0);
    let mut m = Matches::new();
    index.matches(&n("a/b"), &mut m);
    assert_eq!(m.subscriptions().len(), 4);
    let grouped: Vec<(u32, Vec<u8>)> = m
        .per_subscriber()
        .map(|subs| {
            let mut qos: Vec<u8> = subs.iter().map(|(_, v)| *v).collect();
            qos.sort();
            (subs[0].0, qos)
        })
        .collect();
    assert_eq!(grouped, [(3, vec![0]), (7, vec![0, 1, 2])]);
}

#[test]
fn shared_group_matches_once_and_round_robins() {
    let mut index = SubscriptionIndex::new();
    for key in 1..=3u32 {
        index.subscribe(&f("$share/workers/jobs/+"), key, 1u8);
    }
    index.subscribe(&f("$share/other/jobs/#"), 9, 0);
    index.subscribe(&f("jobs/+"), 5, 0);
    let mut m = Matches::new();
    index.matches(&n("jobs/1"), &mut m);
    assert_eq!(m.subscriptions(), &[(5, 0)]);
    assert_eq!(m.groups().len(), 2);
    let groups: BTreeSet<&str> = m.groups().iter().map(|&g| index.group(g).name()).collect();
    assert_eq!(groups, BTreeSet::from(["other", "workers"]));

    let workers = *m
        .groups()
        .iter()
        .find(|&&g| index.group(g).name() == "workers")
        .unwrap();
    let picks: Vec<u32> = (0..6)
        .map(|_| index.pick(workers, &mut RoundRobin).unwrap().0)
        .collect();
    assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn shared_group_strategies() {
    let mut index = SubscriptionIndex::new();
    for key in 1..=4u32 {
        index.subscribe(&f("$share/g/t"), key, 0u8);
    }
    let mut m = Matches::new();
    index.matches(&n("t"), &mut m);
    let g = m.groups()[0];
    // Sticky: the same hash picks the same member.
    let a = index.pick(g, &mut Sticky(42)).unwrap().0;
    let b = index.pick(g, &mut Sticky(42)).unwrap().0;
    assert_eq!(a, b);
    // Seeded random: reproducible for a seed, and reaches every member.
    let run = |index: &mut SubscriptionIndex<u32, u8>| {
        let mut rng = SeededRandom::new(7);
        (0..64)
            .map(|_| index.pick(g, &mut rng).unwrap().0)
            .collect::<Vec<_>>()
    };
    let first = run(&mut index);
    assert_eq!(first, run(&mut index));
    assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 4);
    // A custom strategy: the member with the largest key.
    let mut largest = |m: &[(u32, u8)], _: &mut usize| {
        m.iter()
            .enumerate()
            .max_by_key(|(_, (k, _))| *k)
            .map(|(i, _)| i)
    };
    assert_eq!(index.pick(g, &mut largest).unwrap().0, 4);
}

#[test]
fn round_robin_survives_members_leaving() {
    let mut index = SubscriptionIndex::new();
    for key in 1..=3u32 {
        index.subscribe(&f("$share/g/t"), key, 0u8);
    }
    let mut m = Matches::new();
    index.matches(&n("t"), &mut m);
    let g = m.groups()[0];
    assert_eq!(index.pick(g, &mut RoundRobin).unwrap().0, 1);
    assert_eq!(index.pick(g, &mut RoundRobin).unwrap().0, 2);
    index.unsubscribe(&f("$share/g/t"), &1);
    index.matches(&n("t"), &mut m);
    let g = m.groups()[0];
    // 3 was next, and still is.
    assert_eq!(index.pick(g, &mut RoundRobin).unwrap().0, 3);
    assert_eq!(index.pick(g, &mut RoundRobin).unwrap().0, 2);
    index.unsubscribe(&f("$share/g/t"), &2);
    index.unsubscribe(&f("$share/g/t"), &3);
    index.matches(&n("t"), &mut m);
    assert!(m.is_empty());
}

#[test]
fn deep_topics_do_not_overflow_the_stack() {
    let deep = "/".repeat(60_000);
    let mut index = SubscriptionIndex::new();
    index.subscribe(&f("#"), 1u32, 0u8);
    index.subscribe(&f(&format!("{deep}#")), 2, 0);
    assert_eq!(who(&index, &deep), [1, 2]);
    let mut retained = RetainedIndex::new();
    retained.insert(n(&deep), (), 1);
    assert_eq!(retained.matching(&f("#")).len(), 1);
    assert_eq!(retained.matching(&f(&format!("{deep}#"))).len(), 1);
}

#[test]
fn retained_set_replace_clear_and_weights() {
    let mut r = RetainedIndex::new();
    assert_eq!(r.insert(n("a/b"), 1, 10), None);
    assert_eq!(r.insert(n("a/b"), 2, 5), Some(1));
    assert_eq!((r.len(), r.total_weight()), (1, 5));
    r.insert(n("a"), 3, 1);
    assert_eq!(r.get(&n("a/b")), Some(&2));
    assert_eq!(r.remove(&n("a/b")), Some(2));
    assert_eq!(r.remove(&n("a/b")), None);
    assert_eq!((r.len(), r.total_weight()), (1, 1));
    assert_eq!(r.get(&n("a")), Some(&3));
}

#[test]
fn retained_queries_follow_the_matching_rules() {
    let mut r = RetainedIndex::new();
    for t in ["a", "a/b", "a//c", "a/b/c", "$SYS/x", "b/$c", "/"] {
        r.insert(n(t), t, 1);
    }
    let q = |filter: &str| {
        let mut v: Vec<&str> = r.matching(&f(filter)).iter().map(|(_, v)| **v).collect();
        v.sort();
        v
    };
    assert_eq!(q("a/#"), ["a", "a//c", "a/b", "a/b/c"]);
    assert_eq!(q("#"), ["/", "a", "a//c", "a/b", "a/b/c", "b/$c"]);
    assert_eq!(q("+/+"), ["/", "a/b", "b/$c"]);
    assert_eq!(q("a/+/c"), ["a//c", "a/b/c"]);
    assert_eq!(q("$SYS/#"), ["$SYS/x"]);
    assert_eq!(q("+/x"), Vec::<&str>::new());
    assert_eq!(q("$share/g/a/+"), ["a/b"]);
}

// ---- property tests against a reference matcher ----

/// The plain matcher: level lists compared recursively, written from the
/// spec's words, independent of the library's own `matches`.
fn reference_matches(filter: &str, name: &str) -> bool {
    fn go(f: &[&str], n: &[&str]) -> bool {
        match (f.first(), n.first()) {
            (Some(&"#"), _) => true,
            (Some(&"+"), Some(_)) => go(&f[1..], &n[1..]),
            (Some(a), Some(b)) => a == b && go(&f[1..], &n[1..]),
            (None, None) => true,
            _ => false,
        }
    }
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    go(&f, &n)
}

fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["a", "b", "", "$x", "c"])
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a name is not empty", |s| !s.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    let lvl = prop::sample::select(vec!["a", "b", "", "$x", "+", "+", "#"]);
    (
        prop::collection::vec(lvl, 1..5),
        prop::option::weighted(0.2, prop::sample::select(vec!["g", "h"])),
    )
        .prop_map(|(levels, share)| {
            // `#` only last.
            let mut levels = levels;
            if let Some(at) = levels.iter().position(|l| *l == "#") {
                levels.truncate(at + 1);
            }
            let mut inner = levels.join("/");
            if inner.is_empty() {
                inner.push('a');
            }
            match share {
                Some(g) => format!("$share/{g}/{inner}"),
                None => inner,
            }
        })
}

#[derive(Debug, Clone)]
enum Op {
    Sub(String, u32, u8),
    Unsub(String, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (filter(), 0..6u32, 0..3u8).prop_map(|(f, k, v)| Op::Sub(f, k, v)),
        1 => (filter(), 0..6u32).prop_map(|(f, k)| Op::Unsub(f, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn subscription_index_agrees_with_reference(
        ops in prop::collection::vec(op(), 0..60),
        names in prop::collection::vec(name(), 1..12),
    ) {
        let mut index = SubscriptionIndex::new();
        // The model: (filter, key) -> value.
        let mut model = std::collections::BTreeMap::<(String, u32), u8>::new();
        for op in &ops {
            match op {
                Op::Sub(fl, k, v) => {
                    let old = index.subscribe(&f(fl), *k, *v);
                    prop_assert_eq!(old, model.insert((fl.clone(), *k), *v));
                }
                Op::Unsub(fl, k) => {
                    let old = index.unsubscribe(&f(fl), k);
                    prop_assert_eq!(old, model.remove(&(fl.clone(), *k)));
                }
            }
            prop_assert_eq!(index.len(), model.len());
        }
        let mut m = Matches::new();
        for name in &names {
            index.matches(&n(name), &mut m);
            let mut got: Vec<(u32, u8)> = m.subscriptions().to_vec();
            got.sort();
            let mut want: Vec<(u32, u8)> = model
                .iter()
                .filter(|((fl, _), _)| !fl.starts_with("$share/") && reference_matches(fl, name))
                .map(|((_, k), v)| (*k, *v))
                .collect();
            want.sort();
            prop_assert_eq!(got, want, "name {:?}", name);

            // Each matching shared subscription once, with all its members.
            let mut got_groups: Vec<(String, Vec<(u32, u8)>)> = m
                .groups()
                .iter()
                .map(|&g| {
                    let group = index.group(g);
                    let mut members = group.members().to_vec();
                    members.sort();
                    (group.name().to_string(), members)
                })
                .collect();
            got_groups.sort();
            let mut want_groups = std::collections::BTreeMap::<(String, String), Vec<(u32, u8)>>::new();
            for ((fl, k), v) in &model {
                if let Some(rest) = fl.strip_prefix("$share/") {
                    let (group, inner) = rest.split_once('/').unwrap();
                    if reference_matches(inner, name) {
                        want_groups.entry((group.to_string(), inner.to_string())).or_default().push((*k, *v));
                    }
                }
            }
            let mut want_groups: Vec<(String, Vec<(u32, u8)>)> = want_groups
                .into_iter()
                .map(|((g, _), mut members)| { members.sort(); (g, members) })
                .collect();
            want_groups.sort();
            prop_assert_eq!(got_groups, want_groups, "name {:?}", name);
        }
        // Removing what is left frees every node.
        for (fl, k) in model.keys() {
            prop_assert!(index.unsubscribe(&f(fl), k).is_some());
        }
        prop_assert_eq!(index.node_count(), 1);
    }

    #[test]
    fn retained_index_agrees_with_reference(
        ops in prop::collection::vec((name(), prop::option::of(0..100u32)), 0..60),
        filters in prop::collection::vec(filter(), 1..12),
    ) {
        let mut r = RetainedIndex::new();
        let mut model = std::collections::BTreeMap::<String, u32>::new();
        for (topic, value) in &ops {
            match value {
                Some(v) => {
                    prop_assert_eq!(r.insert(n(topic), *v, *v as usize), model.insert(topic.clone(), *v));
                }
                None => prop_assert_eq!(r.remove(&n(topic)), model.remove(topic)),
            }
        }
        prop_assert_eq!(r.len(), model.len());
        prop_assert_eq!(r.total_weight(), model.values().map(|v| *v as usize).sum::<usize>());
        for fl in &filters {
            let filter = f(fl);
            let mut got: Vec<(String, u32)> = r
                .matching(&filter)
                .into_iter()
                .map(|(t, v)| (t.to_string(), *v))
                .collect();
            got.sort();
            let want: Vec<(String, u32)> = model
                .iter()
                .filter(|(t, _)| reference_matches(filter.filter(), t))
                .map(|(t, v)| (t.clone(), *v))
                .collect();
            prop_assert_eq!(got, want, "filter {:?}", fl);
        }
    }
}
