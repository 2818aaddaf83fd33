//! The broker's history: the messages of the topics the configuration
//! names (`[[history]] filter = "sensors/#", keep = "30d"`), in a redb file
//! of their own (`history.redb`) so that recording never slows the
//! broker's own store.
//!
//! Every recorded message gets a sequence number (its place among all
//! recorded messages, the id a stream resumes from) and a time
//! (milliseconds since the Unix epoch, never going back). Tables:
//!
//! - `log`: sequence number -> time and the message (an MQTT 5.0 PUBLISH);
//! - `points`: topic, time, sequence number -> the payload's number (empty
//!   if it has none): a topic's history in time order;
//! - `minutes`: topic, minute -> the minute's [`Bucket`] of numbers, kept
//!   up to date as messages are written, so a month of minutes is 43,200
//!   rows to read, whatever the message rate;
//! - `topics`: every topic recorded, for expiry.

mod rollup;
mod store;

pub use rollup::{align, value_of, Bucket};
pub use store::{History, Record};

use std::time::Duration;

use tern_codec::{TopicFilter, TopicName};

/// What is recorded, for how long.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The topics.
    pub filter: TopicFilter,
    /// How long a message is kept.
    pub keep: Duration,
    /// Where the number is in a payload (a JSON pointer such as `/temp`);
    /// `None`: the payload is the number. Minute buckets are kept of it.
    pub value: Option<String>,
}

/// A minute, in milliseconds: the step of the stored buckets.
pub const MINUTE: u64 = 60_000;

/// The first rule that records `topic`.
pub fn rule_for<'a>(rules: &'a [Rule], topic: &TopicName) -> Option<&'a Rule> {
    rules.iter().find(|r| r.filter.matches(topic))
}

/// Whether every topic `inner` matches is matched by `outer` (so a stream
/// of `inner` can be served from what `outer` records). Shared
/// subscriptions are never covered.
pub fn covers(outer: &TopicFilter, inner: &TopicFilter) -> bool {
    if outer.is_shared() || inner.is_shared() {
        return false;
    }
    let o: Vec<&str> = outer.levels().collect();
    let i: Vec<&str> = inner.levels().collect();
    // `+` and `#` at the first level do not match `$` topics.
    let dollar = i.first().is_some_and(|l| l.starts_with('$'));
    if dollar && o.first().is_some_and(|l| *l == "+" || *l == "#") {
        return false;
    }
    let mut k = 0;
    loop {
        match (o.get(k), i.get(k)) {
            (Some(&"#"), _) => return true,
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(&"+"), Some(&il)) => {
                if il == "#" {
                    return false;
                }
            }
            (Some(ol), Some(il)) => {
                if ol != il {
                    return false;
                }
            }
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter {
        TopicFilter::new(s).expect("valid")
    }

    #[test]
    fn a_filter_covers_the_filters_whose_topics_it_matches() {
        for (outer, inner, want) in [
            ("sensors/#", "sensors/#", true),
            ("sensors/#", "sensors/+/temp", true),
            ("sensors/#", "sensors", true),
            ("sensors/+/temp", "sensors/kitchen/temp", true),
            ("sensors/+/temp", "sensors/+/temp", true),
            ("sensors/+/temp", "sensors/#", false),
            ("sensors/+", "sensors/a/b", false),
            ("sensors/kitchen/temp", "sensors/+/temp", false),
            ("#", "home/x", true),
            ("#", "$SYS/#", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("#", "$share/g/a", false),
        ] {
            assert_eq!(covers(&f(outer), &f(inner)), want, "{outer} covers {inner}");
        }
    }
}
