//! A child process whose standard error is read line by line: started,
//! waited on for a line, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A process and its log (standard error).
pub struct Logged {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
    /// How long [`Logged::wait_log`] waits before it fails the test.
    pub patience: Duration,
}

impl Logged {
    /// Starts `cmd` with its standard error piped to the log (standard
    /// output is discarded).
    pub fn start(mut cmd: Command) -> Logged {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
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
        Logged {
            child,
            log,
            lines,
            patience: Duration::from_secs(15),
        }
    }

    /// Waits for a log line containing `needle` (after those already
    /// waited for), failing the test with the whole log if none comes.
    pub fn wait_log(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(self.patience) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needle:?}; log:\n{}", self.log()),
            }
        }
    }

    /// Waits until a line containing each of `needles` has come, in any
    /// order (after those already waited for).
    pub fn wait_logs(&mut self, needles: &[&str]) {
        let mut left: Vec<&str> = needles.to_vec();
        while !left.is_empty() {
            match self.lines.recv_timeout(self.patience) {
                Ok(l) => left.retain(|n| !l.contains(n)),
                Err(_) => panic!("no log line with {left:?}; log:\n{}", self.log()),
            }
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`TERM`, `HUP`, ...) with `kill`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name}");
    }

    /// SIGTERM, then its exit status; a process still running after
    /// [`Logged::patience`] is killed and the test fails.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        // A watchdog, called off once the process has ended.
        let (done, ended) = channel::<()>();
        let pid = self.pid().to_string();
        let patience = self.patience;
        let watchdog = std::thread::spawn(move || {
            let late = ended.recv_timeout(patience).is_err();
            if late {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            late
        });
        let status = self.child.wait().expect("wait");
        let _ = done.send(());
        assert!(
            !watchdog.join().unwrap_or(true),
            "still running after SIGTERM"
        );
        status
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of the first `127.0.0.1:PORT` in a log line.
pub fn port_in(line: &str) -> u16 {
    let at = line
        .find("127.0.0.1:")
        .unwrap_or_else(|| panic!("no loopback address in {line:?}"))
        + "127.0.0.1:".len();
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no port in {line:?}"))
}
