//! The HTTP side of a Tern broker: publish with `POST`, subscribe with
//! `GET` as a Server-Sent Events stream, read retained values; JSON,
//! under `/api/v1`.
//!
//! It is not a second broker. It runs on the broker's runtime and reaches
//! the broker's core through in-process MQTT connections
//! ([`tern_tokio::BrokerHandle`]): a publish is a PUBLISH from a 5.0
//! client acting as the request's user, a stream is a subscription of its
//! own, so the ACL, the limits and persistence apply exactly as to any
//! MQTT client. Retained values are read from the core directly, with the
//! ACL's verdict on subscribing to the filter.
//!
//! | endpoint | |
//! |---|---|
//! | `POST /api/v1/publish/{topic...}` | the body is the payload ([`publish`]) |
//! | `GET /api/v1/retained/{filter...}` | the last values ([`retained`]) |
//! | `GET /api/v1/subscribe?filter=...` | a Server-Sent Events stream ([`subscribe`]) |
//! | `GET /api/v1/history/{topic...}` | recorded messages, or buckets with min/max/avg ([`history::api`]) |
//! | `/api/v1/webhooks` | webhooks: a topic wired to a URL ([`webhook`], [`webhook::api`]) |
//! | `/api/v1/clients`, `/api/v1/stats`, `/metrics`, ... | management, for admins ([`manage`]) |
//!
//! Who is asking: HTTP Basic against the broker's credentials check (the
//! same users as MQTT), `Bearer` API tokens, or nobody where the broker
//! takes anonymous clients (by default only from loopback). Errors are a
//! status and a JSON body naming the MQTT reason code ([`error`]).
//!
//! ```no_run
//! use tern_http::{Gateway, HttpConfig};
//! use tern_tokio::{Server, ServerConfig};
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = Server::bind(ServerConfig::default()).await?;
//! let gateway = Gateway::new(server.handle(), HttpConfig::default())?;
//! let http = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! tokio::spawn(gateway.clone().serve(http, std::future::pending()));
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod conn;
mod dashboard;
pub mod error;
pub mod history;
mod hub;
pub mod json;
mod listen;
pub mod manage;
pub mod publish;
mod replay;
pub mod retained;
pub mod rules;
mod session;
mod sse;
pub mod subscribe;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use listen::Peer;
use tern_codec::TopicFilter;
use tern_tokio::{BrokerHandle, CredentialCheck, TlsSettings};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use error::ApiError;
pub use history::HistoryConfig;
pub use webhook::WebhookDef;

/// What the HTTP side is allowed and bounded by.
#[derive(Clone)]
pub struct HttpConfig {
    /// Checks HTTP Basic credentials, and says whether anonymous requests
    /// are allowed (called without a user name): the broker's own check,
    /// so HTTP has the same users as MQTT. `None`: no passwords over
    /// HTTP; anonymous requests and tokens only.
    pub check: Option<CredentialCheck>,
    /// API tokens (`Authorization: Bearer TOKEN`), each acting as a user.
    pub tokens: HashMap<String, String>,
    /// Users who may use the management endpoints.
    pub admins: Vec<String>,
    /// Anonymous requests from hosts other than loopback are refused
    /// unless this is set (and the broker allows anonymous clients).
    pub anonymous_remote: bool,
    /// Anonymous requests from loopback are an admin's (for a broker
    /// without users: `tern broker` sets it when there is no password
    /// file).
    pub anonymous_admin: bool,
    /// The broker's data directory, whose size `GET /api/v1/stats` says.
    pub data_dir: Option<std::path::PathBuf>,
    /// The largest body a publish takes, bytes (the broker's maximum
    /// packet size bounds the PUBLISH as well).
    pub max_body: usize,
    /// Subscribe streams open at once; more are refused with 429.
    pub max_streams: usize,
    /// Messages a stream's reader may be behind; beyond, the oldest unread
    /// are skipped and the reader told how many.
    pub stream_buffer: usize,
    /// Retained messages one request returns at most.
    pub max_retained: usize,
    /// QoS 1/2 publishes in flight on a user's publishing connection.
    pub publish_inflight: u16,
    /// Publishes waiting beyond those in flight, per user; more are
    /// refused with 503.
    pub max_pending: usize,
    /// What is recorded, and where (`None`: nothing).
    pub history: Option<HistoryConfig>,
    /// Webhooks of the configuration file.
    pub webhooks: Vec<WebhookDef>,
    /// The rules engine (`None`: no rules).
    pub rules: Option<rules::RulesConfig>,
}

