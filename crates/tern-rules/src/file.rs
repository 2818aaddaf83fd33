//! The rules file: TOML, one `[[rule]]` per rule. Every error names the
//! file, the line and the key; a file with an error loads nothing (a
//! reload that fails keeps the rules that run).
//!
//! ```toml
//! timezone = "Europe/London"      # for `at` (default UTC)
//!
//! [[rule]]
//! name = "doorbell-sos"
//! topic = "home/doorbell/pressed"
//! sequence = "...-..."            # . short gap, - long gap between presses
//! short = "100ms..600ms"
//! long = "800ms..2s"
//! action = [
//!   { repeat = 3, steps = [
//!     { publish = "lights/living/set", payload = "red" },
//!     { wait = "400ms" },
//!     { publish = "lights/living/set", payload = "off" },
//!     { wait = "400ms" },
//!   ] },
//! ]
//! ```

use std::sync::Arc;

use jiff::tz::TimeZone;
use serde::Deserialize;
use tern_codec::QoS;
use tern_topic::TopicFilter;

use crate::guard;
use crate::rule::{
    By, Limit, Mode, Rule, Sequence, Step, Sym, Test, Timing, Trigger, DEFAULT_LIMIT, MAX_STEPS,
};
use crate::template::Templates;
use crate::time::{self, Daily, Dur, Span};

/// Rules read from a file, ready for an [`Engine`](crate::Engine).
#[derive(Debug)]
pub struct RuleSet {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// Their templates, compiled.
    pub templates: Templates,
    /// The time zone of `at` schedules.
    pub tz: TimeZone,
}

/// A rules file that cannot be loaded: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
#[non_exhaustive]
pub struct LoadError {
    /// The file's name as given.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// What is wrong, naming the rule and key.
    pub message: String,
}

impl LoadError {
    /// The file cannot be read.
    pub fn io(file: &str, e: &std::io::Error) -> LoadError {
        LoadError {
            file: file.to_owned(),
            line: 0,
            message: format!("cannot be read: {e}"),
        }
    }
}

impl RuleSet {
    /// Reads the rules in `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<RuleSet, LoadError> {
        let at = |offset: usize, message: String| LoadError {
            file: file.to_owned(),
            line: line_of(text, offset),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim().to_owned())
        })?;
        let tz = match &raw.timezone {
            Some(name) => time::time_zone(name)
                .map_err(|e| at(key_offset(text, 0, text.len(), "timezone"), e))?,
            None => TimeZone::UTC,
        };
        let mut templates = Templates::default();
        let mut rules = Vec::with_capacity(raw.rule.len());
        let mut names = std::collections::HashSet::new();
        for spanned in raw.rule {
            // The span toml gives an array's table may be its header
            // only: the table runs to the next header.
            let start = spanned.span().start;
            let span = start..table_end(text, start);
            let r = spanned.into_inner();
            let name = r.name.clone();
            let fail = |key: &str, e: String| {
                at(
                    key_offset(text, span.start, span.end, key),
                    format!("rule {name:?}: {key}: {e}"),
                )
            };
            if !names.insert(name.clone()) {
                return Err(fail("name", "another rule has this name".into()));
            }
            let origin = format!("{file}:{}", line_of(text, span.start));
            let digest = digest(&text[span.clone()]);
            let rule = r
                .compile(&mut templates, origin, digest)
                .map_err(|(key, e)| fail(key, e))?;
            rules.push(rule);
        }
        guard::check(&rules).map_err(|(i, e)| LoadError {
            file: file.to_owned(),
            line: rules[i]
                .origin
                .rsplit(':')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(1),
            message: e,
        })?;
        Ok(RuleSet {
            rules,
            templates,
            tz,
        })
    }
}

