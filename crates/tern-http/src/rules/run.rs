//! The rules' task: messages and time in, actions out, state saved.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{Message, QoS, RetainHandling, SubscribeFilter, SubscriptionOptions, TopicFilter};
use tern_rules::{Action, Engine, RuleEvent, Snapshot};
use tern_tokio::{AsyncClient, AsyncEvent, Events};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{wall_ms, Rules, CALL_PREFIX, SAVE_EVERY, STATE_TOPIC};

/// Where the rules' state is kept, and how `http` steps are carried out.
pub enum Store {
    /// In a file (standalone): written to a temporary file and renamed.
    /// `http` steps are refused (they need the broker's webhooks).
    File(PathBuf),
    /// In the broker (`$tern/rules/state`, retained) through a trusted
    /// in-process connection, which also publishes `http` steps to
    /// `$tern/call/{webhook}`.
    Broker(AsyncClient),
}

impl Store {
    /// The state saved in a file, if there is one (a damaged file is
    /// reported and ignored).
    pub fn read_file(path: &std::path::Path) -> Option<Snapshot> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "the rules' saved state cannot be read: starting afresh");
                None
            }
        }
    }

    async fn save(&self, snap: &Snapshot) {
        let Ok(json) = serde_json::to_vec(snap) else {
            return;
        };
        match self {
            Store::File(path) => {
                let tmp = path.with_extension("tmp");
                let written = std::fs::write(&tmp, &json).and_then(|()| {
                    std::fs::File::open(&tmp)?.sync_all()?;
                    std::fs::rename(&tmp, path)
                });
                if let Err(e) = written {
                    warn!(file = %path.display(), error = %e, "the rules' state cannot be saved");
                }
            }
            Store::Broker(client) => {
                let topic = tern_codec::TopicName::from_static(STATE_TOPIC);
                let m = Message::new(topic, json)
                    .with_qos(QoS::AtLeastOnce)
                    .with_retain(true);
                if let Err(e) = client.publish(m).await {
                    warn!(error = %e, "the rules' state cannot be saved");
                }
            }
        }
    }
}

