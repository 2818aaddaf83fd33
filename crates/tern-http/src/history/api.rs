//! `GET /api/v1/history/{topic...}`: a recorded topic's messages, or its
//! numbers in buckets.
//!
//! Query:
//! - `from`, `to`: RFC 3339 times (`2026-12-06T08:00:00Z`), milliseconds
//!   since the Unix epoch, or a time before now (`24h`, `30m`: that long
//!   ago). Default: the last 24 hours up to now.
//! - `limit`: messages at most (default and most: 10,000).
//! - `step` (`1m`, `15m`, `1h`, ...): buckets instead of messages, aligned
//!   to the epoch; `agg` (`min,max,avg,count,sum`; default all) says what
//!   each holds; `field` (a JSON pointer, `/temp`) where the number is in a
//!   JSON payload (default: where the `[[history]]` rule's `value` says, or
//!   the whole payload; `field=` alone: the whole payload). A bucket's `min_at`
//!   and `max_at` say when its extremes occurred. Whole minutes of the
//!   field the `[[history]]` rule names come from buckets kept as messages
//!   are written: a month of minutes answers at once.
//!
//! The user must be allowed to read the topic (the ACL's verdict on
//! subscribing to it).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Map, Value};
use tern_broker::policy::ClientInfo;
use tern_codec::{ReasonCode, TopicFilter, TopicName};
use tern_store::history::rule_for;

use super::wall_now;
use crate::error::ApiError;
use crate::json::JsonMessage;
use crate::listen::Peer;
use crate::State;

/// Messages one answer holds at most.
const MAX_MESSAGES: usize = 10_000;
/// Buckets one answer holds at most.
const MAX_BUCKETS: u64 = 100_000;

/// A time in a query: RFC 3339, milliseconds since the epoch, or a
/// duration before `now`.
pub(crate) fn time_of(s: &str, now: u64) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .map_err(|_| format!("{s:?} is before 1970"));
    }
    match humantime::parse_duration(s.trim_start_matches('-')) {
        Ok(d) => Ok(now.saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
        Err(_) => Err(format!(
            "{s:?}: an RFC 3339 time, milliseconds since 1970, or a duration ago (24h)"
        )),
    }
}

/// A duration in a query or the configuration (`1m`, `30d`).
pub fn duration_of(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (say 90s, 15m, 1h, 30d)"))
}

/// The handler.
pub(crate) async fn history(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    topic: Result<Path<String>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let user = state.authenticate(&headers, peer.0).await?;
    let Path(topic) = topic.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let topic = TopicName::new(&topic).map_err(|e| {
        ApiError::refused(
            ReasonCode::TopicNameInvalid,
            format!("{topic:?} is not a topic: {e}"),
        )
    })?;
    let Some(rec) = state.history.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no history is recorded",
        ));
    };
    let recorded = {
        let h = rec.file.read().unwrap_or_else(|e| e.into_inner());
        rule_for(h.rules(), &topic).map(|r| r.value.clone())
    };
    let Some(kept) = recorded else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{:?} is not recorded ([[history]] names the topics that are)",
                topic.as_str()
            ),
        ));
    };
    state.may_read(&user, &topic_filter(&topic)).await?;
    let mut q = Params::of(&query, wall_now())?;
    // The number is where the rule says, unless the query says otherwise
    // (`field=` alone: the whole payload).
    let field = match q.field.take() {
        Some(f) if f.is_empty() => None,
        Some(f) => Some(f),
        None => kept,
    };
    q.field = field;
    if let Some(step) = q.step {
        if (q.to.saturating_sub(q.from)) / step > MAX_BUCKETS {
            return Err(ApiError::bad_request(format!(
                "more than {MAX_BUCKETS} buckets: a larger step, or a shorter range"
            )));
        }
        let (t, field, from, to) = (topic.clone(), q.field.clone(), q.from, q.to);
        let buckets = rec
            .read(move |h| h.buckets(&t, from, to, step, field.as_deref()))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let out: Vec<Value> = buckets
            .iter()
            .map(|b| {
                let mut m = Map::new();
                m.insert("start".into(), b.start.into());
                for a in &q.agg {
                    let _ = match a.as_str() {
                        "count" => m.insert("count".into(), b.count.into()),
                        "sum" => m.insert("sum".into(), b.sum.into()),
                        "avg" => m.insert("avg".into(), b.avg().into()),
                        "min" => {
                            m.insert("min_at".into(), b.min_at.into());
                            m.insert("min".into(), b.min.into())
                        }
                        _ => {
                            m.insert("max_at".into(), b.max_at.into());
                            m.insert("max".into(), b.max.into())
                        }
                    };
                }
                Value::Object(m)
            })
            .collect();
        return Ok(Json(json!({
            "topic": topic.as_str(), "from": q.from, "to": q.to, "step": step, "buckets": out,
        })));
    }
    let (t, from, to, limit) = (topic.clone(), q.from, q.to, q.limit + 1);
    let mut records = rec
        .read(move |h| h.range(&t, from, to, limit))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let truncated = records.len() > q.limit;
    records.truncate(q.limit);
    let messages: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(JsonMessage::new(&r.message)).unwrap_or_default();
            if let Value::Object(m) = &mut v {
                m.insert("seq".into(), r.seq.into());
                m.insert("time".into(), r.time.into());
            }
            v
        })
        .collect();
    Ok(Json(json!({
        "topic": topic.as_str(), "from": q.from, "to": q.to,
        "messages": messages, "truncated": truncated,
    })))
}

