//! MQTT between real clients through tern: mosquitto and paho, both
//! versions, retained, wills, sessions, shared subscriptions, $SYS, bad
//! packets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tern_codec::{Disconnect, Packet, ProtocolVersion, Publish, QosPid, ReasonCode, TopicName};

use super::common::*;

#[test]
fn qos_0_1_2_between_mosquitto_clients_on_both_versions() {
    let tern = Tern::start(&[]);
    for v in ["mqttv311", "mqttv5"] {
        for q in ["0", "1", "2"] {
            let topic = format!("qos/{v}/{q}");
            let sub = Sub::start(&tern, &["-V", v, "-q", q, "-t", &topic]);
            publish(&tern, &["-V", v, "-q", q, "-t", &topic, "-m", "hello"]);
            assert_eq!(sub.next(), format!("{topic} hello"));
        }
    }
    // Across versions, and across shards (client ids land on either).
    let sub = Sub::start(
        &tern,
        &["-V", "mqttv5", "-q", "2", "-t", "x/#", "-i", "s-a"],
    );
    publish(
        &tern,
        &[
            "-V", "mqttv311", "-q", "2", "-t", "x/y", "-m", "1", "-i", "p-b",
        ],
    );
    publish(
        &tern,
        &[
            "-V", "mqttv5", "-q", "1", "-t", "x/z", "-m", "2", "-i", "p-c",
        ],
    );
    assert_eq!(sub.next(), "x/y 1");
    assert_eq!(sub.next(), "x/z 2");
}

#[test]
fn retained_messages_are_set_and_cleared() {
    let tern = Tern::start(&[]);
    publish(&tern, &["-t", "r/1", "-m", "first", "-r", "-q", "1"]);
    publish(&tern, &["-t", "r/1", "-m", "second", "-r", "-q", "1"]);
    let sub = Sub::start(&tern, &["-t", "r/1"]);
    assert_eq!(sub.next(), "r/1 second");
    drop(sub);
    // An empty retained message clears it.
    publish(&tern, &["-t", "r/1", "-n", "-r", "-q", "1"]);
    publish(&tern, &["-t", "r/2", "-m", "other", "-r", "-q", "1"]);
    let sub = Sub::start(&tern, &["-t", "r/#"]);
    assert_eq!(sub.next(), "r/2 other");
    publish(&tern, &["-t", "r/live", "-m", "end"]);
    assert_eq!(sub.next(), "r/live end", "r/1 must not come back");
}

#[test]
fn a_killed_clients_will_is_published() {
    let tern = Tern::start(&[]);
    let watcher = Sub::start(&tern, &["-t", "presence/#"]);
    let dev = Sub::start(
        &tern,
        &[
            "-t",
            "ignored",
            "-i",
            "dev",
            "--will-topic",
            "presence/dev",
            "--will-payload",
            "offline",
        ],
    );
    dev.kill();
    assert_eq!(watcher.next(), "presence/dev offline");
}

#[test]
fn a_persistent_session_gets_its_queued_qos1_messages() {
    let tern = Tern::start(&[]);
    let args = ["-c", "-i", "keeper", "-q", "1", "-t", "q/#"];
    let sub = Sub::start(&tern, &args);
    sub.kill();
    for i in 1..=3 {
        publish(&tern, &["-q", "1", "-t", "q/x", "-m", &i.to_string()]);
    }
    let sub = Sub::start(&tern, &args);
    assert_eq!(sub.next(), "q/x 1");
    assert_eq!(sub.next(), "q/x 2");
    assert_eq!(sub.next(), "q/x 3");
}

#[test]
fn shared_subscriptions_split_the_messages() {
    let tern = Tern::start(&[]);
    let a = Sub::start(
        &tern,
        &["-V", "mqttv5", "-q", "1", "-t", "$share/g/jobs", "-i", "a"],
    );
    let b = Sub::start(
        &tern,
        &["-V", "mqttv5", "-q", "1", "-t", "$share/g/jobs", "-i", "b"],
    );
    for i in 0..10 {
        publish(
            &tern,
            &[
                "-V",
                "mqttv5",
                "-q",
                "1",
                "-t",
                "jobs",
                "-m",
                &i.to_string(),
            ],
        );
    }
    // Each member's messages arrive on its own pipe; take what each has
    // until all ten are in. (Round robin over connected members gives five
    // each, but which shard holds which member is the hash's business.)
    let mut got = Vec::new();
    let mut rounds = 0;
    while got.len() < 10 {
        rounds += 1;
        assert!(rounds < 500, "only {got:?} arrived");
        for s in [&a, &b] {
            while let Ok(l) = s.lines.recv_timeout(Duration::from_millis(20)) {
                if !is_debug(&l) {
                    got.push(l);
                }
            }
        }
    }
    got.sort();
    let want: Vec<_> = (0..10).map(|i| format!("jobs {i}")).collect();
    let mut want = want;
    want.sort();
    assert_eq!(got, want, "each message exactly once across the group");
}

#[test]
fn wildcards_match_as_the_spec_says() {
    let tern = Tern::start(&[]);
    let plus = Sub::start(&tern, &["-t", "home/+/temp"]);
    let hash = Sub::start(&tern, &["-t", "home/#"]);
    publish(&tern, &["-t", "home/kitchen/temp", "-m", "21"]);
    publish(&tern, &["-t", "home/kitchen/humidity", "-m", "40"]);
    publish(&tern, &["-t", "home/hall/temp", "-m", "19"]);
    assert_eq!(plus.next(), "home/kitchen/temp 21");
    assert_eq!(plus.next(), "home/hall/temp 19");
    assert_eq!(hash.next(), "home/kitchen/temp 21");
    assert_eq!(hash.next(), "home/kitchen/humidity 40");
    assert_eq!(hash.next(), "home/hall/temp 19");
}

