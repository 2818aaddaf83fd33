//! A rule as the engine runs it: what fires it (a topic, presence, a time
//! of day), what the message must satisfy, how time shapes the firing
//! (`for`, debounce, throttle, a count in a window, absence, a sequence),
//! and the steps it takes.

use std::sync::Arc;

use tern_codec::QoS;
use tern_topic::TopicFilter;

use crate::template::Tpl;
use crate::time::{Daily, Span};

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name (unique in the file).
    pub name: Arc<str>,
    /// Off: it sees nothing and fires never (the file's `enabled`, or a
    /// toggle at run time).
    pub enabled: bool,
    /// Where it is written (`file:line`), for errors and the page.
    pub origin: String,
    /// What fires it.
    pub trigger: Trigger,
    /// What the message must satisfy.
    pub test: Test,
    /// How time shapes the firing.
    pub timing: Timing,
    /// At most this many firings in a window; beyond, a firing is dropped
    /// and reported.
    pub limit: Limit,
    /// What a firing does while a run of it is in progress.
    pub mode: Mode,
    /// Its steps.
    pub steps: Vec<Step>,
    /// A digest of its text: pending state kept across a restart is
    /// picked up only by the same rule.
    pub digest: u64,
}

/// What fires a rule.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// A message on a topic the filter matches.
    Topic(TopicFilter),
    /// A client going online or offline (`client` may end with `*`).
    Presence {
        /// The client id, or a prefix and `*`.
        client: String,
        /// Online (connected) or offline.
        online: bool,
    },
    /// A wall time of day.
    Daily(Daily),
}

/// Conditions on the message (all must hold).
#[derive(Debug, Clone, Default)]
pub struct Test {
    /// A JSON pointer: the value tested is this field of the payload.
    pub field: Option<String>,
    /// The value equals this.
    pub is: Option<serde_json::Value>,
    /// The value is a number above this.
    pub above: Option<f64>,
    /// The value is a number below this.
    pub below: Option<f64>,
    /// The payload contains this text.
    pub contains: Option<String>,
    /// A Jinja expression that must be true.
    pub when: Option<Tpl>,
}

impl Test {
    /// Whether it tests nothing.
    pub fn is_empty(&self) -> bool {
        self.is.is_none()
            && self.above.is_none()
            && self.below.is_none()
            && self.contains.is_none()
            && self.when.is_none()
    }
}

/// How time shapes a firing.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// Fire on each event that passes the test.
    Now,
    /// Fire once the test has held for this long (per topic, or per
    /// client), without an event that fails it in between.
    For(u64),
    /// Fire once events have stopped for this long (with the last one).
    Debounce(u64),
    /// Fire at most once in this long (the first event).
    Throttle(u64),
    /// Fire when this many events come within the window.
    Count {
        /// How many.
        n: u32,
        /// Within this long.
        within: u64,
    },
    /// Fire when no event has come for this long (once per silence).
    Absent(u64),
    /// Fire on a pattern of short and long gaps or presses.
    Sequence(Sequence),
}

/// A pattern in time: `.` short, `-` long.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The symbols.
    pub pattern: Vec<Sym>,
    /// What a short one lasts.
    pub short: Span,
    /// What a long one lasts.
    pub long: Span,
    /// Gaps between presses, or presses held.
    pub by: By,
}

impl Sequence {
    /// The longest a symbol may last: past it, the attempt is over.
    pub fn longest(&self) -> u64 {
        self.short.max.max(self.long.max)
    }

    /// The symbol a duration is, if any.
    pub fn symbol(&self, ms: u64) -> Option<Sym> {
        if self.short.contains(ms) {
            Some(Sym::Short)
        } else if self.long.contains(ms) {
            Some(Sym::Long)
        } else {
            None
        }
    }
}

/// A symbol of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Sym {
    /// `.`
    Short,
    /// `-`
    Long,
}

/// What a sequence's symbols measure.
#[derive(Debug, Clone, PartialEq)]
pub enum By {
    /// The gaps between presses (each event that passes the test is a
    /// press): a pattern of N symbols is N + 1 presses.
    Gaps,
    /// How long each press is held: the payload `down` starts one, `up`
    /// ends it.
    Presses {
        /// The payload of a press.
        down: String,
        /// The payload of a release.
        up: String,
    },
}

/// At most `n` firings in `per` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// How many.
    pub n: u32,
    /// In this long.
    pub per: u64,
    /// Declared in the file (a rule that can trigger itself must).
    pub declared: bool,
}

/// A rule without a declared limit: 100 firings a second, which no home
/// automation needs and every runaway loop exceeds.
pub const DEFAULT_LIMIT: Limit = Limit {
    n: 100,
    per: 1000,
    declared: false,
};

/// What a firing does while a run of the rule is in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// It is dropped (the default, as in Home Assistant).
    Single,
    /// The run in progress stops; a new one starts.
    Restart,
    /// Another run starts beside it (at most [`MAX_RUNS`]).
    Parallel,
}

/// Runs of one rule at once, at most.
pub const MAX_RUNS: usize = 10;

/// A step of a rule.
#[derive(Debug, Clone)]
pub enum Step {
    /// Publish a message.
    Publish {
        /// Its topic.
        topic: Tpl,
        /// Its payload.
        payload: Tpl,
        /// Its QoS.
        qos: QoS,
        /// Whether it is retained (a state).
        retain: bool,
    },
    /// Wait this long.
    Wait(u64),
    /// Call a webhook (by name) with a body.
    Http {
        /// The webhook.
        webhook: String,
        /// The body.
        body: Tpl,
    },
    /// Set a value of the rule's own state (JSON if it reads as JSON).
    Set {
        /// Its name.
        key: String,
        /// Its value.
        value: Tpl,
    },
}

/// Steps in a rule at most, repeats counted out.
pub const MAX_STEPS: usize = 1000;
