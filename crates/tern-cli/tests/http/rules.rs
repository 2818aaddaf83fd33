//! The rules engine with real peers, running the examples of
//! `examples/home/`: inside `tern broker` (mosquitto_pub as the doorbell,
//! mosquitto_sub as the lights, a Python receiver as the vendor's URL, a
//! will as presence) and standalone against Debian's Mosquitto; the
//! temperature example through `tern rules test` on its recording.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tern_peers::{require, Logged, Mosquitto};

use crate::common::*;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/home")
        .join(name)
}

fn broker_with_rules(name: &str, rules: &str, extra: &str) -> Broker {
    let mut b = Broker::start(
        name,
        &format!("[rules]\nfile = \"{}\"\n{extra}", example(rules).display()),
    );
    b._process.wait_log("rules subscribed");
    b
}

/// `mosquitto_pub -l` on `topic`: each line said is a message, sent at
/// once on one connection.
fn doorbell(port: u16, topic: &str) -> Lines {
    require("mosquitto_pub", "Debian's mosquitto-clients");
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-l",
    ]);
    Lines::start(c)
}

/// Presses with these gaps: the input of the pattern, so the test paces
/// it (the rules engine's own timing is tested in virtual time).
fn ring(bell: &mut Lines, gaps_ms: &[u64]) {
    bell.say("1");
    for g in gaps_ms {
        std::thread::sleep(Duration::from_millis(*g));
        bell.say("1");
    }
}

const SOS: [u64; 7] = [300, 300, 300, 1200, 300, 300, 300];

#[test]
fn the_doorbell_pattern_flashes_the_lights_inside_the_broker() {
    let b = broker_with_rules("rules-doorbell", "doorbell.toml", "");
    let lights = mosquitto_sub(&b, "home/lights/#", &[]);
    let mut bell = doorbell(b.mqtt, "home/doorbell/pressed");
    ring(&mut bell, &SOS);
    for _ in 0..3 {
        lights.wait("home/lights/living/set red");
        lights.wait("home/lights/living/set off");
    }
    // The rule's record, over HTTP.
    let (status, body) = curl(&[&b.url("/api/v1/rules")]);
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["rules"][0]["name"], "doorbell-sos");
    assert_eq!(v["rules"][0]["stats"]["fires"], 1);
}

#[test]
fn a_near_miss_does_not_flash_and_only_admins_turn_rules_off() {
    let pw = passwords("rules-miss-pw", &[("root", "hunter2")]);
    let b = broker_with_rules(
        "rules-miss",
        "doorbell.toml",
        &format!(
            "[auth]\npassword_file = \"{}\"\n[http]\nadmins = [\"root\"]\n",
            pw.display()
        ),
    );
    let lights = mosquitto_sub(&b, "home/lights/#", &[]);
    let mut bell = doorbell(b.mqtt, "home/doorbell/pressed");
    // The pattern and an extra press (no match), then the pattern again
    // from that press: it flashes once, for the second.
    let mut gaps = SOS.to_vec();
    gaps.push(300);
    gaps.extend(SOS);
    ring(&mut bell, &gaps);
    for _ in 0..3 {
        lights.wait("home/lights/living/set red");
        lights.wait("home/lights/living/set off");
    }
    let (_, body) = curl(&[&b.url("/api/v1/rules")]);
    assert_eq!(json(&body)["rules"][0]["stats"]["fires"], 1, "{body}");
    // Anonymous users may look, not change.
    let off = [
        "-X",
        "PATCH",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"enabled": false}"#,
    ];
    let url = b.url("/api/v1/rules/doorbell-sos");
    let (status, _) = curl(&[&off[..], &[url.as_str()]].concat());
    assert!(matches!(status, 401 | 403), "{status}");
    let (status, body) = curl(&[&off[..], &["-u", "root:hunter2", url.as_str()]].concat());
    assert_eq!(status, 200, "{body}");
    let (_, body) = curl(&[&b.url("/api/v1/rules")]);
    assert_eq!(json(&body)["rules"][0]["enabled"], false, "{body}");
    let (status, _) = curl(&[
        "-X",
        "POST",
        "-u",
        "root:hunter2",
        &b.url("/api/v1/rules/reload"),
    ]);
    assert_eq!(status, 200);
}