/// A rule's digest: of its lines, trimmed, without blank lines and
/// comments (so moving it or commenting it does not change it).
fn digest(text: &str) -> u64 {
    // FNV-1a: the same across Rust releases (a saved digest must match
    // after an upgrade).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in text.lines().map(str::trim) {
        if !line.is_empty() && !line.starts_with('#') {
            for b in line.bytes().chain(std::iter::once(b'\n')) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}

/// Where the table whose header is at `start` ends: at the next line that
/// opens a table, or at the end.
fn table_end(text: &str, start: usize) -> usize {
    let mut at = start;
    for (i, line) in text[start..].split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        // A table of its own (`[[rule.action]]` is still the rule's).
        if i > 0 && t.starts_with('[') && !t.starts_with("[rule.") && !t.starts_with("[[rule.") {
            return at;
        }
        at += line.len();
    }
    text.len()
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Where `key` is set between `start` and `end` (the rule's table), or the
/// table's start.
fn key_offset(text: &str, start: usize, end: usize, key: &str) -> usize {
    let body = &text[start..end.min(text.len())];
    let mut at = 0;
    for line in body.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix(key) {
            if rest.trim_start().starts_with('=') {
                return start + at;
            }
        }
        // Inline tables: `{ key = ... }`.
        if let Some(i) = line.find(&format!("{key} =")) {
            if i > 0 && matches!(line.as_bytes()[i - 1], b' ' | b'{' | b',') {
                return start + at + i;
            }
        }
        at += line.len();
    }
    start
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    timezone: Option<String>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

/// A string, a number or a boolean, as text.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Text {
    S(String),
    I(i64),
    F(f64),
    B(bool),
}

impl Text {
    fn text(&self) -> String {
        match self {
            Text::S(s) => s.clone(),
            Text::I(i) => i.to_string(),
            Text::F(f) => f.to_string(),
            Text::B(b) => b.to_string(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Text::S(s) => serde_json::Value::String(s.clone()),
            Text::I(i) => serde_json::json!(i),
            Text::F(f) => serde_json::json!(f),
            Text::B(b) => serde_json::Value::Bool(*b),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default = "yes")]
    enabled: bool,
    #[allow(dead_code)]
    description: Option<String>,
    topic: Option<String>,
    presence: Option<String>,
    state: Option<String>,
    at: Option<String>,
    #[serde(default)]
    days: Vec<String>,
    field: Option<String>,
    is: Option<Text>,
    above: Option<f64>,
    below: Option<f64>,
    contains: Option<String>,
    when: Option<String>,
    #[serde(rename = "for")]
    for_: Option<Dur>,
    debounce: Option<Dur>,
    throttle: Option<Dur>,
    count: Option<u32>,
    within: Option<Dur>,
    absent: Option<Dur>,
    sequence: Option<String>,
    short: Option<Span>,
    long: Option<Span>,
    by: Option<String>,
    down: Option<Text>,
    up: Option<Text>,
    limit: Option<String>,
    mode: Option<String>,
    #[serde(default)]
    action: Vec<RawStep>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    publish: Option<String>,
    payload: Option<Text>,
    qos: Option<u8>,
    retain: Option<bool>,
    clear: Option<String>,
    wait: Option<Dur>,
    repeat: Option<u32>,
    steps: Option<Vec<RawStep>>,
    http: Option<String>,
    body: Option<String>,
    set: Option<String>,
    value: Option<Text>,
}

type Fail = (&'static str, String);

impl RawRule {
    fn compile(self, t: &mut Templates, origin: String, digest: u64) -> Result<Rule, Fail> {
        let trigger = self.trigger()?;
        if let Some(f) = &self.field {
            if !f.is_empty() && !f.starts_with('/') {
                return Err((
                    "field",
                    format!("{f:?} is not a JSON pointer (say \"/temp\")"),
                ));
            }
        }
        let test = Test {
            field: self.field.clone(),
            is: self.is.as_ref().map(Text::json),
            above: self.above,
            below: self.below,
            contains: self.contains.clone(),
            when: match &self.when {
                Some(w) => Some(t.add_condition(w).map_err(|e| ("when", e))?),
                None => None,
            },
        };
        let timing = self.timing()?;
        if matches!(trigger, Trigger::Daily(_)) && (timing != Timing::Now || !test.is_empty()) {
            return Err(("at", "a schedule takes no conditions and no timing".into()));
        }
        let limit = match &self.limit {
            Some(l) => limit(l).map_err(|e| ("limit", e))?,
            None => DEFAULT_LIMIT,
        };
        let mode = match self.mode.as_deref() {
            None | Some("single") => Mode::Single,
            Some("restart") => Mode::Restart,
            Some("parallel") => Mode::Parallel,
            Some(m) => return Err(("mode", format!("{m:?}: say single, restart or parallel"))),
        };
        let mut steps = Vec::new();
        compile_steps(&self.action, t, &mut steps)?;
        if steps.is_empty() {
            return Err(("action", "a rule needs at least one action".into()));
        }
        Ok(Rule {
            name: Arc::from(self.name.as_str()),
            enabled: self.enabled,
            origin,
            trigger,
            test,
            timing,
            limit,
            mode,
            steps,
            digest,
        })
    }

    fn trigger(&self) -> Result<Trigger, Fail> {
        match (&self.topic, &self.presence, &self.at) {
            (Some(f), None, None) => TopicFilter::new(f.as_str())
                .map(Trigger::Topic)
                .map_err(|e| ("topic", format!("{f:?} is not a topic filter: {e}"))),
            (None, Some(c), None) => {
                let online = match self.state.as_deref() {
                    Some("online") => true,
                    None | Some("offline") => false,
                    Some(s) => return Err(("state", format!("{s:?}: say online or offline"))),
                };
                if c.is_empty() || c.strip_suffix('*').unwrap_or(c).contains('*') {
                    return Err(("presence", format!("{c:?}: a client id, or a prefix and *")));
                }
                Ok(Trigger::Presence {
                    client: c.clone(),
                    online,
                })
            }
            (None, None, Some(at)) => Daily::new(at, &self.days)
                .map(Trigger::Daily)
                .map_err(|e| ("at", e)),
            (None, None, None) => Err((
                "topic",
                "a rule needs a trigger: topic, presence or at".into(),
            )),
            _ => Err(("topic", "give one trigger: topic, presence or at".into())),
        }
    }

    fn timing(&self) -> Result<Timing, Fail> {
        let mut found: Vec<(&'static str, Timing)> = Vec::new();
        if let Some(d) = self.for_ {
            found.push(("for", Timing::For(d.ms())));
        }
        if let Some(d) = self.debounce {
            found.push(("debounce", Timing::Debounce(d.ms())));
        }
        if let Some(d) = self.throttle {
            found.push(("throttle", Timing::Throttle(d.ms())));
        }
        if let Some(n) = self.count {
            let within = self
                .within
                .ok_or(("count", "count needs within".to_owned()))?;
            if n < 2 {
                return Err(("count", "count is at least 2".into()));
            }
            found.push((
                "count",
                Timing::Count {
                    n,
                    within: within.ms(),
                },
            ));
        } else if self.within.is_some() {
            return Err(("within", "within goes with count".into()));
        }
        if let Some(d) = self.absent {
            found.push(("absent", Timing::Absent(d.ms())));
        }
        if let Some(p) = &self.sequence {
            found.push(("sequence", Timing::Sequence(self.sequence(p)?)));
        } else if self.short.is_some() || self.long.is_some() || self.by.is_some() {
            return Err(("sequence", "short, long and by go with sequence".into()));
        }
        match found.len() {
            0 => Ok(Timing::Now),
            1 => Ok(found.remove(0).1),
            _ => Err((found[1].0, format!("give at most one of for, debounce, throttle, count, absent, sequence (found {} and {})", found[0].0, found[1].0))),
        }
    }

    fn sequence(&self, p: &str) -> Result<Sequence, Fail> {
        let pattern = p
            .chars()
            .map(|c| match c {
                '.' | '…' | '·' => Ok(vec![Sym::Short; if c == '…' { 3 } else { 1 }]),
                '-' | '—' | '_' => Ok(vec![Sym::Long]),
                c => Err((
                    "sequence",
                    format!("{c:?}: a pattern is . (short) and - (long)"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?
            .concat();
        if pattern.is_empty() || pattern.len() > 32 {
            return Err(("sequence", "a pattern has 1 to 32 symbols".into()));
        }
        let short = self.short.ok_or((
            "short",
            "a sequence needs short = \"100ms..600ms\"".to_owned(),
        ))?;
        let long = self
            .long
            .ok_or(("long", "a sequence needs long = \"800ms..2s\"".to_owned()))?;
        if short.max >= long.min {
            return Err(("long", "long must start after short ends".into()));
        }
        let by = match self.by.as_deref() {
            None | Some("gaps") => By::Gaps,
            Some("presses") => By::Presses {
                down: self.down.as_ref().map_or("1".into(), Text::text),
                up: self.up.as_ref().map_or("0".into(), Text::text),
            },
            Some(b) => return Err(("by", format!("{b:?}: say gaps or presses"))),
        };
        Ok(Sequence {
            pattern,
            short,
            long,
            by,
        })
    }
}

fn compile_steps(raw: &[RawStep], t: &mut Templates, out: &mut Vec<Step>) -> Result<(), Fail> {
    for s in raw {
        let kinds = [
            s.publish.is_some(),
            s.clear.is_some(),
            s.wait.is_some(),
            s.repeat.is_some(),
            s.http.is_some(),
            s.set.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err((
                "action",
                "each action is one of publish, clear, wait, repeat, http, set".into(),
            ));
        }
        let tpl = |t: &mut Templates, key: &'static str, s: &str| t.add(s).map_err(|e| (key, e));
        if let Some(topic) = &s.publish {
            let qos = match s.qos.unwrap_or(0) {
                0 => QoS::AtMostOnce,
                1 => QoS::AtLeastOnce,
                2 => QoS::ExactlyOnce,
                q => return Err(("qos", format!("{q}: say 0, 1 or 2"))),
            };
            let payload = s.payload.as_ref().map_or(String::new(), Text::text);
            out.push(Step::Publish {
                topic: tpl(t, "publish", topic)?,
                payload: tpl(t, "payload", &payload)?,
                qos,
                retain: s.retain.unwrap_or(false),
            });
        } else if let Some(topic) = &s.clear {
            out.push(Step::Publish {
                topic: tpl(t, "clear", topic)?,
                payload: crate::template::Tpl::Text(String::new()),
                qos: QoS::AtLeastOnce,
                retain: true,
            });
        } else if let Some(d) = s.wait {
            out.push(Step::Wait(d.ms()));
        } else if let Some(n) = s.repeat {
            let inner = s
                .steps
                .as_deref()
                .ok_or(("repeat", "repeat needs steps".to_owned()))?;
            let mut once = Vec::new();
            compile_steps(inner, t, &mut once)?;
            if once.is_empty() || n as usize > MAX_STEPS {
                return Err((
                    "repeat",
                    format!("repeat needs steps, at most {MAX_STEPS} times"),
                ));
            }
            for _ in 0..n {
                out.extend(once.iter().cloned());
                if out.len() > MAX_STEPS {
                    break;
                }
            }
        } else if let Some(w) = &s.http {
            out.push(Step::Http {
                webhook: w.clone(),
                body: tpl(t, "body", s.body.as_deref().unwrap_or("{{ payload }}"))?,
            });
        } else if let Some(k) = &s.set {
            let v = s
                .value
                .as_ref()
                .ok_or(("value", "set needs value".to_owned()))?;
            out.push(Step::Set {
                key: k.clone(),
                value: tpl(t, "value", &v.text())?,
            });
        }
        if out.len() > MAX_STEPS {
            return Err((
                "repeat",
                format!("more than {MAX_STEPS} steps, repeats counted out"),
            ));
        }
    }
    Ok(())
}

/// `"10/1m"`: at most 10 firings a minute.
fn limit(s: &str) -> Result<Limit, String> {
    let (n, per) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: say \"10/1m\" (10 firings a minute)"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {n:?} is not a count"))?;
    let per = time::parse_duration(per)?;
    if n == 0 || per.is_zero() {
        return Err(format!("{s:?}: a limit needs a count and a window"));
    }
    Ok(Limit {
        n,
        per: Dur(per).ms(),
        declared: true,
    })
}
