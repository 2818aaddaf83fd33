//! Publish, retained values, streams, users and the ACL, bad input,
//! HTTPS, management.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;
use tern_peers::require;

use super::common::*;

#[test]
fn what_curl_posts_reaches_mosquitto_sub() {
    let b = Broker::start("post", "");
    let sub = mosquitto_sub(&b, "home/#", &[]);
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-d",
        "ding",
        &b.url("/api/v1/publish/home/door"),
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["reason_code"], 0);
    assert_eq!(sub.wait_start("home/door"), "home/door ding");
    // QoS 0: accepted as sent.
    let (status, _) = curl(&["-d", "dong", &b.url("/api/v1/publish/home/door?qos=0")]);
    assert_eq!(status, 202);
    assert_eq!(sub.wait_start("home/door"), "home/door dong");
    // Retained, then read back; an empty retained body clears it.
    let url = b.url("/api/v1/publish/home/temp?retain=true&qos=2");
    assert_eq!(curl(&["-d", "21.5", &url]).0, 200);
    let (status, body) = curl(&[&b.url("/api/v1/retained/home/%23")]);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["messages"][0]["topic"], "home/temp");
    assert_eq!(v["messages"][0]["payload"], "21.5");
    assert_eq!(v["messages"][0]["retain"], true);
    assert_eq!(curl(&["-X", "POST", &url]).0, 200);
    let (_, body) = curl(&[&b.url("/api/v1/retained/home/temp")]);
    assert_eq!(json(&body)["messages"], Value::Array(Vec::new()));
}

