//! `tern broker --config tern.toml`: the configuration file.
//!
//! Every key is optional; an unknown key or a bad value stops startup with
//! the file, line and key (serde's `deny_unknown_fields`, toml's spans).
//!
//! ```toml
//! [[listener]]
//! bind = "0.0.0.0:1883"           # type = "tcp" is the default
//!
//! [[listener]]
//! type = "tls"
//! bind = "0.0.0.0:8883"
//! cert = "/etc/tern/server.pem"
//! key = "/etc/tern/server.key"
//! client_ca = "/etc/tern/ca.pem"  # optional: require client certificates
//! cn_as_username = true           # the certificate's CN is the user name
//!
//! [[listener]]
//! type = "ws"
//! bind = "0.0.0.0:8081"
//! path = "/mqtt"
//!
//! [[listener]]
//! type = "http"                   # the HTTP API; with cert and key, HTTPS
//! bind = "127.0.0.1:8080"         # (the default, with no listener given)
//!
//! [http]
//! admins = ["alice"]              # may use the management endpoints
//! anonymous_remote = false        # anonymous requests only from loopback
//! max_streams = 10000             # subscribe streams at once
//! stream_buffer = 1000            # messages a slow stream reader may lag
//! [[http.token]]
//! token = "a long random string"  # Authorization: Bearer ...
//! user = "alice"
//!
//! [[webhook]]                     # a topic wired to a URL
//! name = "vendor"
//! filter = "home/doorbell/#"
//! url = "https://vendor.example/hook"
//! headers = { Authorization = "Bearer ..." }
//! secret = "..."                  # X-Tern-Signature: HMAC-SHA256
//! body = "json"                   # or "payload", or "template" with
//! # template = '{"text": "{{ levels[1] }} rang"}'   (Jinja)
//! # qos = 1; timeout = "10s"
//!
//! [[history]]                     # recorded in the data directory
//! filter = "sensors/#"
//! keep = "30d"
//! value = "/temp"                 # a JSON field; absent: the payload is the number
//!
//! [limits]
//! max_packet_size = 1048576
//! max_connections = 100000
//! max_keep_alive = 300             # 5.0 clients asking for more are told 300
//!
//! [auth]
//! allow_anonymous = false
//! password_file = "/etc/tern/passwd"
//!
//! [[acl]]
//! user = "sensor"          # omit for every client
//! topic = "sensors/%c/#"   # %c: client id, %u: user name
//! access = "readwrite"     # read | write | readwrite | deny
//!
//! [sys]
//! interval = 10            # seconds; 0 turns $SYS off
//!
//! [persistence]
//! dir = "/var/lib/tern"    # or --data DIR; absent: memory only
//! mode = "strict"          # acknowledge after fsync; "relaxed": before,
//! flush_ms = 100           #   syncing every flush_ms (lost on power loss)
//!
//! [log]
//! level = "info"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tern_broker::policy::{Access, Acl};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Listeners; none means the default 127.0.0.1:1883.
    #[serde(default)]
    pub listener: Vec<Listener>,
    /// Limits of the broker core.
    #[serde(default)]
    pub limits: Limits,
    /// Authentication.
    #[serde(default)]
    pub auth: Auth,
    /// Access control rules, first match wins; none means everything is
    /// allowed.
    #[serde(default)]
    pub acl: Vec<AclRule>,
    /// `$SYS` topics.
    #[serde(default)]
    pub sys: Sys,
    /// Logging.
    #[serde(default)]
    pub log: Log,
    /// Where sessions, queued messages and retained messages are kept.
    #[serde(default)]
    pub persistence: PersistenceFile,
    /// Broker shards; 0 or absent means one per core but one (at least one).
    pub shards: Option<usize>,
    /// The HTTP API.
    #[serde(default)]
    pub http: Http,
    /// What the history records (in the data directory).
    #[serde(default)]
    pub history: Vec<HistoryRule>,
    /// Webhooks: topics wired to URLs.
    #[serde(default)]
    pub webhook: Vec<tern_http::WebhookDef>,
    /// The rules engine.
    pub rules: Option<RulesFile>,
}

/// `[rules]`: the rules engine inside the broker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// The rules file (relative to the working directory).
    pub file: PathBuf,
    /// The user the rules act as: the ACL applies to what they publish.
    pub user: Option<String>,
}

