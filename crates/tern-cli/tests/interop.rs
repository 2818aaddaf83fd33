//! `tern broker` against real third-party peers: Debian's `mosquitto_pub`
//! and `mosquitto_sub` (3.1.1 and 5.0), the Python `paho-mqtt` 2.x client,
//! and raw sockets speaking through tern-codec.
//!
//! Each test starts its own broker on a free port. Nothing sleeps to wait:
//! a test waits for an event (a log line, "Subscribed", a message), with a
//! timeout that only fires when something is broken. A missing peer fails
//! the test with the command that installs it (`scripts/install-peers`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{
    Connect, Decoder, Disconnect, MqttString, Packet, ProtocolVersion, Publish, QosPid, ReasonCode,
    TopicName,
};

use tern_peers::{make_pki, require, scratch};

const WAIT: Duration = Duration::from_secs(15);

/// A `tern broker` process on a free port.
struct Tern {
    child: Option<Child>,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Tern {
    fn start(extra: &[&str]) -> Tern {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["broker", "-p", "0", "--shards", "2", "-v"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern starts");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = channel();
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut tern = Tern {
            child: Some(child),
            port: 0,
            log,
            lines,
        };
        let line = tern.wait_log("listening");
        tern.port = port_in(&line).parse().expect("a port");
        tern
    }

    /// Started with `toml` as its configuration file (in a scratch
    /// directory named `name`).
    fn with_config(name: &str, toml: &str) -> Tern {
        let conf = scratch(name).join("tern.toml");
        std::fs::write(&conf, toml).expect("config written");
        Tern::start(&["-c", conf.to_str().expect("utf-8")])
    }

    /// Waits for a log line containing `needle`.
    fn wait_log(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "no log line with {needle:?}; log:\n{}",
                    self.log.lock().expect("log").join("\n")
                ),
            }
        }
    }

    fn port(&self) -> String {
        self.port.to_string()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(ok.success());
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(WAIT)
            .expect("tern stops after SIGTERM")
            .expect("wait")
    }
}

impl Drop for Tern {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mosquitto() {
    require("mosquitto_pub", "Debian's mosquitto-clients");
    require("mosquitto_sub", "Debian's mosquitto-clients");
}

/// A running `mosquitto_sub -d -v`, subscribed.
struct Sub {
    child: Child,
    lines: Receiver<String>,
    /// The "Subscribed (mid: 1): <granted QoS, or 128>" line.
    subscribed: String,
    /// Messages that came before "Subscribed" (a resumed session's queue).
    early: std::cell::RefCell<std::collections::VecDeque<String>>,
}

fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") || line.starts_with("Subscribed")
}

impl Sub {
    fn start(tern: &Tern, args: &[&str]) -> Sub {
        mosquitto();
        require("stdbuf", "coreutils");
        // Line-buffered, or "Subscribed" waits in stdio's buffer.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &tern.port(),
                "-d",
                "-v",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts");
        let out = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut sub = Sub {
            child,
            lines,
            subscribed: String::new(),
            early: Default::default(),
        };
        // -d prints "Subscribed (mid: 1): ..." once the SUBACK is in.
        loop {
            match sub.lines.recv_timeout(WAIT) {
                Ok(l) if l.starts_with("Subscribed") => {
                    sub.subscribed = l;
                    return sub;
                }
                Ok(l) if !is_debug(&l) => sub.early.borrow_mut().push_back(l),
                Ok(_) => {}
                Err(_) => panic!("mosquitto_sub {args:?} did not subscribe"),
            }
        }
    }

    /// The next message, as "topic payload".
    fn next(&self) -> String {
        if let Some(l) = self.early.borrow_mut().pop_front() {
            return l;
        }
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) if is_debug(&l) => {}
                Ok(l) => return l,
                Err(_) => panic!("no message"),
            }
        }
    }

    /// Kills the process without a DISCONNECT (SIGKILL).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish(tern: &Tern, args: &[&str]) {
    let (ok, err) = try_publish(tern, args);
    assert!(ok, "mosquitto_pub {args:?}: {err}");
}

