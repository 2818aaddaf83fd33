//! What the interop tests share: the broker process, mosquitto_sub,
//! paho scripts, raw sockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{Connect, Decoder, MqttString, Packet, ProtocolVersion, ReasonCode};

use tern_peers::{port_in, require, scratch, Logged};

pub const WAIT: Duration = Duration::from_secs(15);

/// A `tern broker` process on a free port.
pub struct Tern {
    pub process: Logged,
    pub port: u16,
}

impl Tern {
    pub fn start(extra: &[&str]) -> Tern {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["broker", "-p", "0", "--shards", "2", "-v"])
            .args(extra);
        let mut process = Logged::start(cmd);
        let port = port_in(&process.wait_log("listening"));
        Tern { process, port }
    }

    /// Started with `toml` as its configuration file (in a scratch
    /// directory named `name`).
    pub fn with_config(name: &str, toml: &str) -> Tern {
        let conf = scratch(name).join("tern.toml");
        std::fs::write(&conf, toml).expect("config written");
        Tern::start(&["-c", conf.to_str().expect("utf-8")])
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&mut self, needle: &str) -> String {
        self.process.wait_log(needle)
    }

    pub fn port(&self) -> String {
        self.port.to_string()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.process.terminate()
    }
}

pub fn mosquitto() {
    require("mosquitto_pub", "Debian's mosquitto-clients");
    require("mosquitto_sub", "Debian's mosquitto-clients");
}

/// A running `mosquitto_sub -d -v`, subscribed.
pub struct Sub {
    pub child: Child,
    pub lines: Receiver<String>,
    /// The "Subscribed (mid: 1): <granted QoS, or 128>" line.
    pub subscribed: String,
    /// Messages that came before "Subscribed" (a resumed session's queue).
    pub early: std::cell::RefCell<std::collections::VecDeque<String>>,
}

pub fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") || line.starts_with("Subscribed")
}

impl Sub {
    pub fn start(tern: &Tern, args: &[&str]) -> Sub {
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
    pub fn next(&self) -> String {
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
    pub fn kill(mut self) {
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

pub fn publish(tern: &Tern, args: &[&str]) {
    let (ok, err) = try_publish(tern, args);
    assert!(ok, "mosquitto_pub {args:?}: {err}");
}

pub fn paho(tern: &Tern, script: &str) -> String {
    paho_on(&tern.port(), script)
}

/// Runs a paho-mqtt script with the port as its argument.
pub fn paho_on(port: &str, script: &str) -> String {
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
pub struct Raw {
    pub stream: TcpStream,
    pub decoder: Decoder,
    pub buf: BytesMut,
    pub version: ProtocolVersion,
}

impl Raw {
    /// A TCP connection to the broker that has sent nothing yet.
    pub fn open(tern: &Tern, version: ProtocolVersion) -> Raw {
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
    pub fn try_connect(tern: &Tern, version: ProtocolVersion, id: &str) -> Option<Raw> {
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

    pub fn connect(tern: &Tern, version: ProtocolVersion, id: &str) -> Raw {
        Raw::try_connect(tern, version, id).expect("a CONNACK, not a close")
    }

    pub fn send(&mut self, p: &Packet) {
        let bytes = p.to_bytes(self.version).expect("encodes");
        self.stream.write_all(&bytes).expect("writes");
    }

    pub fn send_bytes(&mut self, b: &[u8]) {
        // The broker may already have closed the connection.
        let _ = self.stream.write_all(b);
    }

    /// The next packet, or `None` once the broker closed the connection.
    pub fn recv(&mut self) -> Option<Packet> {
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

pub fn tern_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .output()
        .expect("tern runs")
}

/// mosquitto_pub's exit status and stderr.
pub fn try_publish(tern: &Tern, args: &[&str]) -> (bool, String) {
    try_publish_on(&tern.port(), args)
}

/// The ports of the listeners of `kind` ("tcp", "tls", "ws"), in the
/// configuration's order, from the broker's log.
pub fn listener_ports(tern: &Tern, kind: &str) -> Vec<String> {
    tern.process
        .log()
        .lines()
        .filter(|l| l.contains(" listener") && l.contains(&format!("kind=\"{kind}\"")))
        .map(|l| port_in(l).to_string())
        .collect()
}

/// mosquitto_pub on the broker at `port`: its exit status and stderr.
pub fn try_publish_on(port: &str, args: &[&str]) -> (bool, String) {
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

/// `tern bench` against `tern broker`: the counts add up.
pub fn bench_json(tern: &Tern, args: &[&str]) -> String {
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
