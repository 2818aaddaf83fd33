//! The loop guard at load: a rule whose actions publish where its own
//! trigger listens (or rules that trigger each other round a circle) is
//! refused unless one rule of every such circle declares a `limit`; at run
//! time every rule is held to its limit (declared, or
//! [`DEFAULT_LIMIT`](crate::rule::DEFAULT_LIMIT)).
//!
//! A template in a topic level is taken to fill that level (`+`) when it
//! can only say what a `+` of the trigger matched; one that may hold a
//! `/` (the topic, the payload, a `#` capture, ...) may fill any number of
//! levels (`#`).

use tern_topic::{Matches, SubscriptionIndex, TopicName};

use crate::rule::{Rule, Step, Trigger};

/// Checks the rules; on a circle without a limit, the index of a rule on
/// it and why.
pub fn check(rules: &[Rule]) -> Result<(), (usize, String)> {
    let edges = edges(rules);
    // Every circle passes a rule with a declared limit exactly when the
    // rules without one trigger each other in no circle.
    let free: Vec<bool> = rules.iter().map(|r| !r.limit.declared).collect();
    let Some(circle) = find_circle(&edges, &free) else {
        return Ok(());
    };
    let first = circle[0];
    let names: Vec<String> = circle
        .iter()
        .map(|&i| format!("{:?}", &*rules[i].name))
        .collect();
    let why = if circle.len() == 1 {
        format!(
            "rule {}: limit: it can trigger itself (it publishes where its topic listens): declare limit = \"10/1m\" (at most 10 firings a minute), or publish elsewhere",
            names[0]
        )
    } else {
        format!(
            "rule {}: limit: rules {} can trigger each other round a circle: declare a limit on one of them (limit = \"10/1m\")",
            names[0],
            names.join(" -> ")
        )
    };
    Err((first, why))
}

/// Rule i -> rule j when one of i's publishes can reach j's topic.
fn edges(rules: &[Rule]) -> Vec<Vec<usize>> {
    let mut index: SubscriptionIndex<usize, ()> = SubscriptionIndex::new();
    let mut triggers = Vec::new();
    for (j, r) in rules.iter().enumerate() {
        if let Trigger::Topic(f) = &r.trigger {
            index.subscribe(f, j, ());
            triggers.push((j, f.as_str().to_owned()));
        }
    }
    let mut matches = Matches::new();
    let mut out = vec![Vec::new(); rules.len()];
    for (i, r) in rules.iter().enumerate() {
        for s in &r.steps {
            let Step::Publish { topic, .. } = s else {
                continue;
            };
            if let Some(name) = topic.text().and_then(|t| TopicName::new(t).ok()) {
                matches.clear();
                index.matches(&name, &mut matches);
                out[i].extend(matches.subscriptions().iter().map(|(j, _)| *j));
            } else {
                let multi = match &r.trigger {
                    Trigger::Topic(f) => f.as_str().ends_with('#'),
                    _ => false,
                };
                let pattern = pattern(topic.source(), multi);
                out[i].extend(
                    triggers
                        .iter()
                        .filter(|(_, f)| overlap(&pattern, f))
                        .map(|(j, _)| *j),
                );
            }
        }
        out[i].sort_unstable();
        out[i].dedup();
    }
    out
}

/// A topic template as a filter: a level with a template in it is `+`
/// if it can only render one level, else `#` (`multi`: the trigger's `#`
/// capture may hold slashes).
fn pattern(source: &str, multi: bool) -> String {
    // Words a template can take a `/` from.
    const SLASHY: [&str; 8] = [
        "topic", "levels", "payload", "json", "value", "state", "client", "~",
    ];
    let mut out = Vec::new();
    for l in source.split('/') {
        if !(l.contains("{{") || l.contains("{%")) {
            out.push(l);
            continue;
        }
        let slashy = SLASHY.iter().any(|w| l.contains(w)) || (multi && l.contains("captures"));
        if slashy {
            out.push("#");
            break;
        }
        out.push("+");
    }
    out.join("/")
}

/// Whether some topic matches both filters.
fn overlap(a: &str, b: &str) -> bool {
    let (mut x, mut y) = (a.split('/'), b.split('/'));
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            // `a/#` also matches `a`.
            (None, Some(l)) | (Some(l), None) => return l == "#",
            (Some(p), Some(q)) => {
                if p != "+" && q != "+" && p != q {
                    return false;
                }
            }
        }
    }
}

/// A circle among the nodes marked `free`, if there is one (iterative
/// depth-first search: 10,000 rules in a chain do not overflow the stack).
fn find_circle(edges: &[Vec<usize>], free: &[bool]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        New,
        Open,
        Done,
    }
    let mut color = vec![Color::New; edges.len()];
    for start in 0..edges.len() {
        if !free[start] || color[start] != Color::New {
            continue;
        }
        // (node, next edge to look at)
        let mut stack = vec![(start, 0usize)];
        color[start] = Color::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                if !free[to] {
                    continue;
                }
                match color[to] {
                    Color::Open => {
                        let from = stack.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        return Some(stack[from..].iter().map(|(n, _)| *n).collect());
                    }
                    Color::New => {
                        color[to] = Color::Open;
                        stack.push((to, 0));
                    }
                    Color::Done => {}
                }
            } else {
                color[node] = Color::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_overlap_where_some_topic_matches_both() {
        assert!(overlap("a/+/c", "a/b/#"));
        assert!(overlap("a/b", "a/b/#"));
        assert!(!overlap("a/b", "a/c"));
        assert!(!overlap("a/b/c", "a/b"));
        assert!(overlap("+/+", "x/y"));
        assert_eq!(
            pattern("lights/{{ captures[0] }}/set", false),
            "lights/+/set"
        );
        assert_eq!(pattern("x/{{ topic }}", false), "x/#");
        assert_eq!(pattern("x/{{ captures[1] }}/y", true), "x/#");
    }

    #[test]
    fn a_circle_is_found_among_free_nodes_only() {
        let edges = vec![vec![1], vec![2], vec![0], vec![3]];
        assert_eq!(find_circle(&edges, &[true; 4]).map(|c| c.len()), Some(3));
        assert_eq!(find_circle(&edges, &[true, false, true, false]), None);
        let chain: Vec<Vec<usize>> = (0..20_000)
            .map(|i| if i + 1 < 20_000 { vec![i + 1] } else { vec![] })
            .collect();
        assert_eq!(find_circle(&chain, &vec![true; 20_000]), None);
    }
}
