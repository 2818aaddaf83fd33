//! `tern pub` and `tern sub` against the Debian `mosquitto` broker (started
//! here on a free port) and `tern broker`, and next to `mosquitto_pub` and
//! `mosquitto_sub`.
//!
//! Nothing sleeps to wait: a subscriber is used once its `-d` output says
//! it subscribed; every wait has a timeout that fires only when something
//! is broken.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use tern_peers::{free_port, require, Mosquitto};

const WAIT: Duration = Duration::from_secs(15);

/// Lines of a child's stream, as they come.
fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &Receiver<String>, needle: &str, what: &str) -> String {
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(_) => panic!("{what}: no line with {needle:?}"),
        }
    }
}

/// A broker process on a free port: `tern broker` or Debian's mosquitto.
enum Broker {
    Tern { child: Child, port: u16 },
    Mosquitto(Mosquitto),
}

impl Broker {
    fn tern() -> Broker {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["broker", "-p", "0", "-v"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern starts");
        let rx = lines_of(child.stderr.take().expect("piped"));
        let line = wait_line(&rx, "listening", "tern broker");
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("a port in the listening line");
        std::thread::spawn(move || for _ in rx {});
        Broker::Tern { child, port }
    }

    fn mosquitto() -> Broker {
        Broker::Mosquitto(Mosquitto::start())
    }

    fn name(&self) -> &'static str {
        match self {
            Broker::Tern { .. } => "tern",
            Broker::Mosquitto(_) => "mosquitto",
        }
    }

    fn port(&self) -> String {
        match self {
            Broker::Tern { port, .. } => port.to_string(),
            Broker::Mosquitto(m) => m.port.to_string(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Broker::Tern { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tern(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    c.args(args);
    c
}

/// Runs a command to its end within the limit.
fn finish(mut child: Child) -> Output {
    let (tx, rx) = channel();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut o);
        }
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut e);
        }
        let status = child.wait().expect("wait");
        let _ = tx.send(Output {
            status,
            stdout: o,
            stderr: e,
        });
    });
    rx.recv_timeout(WAIT).expect("the command finished in time")
}

fn run(mut c: Command) -> Output {
    finish(
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts"),
    )
}

/// A subscriber (`tern sub` with `-d`, or `mosquitto_sub -d`) that has
/// subscribed.
struct Subscriber {
    child: Child,
    stdout: Receiver<String>,
}

impl Subscriber {
    /// Started, and waited for until the line `subscribed` shows on
    /// standard error (`tern sub -d`) or, with `debug_on_stdout`, on
    /// standard output (`mosquitto_sub -d`, whose debug lines start with
    /// "Client ").
    fn start(mut c: Command, subscribed: &str, debug_on_stdout: bool) -> Subscriber {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("subscriber starts");
        let raw = lines_of(child.stdout.take().expect("piped"));
        let stderr = lines_of(child.stderr.take().expect("piped"));
        let stdout = if debug_on_stdout {
            wait_line(&raw, subscribed, "subscriber");
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for l in raw {
                    if !(l.starts_with("Client ") || l.starts_with("Subscribed (mid"))
                        && tx.send(l).is_err()
                    {
                        break;
                    }
                }
            });
            rx
        } else {
            wait_line(&stderr, subscribed, "subscriber");
            raw
        };
        std::thread::spawn(move || for _ in stderr {});
        Subscriber { child, stdout }
    }

    fn tern(args: &[&str]) -> Subscriber {
        let mut c = tern(&["sub", "-d"]);
        c.args(args);
        Subscriber::start(c, "subscribed to", false)
    }

    fn next(&self) -> String {
        self.stdout.recv_timeout(WAIT).expect("a message in time")
    }

    fn wait(mut self) -> std::process::ExitStatus {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let _ = tx.send(self.child.wait());
        });
        rx.recv_timeout(WAIT)
            .expect("exited in time")
            .expect("wait")
    }
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn tern_pub_and_tern_sub_through_mosquitto_and_tern_at_every_qos() {
    for broker in [Broker::mosquitto(), Broker::tern()] {
        let port = broker.port();
        for v in ["mqttv311", "mqttv5"] {
            let ctx = format!("{} {v}", broker.name());
            let sub = Subscriber::tern(&[
                "-p", &port, "-V", v, "-t", "cli/#", "-q", "2", "-v", "-C", "3",
            ]);
            for q in ["0", "1", "2"] {
                let topic = format!("cli/q{q}");
                let msg = format!("m{q}");
                ok(
                    &run(tern(&[
                        "pub", "-p", &port, "-V", v, "-t", &topic, "-m", &msg, "-q", q,
                    ])),
                    &ctx,
                );
            }
            for q in ["0", "1", "2"] {
                assert_eq!(sub.next(), format!("cli/q{q} m{q}"), "{ctx}");
            }
            assert!(sub.wait().success(), "{ctx}: -C 3 ends with 0");
        }
    }
}