/// One `[[history]]` rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// The topics recorded.
    pub filter: String,
    /// How long (`30d`, `12h`).
    pub keep: String,
    /// Where the number is in a JSON payload (a JSON pointer, `/temp`);
    /// absent: the payload is the number.
    pub value: Option<String>,
}

/// The HTTP API's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Users who may use the management endpoints.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Whether anonymous requests are taken from other hosts than
    /// loopback (where the broker allows anonymous clients at all).
    #[serde(default)]
    pub anonymous_remote: bool,
    /// Subscribe streams open at once.
    pub max_streams: Option<usize>,
    /// Messages a stream's reader may be behind before the oldest are
    /// skipped.
    pub stream_buffer: Option<usize>,
    /// API tokens.
    #[serde(default)]
    pub token: Vec<Token>,
}

/// An API token and the user it acts as.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The secret (`Authorization: Bearer ...`).
    pub token: String,
    /// The user.
    pub user: String,
}

/// One listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address and port.
    pub bind: SocketAddr,
    /// `tcp` (the default), `tls`, `ws` (WebSocket) or `http` (the HTTP
    /// API).
    #[serde(default, rename = "type")]
    pub kind: ListenerKind,
    /// TLS: the certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// TLS: the private key (PEM).
    pub key: Option<PathBuf>,
    /// TLS: require client certificates signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
    /// TLS: the client certificate's common name is the user name.
    #[serde(default)]
    pub cn_as_username: bool,
    /// WebSocket: the HTTP path (default `/mqtt`).
    pub path: Option<String>,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// The HTTP API (HTTPS with `cert` and `key`).
    Http,
}

/// Limits; absent keys keep the safe defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest packet accepted, bytes.
    pub max_packet_size: Option<u32>,
    /// Connections open at once.
    pub max_connections: Option<usize>,
    /// Sessions kept at once.
    pub max_sessions: Option<usize>,
    /// QoS 1/2 messages in flight per client.
    pub max_inflight: Option<u16>,
    /// Messages queued per session.
    pub max_queued_messages: Option<usize>,
    /// Bytes queued per session.
    pub max_queued_bytes: Option<usize>,
    /// Subscriptions per session.
    pub max_subscriptions: Option<usize>,
    /// Retained messages kept.
    pub max_retained_messages: Option<usize>,
    /// Bytes of retained messages kept.
    pub max_retained_bytes: Option<usize>,
    /// Longest a session is kept offline, seconds.
    pub max_session_expiry: Option<u32>,
    /// Unreleased inbound QoS 2 messages per client.
    pub receive_maximum: Option<u16>,
    /// Topic aliases per 5.0 client.
    pub topic_alias_maximum: Option<u16>,
    /// The longest keep alive a 5.0 client may have, seconds (Mosquitto's
    /// `max_keepalive`, which is accepted too): one asking for more, or for
    /// none, is told this one. 3.1.1 clients keep their own (the protocol
    /// cannot tell them).
    #[serde(alias = "max_keepalive")]
    pub max_keep_alive: Option<u16>,
    /// Levels in a topic name or filter (default 200, as Mosquitto).
    pub max_topic_levels: Option<usize>,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout: Option<u64>,
    /// New connections per second at most.
    pub max_connection_rate: Option<u32>,
    /// Bytes written to a client and not yet flushed, beyond which it is a
    /// slow consumer (its QoS 0 messages are dropped).
    pub max_unwritten_bytes: Option<usize>,
}

/// Who may connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Whether clients without a user name are accepted.
    #[serde(default = "yes")]
    pub allow_anonymous: bool,
    /// A password file written by `tern passwd`.
    pub password_file: Option<PathBuf>,
}

impl Default for Auth {
    fn default() -> Auth {
        Auth {
            allow_anonymous: true,
            password_file: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// One ACL rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    /// The user it applies to; absent for every client.
    pub user: Option<String>,
    /// The topic pattern (`%c` client id, `%u` user name).
    pub topic: String,
    /// What it grants.
    pub access: AccessName,
}

/// `read`, `write`, `readwrite` or `deny`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessName {
    /// Subscribe only.
    Read,
    /// Publish only.
    Write,
    /// Both.
    Readwrite,
    /// Neither.
    Deny,
}

/// `$SYS` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sys {
    /// Seconds between updates; 0 turns them off.
    pub interval: Option<u64>,
}