fn paho(tern: &Tern, script: &str) -> String {
    paho_on(&tern.port(), script)
}

/// Runs a paho-mqtt script with the port as its argument.
fn paho_on(port: &str, script: &str) -> String {
    require("python3", "Python 3");
    let check = Command::new("python3")
        .args(["-c", "import paho.mqtt"])
        .output()
        .expect("python3 runs");
    assert!(
        check.status.success(),
        "paho-mqtt is missing: install it with scripts/install-peers"
    );
    let out = Command::new("python3")
        .args(["-c", script, port])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "paho script failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// A raw client over a socket, speaking through tern-codec.
struct Raw {
    stream: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Raw {
    /// A TCP connection to the broker that has sent nothing yet.
    fn open(tern: &Tern, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", tern.port)).expect("connects");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        Raw {
            stream,
            decoder: Decoder::client(version),
            buf: BytesMut::new(),
            version,
        }
    }

    /// Connected, or `None` if the broker closed the connection instead of
    /// answering the CONNECT.
    fn try_connect(tern: &Tern, version: ProtocolVersion, id: &str) -> Option<Raw> {
        let mut raw = Raw::open(tern, version);
        let connect = Connect::new(version, MqttString::from_str(id).expect("id"));
        // A refused connection may be closed before the CONNECT is written.
        raw.send_bytes(&Packet::from(connect).to_bytes(version).expect("encodes"));
        match raw.recv() {
            Some(Packet::ConnAck(a)) => assert_eq!(a.reason_code, ReasonCode::Success),
            None => return None,
            other => panic!("expected CONNACK, got {other:?}"),
        }
        Some(raw)
    }

    fn connect(tern: &Tern, version: ProtocolVersion, id: &str) -> Raw {
        Raw::try_connect(tern, version, id).expect("a CONNACK, not a close")
    }

    fn send(&mut self, p: &Packet) {
        let bytes = p.to_bytes(self.version).expect("encodes");
        self.stream.write_all(&bytes).expect("writes");
    }

    fn send_bytes(&mut self, b: &[u8]) {
        // The broker may already have closed the connection.
        let _ = self.stream.write_all(b);
    }

    /// The next packet, or `None` once the broker closed the connection.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).expect("valid packet") {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

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

fn tern_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("tern runs")
}

/// mosquitto_pub's exit status and stderr.
fn try_publish(tern: &Tern, args: &[&str]) -> (bool, String) {
    try_publish_on(&tern.port(), args)
}

#[test]
fn passwords_from_tern_passwd_are_checked_and_reloaded_on_sighup() {
    let dir = scratch("passwd");
    let pw = dir.join("passwd");
    let pw_s = pw.to_str().expect("utf-8 path");
    assert!(tern_cmd(&["passwd", "-c", "-b", pw_s, "alice", "s3cret"])
        .status
        .success());
    let text = std::fs::read_to_string(&pw).expect("written");
    assert!(
        text.contains("alice:$argon2id$") && !text.contains("s3cret"),
        "{text}"
    );
    let conf = dir.join("tern.toml");
    std::fs::write(
        &conf,
        format!("[auth]\nallow_anonymous = false\npassword_file = {pw_s:?}\n"),
    )
    .expect("config written");
    let mut tern = Tern::start(&["-c", conf.to_str().expect("utf-8")]);

    let (ok, _) = try_publish(
        &tern,
        &["-t", "a", "-m", "x", "-u", "alice", "-P", "s3cret"],
    );
    assert!(ok, "the right password connects");
    for v in ["mqttv311", "mqttv5"] {
        let (ok, err) = try_publish(
            &tern,
            &["-V", v, "-t", "a", "-m", "x", "-u", "alice", "-P", "wrong"],
        );
        assert!(!ok, "a wrong password is refused ({v})");
        assert!(
            err.to_lowercase().contains("refused")
                || err.to_lowercase().contains("password")
                || err.to_lowercase().contains("authori"),
            "{err}"
        );
    }
    let (ok, _) = try_publish(&tern, &["-t", "a", "-m", "x"]);
    assert!(!ok, "anonymous clients are refused");
    tern.wait_log("authentication failed");

    // bob is added, then the broker rereads the file on SIGHUP.
    assert!(tern_cmd(&["passwd", "-b", pw_s, "bob", "hunter2"])
        .status
        .success());
    let (ok, _) = try_publish(&tern, &["-t", "a", "-m", "x", "-u", "bob", "-P", "hunter2"]);
    assert!(!ok, "not before the reload");
    let kept = Sub::start(&tern, &["-t", "kept", "-u", "alice", "-P", "s3cret"]);
    let pid = tern.child.as_ref().expect("running").id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill")
        .success());
    tern.wait_log("reloaded on SIGHUP");
    let (ok, _) = try_publish(&tern, &["-t", "a", "-m", "x", "-u", "bob", "-P", "hunter2"]);
    assert!(ok, "bob connects after the reload");
    // Connections stay up across the reload.
    publish(
        &tern,
        &["-t", "kept", "-m", "still", "-u", "bob", "-P", "hunter2"],
    );
    assert_eq!(kept.next(), "kept still");

    // Deleting a user.
    assert!(tern_cmd(&["passwd", "-D", pw_s, "alice"]).status.success());
    let text = std::fs::read_to_string(&pw).expect("written");
    assert!(!text.contains("alice") && text.contains("bob"), "{text}");
}

