//! The engine: messages, presence and time in; actions, events and the
//! next timeout out. It finds the rules a message may fire through a
//! topic index, not by looking at every rule, and keeps one wake-up time
//! per rule in an ordered set.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use tern_codec::QoS;
use tern_topic::{Matches, SubscriptionIndex, TopicFilter, TopicName};

use crate::file::RuleSet;
use crate::machine::{Ctx, Machine};
use crate::rule::{Mode, Rule, Step, Test, Trigger, MAX_RUNS};
use crate::template::{value_of, Scope, Templates};
use crate::time::Millis;

/// What the engine asks its embedding to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish a message (as the rules' user, so the ACL applies).
    Publish {
        /// The rule.
        rule: Arc<str>,
        /// Where.
        topic: TopicName,
        /// What.
        payload: Bytes,
        /// At which QoS.
        qos: QoS,
        /// Retained.
        retain: bool,
    },
    /// Call a webhook through its outbox.
    Http {
        /// The rule.
        rule: Arc<str>,
        /// The webhook's name.
        webhook: String,
        /// The body.
        body: Bytes,
    },
}

/// What the embedding should know (for logs and the page).
#[derive(Debug, Clone, PartialEq)]
pub enum RuleEvent {
    /// A rule fired.
    Fired {
        /// The rule.
        rule: Arc<str>,
        /// When.
        at: Millis,
    },
    /// A firing was dropped: the rule reached its limit.
    Limited {
        /// The rule.
        rule: Arc<str>,
    },
    /// A step failed (a template, a topic): the run stopped.
    Error {
        /// The rule.
        rule: Arc<str>,
        /// Why.
        message: String,
    },
}

/// A run of a rule's steps under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    pub(crate) ctx: Ctx,
    pub(crate) step: usize,
    pub(crate) at: Millis,
}

/// A rule and what it holds.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) rule: Rule,
    pub(crate) machine: Machine,
    pub(crate) runs: VecDeque<Run>,
    pub(crate) state: BTreeMap<String, serde_json::Value>,
    /// Firings within the limit's window.
    pub(crate) fired_at: VecDeque<Millis>,
    pub(crate) stats: Stats,
    /// Its entry in the engine's wake-ups.
    wake: Option<Millis>,
    /// A schedule's next time.
    pub(crate) next_at: Option<Millis>,
}

/// A rule's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Times it fired.
    pub fires: u64,
    /// When it last fired.
    pub last_fired: Option<Millis>,
    /// Steps that failed.
    pub errors: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Firings dropped by its limit.
    pub limited: u64,
}

/// The rules engine (sans-IO: no sockets, no clock; time is an input).
pub struct Engine {
    pub(crate) slots: Vec<Slot>,
    by_name: HashMap<Arc<str>, usize>,
    index: SubscriptionIndex<usize, ()>,
    presence: Vec<usize>,
    templates: Templates,
    tz: TimeZone,
    wakes: BTreeSet<(Millis, usize)>,
    matches: Matches<usize, ()>,
    fired: Vec<Ctx>,
    actions: VecDeque<Action>,
    events: VecDeque<RuleEvent>,
    pub(crate) dirty: bool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("rules", &self.slots.len())
            .field("wakes", &self.wakes.len())
            .field("actions", &self.actions.len())
            .finish()
    }
}

impl Engine {
    /// An engine running `set`, started at `now`.
    pub fn new(set: RuleSet, now: Millis) -> Engine {
        let mut index = SubscriptionIndex::new();
        let mut presence = Vec::new();
        let mut by_name = HashMap::new();
        let mut slots = Vec::with_capacity(set.rules.len());
        for (i, rule) in set.rules.into_iter().enumerate() {
            match &rule.trigger {
                Trigger::Topic(f) => {
                    index.subscribe(f, i, ());
                }
                Trigger::Presence { .. } => presence.push(i),
                Trigger::Daily(_) => {}
            }
            by_name.insert(rule.name.clone(), i);
            slots.push(Slot {
                rule,
                machine: Machine::default(),
                runs: VecDeque::new(),
                state: BTreeMap::new(),
                fired_at: VecDeque::new(),
                stats: Stats::default(),
                wake: None,
                next_at: None,
            });
        }
        let mut e = Engine {
            slots,
            by_name,
            index,
            presence,
            templates: set.templates,
            tz: set.tz,
            wakes: BTreeSet::new(),
            matches: Matches::new(),
            fired: Vec::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            dirty: false,
        };
        e.start(now);
        e
    }

