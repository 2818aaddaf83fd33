//! Webhooks: a topic filter wired to a URL. Each webhook is an in-process
//! MQTT client of the broker's own (a trusted connection with the
//! persistent session `$tern/webhook/NAME`, subscribed to its filter), so
//! its outbox is that session's queue in the broker: durable with
//! `--data`, bounded by `[limits] max_queued_messages` and
//! `max_queued_bytes`, and when full the broker's `queue_full` policy
//! applies (by default the newest message is dropped, and counted).
//!
//! A message is acknowledged to the broker once delivered (2xx) or failed
//! for good (a failure is logged and published as an event on
//! `$SYS/broker/webhooks/NAME/failed`), so delivery is at least once, in order, one request at a time
//! per webhook ([`machine`]: what an answer means and when to try again).
//! Each webhook has its own task and connection: a dead or slow endpoint
//! holds only its own queue, never an MQTT client or another webhook.
//!
//! Requests: the method and headers configured; the body is the message as
//! JSON (`body = "json"`, the default), its payload as is (`body =
//! "payload"`), or a Jinja template's rendering (`body = "template"`,
//! [`template`]; a message the template cannot render is
//! failed, counted and logged); `Idempotency-Key` (the same for every attempt of a
//! message); with a `secret`, `X-Tern-Timestamp` and `X-Tern-Signature:
//! sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY`; a timeout.

pub mod api;
pub mod machine;
mod run;
pub mod template;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tern_codec::TopicFilter;
use tern_tokio::BrokerHandle;
use tokio_util::sync::CancellationToken;

use machine::Counts;

/// A webhook's definition (the configuration file's `[[webhook]]`, or a
/// `POST /api/v1/webhooks` body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDef {
    /// Its name: letters, digits, `-` and `_`.
    pub name: String,
    /// The topics it takes (empty: none, only the `http` steps of rules,
    /// which come on `$tern/call/NAME`).
    #[serde(default)]
    pub filter: String,
    /// Where they go (`http://` or `https://`).
    pub url: String,
    /// The method (default `POST`).
    #[serde(default = "post")]
    pub method: String,
    /// Headers sent with every request.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// `json` (the message as JSON, the default), `payload` (as is), or
    /// `template` (the `template`, rendered).
    #[serde(default = "json")]
    pub body: String,
    /// A Jinja template of the body (`body = "template"`): see
    /// [`template`].
    #[serde(default)]
    pub template: Option<String>,
    /// The subscription's QoS: 1 (the default: nothing the broker accepted
    /// is lost) or 0.
    #[serde(default = "one")]
    pub qos: u8,
    /// How long a request may take (default `10s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Signs each request with HMAC-SHA256 (never shown by the API).
    #[serde(default)]
    pub secret: Option<String>,
    /// Paused: nothing is delivered; what comes waits in its outbox (the
    /// broker's queue for its session, with its limits) until resumed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

fn post() -> String {
    "POST".into()
}
fn json() -> String {
    "json".into()
}
fn one() -> u8 {
    1
}

impl WebhookDef {
    /// Checks the definition; the filter, the timeout.
    pub fn check(&self) -> Result<(TopicFilter, Duration), String> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok_name {
            return Err(format!(
                "name {:?}: 1 to 64 letters, digits, - or _",
                self.name
            ));
        }
        let filter = if self.filter.is_empty() {
            TopicFilter::new(&format!("{}{}", crate::rules::CALL_PREFIX, self.name))
                .map_err(|e| format!("name {:?}: {e}", self.name))?
        } else {
            TopicFilter::new(&self.filter).map_err(|e| format!("filter {:?}: {e}", self.filter))?
        };
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url {:?}: http or https", self.url));
        }
        if reqwest::Method::from_bytes(self.method.as_bytes()).is_err() {
            return Err(format!("method {:?}", self.method));
        }
        for (k, v) in &self.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes());
            let value = reqwest::header::HeaderValue::from_str(v);
            if name.is_err() || value.is_err() {
                return Err(format!("header {k:?}"));
            }
        }
        match (self.body.as_str(), &self.template) {
            ("json" | "payload", None) => {}
            ("template", Some(t)) => {
                template::Template::new(t)?;
            }
            ("template", None) => return Err("body = \"template\" needs a template".into()),
            (_, Some(_)) => return Err("a template needs body = \"template\"".into()),
            (b, None) => return Err(format!("body {b:?}: json, payload or template")),
        }
        if self.qos > 1 {
            return Err("qos: 0 or 1".into());
        }
        let timeout = match &self.timeout {
            Some(t) => crate::history::api::duration_of(t)?,
            None => Duration::from_secs(10),
        };
        Ok((filter, timeout))
    }

    /// Its session's client id.
    pub(crate) fn client_id(&self) -> String {
        format!("{PREFIX}{}", self.name)
    }
}

/// The client ids of webhooks' sessions.
pub(crate) const PREFIX: &str = "$tern/webhook/";
/// Where webhooks added at run time are kept (retained, durable).
pub(crate) const STORED: &str = "$tern/webhooks/";

/// A running webhook.
pub(crate) struct Running {
    pub(crate) def: WebhookDef,
    /// From the configuration file (not deleted through the API).
    pub(crate) configured: bool,
    pub(crate) status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    /// Paused or not, for its task.
    pub(crate) paused: tokio::sync::watch::Sender<bool>,
}

/// What a webhook has done, for the API.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    pub(crate) counts: Counts,
    /// Messages taken from the broker and not yet delivered.
    pub(crate) pending: usize,
    /// The front message waits for a retry.
    pub(crate) retrying: bool,
}

/// Every webhook.
pub(crate) struct Webhooks {
    pub(crate) running: Mutex<HashMap<String, Running>>,
    /// Held while a definition is changed and stored: a pause and a
    /// delete of one webhook do not cross (a stored pause would bring a
    /// deleted webhook back after a restart).
    pub(crate) storing: tokio::sync::Mutex<()>,
    broker: BrokerHandle,
    http: reqwest::Client,
}

impl Webhooks {
    /// No webhook yet. The HTTP client uses the ring provider (the one the
    /// broker's TLS uses).
    pub(crate) fn new(broker: BrokerHandle) -> std::io::Result<Webhooks> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(4)
            .user_agent(concat!("tern/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Webhooks {
            running: Mutex::new(HashMap::new()),
            storing: tokio::sync::Mutex::new(()),
            broker,
            http,
        })
    }

    /// Starts `def` (replacing a running webhook of the same name).
    pub(crate) fn start(&self, def: WebhookDef, configured: bool) -> Result<(), String> {
        let (filter, timeout) = def.check()?;
        let status = Arc::new(Mutex::new(Status::default()));
        let stop = CancellationToken::new();
        let (paused, paused_rx) = tokio::sync::watch::channel(def.paused);
        run::spawn(run::Task {
            paused: paused_rx,
            def: def.clone(),
            filter,
            timeout,
            broker: self.broker.clone(),
            http: self.http.clone(),
            status: status.clone(),
            stop: stop.clone(),
        });
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                def.name.clone(),
                Running {
                    def,
                    configured,
                    status,
                    stop,
                    paused,
                },
            );
        if let Some(old) = old {
            old.stop.cancel();
        }
        Ok(())
    }

    /// Stops a webhook; `None` if there is none of that name.
    pub(crate) fn stop(&self, name: &str) -> Option<WebhookDef> {
        let r = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)?;
        r.stop.cancel();
        Some(r.def)
    }
}

/// The wall clock in milliseconds, for templates.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wall clock in seconds, for signatures.
#[allow(clippy::disallowed_methods)]
pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
