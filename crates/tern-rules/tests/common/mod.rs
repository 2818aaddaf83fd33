//! What the rule tests share: an engine in virtual time.
#![allow(dead_code)]

use tern_rules::{Action, Engine, Millis, RuleEvent, RuleSet};
use tern_topic::TopicName;

/// An engine of `rules` started at time 0, and a clock for it.
pub struct Home {
    pub engine: Engine,
    pub now: Millis,
}

impl Home {
    pub fn new(rules: &str) -> Home {
        let set = RuleSet::parse(rules, "rules.toml").unwrap_or_else(|e| panic!("{e}"));
        Home {
            engine: Engine::new(set, 0),
            now: 0,
        }
    }

    /// A message at the current time.
    pub fn publish(&mut self, topic: &str, payload: &str) {
        let t = TopicName::new(topic).expect("a topic");
        self.engine.handle_message(&t, payload.as_bytes(), self.now);
    }

    /// Time passes: every timeout on the way is handled at its time.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(t) = self.engine.poll_timeout() {
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            self.engine.handle_timeout(self.now);
        }
        self.now = end;
    }

    /// The publishes so far, as "topic payload".
    pub fn published(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(a) = self.engine.poll_action() {
            match a {
                Action::Publish { topic, payload, .. } => {
                    out.push(format!(
                        "{} {}",
                        topic.as_str(),
                        String::from_utf8_lossy(&payload)
                    ));
                }
                Action::Http { webhook, body, .. } => {
                    out.push(format!("http {webhook} {}", String::from_utf8_lossy(&body)));
                }
            }
        }
        out
    }

    pub fn events(&mut self) -> Vec<RuleEvent> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }
}
