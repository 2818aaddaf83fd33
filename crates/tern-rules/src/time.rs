//! Time as the engine sees it: wall-clock milliseconds given by the caller
//! (the engine reads no clock), durations written as `"10m"` or
//! `"1h 30m"`, ranges as `"100ms..600ms"`, and daily schedules at a wall
//! time in a time zone.

use std::time::Duration;

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde::{Deserialize, Deserializer};

/// Milliseconds since the Unix epoch: the engine's only notion of time,
/// an input like any other. Pending timers are kept in it, so they mean
/// the same after a restart.
pub type Millis = u64;

/// A duration from the rules file (`"500ms"`, `"10m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// In milliseconds.
    pub fn ms(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

/// A duration, at most 400 days (longer is surely a typo).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{s:?} is not a duration (say \"500ms\", \"10m\", \"1h 30m\"): {e}")
    })?;
    if d > Duration::from_secs(400 * 86_400) {
        return Err(format!("{s:?} is longer than 400 days"));
    }
    Ok(d)
}

/// A range of durations, `"100ms..600ms"` (both ends included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Shortest.
    pub min: u64,
    /// Longest.
    pub max: u64,
}

impl Span {
    /// Whether `ms` lies in the range.
    pub fn contains(&self, ms: u64) -> bool {
        (self.min..=self.max).contains(&ms)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let (a, b) = s
            .split_once("..")
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?}: say \"100ms..600ms\"")))?;
        let ms = |x: &str| parse_duration(x).map(|d| Dur(d).ms());
        let (min, max) = (
            ms(a).map_err(serde::de::Error::custom)?,
            ms(b).map_err(serde::de::Error::custom)?,
        );
        if min > max {
            return Err(serde::de::Error::custom(format!(
                "{s:?}: the first end is past the second"
            )));
        }
        Ok(Span { min, max })
    }
}

/// A time zone from the rules file (an IANA name, or `"UTC"`).
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}"))
}

/// A daily wall time, `"07:30"` or `"22:15:30"`, on some days of the week.
#[derive(Debug, Clone, PartialEq)]
pub struct Daily {
    at: Time,
    /// Empty: every day.
    days: Vec<Weekday>,
}

impl Daily {
    /// `at` (`HH:MM` or `HH:MM:SS`) on `days` (`"mon"`, `"tuesday"`, ...;
    /// none: every day).
    pub fn new(at: &str, days: &[String]) -> Result<Daily, String> {
        let time: Time = at
            .trim()
            .parse()
            .map_err(|e| format!("{at:?} is not a time of day (say \"07:30\"): {e}"))?;
        let days = days
            .iter()
            .map(|d| weekday(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Daily { at: time, days })
    }

    /// The first time after `now` that this schedule comes round, in `tz`
    /// (a wall time that a DST change skips happens after the gap, as
    /// jiff's compatible disambiguation does).
    pub fn next_after(&self, now: Millis, tz: &TimeZone) -> Option<Millis> {
        let now_ts = Timestamp::from_millisecond(i64::try_from(now).ok()?).ok()?;
        let today = Zoned::new(now_ts, tz.clone()).date();
        // Eight days cover every weekday once after today.
        for offset in 0..=8 {
            let date = today.checked_add(jiff::Span::new().days(offset)).ok()?;
            if !self.days.is_empty() && !self.days.contains(&date.weekday()) {
                continue;
            }
            let at = date.to_datetime(self.at).to_zoned(tz.clone()).ok()?;
            let ms = u64::try_from(at.timestamp().as_millisecond()).ok()?;
            if ms > now {
                return Some(ms);
            }
        }
        None
    }
}

fn weekday(d: &str) -> Result<Weekday, String> {
    let l = d.trim().to_ascii_lowercase();
    let all = [
        ("mon", Weekday::Monday),
        ("tue", Weekday::Tuesday),
        ("wed", Weekday::Wednesday),
        ("thu", Weekday::Thursday),
        ("fri", Weekday::Friday),
        ("sat", Weekday::Saturday),
        ("sun", Weekday::Sunday),
    ];
    all.iter()
        .find(|(short, _)| l.starts_with(short))
        .map(|(_, w)| *w)
        .ok_or_else(|| format!("{d:?} is not a day of the week (say \"mon\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> Millis {
        let ts: Timestamp = s.parse().expect("a timestamp");
        ts.as_millisecond() as u64
    }

    #[test]
    fn durations_and_spans_read_as_people_write_them() {
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("500d").is_err());
        let s: Span = serde_json::from_str("\"100ms..600ms\"").expect("a span");
        assert_eq!(s, Span { min: 100, max: 600 });
        assert!(serde_json::from_str::<Span>("\"2s..1s\"").is_err());
    }

    #[test]
    fn a_daily_schedule_comes_round_in_its_time_zone() {
        let d = Daily::new("07:30", &[]).expect("valid");
        let tz = time_zone("Europe/Berlin").expect("tzdata installed");
        // 2026-12-06 06:00 UTC is 07:00 in Berlin (UTC+1 in winter).
        let next = d.next_after(ms("2026-12-06T06:00:00Z"), &tz);
        assert_eq!(next, Some(ms("2026-12-06T06:30:00Z")));
        // Past it: tomorrow.
        let next = d.next_after(ms("2026-12-06T06:30:00Z"), &tz);
        assert_eq!(next, Some(ms("2026-12-07T06:30:00Z")));
        // In summer Berlin is UTC+2.
        let next = d.next_after(ms("2026-07-01T00:00:00Z"), &tz);
        assert_eq!(next, Some(ms("2026-07-01T05:30:00Z")));
    }

    #[test]
    fn a_schedule_on_some_days_skips_the_others() {
        // 2026-12-06 is a Sunday.
        let d = Daily::new("22:00", &["mon".into(), "Wednesday".into()]).expect("valid");
        let next = d.next_after(ms("2026-12-06T12:00:00Z"), &TimeZone::UTC);
        assert_eq!(next, Some(ms("2026-12-07T22:00:00Z")));
        assert!(Daily::new("25:00", &[]).is_err());
        assert!(Daily::new("07:30", &["someday".into()]).is_err());
    }
}
