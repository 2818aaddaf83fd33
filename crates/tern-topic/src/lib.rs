//! Validated MQTT topic names and topic filters, and matching between them.
//!
//! [`TopicName`] (where a PUBLISH goes) and [`TopicFilter`] (what a
//! SUBSCRIBE asks for, shared subscriptions included) are newtypes over
//! [`bytes::Bytes`] whose constructors enforce the rules of MQTT 3.1.1 §4.7
//! and MQTT 5.0 §4.7 and §4.8.2, so a value of either type is always valid
//! and cheap to clone. [`TopicFilter::matches`] decides whether a name
//! matches a filter without allocating.
//!
//! [`SubscriptionIndex`] answers "who matches this topic name" from a trie
//! over topic levels, shared subscriptions included; [`RetainedIndex`] finds
//! the retained messages a filter matches without scanning every topic.
//!
//! The crate is deterministic and sans-IO: it does no networking, reads no
//! clock and spawns nothing. It depends on `bytes`, and on `hashbrown` and
//! `foldhash` for seeded hash tables inside the indexes.
//!
//! ```
//! use tern_topic::{TopicFilter, TopicName};
//!
//! let name = TopicName::new("sport/tennis/player1")?;
//! let filter = TopicFilter::new("sport/+/player1")?;
//! assert!(filter.matches(&name));
//!
//! // `#` matches the parent level and everything below it.
//! assert!(TopicFilter::new("sport/tennis/player1/#")?.matches(&name));
//!
//! // Names starting with `$` are not matched by a leading wildcard.
//! let sys = TopicName::new("$SYS/broker/uptime")?;
//! assert!(!TopicFilter::new("#")?.matches(&sys));
//! assert!(TopicFilter::new("$SYS/#")?.matches(&sys));
//!
//! // Invalid input is a typed error, never a panic.
//! assert!(TopicFilter::new("sport/tennis#").is_err());
//! # Ok::<(), tern_topic::TopicError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod filter;
mod index;
mod name;
mod newtype;
mod retained;
mod shared;
mod subs;
mod trie;
mod utf8;

pub use error::TopicError;
pub use filter::TopicFilter;
pub use index::{Matches, SubscriptionIndex, DEFAULT_SEED};
pub use name::TopicName;
pub use retained::RetainedIndex;
pub use shared::{GroupId, RoundRobin, SeededRandom, SharedGroup, SharedPicker, Sticky};
pub use utf8::{validate_mqtt_str, Utf8Error, MAX_MQTT_STR_LEN};
