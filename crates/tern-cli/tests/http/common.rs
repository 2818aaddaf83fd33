//! What the HTTP tests share: the broker process, curl, line readers,
//! mosquitto_pub/sub, password files, a webhook receiver.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::Value;
use tern_peers::{make_pki, port_in, require, scratch, Logged};

pub const WAIT: Duration = Duration::from_secs(15);

/// A broker with an MQTT and an HTTP listener.
pub struct Broker {
    pub _process: Logged,
    pub mqtt: u16,
    pub http: u16,
    pub dir: PathBuf,
}

impl Broker {
    /// Started with `extra` appended to a configuration that has the two
    /// listeners (HTTPS if `tls`).
    pub fn start(name: &str, extra: &str) -> Broker {
        Broker::start_with(name, extra, false)
    }

    pub fn start_with(name: &str, extra: &str, tls: bool) -> Broker {
        let dir = scratch(&format!("http-{name}"));
        if tls {
            make_pki(&dir, "client");
        }
        let d = dir.to_str().expect("utf-8").to_owned();
        let https = if tls {
            format!("cert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n")
        } else {
            String::new()
        };
        let conf = dir.join("tern.toml");
        std::fs::write(
            &conf,
            format!(
                "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:0\"\n{https}{extra}"
            ),
        )
        .expect("config written");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.args(["broker", "--shards", "2", "-c"]).arg(&conf);
        let mut p = Logged::start(cmd);
        let http = port_in(&p.wait_log("HTTP listener"));
        let mqtt = port_in(&p.wait_log("tern broker listening"));
        Broker {
            _process: p,
            mqtt,
            http,
            dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn mqtt_port(&self) -> String {
        self.mqtt.to_string()
    }
}

/// Runs curl; the status and the body.
pub fn curl(args: &[&str]) -> (u16, String) {
    require("curl", "Debian's curl");
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "15", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (status.parse().expect("a status"), body.to_owned())
}

pub fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A process whose standard output is read line by line.
pub struct Lines {
    pub child: Child,
    pub rx: Receiver<String>,
}

impl Lines {
    pub fn start(mut cmd: Command) -> Lines {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::piped())
            .spawn()
            .expect("starts");
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Lines { child, rx }
    }

    /// The next line containing `needle`.
    pub fn wait(&self, needle: &str) -> String {
        self.wait_for(|l| l.contains(needle), needle)
    }

    /// The next line starting with `prefix`.
    pub fn wait_start(&self, prefix: &str) -> String {
        self.wait_for(|l| l.starts_with(prefix), prefix)
    }

    pub fn wait_for(&self, ok: impl Fn(&str) -> bool, needle: &str) -> String {
        loop {
            match self.rx.recv_timeout(WAIT) {
                Ok(l) if ok(&l) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line with {needle:?}"),
            }
        }
    }

    /// Waits until the process closed its standard output (it ended).
    pub fn wait_end(&self) {
        loop {
            match self.rx.recv_timeout(WAIT) {
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                Err(e) => panic!("still running: {e}"),
            }
        }
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        writeln!(stdin, "{line}").expect("written");
        stdin.flush().expect("flushed");
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto_sub -v` on `topic`, once its SUBACK is in.
pub fn mosquitto_sub(b: &Broker, topic: &str, extra: &[&str]) -> Lines {
    mosquitto_sub_at(b.mqtt, topic, extra)
}

/// `mosquitto_sub -v` on `topic` of the broker on `port`.
pub fn mosquitto_sub_at(port: u16, topic: &str, extra: &[&str]) -> Lines {
    require("mosquitto_sub", "Debian's mosquitto-clients");
    require("stdbuf", "coreutils");
    // Line-buffered, or "Subscribed" waits in stdio's buffer.
    let mut c = Command::new("stdbuf");
    c.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .args(["-t", topic, "-v", "-d"])
    .args(extra);
    let s = Lines::start(c);
    s.wait_start("Subscribed");
    s
}

pub fn mosquitto_pub(b: &Broker, args: &[&str]) {
    require("mosquitto_pub", "Debian's mosquitto-clients");
    let ok = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &b.mqtt_port()])
        .args(args)
        .status()
        .expect("mosquitto_pub runs")
        .success();
    assert!(ok, "mosquitto_pub {args:?}");
}

/// `curl -N` on a subscribe stream.
pub fn stream(url: &str, extra: &[&str]) -> Lines {
    require("curl", "Debian's curl");
    let mut c = Command::new("curl");
    c.args(["-s", "-N", "--max-time", "60"])
        .args(extra)
        .arg(url);
    Lines::start(c)
}

/// A password file with these users, in its own scratch directory.
pub fn passwords(name: &str, users: &[(&str, &str)]) -> PathBuf {
    let pw = scratch(name).join("passwd");
    for (i, (user, pass)) in users.iter().enumerate() {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
        c.args(["passwd", "-b"]);
        if i == 0 {
            c.arg("-c");
        }
        let ok = c
            .arg(&pw)
            .args([user, pass])
            .status()
            .expect("runs")
            .success();
        assert!(ok);
    }
    pw
}

/// A broker recording `sensors/#` (numbers) and `json/#` (the `/temp`
/// field), and `secret/#`, which anonymous users may not read.
pub fn recording_broker(name: &str) -> Broker {
    let data = scratch(&format!("http-{name}-data"));
    let mut b = Broker::start(
        name,
        &format!(
            "[persistence]\ndir = \"{}\"\n\
             [[acl]]\ntopic = \"sensors/#\"\naccess = \"readwrite\"\n\
             [[acl]]\ntopic = \"json/#\"\naccess = \"readwrite\"\n\
             [[acl]]\nuser = \"admin\"\ntopic = \"#\"\naccess = \"readwrite\"\n\
             [[history]]\nfilter = \"sensors/#\"\nkeep = \"1h\"\n\
             [[history]]\nfilter = \"json/#\"\nkeep = \"1h\"\nvalue = \"/temp\"\n\
             [[history]]\nfilter = \"secret/#\"\nkeep = \"1h\"\n",
            data.display()
        ),
    );
    b._process.wait_log("history: subscribed");
    b
}

/// A webhook receiver (Python's http.server): prints `got TOPIC PAYLOAD
/// KEY SIGNED` for each request it answers; sleeps 3 s on its first
/// `slow` requests, answers 500 to the `fail` after, 404 on `/gone`, 204
/// otherwise.
pub fn receiver(port: u16, fail: u32, slow: u32) -> Lines {
    let script = format!(
        r#"
import hashlib, hmac, json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

fails = {fail}
slow = {slow}
lock = threading.Lock()

def say(*words):
    with lock:
        sys.stdout.write(" ".join(str(w) for w in words) + "\n")
        sys.stdout.flush()

class H(BaseHTTPRequestHandler):
    def do_POST(self):
        global fails, slow
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/gone":
            self.send_response(404); self.end_headers(); return
        if slow > 0:
            slow -= 1
            say("slow")
            time.sleep(3)
            self.send_response(204); self.end_headers()
            return
        if fails > 0:
            fails -= 1
            say("refused")
            self.send_response(500); self.end_headers()
            return
        ts = self.headers.get("X-Tern-Timestamp", "")
        sig = self.headers.get("X-Tern-Signature", "")
        want = "sha256=" + hmac.new(b"s3cret", ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        m = json.loads(body)
        # Said before the answer: the next request comes only after it.
        say("got", m["topic"], m.get("payload"), self.headers.get("Idempotency-Key"), sig == want)
        self.send_response(204); self.end_headers()
    def log_message(self, *a):
        pass

ThreadingHTTPServer.allow_reuse_address = True
s = ThreadingHTTPServer(("127.0.0.1", {port}), H)
say("listening")
s.serve_forever()
"#
    );
    let mut c = Command::new("python3");
    c.args(["-c", &script]);
    let r = Lines::start(c);
    r.wait("listening");
    r
}

/// Runs a Python script; its standard output, once it succeeded.
pub fn python(script: &str) -> String {
    require("python3", "Python 3");
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `POST /api/v1/session` without credentials, its cookie kept in a jar
/// (in a scratch directory named `name`): the jar's path and the answer.
pub fn sign_in_anonymously(b: &Broker, name: &str) -> (PathBuf, String) {
    let jar = scratch(name).join("cookies");
    let (status, body) = curl(&[
        "-c",
        jar.to_str().expect("utf-8"),
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{}",
        &b.url("/api/v1/session"),
    ]);
    assert_eq!(status, 200, "{body}");
    (jar, body)
}
