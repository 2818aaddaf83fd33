//! `tern broker --data` against a damaged store and a full disk, as files
//! and file systems, not simulations: a truncated or corrupted store file
//! stops startup with what to do (never a panic, never a silent empty
//! start) and `--start-anyway` keeps it aside; a store on a small tmpfs
//! that fills up answers with DISCONNECT 0x97 instead of a PUBACK, takes
//! writes again once there is room, and loses nothing it acknowledged.
//!
//! The full-disk test mounts a tmpfs, which needs root (CI runs as root):
//! without it the test fails and says so.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use bytes::BytesMut;
use tern_codec::{
    Connect, Decoder, MqttString, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid,
    ReasonCode, Subscribe, SubscribeFilter, SubscriptionOptions, TopicFilter, TopicName,
};
use tern_peers::scratch;

const WAIT: Duration = Duration::from_secs(15);

/// A `tern broker --data` process on a free port.
struct Tern {
    child: Child,
    port: u16,
    lines: Receiver<String>,
}

impl Tern {
    fn start(data: &Path, extra: &[&str]) -> Tern {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["broker", "-p", "0", "-v", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern starts");
        let lines = lines_of(child.stderr.take().expect("piped"));
        let mut t = Tern {
            child,
            port: 0,
            lines,
        };
        let line = t.wait_log("listening");
        t.port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("a port in the listening line");
        t
    }

    fn wait_log(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}"),
            }
        }
    }

    /// SIGTERM, and the wait for a clean stop.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        let status = self.child.wait().expect("waits");
        assert!(status.success(), "tern broker stopped with {status}");
    }
}

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

/// An MQTT 5.0 client on a raw socket.
struct Raw {
    s: TcpStream,
    decoder: Decoder,
    buf: BytesMut,
}

impl Raw {
    fn connect(port: u16, id: &str) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connects");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut r = Raw {
            s,
            decoder: Decoder::client(ProtocolVersion::V5),
            buf: BytesMut::new(),
        };
        let c = Connect::new(
            ProtocolVersion::V5,
            MqttString::from_str(id).expect("valid"),
        );
        r.send(c.into());
        match r.recv() {
            Some(Packet::ConnAck(a)) if !a.reason_code.is_error() => r,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, p: Packet) {
        let b = p.to_bytes(ProtocolVersion::V5).expect("encodes");
        self.s.write_all(&b).expect("writes");
    }

    /// The next packet; `None` once the broker closed the connection.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = self.decoder.decode(&mut self.buf).expect("valid packets") {
                return Some(p);
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Publishes a retained QoS 1 message; what came back for it.
    fn publish(&mut self, topic: &str, payload: Vec<u8>, pid: u16) -> Option<Packet> {
        let id = PacketId::new(pid).expect("non-zero");
        let mut p = Publish::new(
            TopicName::new(topic).expect("valid"),
            QosPid::AtLeastOnce(id),
            bytes::Bytes::from(payload),
        );
        p.retain = true;
        self.send(p.into());
        self.recv()
    }
}

/// A store with something in it: twenty retained messages.
fn stocked(data: &Path) {
    let tern = Tern::start(data, &[]);
    let mut c = Raw::connect(tern.port, "stock");
    for n in 1..=20u16 {
        let got = c.publish(&format!("stock/{n}"), vec![b'x'; 500], n);
        assert!(matches!(got, Some(Packet::PubAck(_))), "{got:?}");
    }
    drop(c);
    tern.stop();
}

/// Runs `tern broker --data` on a store it must refuse: the error names
/// the file and the way out, and the file is untouched.
fn refused(data: &Path) {
    let file = data.join("tern.redb");
    let before = std::fs::read(&file).expect("the store file");
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["broker", "-p", "0", "--data"])
        .arg(data)
        .output()
        .expect("tern runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a damaged store: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("the store cannot be opened"), "{err}");
    assert!(err.contains("--start-anyway"), "{err}");
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_eq!(std::fs::read(&file).expect("still there"), before);
    // --start-anyway: an empty store, the damaged file kept beside it.
    let tern = Tern::start(data, &["--start-anyway"]);
    assert!(data.join("tern.redb.damaged-0").exists());
    tern.stop();
}

#[test]
fn a_truncated_store_stops_startup_with_what_to_do() {
    let data = scratch("truncated");
    stocked(&data);
    let file = data.join("tern.redb");
    let len = std::fs::metadata(&file).expect("the store file").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("opens");
    f.set_len(len / 2).expect("truncates");
    drop(f);
    refused(&data);
}

#[test]
fn a_corrupted_store_stops_startup_with_what_to_do() {
    let data = scratch("corrupted");
    stocked(&data);
    let file = data.join("tern.redb");
    let mut bytes = std::fs::read(&file).expect("the store file");
    // Garbage over the first pages after redb's header.
    for b in &mut bytes[8192..12288] {
        *b = 0x5a;
    }
    std::fs::write(&file, bytes).expect("writes");
    refused(&data);
}

/// A tmpfs of `size`, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs for the full-disk test needs root (mount -t tmpfs)"
        );
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "remounting the tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_answered_with_quota_exceeded_and_nothing_acknowledged_is_lost() {
    let dir = scratch("full-disk");
    let disk = Tmpfs::mount(&dir, "1m");
    let data = dir.join("data");
    let tern = Tern::start(&data, &[]);
    let mut c = Raw::connect(tern.port, "filler");
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 1..=200u16 {
        let topic = format!("fill/{n}");
        match c.publish(&topic, vec![b'y'; 16 * 1024], n) {
            Some(Packet::PubAck(a)) if !a.reason_code.is_error() => acked.push(topic),
            Some(Packet::Disconnect(d)) => {
                refused = Some((topic, d.reason_code));
                break;
            }
            other => panic!("{topic}: expected PUBACK or DISCONNECT, got {other:?}"),
        }
    }
    let (topic, code) = refused.expect("the disk filled up");
    assert_eq!(code, ReasonCode::QuotaExceeded, "{topic}");
    assert!(!acked.is_empty());
    // The connection is closed after the DISCONNECT.
    assert!(c.recv().is_none());
    // Room again: the store takes writes again (it retries every second)
    // and the refused message, sent again, is acknowledged.
    disk.resize("16m");
    let mut c = Raw::connect(tern.port, "filler");
    let got = c.publish(&topic, vec![b'y'; 16 * 1024], 1);
    assert!(matches!(got, Some(Packet::PubAck(_))), "{got:?}");
    acked.push(topic);
    drop(c);
    tern.stop();
    // After a restart, every acknowledged retained message is there.
    let tern = Tern::start(&data, &[]);
    let mut s = Raw::connect(tern.port, "reader");
    let f = SubscribeFilter {
        filter: TopicFilter::new("fill/#").expect("valid"),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
    };
    s.send(
        Subscribe {
            packet_id: PacketId::new(1).expect("non-zero"),
            filters: vec![f],
            properties: Default::default(),
        }
        .into(),
    );
    let mut got = Vec::new();
    while got.len() < acked.len() {
        match s.recv() {
            Some(Packet::Publish(p)) => got.push(p.topic.as_str().to_owned()),
            Some(_) => {}
            None => panic!("closed after {} of {}", got.len(), acked.len()),
        }
    }
    got.sort();
    acked.sort();
    assert_eq!(got, acked);
    drop(s);
    tern.stop();
    drop(disk);
}
