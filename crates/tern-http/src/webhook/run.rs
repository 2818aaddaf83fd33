//! A webhook's task: its MQTT connection feeds the outbox machine, the
//! machine says what to send and when, reqwest sends it.

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tern_client::{AckId, ClientConfig};
use tern_codec::{Message, QoS, RetainHandling, SubscribeFilter, SubscriptionOptions, TopicFilter};
use tern_tokio::{
    AsyncClient, AsyncEvent, Backoff as Reconnect, BrokerHandle, ClientOptions, Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::machine::{Answer, Backoff, Outbox, Verdict};
use super::template::Template;
use super::{unix_millis, unix_seconds, Status, WebhookDef};
use crate::json::JsonMessage;

/// Messages taken from the broker ahead of the one being delivered.
const AHEAD: u16 = 100;
/// The longest `Retry-After` or backoff.
const MAX_DELAY: Duration = Duration::from_secs(300);

/// What a webhook's task needs.
pub(super) struct Task {
    pub(super) def: WebhookDef,
    pub(super) filter: TopicFilter,
    pub(super) timeout: Duration,
    pub(super) broker: BrokerHandle,
    pub(super) http: reqwest::Client,
    pub(super) status: Arc<Mutex<Status>>,
    pub(super) stop: CancellationToken,
    /// Paused: nothing is sent until it turns false.
    pub(super) paused: tokio::sync::watch::Receiver<bool>,
}

/// A message on its way, with its body.
#[derive(Clone)]
struct Item {
    message: Message,
    body: Bytes,
    ack: Option<AckId>,
    key: String,
}

/// The clock, for the machine's `now`.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

pub(super) fn spawn(task: Task) {
    tokio::spawn(run(task));
}

async fn run(mut t: Task) {
    let mut config = ClientConfig::new(&t.def.client_id());
    config.clean_start = false;
    config.session_expiry_interval = u32::MAX;
    config.manual_ack = true;
    config.keep_alive = Duration::ZERO;
    config.receive_maximum = AHEAD;
    let options = ClientOptions {
        config,
        transport: Transport::Local {
            broker: t.broker.clone(),
            identity: Some(t.def.client_id()),
            peer: SocketAddr::from(([127, 0, 0, 1], 0)),
            trusted: true,
        },
        reconnect: Some(Reconnect::default()),
        capacity: usize::from(AHEAD),
        drop_oldest: false,
        connect_timeout: Duration::from_secs(10),
    };
    let (client, mut events) = match AsyncClient::start(options) {
        Ok(c) => c,
        Err(e) => {
            warn!(webhook = %t.def.name, error = %e, "webhook cannot start");
            return;
        }
    };
    let qos = if t.def.qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let sub = SubscribeFilter {
        filter: t.filter.clone(),
        options: SubscriptionOptions {
            retain_handling: RetainHandling::DoNotSend,
            ..SubscriptionOptions::new(qos)
        },
    };
    // Rules' `http` steps for this webhook come on `$tern/call/NAME`.
    let call = TopicFilter::new(&format!("{}{}", crate::rules::CALL_PREFIX, t.def.name))
        .ok()
        .filter(|f| *f != t.filter)
        .map(|filter| SubscribeFilter {
            filter,
            options: SubscriptionOptions::new(QoS::AtLeastOnce),
        });
    let mut outbox: Outbox<Item> = Outbox::new(Backoff {
        initial: Duration::from_millis(500),
        max: MAX_DELAY,
    });
    let template = match &t.def.template {
        Some(src) => match Template::new(src) {
            Ok(tpl) => Some(tpl),
            Err(e) => {
                warn!(webhook = %t.def.name, error = %e, "webhook cannot start");
                return;
            }
        },
        None => None,
    };
    let random = RandomState::new();
    let run_id = random.hash_one(0u8);
    let mut n: u64 = 0;
    loop {
        let paused = *t.paused.borrow_and_update();
        if paused {
            // Nothing goes out; what comes waits in the outbox.
        } else if let Some((item, attempt)) = outbox.poll_request(now()) {
            let answer = send(&t, &item, attempt).await;
            let verdict = outbox.handle_answer(answer, now(), random.hash_one(n));
            match verdict {
                Verdict::Delivered(item) => {
                    if let Some(id) = item.ack {
                        client.ack(id);
                    }
                }
                Verdict::Failed(item, why) => {
                    failed(&t, &client, &item.message, &why);
                    if let Some(id) = item.ack {
                        client.ack(id);
                    }
                }
                Verdict::Retry(_) => {}
            }
            report(&t, &outbox);
            continue;
        }
        let wait = outbox.poll_timeout().filter(|_| !paused);
        tokio::select! {
            Ok(()) = t.paused.changed() => {}
            () = t.stop.cancelled() => {
                client.disconnect().await;
                return;
            }
            () = sleep_until(wait) => {}
            // Paused, nothing is taken: what comes waits in the broker,
            // with its limits (QoS 0 has no receive maximum to hold it).
            e = events.recv(), if !paused => match e {
                Some(AsyncEvent::Message(d)) => {
                    n += 1;
                    match body(&t, template.as_ref(), &d.message) {
                        Ok(body) => outbox.push(Item {
                            message: d.message,
                            body,
                            ack: d.ack,
                            key: format!("{run_id:016x}-{n}"),
                        }),
                        Err(why) => {
                            failed(&t, &client, &d.message, &why);
                            outbox.count_failure(why);
                            if let Some(id) = d.ack {
                                client.ack(id);
                            }
                        }
                    }
                    report(&t, &outbox);
                }
                Some(AsyncEvent::Connected { .. }) => {
                    // Every time: the filter may have changed since the
                    // session was made.
                    let (client, mut subs) = (client.clone(), vec![sub.clone()]);
                    subs.extend(call.clone());
                    let name = t.def.name.clone();
                    tokio::spawn(async move {
                        match client.subscribe(subs).await {
                            Ok(codes) if codes.iter().all(|c| !c.is_error()) => {
                                info!(webhook = %name, "webhook subscribed");
                            }
                            other => warn!(webhook = %name, ?other, "webhook cannot subscribe"),
                        }
                    });
                }
                Some(_) => {}
                None => return,
            },
        }
    }
}

/// A message failed for good: logged, and reported as an event on
/// `$SYS/broker/webhooks/NAME/failed` (QoS 0, not retained: the topic, the
/// reason, the time), for whoever watches (an MQTT subscriber, a stream).
fn failed(t: &Task, client: &AsyncClient, m: &Message, why: &str) {
    warn!(webhook = %t.def.name, topic = %m.topic.as_str(), %why, "webhook delivery failed for good");
    let event = serde_json::json!({
        "webhook": t.def.name,
        "topic": m.topic.as_str(),
        "error": why,
        "time": unix_millis(),
    });
    let at = format!("$SYS/broker/webhooks/{}/failed", t.def.name);
    if let Ok(topic) = tern_codec::TopicName::new(&at) {
        let _ = client.try_publish(Message::new(topic, event.to_string()));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn report(t: &Task, outbox: &Outbox<Item>) {
    let mut s = t.status.lock().unwrap_or_else(|e| e.into_inner());
    s.counts = outbox.counts().clone();
    s.pending = outbox.len();
    s.retrying = outbox.retrying();
}

/// A message's body, as the webhook makes it.
fn body(t: &Task, template: Option<&Template>, m: &Message) -> Result<Bytes, String> {
    Ok(match (t.def.body.as_str(), template) {
        ("payload", _) => m.payload.clone(),
        ("template", Some(tpl)) => Bytes::from(tpl.render(m, &t.def.name, unix_millis())?),
        _ => Bytes::from(serde_json::to_vec(&JsonMessage::new(m)).unwrap_or_default()),
    })
}

/// One attempt.
async fn send(t: &Task, item: &Item, attempt: u32) -> Answer {
    let body = item.body.clone();
    let method =
        reqwest::Method::from_bytes(t.def.method.as_bytes()).unwrap_or(reqwest::Method::POST);
    let mut req = t
        .http
        .request(method, &t.def.url)
        .timeout(t.timeout)
        .header("Idempotency-Key", &item.key)
        .header("X-Tern-Topic", item.message.topic.as_str())
        .header("X-Tern-Attempt", (attempt + 1).to_string());
    let typed = t
        .def
        .headers
        .keys()
        .any(|k| k.eq_ignore_ascii_case("content-type"));
    if !typed {
        let json = t.def.body == "json"
            || (t.def.body == "template" && matches!(body.first(), Some(b'{' | b'[')));
        if json {
            req = req.header("Content-Type", "application/json");
        } else if t.def.body == "template" {
            req = req.header("Content-Type", "text/plain; charset=utf-8");
        }
    }
    for (k, v) in &t.def.headers {
        req = req.header(k, v);
    }
    if let Some(secret) = &t.def.secret {
        let ts = unix_seconds().to_string();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(ts.as_bytes());
        ctx.update(b".");
        ctx.update(&body);
        let sig: String = ctx
            .sign()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        req = req
            .header("X-Tern-Timestamp", ts)
            .header("X-Tern-Signature", format!("sha256={sig}"));
    }
    match req.body(body).send().await {
        Ok(mut resp) => {
            let retry_after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let status = resp.status().as_u16();
            // Read (a little of) the answer, so that its connection is
            // kept for the next request.
            let mut read = 0;
            while let Ok(Some(chunk)) = resp.chunk().await {
                read += chunk.len();
                if read > 64 * 1024 {
                    break;
                }
            }
            Answer::Status(status, retry_after)
        }
        Err(e) if e.is_timeout() => Answer::Error("timed out".into()),
        Err(e) => Answer::Error(format!("no answer: {e}")),
    }
}
