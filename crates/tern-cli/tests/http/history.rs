//! History and streams that resume.

use tern_peers::require;

use super::common::*;

#[test]
fn history_answers_messages_and_buckets_with_when_the_extremes_were() {
    let b = recording_broker("history");
    // A recorded stream (from an hour ago, whenever it connects): once it
    // has sent the seventh message, all seven are in the history file.
    let s = stream(
        &b.url("/api/v1/subscribe?filter=sensors/%23&filter=json/%23&since=1h"),
        &[],
    );
    for v in [21, 25, 19, 23, 22] {
        mosquitto_pub(
            &b,
            &["-t", "sensors/hall/temp", "-m", &v.to_string(), "-q", "1"],
        );
    }
    mosquitto_pub(
        &b,
        &["-t", "json/x", "-m", r#"{"temp": 5, "hum": 40}"#, "-q", "1"],
    );
    mosquitto_pub(
        &b,
        &["-t", "json/x", "-m", r#"{"temp": 7, "hum": 30}"#, "-q", "1"],
    );
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(s.wait("id:"));
    }
    assert_eq!(ids.last().map(String::as_str), Some("id: 7"), "{ids:?}");
    // The messages, oldest first, with their sequence numbers and times.
    let (status, body) = curl(&[&b.url("/api/v1/history/sensors/hall/temp?from=1h")]);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let payloads: Vec<&str> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    assert_eq!(payloads, ["21", "25", "19", "23", "22"]);
    assert_eq!(v["truncated"], false);
    let (_, body) = curl(&[&b.url("/api/v1/history/sensors/hall/temp?limit=2")]);
    assert_eq!(json(&body)["truncated"], true);
    // Buckets: over an hour, the whole lot; min and max with their times.
    let (status, body) = curl(&[&b.url("/api/v1/history/sensors/hall/temp?step=1h")]);
    assert_eq!(status, 200, "{body}");
    let bucket = json(&body)["buckets"][0].clone();
    assert_eq!(
        (
            bucket["count"].as_u64(),
            bucket["min"].as_f64(),
            bucket["max"].as_f64()
        ),
        (Some(5), Some(19.0), Some(25.0)),
        "{bucket}"
    );
    assert_eq!(bucket["avg"].as_f64(), Some(22.0));
    let times: Vec<u64> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["time"].as_u64())
        .collect();
    assert_eq!(bucket["max_at"].as_u64(), Some(times[1]), "{bucket}");
    assert_eq!(bucket["min_at"].as_u64(), Some(times[2]), "{bucket}");
    // By minute (from the buckets kept on write): the counts add up.
    let (_, body) = curl(&[&b.url("/api/v1/history/sensors/hall/temp?step=1m&agg=count")]);
    let counted: u64 = json(&body)["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .filter_map(|b| b["count"].as_u64())
        .sum();
    assert_eq!(counted, 5, "{body}");
    // A JSON field: the rule's by default, another when asked.
    let (_, body) = curl(&[&b.url("/api/v1/history/json/x?step=1h&agg=max")]);
    assert_eq!(
        json(&body)["buckets"][0]["max"].as_f64(),
        Some(7.0),
        "{body}"
    );
    let (_, body) = curl(&[&b.url("/api/v1/history/json/x?step=1h&agg=max&field=/hum")]);
    assert_eq!(
        json(&body)["buckets"][0]["max"].as_f64(),
        Some(40.0),
        "{body}"
    );
    // Not recorded, not readable, not a topic, bad values.
    assert_eq!(curl(&[&b.url("/api/v1/history/other/x")]).0, 404);
    let (status, body) = curl(&[&b.url("/api/v1/history/secret/x")]);
    assert_eq!(
        (status, json(&body)["reason_code"].clone()),
        (403, 135.into()),
        "{body}"
    );
    assert_eq!(curl(&[&b.url("/api/v1/history/sensors/%23")]).0, 400);
    assert_eq!(curl(&[&b.url("/api/v1/history/sensors/a?step=1ms")]).0, 400);
    assert_eq!(
        curl(&[&b.url("/api/v1/history/sensors/a?from=yesterday")]).0,
        400
    );
    assert_eq!(
        curl(&[&b.url("/api/v1/history/sensors/a?step=1s&from=30d")]).0,
        400
    );
    // since= on topics that are not recorded is refused.
    assert_eq!(
        curl(&[&b.url("/api/v1/subscribe?filter=other/%23&since=1h")]).0,
        400
    );
}

#[test]
fn an_sse_reader_that_disconnects_resumes_with_no_gap_and_no_duplicate() {
    require("python3", "Python 3");
    let b = recording_broker("resume");
    // A reader (Python requests) that reads three events from history and
    // live, drops the connection, and comes back with Last-Event-ID while
    // messages went on in between; then `since=` replays them all.
    let script = format!(
        r#"
import json, subprocess, sys
import requests

URL = "http://127.0.0.1:{http}/api/v1/subscribe?filter=sensors/%23"

def pub(v):
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", "{mqtt}", "-t", "sensors/x",
                    "-m", str(v), "-q", "1"], check=True)

def events(resp):
    ev = {{}}
    for line in resp.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in ev:
                yield ev
            ev = {{}}
        elif not line.startswith(":"):
            k, _, v = line.partition(":")
            ev[k] = v.lstrip(" ")

for v in range(1, 4):
    pub(v)
seen = []
with requests.get(URL + "&since=1h", stream=True, timeout=15) as r:
    for ev in events(r):
        seen.append((ev.get("id"), json.loads(ev["data"])["payload"]))
        if len(seen) == 2:
            pub(4)
        if len(seen) == 3:
            break
last = seen[-1][0]
for v in range(5, 8):
    pub(v)
with requests.get(URL, stream=True, timeout=15, headers={{"Last-Event-ID": last}}) as r:
    for ev in events(r):
        seen.append((ev.get("id"), json.loads(ev["data"])["payload"]))
        if seen[-1][1] == "7":
            break
print(json.dumps(seen))
"#,
        http = b.http,
        mqtt = b.mqtt
    );
    let out = python(&script);
    let seen: Vec<(String, String)> = serde_json::from_str(&out).expect("the reader's JSON");
    let payloads: Vec<&str> = seen.iter().map(|(_, p)| p.as_str()).collect();
    assert_eq!(payloads, ["1", "2", "3", "4", "5", "6", "7"], "{seen:?}");
    let ids: Vec<u64> = seen
        .iter()
        .map(|(i, _)| i.parse().expect("an id"))
        .collect();
    assert_eq!(ids, (1..=7).collect::<Vec<u64>>());
}