/// Runs `rules` on the connection `client` (whose events are `events`)
/// until `stop`; the state is saved to `store`.
pub async fn run(
    rules: Rules,
    client: AsyncClient,
    mut events: Events,
    store: Store,
    stop: CancellationToken,
) {
    let mut saved_at: Option<tokio::time::Instant> = None;
    let mut save_due = false;
    let mut filters = Vec::new();
    if client.is_connected() {
        // Its first CONNACK was taken by the caller.
        subscribe(&rules, &client, &mut filters, true);
    }
    loop {
        carry_out(&rules, &client, &store);
        if rules.engine().take_dirty() {
            save_due = true;
        }
        let now = tokio::time::Instant::now();
        if save_due && saved_at.is_none_or(|t| now >= t + SAVE_EVERY) {
            let snap = rules.engine().snapshot();
            store.save(&snap).await;
            saved_at = Some(now);
            save_due = false;
        }
        let wake = rules.engine().poll_timeout();
        let engine_in = wake.map(|t| Duration::from_millis(t.saturating_sub(wall_ms())));
        let save_in = (save_due).then(|| {
            saved_at.map_or(Duration::ZERO, |t| {
                (t + SAVE_EVERY).saturating_duration_since(now)
            })
        });
        let sleep = [engine_in, save_in].into_iter().flatten().min();
        tokio::select! {
            () = stop.cancelled() => {
                let snap = rules.engine().snapshot();
                store.save(&snap).await;
                client.disconnect().await;
                return;
            }
            () = async {
                match sleep {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            } => {
                rules.engine().handle_timeout(wall_ms());
            }
            () = rules.inner.changed.notified() => {
                save_due = true;
                subscribe(&rules, &client, &mut filters, false);
            }
            e = events.recv() => match e {
                Some(AsyncEvent::Message(d)) => feed(&mut rules.engine(), &d.message),
                Some(AsyncEvent::Connected { .. }) => subscribe(&rules, &client, &mut filters, true),
                Some(_) => {}
                None => return,
            },
        }
    }
}

/// Presence topics: `$SYS/broker/clients/{id}/connected` and
/// `/disconnected`.
const PRESENCE: &str = "$SYS/broker/clients/";

/// Feeds a message to the engine: presence events as presence, the rest
/// as messages.
fn feed(engine: &mut Engine, m: &Message) {
    let now = wall_ms();
    let topic = m.topic.as_str();
    if let Some(rest) = topic.strip_prefix(PRESENCE) {
        if let Some(id) = rest.strip_suffix("/connected") {
            engine.handle_presence(id, true, now);
        } else if let Some(id) = rest.strip_suffix("/disconnected") {
            engine.handle_presence(id, false, now);
        }
    }
    engine.handle_message(&m.topic, &m.payload, now);
}

/// Subscribes to what the rules want (again after a reconnection, or what
/// is new after a reload), and unsubscribes from what they no longer do.
fn subscribe(rules: &Rules, client: &AsyncClient, had: &mut Vec<TopicFilter>, all: bool) {
    let (mut want, presence) = {
        let e = rules.engine();
        (e.filters(), e.wants_presence())
    };
    if presence {
        want.push(TopicFilter::new(&format!("{PRESENCE}#")).expect("a valid filter"));
    }
    let new: Vec<SubscribeFilter> = want
        .iter()
        .filter(|f| all || !had.contains(f))
        .map(|f| SubscribeFilter {
            filter: f.clone(),
            options: SubscriptionOptions {
                retain_handling: RetainHandling::DoNotSend,
                ..SubscriptionOptions::new(QoS::AtLeastOnce)
            },
        })
        .collect();
    let gone: Vec<TopicFilter> = had.iter().filter(|f| !want.contains(f)).cloned().collect();
    *had = want;
    let client = client.clone();
    tokio::spawn(async move {
        if !gone.is_empty() {
            let _ = client.unsubscribe(gone).await;
        }
        if new.is_empty() {
            return;
        }
        match client.subscribe(new).await {
            Ok(codes) if codes.iter().all(|c| !c.is_error()) => info!("rules subscribed"),
            Ok(codes) => warn!(
                ?codes,
                "the broker refused some of the rules' subscriptions"
            ),
            Err(e) => warn!(error = %e, "the rules cannot subscribe"),
        }
    });
}

/// Publishes what the engine asks for, and logs its events.
fn carry_out(rules: &Rules, client: &AsyncClient, store: &Store) {
    let (actions, events) = {
        let mut e = rules.engine();
        let a: Vec<Action> = std::iter::from_fn(|| e.poll_action()).collect();
        let v: Vec<RuleEvent> = std::iter::from_fn(|| e.poll_event()).collect();
        (a, v)
    };
    for ev in events {
        match ev {
            RuleEvent::Fired { rule, .. } => info!(%rule, "rule fired"),
            RuleEvent::Limited { rule } => warn!(%rule, "rule reached its limit: firing dropped"),
            RuleEvent::Error { rule, message } => warn!(%rule, %message, "rule failed"),
        }
    }
    for a in actions {
        match a {
            Action::Publish {
                rule,
                topic,
                payload,
                qos,
                retain,
            } => {
                let m = Message::new(topic, payload)
                    .with_qos(qos)
                    .with_retain(retain);
                if let Err(e) = client.try_publish(m) {
                    warn!(%rule, error = %e, "a rule's publish failed");
                }
            }
            Action::Http {
                rule,
                webhook,
                body,
            } => call(&rule, &webhook, body, store),
        }
    }
}

/// An `http` step: its body to the webhook's outbox.
fn call(rule: &str, webhook: &str, body: Bytes, store: &Store) {
    let Store::Broker(trusted) = store else {
        warn!(%rule, %webhook, "http steps run inside tern broker, through its webhooks");
        return;
    };
    let Ok(topic) = tern_codec::TopicName::new(&format!("{CALL_PREFIX}{webhook}")) else {
        warn!(%rule, %webhook, "not a webhook name");
        return;
    };
    let m = Message::new(topic, body).with_qos(QoS::AtLeastOnce);
    if let Err(e) = trusted.try_publish(m) {
        warn!(%rule, %webhook, error = %e, "a rule's webhook call failed");
    }
}