#[test]
fn sys_topics_are_published() {
    let tern = Tern::start(&["--sys-interval", "1"]);
    let sub = Sub::start(
        &tern,
        &[
            "-t",
            "$SYS/broker/version",
            "-t",
            "$SYS/broker/clients/connected",
        ],
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let l = sub.next();
        if !seen
            .iter()
            .any(|s: &String| s.split(' ').next() == l.split(' ').next())
        {
            seen.push(l);
        }
    }
    seen.sort();
    assert_eq!(seen[0], "$SYS/broker/clients/connected 1");
    assert!(
        seen[1].starts_with("$SYS/broker/version tern "),
        "{}",
        seen[1]
    );
}

#[test]
fn paho_clients_publish_and_subscribe_on_both_versions() {
    let tern = Tern::start(&[]);
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
port = int(sys.argv[1])
for proto in (mqtt.MQTTv311, mqtt.MQTTv5):
    got = []
    done = threading.Event()
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-sub", protocol=proto)
    sub.on_subscribe = lambda c, u, mid, rc, props: subscribed.set()
    def on_message(c, u, m):
        got.append((m.topic, m.payload.decode(), m.qos))
        if len(got) == 3:
            done.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.subscribe("paho/#", qos=2)
    sub.loop_start()
    assert subscribed.wait(10), "no SUBACK"
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=proto)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for q in (0, 1, 2):
        pub.publish("paho/%d" % q, "m%d" % q, qos=q).wait_for_publish(10)
    assert done.wait(10), "got only %r" % got
    print(proto, sorted(got))
    pub.disconnect(); pub.loop_stop()
    sub.disconnect(); sub.loop_stop()
"#;
    let out = paho(&tern, script);
    let want = "[('paho/0', 'm0', 0), ('paho/1', 'm1', 1), ('paho/2', 'm2', 2)]";
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines.iter().all(|l| l.ends_with(want)), "{out}");
}

#[test]
fn paho_resumes_a_persistent_v5_session() {
    let tern = Tern::start(&[]);
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
port = int(sys.argv[1])
props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 600
def client(cid):
    return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
sub = client("paho-keeper")
subscribed = threading.Event()
sub.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
sub.connect("127.0.0.1", port, clean_start=False, properties=props)
sub.loop_start()
sub.subscribe("keep/#", qos=1)
assert subscribed.wait(10)
sub.disconnect(); sub.loop_stop()
pub = client("paho-pub")
pub.connect("127.0.0.1", port)
pub.loop_start()
for i in range(3):
    pub.publish("keep/x", str(i), qos=1).wait_for_publish(10)
pub.disconnect(); pub.loop_stop()
got = []
done = threading.Event()
present = []
sub = client("paho-keeper")
sub.on_connect = lambda c, u, flags, rc, p: present.append(flags.session_present)
def on_message(c, u, m):
    got.append(m.payload.decode())
    if len(got) == 3:
        done.set()
sub.on_message = on_message
sub.connect("127.0.0.1", port, clean_start=False, properties=props)
sub.loop_start()
assert done.wait(10), got
print(present, got)
sub.disconnect(); sub.loop_stop()
"#;
    assert_eq!(paho(&tern, script).trim(), "[True] ['0', '1', '2']");
}

#[test]
fn a_packet_over_the_limit_closes_that_client_only() {
    let tern = Tern::start(&["--max-packet-size", "1024"]);
    let sub = Sub::start(&tern, &["-t", "big/#"]);
    let mut raw = Raw::connect(&tern, ProtocolVersion::V5, "big");
    let p = Publish::new(
        TopicName::new("big/x").expect("topic"),
        QosPid::AtMostOnce,
        vec![b'x'; 4096],
    );
    raw.send_bytes(
        &Packet::Publish(p)
            .to_bytes(ProtocolVersion::V5)
            .expect("encodes"),
    );
    assert_eq!(
        raw.recv(),
        Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::PacketTooLarge
        )))
    );
    assert_eq!(raw.recv(), None, "closed");
    publish(&tern, &["-t", "big/small", "-m", "fits"]);
    assert_eq!(sub.next(), "big/small fits");
}

#[test]
fn a_client_sending_garbage_is_closed_and_others_are_served() {
    let tern = Tern::start(&[]);
    let sub = Sub::start(&tern, &["-t", "ok"]);
    let mut raw = Raw::connect(&tern, ProtocolVersion::V3_1_1, "garbage");
    raw.send_bytes(&[0xff; 64]);
    assert_eq!(raw.recv(), None, "closed without a word on 3.1.1");
    // Garbage before any CONNECT, too.
    let mut s = TcpStream::connect(("127.0.0.1", tern.port)).expect("connects");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    publish(&tern, &["-t", "ok", "-m", "still serving"]);
    assert_eq!(sub.next(), "ok still serving");
}

#[test]
fn sigterm_disconnects_v5_clients_with_0x8b_and_exits_cleanly() {
    let mut tern = Tern::start(&[]);
    let mut raw = Raw::connect(&tern, ProtocolVersion::V5, "stayer");
    tern.wait_log("stayer");
    let status = tern.terminate();
    assert_eq!(
        raw.recv(),
        Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::ServerShuttingDown
        )))
    );
    assert!(status.success(), "{status:?}");
}