impl Default for HttpConfig {
    fn default() -> HttpConfig {
        HttpConfig {
            check: None,
            tokens: HashMap::new(),
            admins: Vec::new(),
            anonymous_remote: false,
            anonymous_admin: false,
            data_dir: None,
            max_body: 1024 * 1024,
            max_streams: 10_000,
            stream_buffer: 1_000,
            max_retained: 10_000,
            publish_inflight: 1_000,
            max_pending: 10_000,
            history: None,
            webhooks: Vec::new(),
            rules: None,
        }
    }
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("tokens", &self.tokens.len())
            .field("admins", &self.admins)
            .field("anonymous_remote", &self.anonymous_remote)
            .field("max_body", &self.max_body)
            .field("max_streams", &self.max_streams)
            .finish_non_exhaustive()
    }
}

/// What every request shares.
pub(crate) struct State {
    pub(crate) broker: BrokerHandle,
    pub(crate) config: HttpConfig,
    pub(crate) verified: auth::Verified,
    /// Signed-in dashboards.
    pub(crate) sessions: session::Sessions,
    pub(crate) pool: conn::Pool,
    pub(crate) streams: Arc<Semaphore>,
    /// Cancelled at shutdown: streams end.
    pub(crate) stop: CancellationToken,
    /// API requests so far.
    pub(crate) requests: AtomicU64,
    /// The history, if any is recorded.
    pub(crate) history: Option<Arc<history::Recorded>>,
    /// The webhooks.
    pub(crate) webhooks: webhook::Webhooks,
    /// Shared subscriptions of QoS 0 streams.
    pub(crate) hubs: hub::Hubs,
    /// The rules engine, if rules are loaded.
    pub(crate) rules: Option<rules::Rules>,
    /// The rules' task.
    rules_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The broker's own connection, for what the HTTP side keeps in it.
    trusted: tokio::sync::OnceCell<tern_tokio::AsyncClient>,
}

impl State {
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: SocketAddr,
    ) -> Result<auth::User, ApiError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        auth::authenticate(&self.config, &self.verified, &self.sessions, headers, peer).await
    }

    /// The HTTP side's own trusted connection (opened on first use).
    pub(crate) async fn trusted_client(&self) -> Result<tern_tokio::AsyncClient, ApiError> {
        self.trusted
            .get_or_try_init(|| async {
                let mut config = tern_client::ClientConfig::new("$tern/http");
                config.keep_alive = std::time::Duration::ZERO;
                let options = tern_tokio::ClientOptions {
                    config,
                    transport: tern_tokio::Transport::Local {
                        broker: self.broker.clone(),
                        identity: Some("$tern/http".into()),
                        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
                        trusted: true,
                    },
                    reconnect: Some(tern_tokio::Backoff::default()),
                    capacity: 16,
                    drop_oldest: false,
                    connect_timeout: std::time::Duration::from_secs(10),
                };
                let (client, mut events) = tern_tokio::AsyncClient::start(options)
                    .map_err(|e| ApiError::unavailable(e.to_string()))?;
                events
                    .first_connection()
                    .await
                    .map_err(|e| ApiError::unavailable(e.to_string()))?;
                // Its notices are read (and dropped).
                tokio::spawn(async move { while events.recv().await.is_some() {} });
                Ok::<_, ApiError>(client)
            })
            .await
            .cloned()
    }

    /// Whether `user` may read `filter` (the ACL's verdict on subscribing
    /// to it).
    pub(crate) async fn may_read(
        &self,
        user: &auth::User,
        filter: &TopicFilter,
    ) -> Result<(), ApiError> {
        history::api::check_read(self, user.name.clone(), filter).await
    }
}

