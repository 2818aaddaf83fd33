//! A dry run: recorded messages replayed in virtual time, and what the
//! rules would have done and when (`tern rules test FILE --replay REC`).
//!
//! A recording is JSON lines, one message each (`{"time": ms, "topic":
//! ..., "payload": ...}`, `time` in milliseconds since the epoch, or an
//! RFC 3339 string), or a JSON document with a `messages` array of them,
//! as `GET /api/v1/history/...` answers. A line `{"time": ...,
//! "presence": "client", "online": false}` is a client going offline.

use serde::Deserialize;
use tern_topic::TopicName;

use crate::engine::{Action, Engine, RuleEvent};
use crate::file::RuleSet;
use crate::time::Millis;

/// One recorded input.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A message.
    Message {
        /// When.
        time: Millis,
        /// Where.
        topic: TopicName,
        /// What.
        payload: Vec<u8>,
    },
    /// A client's presence.
    Presence {
        /// When.
        time: Millis,
        /// Who.
        client: String,
        /// Connected or not.
        online: bool,
    },
}

impl Recorded {
    fn time(&self) -> Millis {
        match self {
            Recorded::Message { time, .. } | Recorded::Presence { time, .. } => *time,
        }
    }
}

#[derive(Deserialize)]
struct Line {
    time: serde_json::Value,
    topic: Option<String>,
    payload: Option<String>,
    presence: Option<String>,
    online: Option<bool>,
}

#[derive(Deserialize)]
struct Document {
    messages: Vec<Line>,
}

/// Reads a recording; an error names the line.
pub fn read_recording(text: &str) -> Result<Vec<Recorded>, String> {
    let lines: Vec<(usize, Line)> = match serde_json::from_str::<Document>(text) {
        Ok(doc) => doc.messages.into_iter().map(|l| (0, l)).collect(),
        Err(_) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str::<Line>(l)
                    .map(|x| (i + 1, x))
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect::<Result<_, _>>()?,
    };
    let mut out = Vec::with_capacity(lines.len());
    for (n, l) in lines {
        let at = |e: String| if n > 0 { format!("line {n}: {e}") } else { e };
        let time = match &l.time {
            serde_json::Value::Number(t) => {
                t.as_u64().ok_or_else(|| at("time: not a time".into()))?
            }
            serde_json::Value::String(s) => {
                let ts: jiff::Timestamp = s.parse().map_err(|e| at(format!("time {s:?}: {e}")))?;
                u64::try_from(ts.as_millisecond()).map_err(|_| at("time before 1970".into()))?
            }
            _ => return Err(at("time: milliseconds or an RFC 3339 time".into())),
        };
        match (l.topic, l.presence) {
            (Some(t), None) => out.push(Recorded::Message {
                time,
                topic: TopicName::new(&t).map_err(|e| at(format!("topic {t:?}: {e}")))?,
                payload: l.payload.unwrap_or_default().into_bytes(),
            }),
            (None, Some(client)) => out.push(Recorded::Presence {
                time,
                client,
                online: l.online.unwrap_or(false),
            }),
            _ => return Err(at("give a topic, or a presence".into())),
        }
    }
    out.sort_by_key(Recorded::time);
    Ok(out)
}

/// What happened in a dry run, at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct Happening {
    /// When.
    pub time: Millis,
    /// The rule.
    pub rule: String,
    /// What, in words.
    pub what: String,
}

/// Replays `recording` through `set`, and runs the clock on until nothing
/// is pending (at most `tail` after the last message).
pub fn dry_run(set: RuleSet, recording: &[Recorded], tail: u64) -> Vec<Happening> {
    let start = recording.first().map_or(0, Recorded::time);
    let mut engine = Engine::new(set, start);
    let mut out = Vec::new();
    for r in recording {
        run_until(&mut engine, r.time(), &mut out);
        match r {
            Recorded::Message {
                time,
                topic,
                payload,
            } => {
                engine.handle_message(topic, payload, *time);
            }
            Recorded::Presence {
                time,
                client,
                online,
            } => {
                engine.handle_presence(client, *online, *time);
            }
        }
        collect(&mut engine, r.time(), &mut out);
    }
    let end = recording
        .last()
        .map_or(start, Recorded::time)
        .saturating_add(tail);
    run_until(&mut engine, end, &mut out);
    out
}

fn run_until(engine: &mut Engine, until: Millis, out: &mut Vec<Happening>) {
    while let Some(t) = engine.poll_timeout() {
        if t > until {
            break;
        }
        engine.handle_timeout(t);
        collect(engine, t, out);
    }
}

fn collect(engine: &mut Engine, time: Millis, out: &mut Vec<Happening>) {
    while let Some(e) = engine.poll_event() {
        let (rule, what) = match e {
            RuleEvent::Fired { rule, .. } => (rule, "fired".to_owned()),
            RuleEvent::Limited { rule } => (rule, "reached its limit: firing dropped".to_owned()),
            RuleEvent::Error { rule, message } => (rule, format!("error: {message}")),
        };
        out.push(Happening {
            time,
            rule: rule.to_string(),
            what,
        });
    }
    while let Some(a) = engine.poll_action() {
        let (rule, what) = match a {
            Action::Publish {
                rule,
                topic,
                payload,
                qos,
                retain,
            } => (
                rule,
                format!(
                    "publish {} {:?} (qos {}{})",
                    topic.as_str(),
                    String::from_utf8_lossy(&payload),
                    qos as u8,
                    if retain { ", retained" } else { "" }
                ),
            ),
            Action::Http {
                rule,
                webhook,
                body,
            } => (
                rule,
                format!(
                    "call webhook {webhook} with {:?}",
                    String::from_utf8_lossy(&body)
                ),
            ),
        };
        out.push(Happening {
            time,
            rule: rule.to_string(),
            what,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_replays_in_virtual_time() {
        let set = RuleSet::parse(
            r#"
            [[rule]]
            name = "hot"
            topic = "t"
            above = 25
            for = "1m"
            action = [{ publish = "alarm", payload = "{{ value }}" }]
            "#,
            "r",
        )
        .expect("valid");
        let rec = read_recording(
            "{\"time\": 1000, \"topic\": \"t\", \"payload\": \"30\"}\n\n{\"time\": \"1970-01-01T00:00:31Z\", \"topic\": \"t\", \"payload\": \"31\"}\n",
        )
        .expect("valid");
        let out = dry_run(set, &rec, 3_600_000);
        let words: Vec<String> = out
            .iter()
            .map(|h| format!("{} {} {}", h.time, h.rule, h.what))
            .collect();
        assert_eq!(
            words,
            ["61000 hot fired", "61000 hot publish alarm \"30\" (qos 0)"]
        );
        assert!(read_recording("{\"time\": 1}").is_err());
        let doc =
            read_recording("{\"messages\": [{\"time\": 5, \"topic\": \"a\", \"payload\": \"x\"}]}")
                .expect("a document");
        assert_eq!(doc.len(), 1);
    }
}