#[test]
fn tern_clients_and_mosquitto_clients_understand_each_other() {
    require("mosquitto_sub", "Debian's mosquitto-clients");
    let broker = Broker::tern();
    let port = broker.port();
    // mosquitto_pub -> tern sub
    let sub = Subscriber::tern(&["-p", &port, "-t", "x/#", "-q", "1", "-v", "-C", "1"]);
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-p",
        &port,
        "-t",
        "x/from-mosquitto",
        "-m",
        "hello",
        "-q",
        "1",
    ]);
    ok(&run(c), "mosquitto_pub");
    assert_eq!(sub.next(), "x/from-mosquitto hello");
    assert!(sub.wait().success());
    // tern pub -> mosquitto_sub, MQTT 5 with a user property
    require("stdbuf", "coreutils");
    // Line-buffered, or the SUBACK line waits in stdio's buffer.
    let mut c = Command::new("stdbuf");
    c.args([
        "-oL",
        "mosquitto_sub",
        "-d",
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        "y",
        "-C",
        "1",
        "-F",
        "%t %p %P",
    ]);
    let sub = Subscriber::start(c, "Subscribed (mid", true);
    ok(
        &run(tern(&[
            "pub",
            "-p",
            &port,
            "-V",
            "mqttv5",
            "-t",
            "y",
            "-m",
            "props",
            "-q",
            "1",
            "-D",
            "publish",
            "user-property",
            "room",
            "kitchen",
        ])),
        "tern pub",
    );
    assert_eq!(sub.next(), "y props room:kitchen");
    assert!(sub.wait().success());
}

#[test]
fn line_mode_and_output_formats() {
    let broker = Broker::tern();
    let port = broker.port();
    let sub = Subscriber::tern(&[
        "-p",
        &port,
        "-t",
        "l",
        "-q",
        "1",
        "-C",
        "4",
        "-F",
        "%t|%p|%q|%r|%l|%x",
    ]);
    let mut publisher = tern(&["pub", "-p", &port, "-t", "l", "-q", "1", "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    publisher
        .stdin
        .take()
        .expect("piped")
        .write_all(b"a\nbc\n\nlast")
        .expect("written");
    ok(&finish(publisher), "tern pub -l");
    assert_eq!(sub.next(), "l|a|1|0|1|61");
    assert_eq!(sub.next(), "l|bc|1|0|2|6263");
    assert_eq!(sub.next(), "l||1|0|0|");
    assert_eq!(sub.next(), "l|last|1|0|4|6c617374");
    assert!(sub.wait().success());
}

#[test]
fn retained_messages_can_be_skipped_and_sub_can_exit_once_subscribed() {
    let broker = Broker::tern();
    let port = broker.port();
    ok(
        &run(tern(&["pub", "-p", &port, "-t", "r", "-m", "stale", "-r"])),
        "retain",
    );
    // Without -R the retained value comes first.
    let o = run(tern(&[
        "sub", "-p", &port, "-t", "r", "-C", "1", "-F", "%p %r",
    ]));
    ok(&o, "sub");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "stale 1\n");
    // With -R it is skipped: the next message is the fresh one.
    let sub = Subscriber::tern(&["-p", &port, "-t", "r", "-R", "-C", "1"]);
    ok(
        &run(tern(&["pub", "-p", &port, "-t", "r", "-m", "fresh"])),
        "pub",
    );
    assert_eq!(sub.next(), "fresh");
    assert!(sub.wait().success());
    // -E: subscribed, then done.
    let o = run(tern(&["sub", "-p", &port, "-t", "r", "-E"]));
    ok(&o, "sub -E");
    assert!(o.stdout.is_empty());
}

#[test]
fn exit_codes_say_what_went_wrong() {
    let broker = Broker::tern();
    let port = broker.port();
    // -W: the time ran out before -C was reached.
    let o = run(tern(&["sub", "-p", &port, "-t", "quiet", "-W", "1"]));
    assert_eq!(
        o.status.code(),
        Some(27),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Usage errors: 2, with the reason.
    for (args, says) in [
        (&["pub", "-t", "a"][..], "give the message"),
        (&["pub", "-t", "a/#", "-m", "x"][..], "-t"),
        (&["pub", "-t", "a", "-m", "x", "-q", "3"][..], "0..=2"),
        (&["sub", "-t", "a", "-c"][..], "needs a client id"),
        (
            &[
                "pub",
                "-t",
                "a",
                "-m",
                "x",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ][..],
            "MQTT 5",
        ),
        (&["sub", "-t", "a", "-F", "%z"][..], "unknown field"),
    ] {
        let o = run(tern(args));
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Nobody listening: 1.
    let closed = free_port().to_string();
    let o = run(tern(&["pub", "-p", &closed, "-t", "a", "-m", "x"]));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refused"));
}