/// The HTTP side of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    state: Arc<State>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.state.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// The HTTP side of the broker `broker` leads to; with history rules,
    /// its history file opened and its recorder started.
    ///
    /// # Errors
    ///
    /// The history file cannot be opened, or the rules file has an error
    /// (named with its file, line and key).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn new(broker: BrokerHandle, config: HttpConfig) -> io::Result<Gateway> {
        let history = match &config.history {
            Some(h) => {
                let rec = Arc::new(history::Recorded::open(h)?);
                rec.start(&broker);
                Some(rec)
            }
            None => None,
        };
        let webhooks = webhook::Webhooks::new(broker.clone())?;
        for def in &config.webhooks {
            webhooks.start(def.clone(), true).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("webhook: {e}"))
            })?;
        }
        let rules = match &config.rules {
            Some(rc) => Some(
                rules::Rules::load(&rc.file, None)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?,
            ),
            None => None,
        };
        let state = Arc::new(State {
            broker,
            streams: Arc::new(Semaphore::new(config.max_streams)),
            config,
            verified: auth::Verified::default(),
            sessions: session::Sessions::default(),
            pool: conn::Pool::default(),
            stop: CancellationToken::new(),
            requests: AtomicU64::new(0),
            history,
            webhooks,
            hubs: hub::Hubs::default(),
            rules,
            rules_task: std::sync::Mutex::new(None),
            trusted: tokio::sync::OnceCell::new(),
        });
        tokio::spawn(webhook::api::restore(state.clone()));
        if let (Some(r), Some(rc)) = (&state.rules, &state.config.rules) {
            let task = tokio::spawn(rules::start_in_broker(
                r.clone(),
                state.broker.clone(),
                rc.user.clone(),
                state.stop.clone(),
            ));
            *state.rules_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(Gateway { state })
    }

    /// The routes (who may be anonymous depends on the peer's address:
    /// [`Gateway::serve`] gives it to them).
    fn router(&self) -> Router {
        let api = Router::new()
            .route("/publish/{*topic}", post(publish::publish))
            .route(
                "/retained/{*filter}",
                get(retained::retained).delete(manage::clear_retained),
            )
            .route("/subscribe", get(subscribe::subscribe))
            .route("/clients", get(manage::clients))
            .route("/clients/{id}", get(manage::client).delete(manage::kick))
            .route("/stats", get(manage::stats))
            .route("/history/{*topic}", get(history::api::history))
            .route("/webhooks", get(webhook::api::list).post(webhook::api::add))
            .route(
                "/webhooks/{name}",
                axum::routing::delete(webhook::api::remove).patch(webhook::api::pause),
            )
            .route(
                "/session",
                get(session::whoami)
                    .post(session::sign_in)
                    .delete(session::sign_out),
            )
            .route("/rules", get(rules::api::list))
            .route("/rules/reload", post(rules::api::reload))
            .route("/rules/{name}", axum::routing::patch(rules::api::toggle));
        Router::new()
            .nest("/api/v1", api)
            .route("/metrics", get(manage::metrics))
            .route("/", get(dashboard::index))
            .route("/assets/{name}", get(dashboard::asset))
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                session::layer,
            ))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(DefaultBodyLimit::max(self.state.config.max_body))
            .with_state(self.state.clone())
    }

    /// Serves HTTP on `listener` until `shutdown` completes; then open
    /// streams end (with an `end` event) and requests under way finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        debug!(addr = %listener.local_addr()?, "serving HTTP");
        let app = self.router().into_make_service_with_connect_info::<Peer>();
        axum::serve(listener, app)
            .with_graceful_shutdown(self.until(shutdown))
            .await
    }

    /// Serves HTTPS on `listener`, with `tls` (the broker's rustls
    /// settings: a certificate reloaded there is used for new
    /// connections), until `shutdown` completes.
    pub async fn serve_tls(
        self,
        listener: tokio::net::TcpListener,
        tls: TlsSettings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        debug!(addr = %listener.local_addr()?, "serving HTTPS");
        let listener = listen::TlsListener::new(listener, tls)?;
        let app = self.router().into_make_service_with_connect_info::<Peer>();
        axum::serve(listener, app)
            .with_graceful_shutdown(self.until(shutdown))
            .await
    }

    /// `shutdown`, then the streams end.
    fn until(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let stop = self.state.stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    }

    /// The rules engine, if rules are loaded (to reload it on SIGHUP).
    pub fn rules(&self) -> Option<rules::Rules> {
        self.state.rules.clone()
    }

    /// Ends the streams and stops the rules, their state saved: call it
    /// before the broker stops.
    pub async fn stop(&self) {
        self.state.stop.cancel();
        let task = self
            .state
            .rules_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Ends every open stream (with an `end` event).
    pub fn close_streams(&self) {
        self.state.stop.cancel();
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
}