#[test]
fn the_stream_sees_what_mosquitto_pub_publishes() {
    let b = Broker::start("sse", "");
    mosquitto_pub(&b, &["-t", "home/ready", "-m", "yes", "-r"]);
    let s = stream(
        &b.url("/api/v1/subscribe?filter=home/%23&filter=garden/%2B"),
        &[],
    );
    // The retained value comes first: the subscription is in place.
    assert!(s.wait("data:").contains(r#""payload":"yes""#));
    mosquitto_pub(&b, &["-t", "garden/rain", "-m", "11mm", "-q", "1"]);
    let data = s.wait("data:");
    let v = json(data.trim_start_matches("data:").trim());
    assert_eq!(v["topic"], "garden/rain");
    assert_eq!(v["payload"], "11mm");
    assert_eq!(v["retain"], false);
    // Binary payloads come as base64.
    let raw = b.dir.join("raw.bin");
    std::fs::write(&raw, [0xff, 0xfe]).expect("written");
    mosquitto_pub(&b, &["-t", "home/raw", "-f", raw.to_str().expect("utf-8")]);
    let v = json(s.wait("data:").trim_start_matches("data:").trim());
    assert_eq!(
        (v["topic"].as_str(), v["payload_base64"].as_str()),
        (Some("home/raw"), Some("//4="))
    );
}

#[test]
fn bad_input_gets_a_json_error_and_a_status() {
    let b = Broker::start(
        "bad",
        "[limits]\nmax_packet_size = 1024\n[http]\nmax_streams = 1\n",
    );
    let post = |path: &str, data: &str| curl(&["-X", "POST", "--data-binary", data, &b.url(path)]);
    let cases = [
        (post("/api/v1/publish/a/%2B/b", "x"), 400, Some(144)),
        (post("/api/v1/publish/a/%23", "x"), 400, Some(144)),
        (post("/api/v1/publish/a?qos=5", "x"), 400, None),
        (post("/api/v1/publish/a?retain=perhaps", "x"), 400, None),
        (post("/api/v1/publish/a?colour=red", "x"), 400, None),
        (post("/api/v1/publish/a", &"x".repeat(2000)), 413, Some(149)),
        (post("/api/v1/publish/a", &"x".repeat(1020)), 413, Some(149)),
        (curl(&[&b.url("/api/v1/nothing")]), 404, None),
        (
            curl(&["-X", "DELETE", &b.url("/api/v1/publish/a")]),
            405,
            None,
        ),
        (curl(&[&b.url("/api/v1/subscribe")]), 400, None),
        (
            curl(&[&b.url("/api/v1/subscribe?filter=a/%23/b")]),
            400,
            Some(143),
        ),
        (
            curl(&[&b.url("/api/v1/subscribe?filter=a&bogus=1")]),
            400,
            None,
        ),
        (curl(&[&b.url("/api/v1/retained/a?limit=many")]), 400, None),
        (curl(&[&b.url("/api/v1/retained/a/%23/b")]), 400, Some(143)),
    ];
    for (i, ((status, body), want, reason)) in cases.into_iter().enumerate() {
        assert_eq!(status, want, "case {i}: {body}");
        let v = json(&body);
        assert!(v["error"].is_string(), "case {i}: {body}");
        if let Some(r) = reason {
            assert_eq!(v["reason_code"], r, "case {i}: {body}");
        }
    }
    // A body just within the limit goes through.
    assert_eq!(post("/api/v1/publish/a", &"x".repeat(900)).0, 200);
    // One stream at most: the second is refused while the first is open.
    mosquitto_pub(&b, &["-t", "a", "-m", "here", "-r"]);
    let first = stream(&b.url("/api/v1/subscribe?filter=a"), &[]);
    first.wait("data:");
    let (status, body) = curl(&[&b.url("/api/v1/subscribe?filter=a")]);
    assert_eq!(status, 429, "{body}");
    assert!(json(&body)["error"]
        .as_str()
        .unwrap_or("")
        .contains("too many"));
}

#[test]
fn users_tokens_and_the_acl_apply_over_http_as_over_mqtt() {
    let pw = passwords(
        "http-users-pw",
        &[("alice", "wonderland"), ("bob", "builder")],
    );
    let b = Broker::start(
        "users",
        &format!(
            "[auth]\nallow_anonymous = false\npassword_file = \"{}\"\n\
             [[acl]]\nuser = \"alice\"\ntopic = \"home/#\"\naccess = \"readwrite\"\n\
             [[acl]]\nuser = \"bob\"\ntopic = \"home/#\"\naccess = \"read\"\n\
             [http]\n[[http.token]]\ntoken = \"t0k3n\"\nuser = \"alice\"\n",
            pw.display()
        ),
    );
    let url = b.url("/api/v1/publish/home/x?retain=true");
    // Nobody, and a wrong password: 401, asking for Basic.
    let (status, body) = curl(&["-d", "1", &url]);
    assert_eq!(status, 401, "{body}");
    let out = Command::new("curl")
        .args(["-s", "-i", "-d", "1", &url])
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&out.stdout).contains("www-authenticate: Basic"));
    assert_eq!(curl(&["-u", "alice:rabbit", "-d", "1", &url]).0, 401);
    // Alice may write home/#, Bob may only read it; nobody may write
    // elsewhere.
    let sub = mosquitto_sub(&b, "home/#", &["-u", "bob", "-P", "builder"]);
    let (status, body) = curl(&["-u", "alice:wonderland", "-d", "from-alice", &url]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(sub.wait_start("home/x"), "home/x from-alice");
    let (status, body) = curl(&["-u", "bob:builder", "-d", "2", &url]);
    assert_eq!(
        (status, json(&body)["reason_code"].clone()),
        (403, 135.into()),
        "{body}"
    );
    let secret = b.url("/api/v1/publish/secret/x");
    assert_eq!(curl(&["-u", "alice:wonderland", "-d", "3", &secret]).0, 403);
    // A token acts as its user.
    let bearer = ["-H", "Authorization: Bearer t0k3n"];
    assert_eq!(curl(&[bearer[0], bearer[1], "-d", "4", &url]).0, 200);
    assert_eq!(sub.wait_start("home/x"), "home/x 4");
    assert_eq!(
        curl(&["-H", "Authorization: Bearer nope", "-d", "5", &url]).0,
        401
    );
    // Reading: Bob sees home/#, not secret/#, in retained values and
    // streams alike.
    let (status, body) = curl(&["-u", "bob:builder", &b.url("/api/v1/retained/home/%23")]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["messages"][0]["payload"], "4");
    let (status, _) = curl(&["-u", "bob:builder", &b.url("/api/v1/retained/secret/%23")]);
    assert_eq!(status, 403);
    let (status, body) = curl(&[
        "-u",
        "bob:builder",
        &b.url("/api/v1/subscribe?filter=secret/%23"),
    ]);
    assert_eq!(
        (status, json(&body)["reason_code"].clone()),
        (403, 135.into()),
        "{body}"
    );
    let s = stream(
        &b.url("/api/v1/subscribe?filter=home/%23"),
        &["-u", "bob:builder"],
    );
    assert!(s.wait("data:").contains("home/x"));
}

#[test]
fn python_requests_publishes_with_properties_that_paho_receives() {
    require("python3", "Python 3");
    let b = Broker::start("python", "");
    let script = format!(
        r#"
import json, sys, threading
import requests
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

got = threading.Event()
seen = {{}}

def on_connect(c, u, f, rc, p):
    c.subscribe("dev/#", qos=1)

def on_subscribe(c, u, mid, codes, p):
    r = requests.post(
        "http://127.0.0.1:{http}/api/v1/publish/dev/cmd?expiry=600&response_topic=dev/reply",
        data=b'{{"on": true}}',
        headers={{"Content-Type": "application/json",
                 "Mqtt-Correlation-Data": "req-1",
                 "Mqtt-User-Property": "room=hall"}})
    seen["status"] = r.status_code
    seen["answer"] = r.json()

def on_message(c, u, m):
    p = m.properties
    seen["topic"] = m.topic
    seen["payload"] = m.payload.decode()
    seen["content_type"] = getattr(p, "ContentType", None)
    seen["response_topic"] = getattr(p, "ResponseTopic", None)
    seen["correlation"] = getattr(p, "CorrelationData", b"").decode()
    seen["user"] = getattr(p, "UserProperty", [])
    seen["expiry"] = getattr(p, "MessageExpiryInterval", None)
    got.set()

c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", {mqtt})
c.loop_start()
ok = got.wait(15)
c.loop_stop()
print(json.dumps(seen))
sys.exit(0 if ok else 1)
"#,
        http = b.http,
        mqtt = b.mqtt
    );
    let out = python(&script);
    let v = json(out.trim());
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["topic"], "dev/cmd");
    assert_eq!(v["payload"], r#"{"on": true}"#);
    assert_eq!(v["content_type"], "application/json");
    assert_eq!(v["response_topic"], "dev/reply");
    assert_eq!(v["correlation"], "req-1");
    assert_eq!(v["user"], serde_json::json!([["room", "hall"]]));
    // What is left of the expiry interval when it was sent on.
    assert!(
        v["expiry"].as_u64().is_some_and(|e| e > 590 && e <= 600),
        "{v}"
    );
}

#[test]
fn a_slow_stream_reader_is_told_how_many_messages_it_skipped() {
    require("python3", "Python 3");
    // The broker itself never drops for this connection (its limit of
    // unwritten bytes is out of reach): every skip is the stream's, and
    // counted.
    let b = Broker::start(
        "slow",
        "[limits]\nmax_unwritten_bytes = 1073741824\n[http]\nstream_buffer = 10\n",
    );
    mosquitto_pub(&b, &["-t", "flood/ready", "-m", "go", "-r"]);
    // A reader with a small receive buffer that stops reading until told.
    let script = format!(
        r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", {http}))
s.sendall(b"GET /api/v1/subscribe?filter=flood/%23&qos=1 HTTP/1.1\r\nHost: x\r\n\r\n")
buf = b""
while b"flood/ready" not in buf:
    buf += s.recv(4096)
print("reading", flush=True)
sys.stdin.readline()
s.settimeout(15)
while b'"payload":"last"' not in buf:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
text = buf.decode("utf-8", "replace")
skipped = sum(int(l.split(":")[-1].strip(" }}")) for l in text.splitlines() if l.startswith('data: {{"skipped"'))
print("skipped", skipped, "messages", text.count("event: message"), "last", '"payload":"last"' in text, flush=True)
"#,
        http = b.http
    );
    let mut py = Lines::start({
        let mut c = Command::new("python3");
        c.args(["-c", &script]);
        c
    });
    py.wait("reading");
    // 20,000 messages of 1,000 bytes: far more than the socket buffers
    // and the stream's 10 hold.
    let mut flood = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.mqtt_port(),
            "-t",
            "flood/x",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    {
        let stdin = flood.stdin.as_mut().expect("piped");
        let line = format!("{}\n", "m".repeat(1000));
        for _ in 0..20_000 {
            stdin.write_all(line.as_bytes()).expect("written");
        }
    }
    drop(flood.stdin.take());
    assert!(flood.wait().expect("ends").success());
    // At QoS 1: never skipped.
    mosquitto_pub(&b, &["-t", "flood/x", "-m", "last", "-q", "1"]);
    py.say("go");
    let report = py.wait("skipped");
    let words: Vec<&str> = report.split_whitespace().collect();
    let skipped: u64 = words[1].parse().expect("a count");
    let got: u64 = words[3].parse().expect("a count");
    assert!(skipped > 0, "{report}");
    assert_eq!(
        words[5], "True",
        "the stream goes on after skipping: {report}"
    );
    assert!(skipped + got <= 20_002, "{report}");
}

#[test]
fn https_with_the_brokers_certificate() {
    let b = Broker::start_with("https", "", true);
    let ca = b.dir.join("ca.pem");
    let url = format!("https://localhost:{}/api/v1/publish/t", b.http);
    let (status, body) = curl(&["--cacert", ca.to_str().expect("utf-8"), "-d", "x", &url]);
    assert_eq!(status, 200, "{body}");
    // A dashboard session's cookie over HTTPS is never sent in the clear.
    let session = format!("https://localhost:{}/api/v1/session", b.http);
    let (status, head) = curl(&[
        "--cacert",
        ca.to_str().expect("utf-8"),
        "-s",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &session,
    ]);
    assert_eq!(status, 200, "{head}");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Secure"),
        "{head}"
    );
    // Plain HTTP to the HTTPS port is not served.
    let (status, _) = curl(&[&format!("http://127.0.0.1:{}/api/v1/retained/t", b.http)]);
    assert_ne!(status, 200);
}

