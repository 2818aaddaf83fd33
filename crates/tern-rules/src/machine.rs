//! How time shapes one rule's firing: the state between events (a `for`
//! wait, a debounce, the events of a count, a silence, a sequence under
//! way), kept as plain data in wall-clock milliseconds so that it is saved
//! with the engine's snapshot and means the same after a restart.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::rule::{By, Sequence, Sym, Timing};
use crate::time::Millis;

/// What a firing is about: the event that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ctx {
    /// The message's topic (empty for a schedule or a silence).
    pub topic: String,
    /// Its payload as text (invalid UTF-8 replaced).
    pub payload: String,
    /// The client, for presence.
    pub client: Option<String>,
    /// When the event came.
    pub at: Millis,
}

/// One rule's state between events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// `for`: per topic (or client), the event that started the wait,
    /// when the wait ends, and whether it fired (then nothing until the
    /// test fails again).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    held: BTreeMap<String, Held>,
    /// `debounce`: the last event and when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pending: Option<(Millis, Ctx)>,
    /// `throttle`: when it last fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last: Option<Millis>,
    /// `count`: the events' times within the window.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    times: VecDeque<Millis>,
    /// `absent`: when the silence will be long enough (none once it fired,
    /// until the next event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    silence_at: Option<Millis>,
    /// `sequence`: the attempt under way.
    #[serde(default, skip_serializing_if = "Progress::is_idle")]
    seq: Progress,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Held {
    until: Millis,
    ctx: Ctx,
    fired: bool,
}

/// A sequence under way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    /// The symbols matched so far.
    got: Vec<Sym>,
    /// The last press (its release, by presses), if an attempt is open.
    last: Option<Millis>,
    /// By presses: when the press being held began.
    down: Option<Millis>,
    /// Complete: fires at this time unless another press comes first.
    done: Option<(Millis, Ctx)>,
}

impl Progress {
    fn is_idle(&self) -> bool {
        self.last.is_none() && self.down.is_none() && self.done.is_none()
    }
}

/// Topics (or clients) a `for` rule keeps at most; for a new one beyond,
/// one that fired goes first (the oldest), else the oldest waiting.
pub const MAX_HELD: usize = 1_000;

/// The most of a payload kept for a later firing (`for`, debounce, a
/// sequence): beyond, it is cut (at a character's boundary).
pub const MAX_KEPT: usize = 64 * 1024;

impl Ctx {
    /// Nothing but a time.
    pub fn at(at: Millis) -> Ctx {
        Ctx {
            topic: String::new(),
            payload: String::new(),
            client: None,
            at,
        }
    }

    /// As kept for a later firing: the payload at most [`MAX_KEPT`] bytes.
    pub fn kept(mut self) -> Ctx {
        if self.payload.len() > MAX_KEPT {
            let mut end = MAX_KEPT;
            while !self.payload.is_char_boundary(end) {
                end -= 1;
            }
            self.payload.truncate(end);
        }
        self
    }
}