/// Persistence settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistenceFile {
    /// The data directory; absent: everything is kept in memory only.
    pub dir: Option<PathBuf>,
    /// `strict` (the default): a QoS 1/2 message is acknowledged once it
    /// is on disk. `relaxed`: acknowledged before, written to disk every
    /// `flush_ms`; up to that much of acknowledged state is lost on power
    /// loss.
    #[serde(default)]
    pub mode: Durability,
    /// Relaxed: milliseconds between syncs (default 100).
    pub flush_ms: Option<u64>,
}

/// How acknowledgements wait for the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the fsync.
    #[default]
    Strict,
    /// Before it.
    Relaxed,
}

/// Logging settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `error`, `warn`, `info`, `debug` or `trace` (or a tracing filter).
    pub level: Option<String>,
}

/// Reads and checks a configuration file. The error names the file and,
/// from toml, the line, column and key.
pub fn load(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<File, String> {
    let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
    for (i, l) in file.listener.iter().enumerate() {
        let n = i + 1;
        match l.kind {
            ListenerKind::Tls if l.cert.is_none() || l.key.is_none() => {
                return Err(format!(
                    "listener {n} ({}): type = \"tls\" needs cert and key",
                    l.bind
                ));
            }
            ListenerKind::Tcp | ListenerKind::Ws
                if l.cert.is_some()
                    || l.key.is_some()
                    || l.client_ca.is_some()
                    || l.cn_as_username =>
            {
                return Err(format!("listener {n} ({}): cert, key, client_ca and cn_as_username are for type = \"tls\"", l.bind));
            }
            ListenerKind::Http if l.client_ca.is_some() || l.cn_as_username || l.path.is_some() => {
                return Err(format!(
                    "listener {n} ({}): type = \"http\" takes cert and key only",
                    l.bind
                ));
            }
            ListenerKind::Http if l.cert.is_some() != l.key.is_some() => {
                return Err(format!(
                    "listener {n} ({}): HTTPS needs both cert and key",
                    l.bind
                ));
            }
            ListenerKind::Tcp | ListenerKind::Tls if l.path.is_some() => {
                return Err(format!(
                    "listener {n} ({}): path is for type = \"ws\"",
                    l.bind
                ));
            }
            _ => {}
        }
        if l.cn_as_username && l.client_ca.is_none() {
            return Err(format!(
                "listener {n} ({}): cn_as_username needs client_ca",
                l.bind
            ));
        }
    }
    let mut names = std::collections::HashSet::new();
    for (i, w) in file.webhook.iter().enumerate() {
        let n = i + 1;
        w.check().map_err(|e| format!("webhook {n}: {e}"))?;
        if !names.insert(&w.name) {
            return Err(format!(
                "webhook {n}: another webhook is named {:?}",
                w.name
            ));
        }
    }
    for (i, h) in file.history.iter().enumerate() {
        let n = i + 1;
        if let Err(e) = tern_codec::TopicFilter::new(&h.filter) {
            return Err(format!("history {n}: filter {:?}: {e}", h.filter));
        }
        if let Err(e) = tern_http::history::api::duration_of(&h.keep) {
            return Err(format!("history {n}: keep {e}"));
        }
        if h.value.as_ref().is_some_and(|v| !v.starts_with('/')) {
            return Err(format!(
                "history {n}: value must be a JSON pointer, such as \"/temp\""
            ));
        }
    }
    Ok(file)
}

impl File {
    /// The limits applied to a broker core configuration.
    pub fn apply(&self, c: &mut tern_broker::Config) {
        let l = &self.limits;
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = l.$field { c.$field = v; } )* };
        }
        set!(
            max_packet_size,
            max_connections,
            max_sessions,
            max_inflight,
            max_queued_messages,
            max_queued_bytes,
            max_subscriptions,
            max_retained_messages,
            max_retained_bytes,
            max_session_expiry,
            receive_maximum,
            topic_alias_maximum,
            max_topic_levels
        );
        if let Some(k) = l.max_keep_alive {
            c.max_keep_alive = Some(k);
        }
        if let Some(b) = l.max_unwritten_bytes {
            c.max_unwritten_bytes = Some(b);
        }
        if let Some(s) = l.connect_timeout {
            c.connect_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.sys.interval {
            c.sys_interval = (s > 0).then(|| Duration::from_secs(s));
        }
    }

    /// The ACL, if the file has rules.
    pub fn acl(&self) -> Option<Acl> {
        if self.acl.is_empty() {
            return None;
        }
        let mut acl = Acl::new();
        for r in &self.acl {
            let access = match r.access {
                AccessName::Read => Access::Read,
                AccessName::Write => Access::Write,
                AccessName::Readwrite => Access::ReadWrite,
                AccessName::Deny => Access::Deny,
            };
            acl = match &r.user {
                Some(u) => acl.allow_user(u, &r.topic, access),
                None => acl.allow_all_users(&r.topic, access),
            };
        }
        Some(acl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let f = parse("").expect("parses");
        assert!(f.listener.is_empty());
        assert!(f.auth.allow_anonymous);
        assert!(f.acl().is_none());
    }

    #[test]
    fn every_section_parses() {
        let f = parse(
            r#"
shards = 2
[[listener]]
bind = "127.0.0.1:1884"
[limits]
max_packet_size = 4096
max_inflight = 10
connect_timeout = 5
max_keepalive = 60
max_topic_levels = 300
[auth]
allow_anonymous = false
password_file = "passwd"
[[acl]]
user = "a"
topic = "x/%c/#"
access = "readwrite"
[sys]
interval = 0
[log]
level = "debug"
"#,
        )
        .expect("parses");
        let mut c = tern_broker::Config::default();
        f.apply(&mut c);
        assert_eq!(c.max_packet_size, 4096);
        assert_eq!(c.max_inflight, 10);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.max_keep_alive, Some(60));
        assert_eq!(c.max_topic_levels, 300);
        assert_eq!(c.sys_interval, None);
        assert!(f.acl().is_some());
        assert!(!f.auth.allow_anonymous);
    }

    #[test]
    fn listeners_of_each_kind_are_checked() {
        let f = parse(
            r#"
[[listener]]
bind = "127.0.0.1:1883"
[[listener]]
type = "tls"
bind = "127.0.0.1:8883"
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
cn_as_username = true
[[listener]]
type = "ws"
bind = "127.0.0.1:8080"
path = "/mqtt"
"#,
        )
        .expect("parses");
        assert_eq!(f.listener[1].kind, ListenerKind::Tls);
        let e =
            parse("[[listener]]\ntype = \"tls\"\nbind = \"127.0.0.1:1\"\n").expect_err("refused");
        assert!(e.contains("needs cert and key"), "{e}");
        let e =
            parse("[[listener]]\nbind = \"127.0.0.1:1\"\npath = \"/x\"\n").expect_err("refused");
        assert!(e.contains("path is for"), "{e}");
        let f = parse(
            "[[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:8080\"\n[http]\nadmins = [\"a\"]\n[[http.token]]\ntoken = \"t\"\nuser = \"a\"\n",
        )
        .expect("parses");
        assert_eq!(f.listener[0].kind, ListenerKind::Http);
        assert_eq!(f.http.token[0].user, "a");
        let e = parse("[[listener]]\ntype = \"http\"\nbind = \"127.0.0.1:1\"\ncert = \"c\"\n")
            .expect_err("refused");
        assert!(e.contains("both cert and key"), "{e}");
        let e =
            parse("[[listener]]\ntype = \"quic\"\nbind = \"127.0.0.1:1\"\n").expect_err("refused");
        assert!(e.contains("quic"), "{e}");
    }

    #[test]
    fn an_unknown_key_names_its_line_and_key() {
        let e = parse("[limits]\nmax_packet_size = 10\nmax_pakcets = 3\n").expect_err("refused");
        assert!(e.contains("line 3"), "{e}");
        assert!(e.contains("max_pakcets"), "{e}");
    }

    #[test]
    fn a_bad_value_names_its_line_and_key() {
        let e = parse("[limits]\nmax_inflight = 70000\n").expect_err("refused");
        assert!(e.contains("line 2"), "{e}");
        let e = parse("[[acl]]\ntopic = \"a\"\naccess = \"everything\"\n").expect_err("refused");
        assert!(e.contains("access") || e.contains("everything"), "{e}");
    }
}
