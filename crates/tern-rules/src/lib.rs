//! A rules engine for the home, sans-IO: "if somebody rings the doorbell
//! like …—…, flash the living room lights red".
//!
//! Rules are written in a TOML file ([`RuleSet::parse`]); the [`Engine`]
//! takes messages ([`Engine::handle_message`]), presence
//! ([`Engine::handle_presence`]) and time ([`Engine::handle_timeout`]) as
//! inputs, and gives actions ([`Engine::poll_action`]: publish, call a
//! webhook), events ([`Engine::poll_event`]) and the next timeout
//! ([`Engine::poll_timeout`]) as outputs. It reads no clock and does no
//! I/O: time is wall-clock milliseconds given by the caller, so tests run
//! in virtual time and pending waits survive a restart through
//! [`Engine::snapshot`] and [`Engine::restore`].
//!
//! The engine runs inside `tern broker` (`[rules] file = ...`) or on its
//! own against any broker (`tern rules FILE -h HOST`).
//!
//! ```
//! use tern_rules::{Action, Engine, RuleSet};
//! use tern_topic::TopicName;
//!
//! let rules = RuleSet::parse(
//!     r#"
//!     [[rule]]
//!     name = "hot"
//!     topic = "sensors/+/temp"
//!     above = 25
//!     for = "10m"
//!     action = [{ publish = "alarms/{{ captures[0] }}", payload = "hot: {{ value }}" }]
//!     "#,
//!     "rules.toml",
//! )?;
//! let mut engine = Engine::new(rules, 0);
//! let topic = TopicName::new("sensors/kitchen/temp")?;
//! engine.handle_message(&topic, b"26.5", 1_000);
//! assert_eq!(engine.poll_action(), None); // not for 10 minutes yet
//! assert_eq!(engine.poll_timeout(), Some(601_000));
//! engine.handle_timeout(601_000);
//! let Some(Action::Publish { topic, payload, .. }) = engine.poll_action() else {
//!     panic!("it fires");
//! };
//! assert_eq!(topic.as_str(), "alarms/kitchen");
//! assert_eq!(&payload[..], b"hot: 26.5");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dry;
mod engine;
mod file;
mod guard;
mod machine;
pub mod rule;
mod snapshot;
pub mod template;
pub mod time;

pub use engine::{Action, Engine, RuleEvent, Stats};
pub use file::{LoadError, RuleSet};
pub use machine::{Ctx, Machine, MAX_HELD, MAX_KEPT};
pub use snapshot::{RuleInfo, RuleSnapshot, Snapshot};
pub use time::Millis;