#[test]
fn acl_rules_deny_publishes_and_subscriptions() {
    let tern = Tern::with_config(
        "acl",
        r#"
[[acl]]
topic = "public/ok"
access = "readwrite"
[[acl]]
topic = "public/#"
access = "read"
[[acl]]
topic = "own/%c/#"
access = "readwrite"
"#,
    );
    let watcher = Sub::start(&tern, &["-t", "public/#", "-i", "watcher"]);
    publish(&tern, &["-t", "public/nope", "-m", "denied", "-q", "1"]);
    publish(&tern, &["-t", "public/ok", "-m", "allowed", "-q", "1"]);
    assert_eq!(
        watcher.next(),
        "public/ok allowed",
        "the denied publish never arrives"
    );
    // A client may subscribe to its own subtree only: SUBACK 0 / 128.
    let own = Sub::start(&tern, &["-t", "own/me/#", "-i", "me"]);
    assert!(own.subscribed.ends_with(": 0"), "{}", own.subscribed);
    let other = Sub::start(&tern, &["-t", "own/me/#", "-i", "intruder"]);
    assert!(other.subscribed.ends_with(": 128"), "{}", other.subscribed);
}

#[test]
fn a_bad_configuration_stops_startup_naming_file_line_and_key() {
    let dir = scratch("badconf");
    let conf = dir.join("tern.toml");
    std::fs::write(
        &conf,
        "[limits]\nmax_packet_size = 1024\nmax_pakcet_size = 3\n",
    )
    .expect("written");
    let out = tern_cmd(&["broker", "-c", conf.to_str().expect("utf-8"), "-p", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tern.toml"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("max_pakcet_size"), "{err}");

    let missing = dir.join("nope.toml");
    let out = tern_cmd(&["broker", "-c", missing.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.toml"));
}

/// Runs openssl, failing loudly if it is missing or fails.
/// The ports of the listeners of `kind` ("tcp", "tls", "ws"), in the
/// configuration's order, from the broker's log.
fn listener_ports(tern: &Tern, kind: &str) -> Vec<String> {
    let log = tern.log.lock().expect("log");
    log.iter()
        .filter(|l| l.contains(" listener") && l.contains(&format!("kind=\"{kind}\"")))
        .map(|l| port_in(l))
        .collect()
}

/// The port of the first 127.0.0.1 address in a log line.
fn port_in(line: &str) -> String {
    let at = line.find("127.0.0.1:").expect("an address in the log line") + "127.0.0.1:".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

#[test]
fn tls_with_a_test_ca_and_a_client_certificate_as_user_name() {
    let dir = scratch("tls");
    make_pki(&dir, "device-7");
    let d = dir.to_str().expect("utf-8");
    let conf = dir.join("tern.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[[listener]]
bind = "127.0.0.1:0"
[[listener]]
type = "tls"
bind = "127.0.0.1:0"
cert = "{d}/server.pem"
key = "{d}/server.key"
[[listener]]
type = "tls"
bind = "127.0.0.1:0"
cert = "{d}/server.pem"
key = "{d}/server.key"
client_ca = "{d}/ca.pem"
cn_as_username = true
[[acl]]
user = "device-7"
topic = "devices/device-7/#"
access = "readwrite"
[[acl]]
topic = "devices/#"
access = "read"
"#
        ),
    )
    .expect("config written");
    let tern = Tern::start(&["-c", conf.to_str().expect("utf-8")]);
    let tls_ports = listener_ports(&tern, "tls");
    assert_eq!(tls_ports.len(), 2);
    let sub = Sub::start(&tern, &["-t", "devices/#"]);
    let ca = format!("{d}/ca.pem");
    // Server authentication only.
    let (ok, err) = try_publish_on(
        &tls_ports[0],
        &[
            "--cafile",
            &ca,
            "-t",
            "devices/any",
            "-m",
            "over tls",
            "-q",
            "1",
            "-u",
            "x",
        ],
    );
    // TLS works; the ACL drops the message (x may only read devices/#).
    assert!(ok, "{err}");
    // With the client certificate: its CN is the user name the ACL sees.
    let cert = format!("{d}/client.pem");
    let key = format!("{d}/client.key");
    let (ok, err) = try_publish_on(
        &tls_ports[1],
        &[
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-t",
            "devices/device-7/t",
            "-m",
            "21",
            "-q",
            "1",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(sub.next(), "devices/device-7/t 21", "and not devices/any");
    // Without a certificate the second listener refuses the handshake.
    let (ok, _) = try_publish_on(
        &tls_ports[1],
        &["--cafile", &ca, "-t", "devices/x", "-m", "no"],
    );
    assert!(!ok);
    // An untrusted CA on the client side fails too.
    let (ok, _) = try_publish_on(
        &tls_ports[0],
        &["--cafile", &cert, "-t", "devices/x", "-m", "no"],
    );
    assert!(!ok);
    // tern pub takes the same flags.
    let tern_pub = |port: &str, extra: &[&str], payload: &str| {
        Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["pub", "-h", "127.0.0.1", "-p", port, "--cafile", &ca])
            .args(extra)
            .args(["-t", "devices/device-7/t", "-m", payload, "-q", "1"])
            .output()
            .expect("tern pub runs")
    };
    let out = tern_pub(&tls_ports[1], &["--cert", &cert, "--key", &key], "22");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sub.next(), "devices/device-7/t 22");
    let out = tern_pub(&tls_ports[1], &[], "no certificate");
    assert_eq!(out.status.code(), Some(1));
}

fn try_publish_on(port: &str, args: &[&str]) -> (bool, String) {
    mosquitto();
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(args)
        .output()
        .expect("mosquitto_pub runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn paho_over_websocket() {
    let tern = Tern::with_config(
        "ws",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\ntype = \"ws\"\nbind = \"127.0.0.1:0\"\npath = \"/mqtt\"\n",
    );
    let ws_port = listener_ports(&tern, "ws").remove(0);
    let sub = Sub::start(&tern, &["-t", "ws/#"]);
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
port = int(sys.argv[1])
got = []
done = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-ws", transport="websockets", protocol=mqtt.MQTTv5)
c.ws_set_options(path="/mqtt")
subscribed = threading.Event()
c.on_subscribe = lambda cl, u, mid, rc, p: subscribed.set()
def on_message(cl, u, m):
    got.append(m.payload.decode()); done.set()
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
c.subscribe("ws/echo", qos=1)
assert subscribed.wait(10)
c.publish("ws/echo", "over websocket", qos=1).wait_for_publish(10)
assert done.wait(10), got
print(got[0])
c.disconnect(); c.loop_stop()
"#;
    let out = paho_on(&ws_port, script);
    assert_eq!(out.trim(), "over websocket");
    // The TCP subscriber saw it too.
    assert_eq!(sub.next(), "ws/echo over websocket");
}

#[test]
// The bound depends on how many one-second windows the attempts spanned,
// so the test reads the clock to know it.
#[allow(clippy::disallowed_methods)]
fn the_connection_rate_limit_closes_the_excess() {
    let mut tern = Tern::with_config("rate", "[limits]\nmax_connection_rate = 2\n");
    let started = std::time::Instant::now();
    let mut admitted = 0;
    for i in 0..10 {
        if Raw::try_connect(&tern, ProtocolVersion::V3_1_1, &format!("r{i}")).is_some() {
            admitted += 1;
        }
    }
    // Two per second are allowed; the attempts touched at most
    // floor(elapsed) + 2 windows (two when they took under a second).
    let windows = started.elapsed().as_secs() as usize + 2;
    assert!(
        (1..=(2 * windows).min(9)).contains(&admitted),
        "{admitted} admitted over {windows} windows"
    );
    tern.wait_log("connection rate limit reached");
}

#[test]
fn a_subscriber_that_never_reads_does_not_stall_anyone() {
    let tern = Tern::start(&[]);
    // A raw 3.1.1 client subscribes to everything and then never reads.
    let mut stuck = Raw::connect(&tern, ProtocolVersion::V3_1_1, "stuck");
    let sub = tern_codec::Subscribe {
        packet_id: tern_codec::PacketId::new(1).expect("non-zero"),
        filters: vec![tern_codec::SubscribeFilter {
            filter: tern_codec::TopicFilter::new("flood/#").expect("filter"),
            options: tern_codec::SubscriptionOptions::new(tern_codec::QoS::AtMostOnce),
        }],
        properties: Default::default(),
    };
    stuck.send(&Packet::Subscribe(sub));
    assert!(matches!(stuck.recv(), Some(Packet::SubAck(_))));
    let fast = Sub::start(&tern, &["-t", "flood/#"]);
    // 4 MB through the broker: far more than the stuck client's socket
    // buffers and the broker's 1 MiB unwritten limit for it.
    let payload = "x".repeat(8 * 1024);
    publish(
        &tern,
        &[
            "-t",
            "flood/a",
            "-m",
            &payload,
            "-q",
            "1",
            "--repeat",
            "500",
            "--repeat-delay",
            "0",
        ],
    );
    publish(&tern, &["-t", "flood/end", "-m", "end", "-q", "1"]);
    let mut n = 0;
    loop {
        let l = fast.next();
        if l == "flood/end end" {
            break;
        }
        n += 1;
    }
    assert_eq!(n, 500, "the reading subscriber got every message");
    drop(stuck);
}

/// `tern bench` against `tern broker`: the counts add up.
fn bench_json(tern: &Tern, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("bench")
        .args(args)
        .args(["-p", &tern.port(), "--quiet"])
        .output()
        .expect("tern bench runs");
    assert!(
        out.status.success(),
        "tern bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {stdout}"))
        .to_owned()
}

#[test]
fn tern_bench_counts_every_message_once() {
    let tern = Tern::start(&[]);
    for (args, received) in [
        (&["p2p", "-n", "3", "-c", "200", "-q", "1"][..], 600),
        (&["p2p", "-n", "2", "-c", "100", "-q", "2"][..], 200),
        (&["fanout", "-m", "4", "-c", "50", "-q", "1"][..], 200),
        (
            &["fanin", "-n", "4", "-c", "50", "-q", "0", "-V", "5"][..],
            200,
        ),
    ] {
        let json = bench_json(&tern, args);
        assert!(
            json.contains(&format!("\"received\":{received},")),
            "{args:?}: {json}"
        );
        assert!(json.contains("\"loss\":0,"), "{args:?}: {json}");
        assert!(json.contains("\"duplicates\":0,"), "{args:?}: {json}");
    }
    let json = bench_json(&tern, &["conn", "-n", "50", "-d", "0"]);
    assert!(json.contains("\"connections\":50,"), "{json}");
}

#[test]
fn a_flood_after_an_oversized_packet_still_gets_the_disconnect() {
    // The broker closes on the fixed header, with a quarter megabyte of
    // input it will never read: the DISCONNECT is written, its side shut
    // down, and the flood drained (not read into packets) until the client
    // goes. (On loopback the reset a plain close would send does not lose
    // the DISCONNECT, so this does not show the lingering close matters;
    // it shows the close completes.)
    let tern = Tern::start(&["--max-packet-size", "1024"]);
    let mut raw = Raw::connect(&tern, ProtocolVersion::V5, "flood");
    let mut bytes = vec![0x30, 0xc0, 0x84, 0x3d]; // PUBLISH, 1,000,000 bytes
    bytes.extend(std::iter::repeat_n(b'x', 256 * 1024));
    raw.send_bytes(&bytes);
    assert_eq!(
        raw.recv(),
        Some(Packet::Disconnect(Disconnect::new(
            ReasonCode::PacketTooLarge
        )))
    );
    assert_eq!(raw.recv(), None, "closed");
}

#[test]
fn the_connection_limit_refuses_the_excess_and_frees_slots_on_close() {
    // Over both shards: client ids land on either.
    let mut tern = Tern::with_config("limit", "[limits]\nmax_connections = 2\n");
    let first = Raw::connect(&tern, ProtocolVersion::V3_1_1, "l1");
    let _second = Raw::connect(&tern, ProtocolVersion::V3_1_1, "l2");
    assert!(
        Raw::try_connect(&tern, ProtocolVersion::V3_1_1, "l3").is_none(),
        "the third is closed without a CONNACK"
    );
    tern.wait_log("connection limit reached");
    // A closed connection gives its slot back.
    drop(first);
    tern.wait_log("the client closed the connection");
    let _fourth = Raw::connect(&tern, ProtocolVersion::V3_1_1, "l4");
}

#[test]
fn a_connection_without_connect_is_closed_at_the_deadline() {
    let tern = Tern::with_config("deadline", "[limits]\nconnect_timeout = 1\n");
    // Nothing at all, and half a CONNECT: both are closed (a read that
    // times out instead fails the test).
    let mut silent = Raw::open(&tern, ProtocolVersion::V5);
    let mut half = Raw::open(&tern, ProtocolVersion::V5);
    half.send_bytes(&[0x10, 0x20, 0x00]);
    assert_eq!(silent.recv(), None, "closed at the deadline");
    assert_eq!(half.recv(), None, "closed at the deadline");
    // Others are served as usual.
    let _ok = Raw::connect(&tern, ProtocolVersion::V5, "punctual");
}

#[test]
fn connections_that_send_no_connect_count_toward_the_limit() {
    // Otherwise sockets that never say CONNECT, each holding up to a
    // packet's worth of input, would be bounded only by descriptors.
    let mut tern = Tern::with_config("silent-limit", "[limits]\nmax_connections = 2\n");
    let silent = Raw::open(&tern, ProtocolVersion::V3_1_1);
    let _half = {
        let mut half = Raw::open(&tern, ProtocolVersion::V3_1_1);
        half.send_bytes(&[0x10, 0x20, 0x00]);
        half
    };
    tern.wait_log("new connection");
    tern.wait_log("new connection");
    assert!(
        Raw::try_connect(&tern, ProtocolVersion::V3_1_1, "late").is_none(),
        "no slot is left for a third"
    );
    tern.wait_log("connection limit reached");
    // A silent one going frees its slot.
    drop(silent);
    tern.wait_log("connection ended before CONNECT");
    let _ok = Raw::connect(&tern, ProtocolVersion::V3_1_1, "late");
}