fn topic_filter(t: &TopicName) -> TopicFilter {
    TopicFilter::new(t.as_str()).expect("a topic name is a filter")
}

/// The query, checked.
struct Params {
    from: u64,
    to: u64,
    limit: usize,
    step: Option<u64>,
    agg: Vec<String>,
    field: Option<String>,
}

impl Params {
    fn of(query: &[(String, String)], now: u64) -> Result<Params, ApiError> {
        let mut p = Params {
            from: now.saturating_sub(24 * 3_600_000),
            to: now,
            limit: MAX_MESSAGES,
            step: None,
            agg: ["count", "min", "max", "avg"].map(String::from).to_vec(),
            field: None,
        };
        for (k, v) in query {
            let bad = |why: String| ApiError::bad_request(format!("{k}: {why}"));
            match k.as_str() {
                "from" => p.from = time_of(v, now).map_err(bad)?,
                "to" => p.to = time_of(v, now).map_err(bad)?,
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| bad(format!("{v:?} is not a count")))?;
                    p.limit = n.clamp(1, MAX_MESSAGES);
                }
                "step" => {
                    let d = duration_of(v).map_err(bad)?;
                    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                    if ms < 1000 {
                        return Err(bad("a step of at least 1s".into()));
                    }
                    p.step = Some(ms);
                }
                "agg" => {
                    let list: Vec<String> = v.split(',').map(|a| a.trim().to_owned()).collect();
                    for a in &list {
                        if !["min", "max", "avg", "count", "sum"].contains(&a.as_str()) {
                            return Err(bad(format!("{a:?}: min, max, avg, count or sum")));
                        }
                    }
                    p.agg = list;
                }
                "field" => {
                    if !v.is_empty() && !v.starts_with('/') {
                        return Err(bad("a JSON pointer, such as /temp".into()));
                    }
                    p.field = Some(v.clone());
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {k:?}"
                    )))
                }
            }
        }
        if p.from > p.to {
            return Err(ApiError::bad_request("from is after to"));
        }
        Ok(p)
    }
}

/// The caller may read `filter` (the ACL's verdict on subscribing to it).
pub(crate) async fn check_read(
    state: &State,
    user: Option<String>,
    filter: &TopicFilter,
) -> Result<(), ApiError> {
    let client = ClientInfo {
        client_id: String::new(),
        username: user,
    };
    state
        .broker
        .retained(client, filter.clone(), 0)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map(|_| ())
        .map_err(|code| ApiError::refused(code, "not allowed to read this"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_steps_are_read_as_people_write_them() {
        let now = 1_800_000_000_000;
        assert_eq!(time_of("1700000000000", now), Ok(1_700_000_000_000));
        assert_eq!(time_of("2027-01-15T08:00:00Z", now), Ok(1_800_000_000_000));
        assert_eq!(time_of("24h", now), Ok(now - 86_400_000));
        assert_eq!(time_of("-30m", now), Ok(now - 1_800_000));
        assert!(time_of("yesterday", now).is_err());
        assert_eq!(duration_of("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration_of("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(duration_of("often").is_err());
        let q = |pairs: &[(&str, &str)]| {
            let v: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Params::of(&v, now)
        };
        assert!(q(&[("step", "500ms")]).is_err());
        assert!(q(&[("agg", "median")]).is_err());
        assert!(q(&[("field", "temp")]).is_err());
        assert!(q(&[("from", "1h"), ("to", "2h")]).is_err());
        assert!(q(&[("colour", "red")]).is_err());
        let p = q(&[("step", "5m"), ("agg", "min,max")]).expect("valid");
        assert_eq!((p.step, p.agg.len()), (Some(300_000), 2));
    }
}