#[test]
fn motion_at_the_feeder_calls_the_vendors_url_through_a_webhook() {
    require("python3", "Debian's python3");
    let port = tern_peers::free_port();
    let vendor = receiver(port, 0, 0);
    let b = broker_with_rules(
        "rules-feeder",
        "birdfeeder.toml",
        &format!("[[webhook]]\nname = \"notify\"\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"s3cret\"\n"),
    );
    mosquitto_pub(&b, &["-t", "garden/feeder/motion", "-m", "on", "-q", "1"]);
    let got = vendor.wait("got");
    assert!(
        got.starts_with("got $tern/call/notify A bird at the feeder (on)"),
        "{got}"
    );
    assert!(got.ends_with("True"), "signed: {got}");
    // Throttled: a second motion within the minute calls nobody; the
    // next message the receiver sees is the one after the throttle...
    // which this test does not wait for. Instead, the rule's record.
    mosquitto_pub(&b, &["-t", "garden/feeder/motion", "-m", "on", "-q", "1"]);
    mosquitto_pub(&b, &["-t", "garden/feeder/motion", "-m", "off", "-q", "1"]);
    let (_, body) = curl(&[&b.url("/api/v1/rules")]);
    let v = json(&body);
    assert_eq!(v["rules"][0]["stats"]["fires"], 1, "{body}");
}

#[test]
fn presence_from_a_will_and_from_the_brokers_events() {
    let b = broker_with_rules("rules-presence", "presence.toml", "");
    let alerts = mosquitto_sub(&b, "home/alerts", &[]);
    // A device with a will, which vanishes (killed, so the will goes).
    let device = mosquitto_sub(
        &b,
        "home/device/cmd",
        &[
            "-i",
            "sensor-kitchen",
            "--will-topic",
            "home/presence/sensor-kitchen",
            "--will-payload",
            "offline",
        ],
    );
    drop(device);
    let mut seen = vec![
        alerts.wait_start("home/alerts"),
        alerts.wait_start("home/alerts"),
    ];
    seen.sort();
    assert_eq!(
        seen,
        [
            "home/alerts sensor-kitchen disconnected",
            "home/alerts sensor-kitchen went offline",
        ]
    );
}

#[test]
fn the_temperature_example_on_its_recording() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["rules", "test"])
        .arg(example("temperature.toml"))
        .arg("--replay")
        .arg(example("temperature.jsonl"))
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "7 messages replayed; 4 things happened",
            "2026-12-06T12:12:00Z  +720.000s  too-hot  fired",
            "2026-12-06T12:12:00Z  +720.000s  too-hot  publish alarms/attic/too-hot \"attic: over 28 °C for 10 minutes (28.4 °C)\" (qos 1, retained)",
            "2026-12-06T12:30:00Z  +1800.000s  cooled-down  fired",
            "2026-12-06T12:30:00Z  +1800.000s  cooled-down  publish alarms/attic/too-hot \"\" (qos 1, retained)",
        ]
    );
}

#[test]
fn standalone_against_mosquitto() {
    let m = Mosquitto::start();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    let state = tern_peers::scratch("rules-standalone").join("state.json");
    cmd.args(["rules"])
        .arg(example("doorbell.toml"))
        .args(["-h", "127.0.0.1", "-p", &m.port.to_string(), "--state"])
        .arg(&state);
    let mut rules = Logged::start(cmd);
    rules.wait_log("rules subscribed");
    let lights = mosquitto_sub_at(m.port, "home/lights/#", &[]);
    let mut bell = doorbell(m.port, "home/doorbell/pressed");
    ring(&mut bell, &SOS);
    for _ in 0..3 {
        lights.wait("home/lights/living/set red");
        lights.wait("home/lights/living/set off");
    }
    // Its state is saved in the file (the rule fired once).
    drop(rules);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("saved")).expect("JSON");
    assert_eq!(
        saved["rules"]["doorbell-sos"]["stats"]["fires"], 1,
        "{saved}"
    );
}

/// A broker on `dir` (its store and its rules), on ports the OS picks.
fn start_on(dir: &std::path::Path) -> Broker {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.args(["broker", "-c"]).arg(dir.join("tern.toml"));
    let mut p = Logged::start(cmd);
    let http = tern_peers::port_in(&p.wait_log("HTTP listener"));
    let mqtt = tern_peers::port_in(&p.wait_log("tern broker listening"));
    // Logged once the saved state is back.
    p.wait_log("rules loaded");
    p.wait_log("rules subscribed");
    Broker {
        _process: p,
        mqtt,
        http,
        dir: dir.to_owned(),
    }
}