    /// Times silences and schedules from `now`, and sets every wake-up.
    pub(crate) fn start(&mut self, now: Millis) {
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if s.rule.enabled {
                s.machine.start(&s.rule.timing, now);
            }
            if let Trigger::Daily(d) = &s.rule.trigger {
                s.next_at = d.next_after(now, &self.tz);
            }
            self.rewake(i);
        }
    }

    /// The topic filters the engine wants messages from (subscribe to
    /// these, at QoS 1 if nothing is to be missed).
    pub fn filters(&self) -> Vec<TopicFilter> {
        let mut out: Vec<TopicFilter> = self
            .slots
            .iter()
            .filter_map(|s| match &s.rule.trigger {
                Trigger::Topic(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        out
    }

    /// Whether a rule listens to presence.
    pub fn wants_presence(&self) -> bool {
        !self.presence.is_empty()
    }

    /// A message arrived.
    pub fn handle_message(&mut self, topic: &TopicName, payload: &[u8], now: Millis) {
        self.matches.clear();
        self.index.matches(topic, &mut self.matches);
        if self.matches.is_empty() {
            return;
        }
        let hits: Vec<usize> = self
            .matches
            .subscriptions()
            .iter()
            .map(|(i, _)| *i)
            .collect();
        let ctx = Ctx {
            topic: topic.as_str().to_owned(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            client: None,
            at: now,
        };
        for i in hits {
            self.event(i, topic.as_str(), ctx.clone(), now);
        }
    }

    /// A client connected (`online`) or disconnected.
    pub fn handle_presence(&mut self, client: &str, online: bool, now: Millis) {
        let ctx = Ctx {
            topic: String::new(),
            payload: if online { "online" } else { "offline" }.to_owned(),
            client: Some(client.to_owned()),
            at: now,
        };
        for k in 0..self.presence.len() {
            let i = self.presence[k];
            let Trigger::Presence {
                client: want,
                online: on,
            } = &self.slots[i].rule.trigger
            else {
                continue;
            };
            let matches = match want.strip_suffix('*') {
                Some(prefix) => client.starts_with(prefix),
                None => client == want,
            };
            if !matches {
                continue;
            }
            // For `for`, the key is the client; the event passes when the
            // client is in the state the rule waits for.
            let passes = *on == online;
            let s = &mut self.slots[i];
            if !s.rule.enabled {
                continue;
            }
            s.machine
                .on_event(&s.rule.timing, client, passes, ctx.clone(), &mut self.fired);
            self.dirty = true;
            self.after(i, now);
        }
    }

    fn event(&mut self, i: usize, key: &str, ctx: Ctx, now: Millis) {
        let s = &self.slots[i];
        if !s.rule.enabled {
            return;
        }
        let passes = match self.passes(i, &ctx, now) {
            Ok(p) => p,
            Err(e) => {
                self.error(i, format!("when: {e}"));
                false
            }
        };
        let s = &mut self.slots[i];
        s.machine
            .on_event(&s.rule.timing, key, passes, ctx, &mut self.fired);
        if s.rule.timing != crate::rule::Timing::Now {
            self.dirty = true;
        }
        self.after(i, now);
    }

    /// Whether the message passes the rule's test.
    fn passes(&self, i: usize, ctx: &Ctx, now: Millis) -> Result<bool, String> {
        let s = &self.slots[i];
        let t: &Test = &s.rule.test;
        if t.is_empty() {
            return Ok(true);
        }
        if let Some(c) = &t.contains {
            if !ctx.payload.contains(c.as_str()) {
                return Ok(false);
            }
        }
        let json = match &t.field {
            Some(_) => serde_json::from_str::<serde_json::Value>(&ctx.payload).ok(),
            None => None,
        };
        let value = value_of(&ctx.payload, json.as_ref(), t.field.as_deref());
        if let Some(is) = &t.is {
            if !same(&value, is) {
                return Ok(false);
            }
        }
        let num = value.as_f64();
        if t.above.is_some_and(|a| num.is_none_or(|n| n <= a)) {
            return Ok(false);
        }
        if t.below.is_some_and(|b| num.is_none_or(|n| n >= b)) {
            return Ok(false);
        }
        if let Some(w) = &t.when {
            let scope = Scope::new(
                ctx,
                self.captures(i, ctx),
                t.field.as_deref(),
                &s.state,
                now,
                &s.rule.name,
            );
            return self.templates.holds(w, &scope);
        }
        Ok(true)
    }

    /// What the rule's filter's wildcards matched in the firing's topic.
    fn captures(&self, i: usize, ctx: &Ctx) -> Vec<String> {
        let Trigger::Topic(f) = &self.slots[i].rule.trigger else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut levels = ctx.topic.split('/');
        for l in f.as_str().split('/') {
            match l {
                "+" => out.push(levels.next().unwrap_or("").to_owned()),
                "#" => {
                    out.push(levels.by_ref().collect::<Vec<_>>().join("/"));
                    break;
                }
                _ => {
                    levels.next();
                }
            }
        }
        out
    }

    /// Time has come to `now`.
    pub fn handle_timeout(&mut self, now: Millis) {
        // The rules due now, each taken once: whatever they arm next is
        // for a later call.
        let mut due = Vec::new();
        while let Some(&(t, i)) = self.wakes.first() {
            if t > now {
                break;
            }
            self.wakes.remove(&(t, i));
            self.slots[i].wake = None;
            due.push(i);
        }
        for i in due {
            let s = &mut self.slots[i];
            if s.next_at.is_some_and(|n| n <= now) {
                if let Trigger::Daily(d) = &s.rule.trigger {
                    s.next_at = d.next_after(now, &self.tz);
                }
                if s.rule.enabled {
                    self.fired.push(Ctx {
                        topic: String::new(),
                        payload: String::new(),
                        client: None,
                        at: now,
                    });
                }
            }
            let s = &mut self.slots[i];
            if s.rule.enabled {
                s.machine.on_time(&s.rule.timing, now, &mut self.fired);
            }
            self.dirty = true;
            self.after(i, now);
        }
    }

    /// After an input to rule `i`: its firings start runs, its runs go on
    /// as far as `now`, its wake-up is set again.
    fn after(&mut self, i: usize, now: Millis) {
        let fired = std::mem::take(&mut self.fired);
        for ctx in fired {
            // Each firing's steps run as far as they can before the next
            // (a run with no wait is over before the next one is judged).
            self.fire(i, ctx, now);
            self.advance(i, now);
        }
        self.advance(i, now);
        self.rewake(i);
    }

    fn fire(&mut self, i: usize, ctx: Ctx, now: Millis) {
        let s = &mut self.slots[i];
        let limit = s.rule.limit;
        while s
            .fired_at
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= limit.per)
        {
            s.fired_at.pop_front();
        }
        if s.fired_at.len() >= limit.n as usize {
            s.stats.limited += 1;
            self.events.push_back(RuleEvent::Limited {
                rule: s.rule.name.clone(),
            });
            return;
        }
        match s.rule.mode {
            Mode::Single if !s.runs.is_empty() => return,
            Mode::Restart => s.runs.clear(),
            Mode::Parallel if s.runs.len() >= MAX_RUNS => return,
            _ => {}
        }
        s.fired_at.push_back(now);
        s.stats.fires += 1;
        s.stats.last_fired = Some(now);
        s.runs.push_back(Run {
            ctx,
            step: 0,
            at: now,
        });
        self.dirty = true;
        self.events.push_back(RuleEvent::Fired {
            rule: s.rule.name.clone(),
            at: now,
        });
    }

    /// Runs rule `i`'s steps that are due.
    fn advance(&mut self, i: usize, now: Millis) {
        let mut k = 0;
        while k < self.slots[i].runs.len() {
            let finished = loop {
                let s = &self.slots[i];
                let run = &s.runs[k];
                if run.at > now {
                    break false;
                }
                let Some(step) = s.rule.steps.get(run.step).cloned() else {
                    break true;
                };
                self.dirty = true;
                match self.step(i, k, &step, now) {
                    Ok(()) => self.slots[i].runs[k].step += 1,
                    Err(e) => {
                        self.error(i, e);
                        break true;
                    }
                }
            };
            if finished {
                self.slots[i].runs.remove(k);
            } else {
                k += 1;
            }
        }
    }

    fn step(&mut self, i: usize, k: usize, step: &Step, now: Millis) -> Result<(), String> {
        let s = &self.slots[i];
        let run = &s.runs[k];
        let render = |t| {
            let scope = Scope::new(
                &run.ctx,
                self.captures(i, &run.ctx),
                s.rule.test.field.as_deref(),
                &s.state,
                now,
                &s.rule.name,
            );
            self.templates.render(t, &scope)
        };
        match step {
            Step::Publish {
                topic,
                payload,
                qos,
                retain,
            } => {
                let t = render(topic).map_err(|e| format!("publish: {e}"))?;
                let topic = TopicName::new(t.as_str())
                    .map_err(|e| format!("publish: {t:?} is not a topic name: {e}"))?;
                let payload = render(payload).map_err(|e| format!("payload: {e}"))?;
                self.actions.push_back(Action::Publish {
                    rule: s.rule.name.clone(),
                    topic,
                    payload: Bytes::from(payload),
                    qos: *qos,
                    retain: *retain,
                });
            }
            Step::Http { webhook, body } => {
                let body = render(body).map_err(|e| format!("body: {e}"))?;
                self.actions.push_back(Action::Http {
                    rule: s.rule.name.clone(),
                    webhook: webhook.clone(),
                    body: Bytes::from(body),
                });
            }
            Step::Set { key, value } => {
                let v = render(value).map_err(|e| format!("set {key}: {e}"))?;
                let v = serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v));
                self.slots[i].state.insert(key.clone(), v);
            }
            Step::Wait(d) => {
                // The next step is due after the wait.
                self.slots[i].runs[k].at = now.saturating_add(*d);
            }
        }
        Ok(())
    }

    fn error(&mut self, i: usize, message: String) {
        let s = &mut self.slots[i];
        s.stats.errors += 1;
        s.stats.last_error = Some(message.clone());
        self.events.push_back(RuleEvent::Error {
            rule: s.rule.name.clone(),
            message,
        });
    }

    /// Sets rule `i`'s one entry in the wake-ups.
    pub(crate) fn rewake(&mut self, i: usize) {
        let s = &mut self.slots[i];
        // A rule turned off waits for nothing.
        let next = [
            s.machine.next_wake(&s.rule.timing),
            s.runs.iter().map(|r| r.at).min(),
            s.next_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .filter(|_| s.rule.enabled);
        if next == s.wake {
            return;
        }
        if let Some(old) = s.wake.take() {
            self.wakes.remove(&(old, i));
        }
        if let Some(t) = next {
            self.wakes.insert((t, i));
        }
        s.wake = next;
    }

    /// The next action to carry out.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RuleEvent> {
        self.events.pop_front()
    }

    /// When to call [`Engine::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.wakes.first().map(|(t, _)| *t)
    }

    /// Turns a rule on or off at `now`; false if there is no such rule. A
    /// rule turned off forgets what it was waiting for and stops its runs;
    /// turned on, it starts afresh (a silence is timed from now, a
    /// schedule comes round at its next time).
    pub fn set_enabled(&mut self, name: &str, on: bool, now: Millis) -> bool {
        let Some(&i) = self.by_name.get(name) else {
            return false;
        };
        let s = &mut self.slots[i];
        if s.rule.enabled != on {
            s.rule.enabled = on;
            s.machine = Machine::default();
            s.runs.clear();
            if on {
                s.machine.start(&s.rule.timing, now);
                if let Trigger::Daily(d) = &s.rule.trigger {
                    s.next_at = d.next_after(now, &self.tz);
                }
            }
            self.dirty = true;
            self.rewake(i);
        }
        true
    }

    /// Whether the durable state changed since this was last called: save
    /// a [`Engine::snapshot`] then.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

/// Equality of a tested value and `is`: numbers as numbers, anything else
/// as text.
fn same(value: &serde_json::Value, is: &serde_json::Value) -> bool {
    let num = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        other => other.as_f64(),
    };
    match (num(value), num(is)) {
        (Some(a), Some(b)) => a == b,
        _ => text(value) == text(is),
    }
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