impl Machine {
    /// Room for one more `for` key.
    fn evict_held(&mut self) {
        let victim = self
            .held
            .iter()
            .min_by_key(|(_, h)| (!h.fired, h.ctx.at))
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.held.remove(&k);
        }
    }

    /// A rule starts (loaded, or after a restart): a silence is timed from
    /// now if it is not timed already.
    pub fn start(&mut self, timing: &Timing, now: Millis) {
        if let Timing::Absent(d) = timing {
            if self.silence_at.is_none() {
                self.silence_at = Some(now.saturating_add(*d));
            }
        }
    }

    /// An event the trigger matched: `passes` says whether it passed the
    /// test; `key` is its topic or client. Firings go to `fire`.
    pub fn on_event(
        &mut self,
        timing: &Timing,
        key: &str,
        passes: bool,
        ctx: Ctx,
        fire: &mut Vec<Ctx>,
    ) {
        let now = ctx.at;
        match timing {
            Timing::Now if passes => fire.push(ctx),
            Timing::Now => {}
            Timing::For(d) => {
                if !passes {
                    self.held.remove(key);
                } else if !self.held.contains_key(key) {
                    if self.held.len() >= MAX_HELD {
                        self.evict_held();
                    }
                    let until = now.saturating_add(*d);
                    self.held.insert(
                        key.to_owned(),
                        Held {
                            until,
                            ctx: ctx.kept(),
                            fired: false,
                        },
                    );
                }
            }
            Timing::Debounce(d) if passes => {
                self.pending = Some((now.saturating_add(*d), ctx.kept()));
            }
            Timing::Debounce(_) => {}
            Timing::Throttle(d) if passes => {
                if self.last.is_none_or(|l| now >= l.saturating_add(*d)) {
                    self.last = Some(now);
                    fire.push(ctx);
                }
            }
            Timing::Throttle(_) => {}
            Timing::Count { n, within } if passes => {
                self.times.push_back(now);
                while self
                    .times
                    .front()
                    .is_some_and(|&t| now.saturating_sub(t) > *within)
                {
                    self.times.pop_front();
                }
                if self.times.len() >= *n as usize {
                    self.times.clear();
                    fire.push(ctx);
                }
            }
            Timing::Count { .. } => {}
            Timing::Absent(d) if passes => self.silence_at = Some(now.saturating_add(*d)),
            Timing::Absent(_) => {}
            Timing::Sequence(s) if passes => self.press(s, ctx),
            Timing::Sequence(_) => {}
        }
    }

    /// A press (by gaps), or a press or release (by presses).
    fn press(&mut self, s: &Sequence, ctx: Ctx) {
        let now = ctx.at;
        let p = &mut self.seq;
        // Too slow: more than the longest symbol since the last press (by
        // gaps) or release (by presses), and the attempt under way is over.
        let too_slow = |p: &Progress| {
            p.done.is_none() && p.last.is_some_and(|l| now.saturating_sub(l) > s.longest())
        };
        match &s.by {
            By::Gaps => {
                if too_slow(p) {
                    *p = Progress::default();
                }
                let Some(last) = p.last else {
                    p.last = Some(now);
                    return;
                };
                if p.done.is_some() {
                    // An extra press after a whole pattern: no match; this
                    // press may begin the next attempt.
                    *p = Progress::default();
                    p.last = Some(now);
                    return;
                }
                Self::symbol(s, p, now.saturating_sub(last), now, ctx.kept());
            }
            By::Presses { down, up } => {
                if ctx.payload == *down {
                    if p.done.is_some() || too_slow(p) {
                        *p = Progress::default();
                    }
                    p.down = Some(now);
                } else if ctx.payload == *up {
                    // How long it was held is the symbol.
                    let Some(d) = p.down.take() else {
                        return;
                    };
                    Self::symbol(s, p, now.saturating_sub(d), now, ctx.kept());
                }
            }
        }
    }

    /// One symbol of `ms` at `now`: the next of the pattern, or a miss that
    /// starts the attempt again from this press.
    fn symbol(s: &Sequence, p: &mut Progress, ms: u64, now: Millis, ctx: Ctx) {
        match s.symbol(ms) {
            Some(sym) if s.pattern.get(p.got.len()) == Some(&sym) => {
                p.got.push(sym);
                p.last = Some(now);
                if p.got.len() == s.pattern.len() {
                    // Whole: fires unless another press follows soon.
                    p.done = Some((now.saturating_add(s.longest()).saturating_add(1), ctx));
                }
            }
            _ => {
                *p = Progress::default();
                if s.by == By::Gaps {
                    // This press may begin the next attempt.
                    p.last = Some(now);
                }
            }
        }
    }

    /// Time has come to `now`: the waits that are over fire.
    pub fn on_time(&mut self, timing: &Timing, now: Millis, fire: &mut Vec<Ctx>) {
        match timing {
            Timing::For(_) => {
                for h in self.held.values_mut() {
                    if !h.fired && h.until <= now {
                        h.fired = true;
                        // Only the key is needed now: it fires again once
                        // the test has failed for it.
                        let at = h.ctx.at;
                        fire.push(std::mem::replace(&mut h.ctx, Ctx::at(at)));
                    }
                }
            }
            Timing::Debounce(_) => {
                if self.pending.as_ref().is_some_and(|(t, _)| *t <= now) {
                    if let Some((_, ctx)) = self.pending.take() {
                        fire.push(ctx);
                    }
                }
            }
            Timing::Absent(_) => {
                if self.silence_at.is_some_and(|t| t <= now) {
                    self.silence_at = None;
                    fire.push(Ctx {
                        topic: String::new(),
                        payload: String::new(),
                        client: None,
                        at: now,
                    });
                }
            }
            Timing::Sequence(s) => {
                let p = &mut self.seq;
                if p.done.as_ref().is_some_and(|(t, _)| *t <= now) {
                    if let Some((_, ctx)) = p.done.take() {
                        fire.push(ctx);
                    }
                    *p = Progress::default();
                } else if p.done.is_none()
                    && p.down.is_none()
                    && p.last.is_some_and(|l| now.saturating_sub(l) > s.longest())
                {
                    *p = Progress::default();
                }
            }
            Timing::Now | Timing::Throttle(_) | Timing::Count { .. } => {}
        }
    }

    /// When [`Machine::on_time`] has something to do next.
    pub fn next_wake(&self, timing: &Timing) -> Option<Millis> {
        match timing {
            Timing::For(_) => self
                .held
                .values()
                .filter(|h| !h.fired)
                .map(|h| h.until)
                .min(),
            Timing::Debounce(_) => self.pending.as_ref().map(|(t, _)| *t),
            Timing::Absent(_) => self.silence_at,
            Timing::Sequence(s) => {
                let p = &self.seq;
                match (&p.done, p.last, p.down) {
                    (Some((t, _)), _, _) => Some(*t),
                    (None, Some(l), None) => Some(l.saturating_add(s.longest()).saturating_add(1)),
                    _ => None,
                }
            }
            Timing::Now | Timing::Throttle(_) | Timing::Count { .. } => None,
        }
    }

    /// What is pending, in words (for the page and `tern rules test`).
    pub fn pending(&self, timing: &Timing) -> Vec<String> {
        let mut out = Vec::new();
        for (k, h) in &self.held {
            if !h.fired {
                out.push(format!(
                    "for: {k} held since {}, fires at {}",
                    h.ctx.at, h.until
                ));
            }
        }
        if let Some((t, _)) = &self.pending {
            out.push(format!("debounce: fires at {t}"));
        }
        if let (Timing::Absent(_), Some(t)) = (timing, self.silence_at) {
            out.push(format!("absent: fires at {t} unless a message comes"));
        }
        if !self.seq.is_idle() {
            let got: String = self
                .seq
                .got
                .iter()
                .map(|s| if *s == Sym::Short { '.' } else { '-' })
                .collect();
            out.push(format!("sequence: {got:?} so far"));
        }
        out
    }
}