#[test]
fn a_for_wait_survives_a_restart_of_the_broker() {
    let dir = tern_peers::scratch("rules-restart");
    std::fs::write(
        dir.join("rules.toml"),
        "[[rule]]\nname = \"seen\"\ntopic = \"t\"\naction = [{ publish = \"ack\", payload = \"{{ payload }}\" }]\n\
         [[rule]]\nname = \"hot\"\ntopic = \"t\"\nabove = 25\nfor = \"6s\"\naction = [{ publish = \"alarm\", payload = \"{{ value }}\" }]\n",
    )
    .expect("written");
    std::fs::write(
        dir.join("tern.toml"),
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:0\"\n\
             [persistence]\ndir = \"{0}/data\"\n[rules]\nfile = \"{0}/rules.toml\"\n",
            dir.display()
        ),
    )
    .expect("written");
    let mut b = start_on(&dir);
    let acks = mosquitto_sub(&b, "ack", &[]);
    mosquitto_pub(&b, &["-t", "t", "-m", "30", "-q", "1"]);
    // The engine has the message: the wait is under way.
    acks.wait("ack 30");
    b._process.signal("TERM");
    b._process.wait_log("stopped");
    drop((acks, b));
    let b = start_on(&dir);
    let alarms = mosquitto_sub(&b, "alarm", &[]);
    // What a rule waits for is for admins: a session of this machine's
    // (a broker without users trusts it).
    let (jar, _) = sign_in_anonymously(&b, "rules-restart-jar");
    let jar = jar.to_str().expect("utf-8");
    let (_, body) = curl(&["-b", jar, &b.url("/api/v1/rules")]);
    let v = json(&body);
    let pending = v["rules"][1]["pending"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(pending.starts_with("for: t held since"), "{body}");
    alarms.wait("alarm 30");
}

#[test]
fn rules_act_as_their_user_under_the_acl_and_a_bad_reload_keeps_them() {
    let dir = tern_peers::scratch("rules-acl-file");
    let file = dir.join("rules.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"both\"\ntopic = \"t\"\naction = [{ publish = \"forbidden/x\", qos = 1 }, { publish = \"allowed/x\", qos = 1 }]\n",
    )
    .expect("written");
    let mut b = Broker::start(
        "rules-acl",
        &format!(
            // First match wins: the rules' user's own rule first.
            "[rules]\nfile = \"{}\"\nuser = \"rules\"\n\
             [[acl]]\nuser = \"rules\"\ntopic = \"allowed/#\"\naccess = \"write\"\n\
             [[acl]]\ntopic = \"t\"\naccess = \"readwrite\"\n\
             [[acl]]\ntopic = \"allowed/#\"\naccess = \"read\"\n\
             [[acl]]\ntopic = \"forbidden/#\"\naccess = \"read\"\n",
            file.display()
        ),
    );
    b._process.wait_log("rules subscribed");
    let seen = mosquitto_sub(&b, "allowed/#", &["-t", "forbidden/#"]);
    mosquitto_pub(&b, &["-t", "t", "-m", "go", "-q", "1"]);
    // In order on one connection: a forbidden message allowed through
    // would come first.
    let first = seen.wait_for(
        |l| l.starts_with("allowed/") || l.starts_with("forbidden/"),
        "a message",
    );
    assert_eq!(first, "allowed/x (null)");
    // A file with an error: the reload fails with its line, the old rules
    // go on.
    std::fs::write(&file, "[[rule]]\nname = \"broken\"\ntopic = \"a/#/b\"\n").expect("written");
    b._process.signal("HUP");
    let failed = b._process.wait_log("rules reload failed");
    assert!(failed.contains("rules.toml:3"), "{failed}");
    mosquitto_pub(&b, &["-t", "t", "-m", "again", "-q", "1"]);
    let next = seen.wait_for(
        |l| l.starts_with("allowed/") || l.starts_with("forbidden/"),
        "a message",
    );
    assert_eq!(next, "allowed/x (null)");
}
