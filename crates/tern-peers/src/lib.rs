//! Third-party test peers, shared by the integration tests of several
//! crates (a dev-dependency; not published): the check that a peer is
//! installed, Debian's mosquitto broker on a free port, a test PKI made
//! with openssl, scratch directories, a child process read by its log
//! lines.
//!
//! A missing peer fails the test with the command that installs it; it is
//! never skipped.
//!
//! ```no_run
//! use tern_peers::{require, Mosquitto};
//!
//! require("mosquitto_pub", "Debian's mosquitto-clients");
//! let broker = Mosquitto::start();
//! println!("mosquitto on 127.0.0.1:{}", broker.port);
//! ```
#![forbid(unsafe_code)]

mod process;

pub use process::{port_in, Logged};

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Fails loudly unless `cmd` is on the PATH.
pub fn require(cmd: &str, what: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{cmd} is missing: these tests need {what}; install it with scripts/install-peers"
    );
}

/// A free loopback port (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A scratch directory for one test's files, empty.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// The broker binary: Debian installs it in /usr/sbin, which a user's PATH
/// may lack.
fn mosquitto_bin() -> String {
    if Path::new("/usr/sbin/mosquitto").exists() {
        return "/usr/sbin/mosquitto".into();
    }
    require("mosquitto", "Debian's mosquitto broker");
    "mosquitto".into()
}

/// Debian's mosquitto broker on a free loopback port, anonymous, no
/// persistence; stopped when dropped.
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
}

impl Mosquitto {
    /// Started, and waited for until it says it is running.
    pub fn start() -> Mosquitto {
        let port = free_port();
        let conf = scratch(&format!("mosquitto-{port}")).join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("config written");
        let mut child = Command::new(mosquitto_bin())
            .args(["-v", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto starts");
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("mosquitto exited before running")
                .expect("readable");
            if line.contains("running") {
                break;
            }
        }
        // Keep draining, so mosquitto never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Mosquitto { child, port }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs openssl in `dir`; fails the test on an error.
pub fn openssl(dir: &Path, args: &[&str]) {
    require("openssl", "the openssl command (Debian package openssl)");
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA in `dir` (`ca.pem`, `ca.key`) named `cn` (EC P-256, one day).
pub fn make_ca(dir: &Path, cn: &str) {
    let subj = format!("/CN={cn}");
    let mut ca = vec!["req", "-x509"];
    ca.extend(EC);
    ca.extend([
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", &subj,
    ]);
    openssl(dir, &ca);
}

const EC: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A test CA, a server certificate for 127.0.0.1 and localhost
/// (`server.pem`, `server.key`) and a client certificate whose common name
/// is `client_cn` (`client.pem`, `client.key`), all made now in `dir`.
pub fn make_pki(dir: &Path, client_cn: &str) {
    make_ca(dir, "Tern Test CA");
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("written");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("written");
    for (name, cn) in [("server", "localhost"), ("client", client_cn)] {
        let mut req = vec!["req"];
        req.extend(EC);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={cn}");
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
}