#[test]
fn management_is_for_admins_and_sees_kicks_and_clears() {
    let pw = passwords("http-admin-pw", &[("root", "hunter2"), ("bob", "builder")]);
    let b = Broker::start(
        "admin",
        &format!(
            "[auth]\npassword_file = \"{}\"\n[http]\nadmins = [\"root\"]\n",
            pw.display()
        ),
    );
    let root = ["-u", "root:hunter2"];
    let get = |path: &str| curl(&[root[0], root[1], &b.url(path)]);
    let delete = |path: &str| curl(&[root[0], root[1], "-X", "DELETE", &b.url(path)]);
    // A persistent 5.0 session, connected and subscribed.
    let watcher = mosquitto_sub(
        &b,
        "home/#",
        &["-V", "5", "-i", "watcher", "-c", "-q", "1", "-x", "600"],
    );
    // Who may ask.
    assert_eq!(curl(&[&b.url("/api/v1/clients")]).0, 401);
    let (status, body) = curl(&["-u", "bob:builder", &b.url("/api/v1/clients")]);
    assert_eq!(
        (status, json(&body)["reason_code"].clone()),
        (403, 135.into()),
        "{body}"
    );
    // The session, as listed and alone.
    let (status, body) = get("/api/v1/clients");
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    let w = v["clients"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["client_id"] == "watcher"))
        .unwrap_or_else(|| panic!("watcher listed: {body}"))
        .clone();
    assert_eq!(w["connected"], true);
    assert_eq!(
        w["subscriptions"],
        serde_json::json!([{"filter": "home/#", "qos": 1}])
    );
    assert_eq!(
        json(&get("/api/v1/clients/watcher").1)["protocol"],
        w["protocol"]
    );
    assert_eq!(get("/api/v1/clients/nobody").0, 404);
    // A retained message cleared by an admin: subscribers get the empty
    // message, as for any clear.
    let url = b.url("/api/v1/publish/home/t?retain=true");
    assert_eq!(curl(&["-u", "bob:builder", "-d", "v", &url]).0, 200);
    assert_eq!(watcher.wait_start("home/t"), "home/t v");
    assert_eq!(
        curl(&[
            "-u",
            "bob:builder",
            "-X",
            "DELETE",
            &b.url("/api/v1/retained/home/t")
        ])
        .0,
        403
    );
    assert_eq!(delete("/api/v1/retained/home/t").0, 204);
    assert_eq!(watcher.wait_start("home/t"), "home/t (null)");
    assert_eq!(
        json(&get("/api/v1/retained/home/t").1)["messages"],
        Value::Array(vec![])
    );
    assert_eq!(delete("/api/v1/retained/home/t").0, 404);
    // Kicked: the client is gone, its session stays (offline, expiring);
    // then ended.
    assert_eq!(delete("/api/v1/clients/watcher").0, 204);
    watcher.wait_end();
    let w = json(&get("/api/v1/clients/watcher").1);
    assert_eq!(w["connected"], false, "{w}");
    assert!(w["expires_in_s"].as_u64().is_some_and(|s| s <= 600), "{w}");
    assert_eq!(delete("/api/v1/clients/watcher?session=true").0, 204);
    assert_eq!(get("/api/v1/clients/watcher").0, 404);
    // Counters, as JSON and for Prometheus (parsed by its own client).
    let (status, body) = get("/api/v1/stats");
    assert_eq!(status, 200, "{body}");
    assert!(
        json(&body)["messages_received"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{body}"
    );
    let (status, text) = get("/metrics");
    assert_eq!(status, 200, "{text}");
    let parse = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name, s.value)\n";
    let mut py = Command::new("python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    py.stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .expect("written");
    let out = py.wait_with_output().expect("ends");
    assert!(out.status.success(), "not Prometheus text:\n{text}");
    let samples = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in [
        "tern_clients_connected",
        "tern_messages_received_total",
        "tern_http_requests_total",
    ] {
        assert!(
            samples.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} in {samples}"
        );
    }
}
