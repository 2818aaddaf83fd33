//! The rules engine at work ([`tern_rules`]): a task feeds it the
//! messages of its MQTT connection and the time, carries out what it asks
//! (publishes on that connection, so the ACL of the rules' user applies;
//! webhook calls through the webhooks' durable outboxes) and saves its
//! state whenever it changes (at most every [`SAVE_EVERY`]).
//!
//! Inside `tern broker` the connection is in-process, the state is kept in
//! the broker's store (the retained message `$tern/rules/state`), presence
//! comes from the broker's `$SYS/broker/clients/{id}/connected` and
//! `/disconnected` events, and an `http` step publishes its body to
//! `$tern/call/{webhook}`, which every webhook also takes. Standalone
//! (`tern rules FILE -h HOST`) it is a TCP client of any broker and keeps
//! its state in a file.

pub(crate) mod api;
mod run;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tern_rules::{Engine, LoadError, Millis, RuleInfo, RuleSet, Snapshot};
use tokio::sync::Notify;

pub use run::{run, Store};

/// The rules' state is saved at most this often (and at shutdown): a
/// crash loses at most this much of it.
pub const SAVE_EVERY: Duration = Duration::from_millis(500);

/// Where `http` steps go: `$tern/call/{webhook}`.
pub const CALL_PREFIX: &str = "$tern/call/";

/// Where the broker keeps the rules' state.
pub const STATE_TOPIC: &str = "$tern/rules/state";

/// `[rules]` of the broker's configuration.
#[derive(Debug, Clone)]
pub struct RulesConfig {
    /// The rules file.
    pub file: PathBuf,
    /// The user the rules act as (the ACL applies to what they publish);
    /// `None`: anonymous.
    pub user: Option<String>,
}

/// A running engine, shared by its task and the HTTP API. Cheap to clone.
#[derive(Clone)]
pub struct Rules {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Mutex<Engine>,
    file: PathBuf,
    /// Rules changed (reloaded, toggled): the task subscribes again and
    /// saves.
    changed: Notify,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("file", &self.inner.file)
            .finish_non_exhaustive()
    }
}

impl Rules {
    /// The rules of `file`, with `saved` state taken back.
    ///
    /// # Errors
    ///
    /// The file cannot be read or has an error (with its line and key).
    pub fn load(file: &Path, saved: Option<Snapshot>) -> Result<Rules, LoadError> {
        let set = read(file)?;
        let now = wall_ms();
        let mut engine = Engine::new(set, now);
        if let Some(s) = saved {
            engine.restore(s, now);
        }
        Ok(Rules {
            inner: Arc::new(Inner {
                engine: Mutex::new(engine),
                file: file.to_owned(),
                changed: Notify::new(),
            }),
        })
    }

    /// Reads the file again; on an error the rules that run go on.
    ///
    /// # Errors
    ///
    /// The file cannot be read or has an error.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let set = read(&self.inner.file)?;
        let n = set.rules.len();
        self.engine().reload(set, wall_ms());
        self.inner.changed.notify_one();
        Ok(n)
    }

    /// The rules, with what each holds.
    pub fn list(&self) -> Vec<RuleInfo> {
        self.engine().rules()
    }

    /// Turns a rule on or off; false if there is no such rule.
    pub fn set_enabled(&self, name: &str, on: bool) -> bool {
        let found = self.engine().set_enabled(name, on, wall_ms());
        self.inner.changed.notify_one();
        found
    }

    /// Takes back a saved state (after [`Rules::load`] without one).
    pub fn restore(&self, saved: Snapshot) {
        self.engine().restore(saved, wall_ms());
        self.inner.changed.notify_one();
    }

    /// The rules file.
    pub fn file(&self) -> &Path {
        &self.inner.file
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.inner.engine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read(file: &Path) -> Result<RuleSet, LoadError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| LoadError::io(&name, &e))?;
    RuleSet::parse(&text, &name)
}

/// The wall clock, in milliseconds since the epoch: the engine's time.
#[allow(clippy::disallowed_methods)]
pub fn wall_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Inside the broker: the state back from the store, then the rules' task
/// on an in-process connection acting as `user`.
pub(crate) async fn start_in_broker(
    rules: Rules,
    broker: tern_tokio::BrokerHandle,
    user: Option<String>,
    stop: tokio_util::sync::CancellationToken,
) {
    let topic = tern_codec::TopicFilter::new(STATE_TOPIC).expect("a valid filter");
    match broker.retained_trusted(topic, 1).await {
        Ok(a) => {
            if let Some(m) = a.messages.first() {
                match serde_json::from_slice::<Snapshot>(&m.payload) {
                    Ok(s) => rules.restore(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "the rules' saved state cannot be read: starting afresh")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "the rules' saved state cannot be read"),
    }
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let open = |id: &str, identity: Option<String>, trusted: bool, persistent: bool| {
        let mut config = tern_client::ClientConfig::new(id);
        config.keep_alive = Duration::ZERO;
        if persistent {
            // Messages for the rules wait in the broker across a restart.
            config.clean_start = false;
            config.session_expiry_interval = 86_400;
        }
        tern_tokio::AsyncClient::start(tern_tokio::ClientOptions {
            config,
            transport: tern_tokio::Transport::Local {
                broker: broker.clone(),
                identity,
                peer,
                trusted,
            },
            reconnect: Some(tern_tokio::Backoff::default()),
            capacity: 10_000,
            drop_oldest: false,
            connect_timeout: Duration::from_secs(10),
        })
    };
    let (trusted, mut notes) = match open("$tern/rules", Some("$tern/rules".into()), true, false) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "the rules cannot start"),
    };
    tokio::spawn(async move { while notes.recv().await.is_some() {} });
    let id = match session_id(&broker, &trusted).await {
        Ok(id) => id,
        Err(e) => return tracing::warn!(error = %e, "the rules cannot start"),
    };
    let (client, events) = match open(&id, user, false, true) {
        Ok(c) => c,
        Err(e) => return tracing::warn!(error = %e, "the rules cannot start"),
    };
    tracing::info!(rules = rules.list().len(), file = %rules.file().display(), "rules loaded");
    run(rules, client, events, Store::Broker(trusted), stop).await;
}

/// Where the rules' session's client id is kept.
const ID_TOPIC: &str = "$tern/rules/id";

/// The client id of the rules' persistent session: `tern-rules-` and 32
/// random hex digits, made once and kept in the broker (a client that
/// could guess it could take the session over, with what waits in it).
async fn session_id(
    broker: &tern_tokio::BrokerHandle,
    trusted: &tern_tokio::AsyncClient,
) -> Result<String, String> {
    let filter = tern_codec::TopicFilter::new(ID_TOPIC).expect("a valid filter");
    let kept = broker
        .retained_trusted(filter, 1)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(id) = kept
        .messages
        .first()
        .and_then(|m| std::str::from_utf8(&m.payload).ok())
    {
        return Ok(id.to_owned());
    }
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| "no randomness".to_owned())?;
    let id = format!(
        "tern-rules-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    );
    let m = tern_codec::Message::new(tern_codec::TopicName::from_static(ID_TOPIC), id.clone())
        .with_qos(tern_codec::QoS::AtLeastOnce)
        .with_retain(true);
    trusted.publish(m).await.map_err(|e| e.to_string())?;
    Ok(id)
}
