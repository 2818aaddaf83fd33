//! The async client: `tern-client` on tokio, over TCP, TLS or WebSocket,
//! with reconnects.
//!
//! One task per client drives the connection; the handles share the
//! state machine with it behind a mutex. A call never waits on a queue:
//! `publish` hands the message to the state machine (whose queue is bounded
//! by its policy) and waits only for the server's acknowledgement, which
//! the task always reads. So publishing from the task that handles
//! messages cannot deadlock.

// The adapter owns the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use tern_client::{
    AckId, Client, ClientConfig, ClientEvent, ConfigError, Delivery, DisconnectReason, Message,
    PublishError, RequestError, RequestId, State,
};
use tern_codec::{
    AuthProperties, ConnAckProperties, Disconnect, ReasonCode, SubscribeFilter,
    SubscribeProperties, TopicFilter,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::transport::WsIo;

/// How to reach the server.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port (1883 by convention).
        port: u16,
    },
    /// TLS over TCP.
    Tls {
        /// Host name or address; also the name the certificate must carry.
        host: String,
        /// Port (8883 by convention).
        port: u16,
        /// The rustls configuration (see [`tls_client_config`](crate::tls_client_config)).
        config: Arc<rustls::ClientConfig>,
    },
    /// WebSocket (subprotocol `mqtt`): `ws://host:port/path`, or `wss://`
    /// with a TLS configuration.
    WebSocket {
        /// The URL.
        url: String,
        /// For `wss://` URLs.
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Transport::Tls { host, port, .. } => write!(f, "tls://{host}:{port}"),
            Transport::WebSocket { url, .. } => f.write_str(url),
        }
    }
}

/// Reconnection delays: exponential from `initial` to `max`, each with
/// full jitter (a random delay between half and all of it).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    fn delay(&self, attempt: u32, random: u64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        let half = base / 2;
        let jitter = half.as_nanos() as u64;
        half + Duration::from_nanos(if jitter == 0 { 0 } else { random % jitter })
    }
}

/// Everything the async client needs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The MQTT session: id, version, keep alive, will, limits, ...
    pub config: ClientConfig,
    /// How to reach the server.
    pub transport: Transport,
    /// Reconnect after a lost connection; `None` ends the client instead.
    pub reconnect: Option<Backoff>,
    /// How many QoS 0 messages may wait for the application; more are
    /// dropped (counted by [`AsyncClient::dropped`]). QoS 1/2 messages are
    /// never dropped: they are acknowledged when the application takes them,
    /// so the server's flow control bounds them (our Receive Maximum in
    /// 5.0; in 3.1.1, at most 65,535, one per packet identifier).
    pub capacity: usize,
    /// How long to wait for the TCP, TLS and WebSocket handshakes.
    pub connect_timeout: Duration,
}

impl ClientOptions {
    /// Plain TCP to `host:port`, reconnecting with the default backoff.
    pub fn new(config: ClientConfig, host: impl Into<String>, port: u16) -> ClientOptions {
        ClientOptions {
            config,
            transport: Transport::Tcp {
                host: host.into(),
                port,
            },
            reconnect: Some(Backoff::default()),
            capacity: 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The publish failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The request could not be made.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The client has stopped (disconnected, or it does not reconnect).
    #[error("the client has stopped")]
    Closed,
}

/// What the stream of a client yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// A message. With [`ClientConfig::manual_ack`], acknowledge it with
    /// [`AsyncClient::ack`]; otherwise taking it from the stream does.
    Message(Delivery),
    /// Connected (or reconnected).
    Connected {
        /// The server resumed the session.
        session_present: bool,
        /// The CONNACK's properties (5.0): assigned client id, limits,
        /// reason string, ...
        properties: ConnAckProperties,
    },
    /// The connection ended; the client reconnects if configured to.
    Disconnected(DisconnectReason),
    /// The client subscribed again, by itself, after the server lost the
    /// session ([`ClientConfig::resubscribe`]).
    Resubscribed(Vec<(TopicFilter, ReasonCode)>),
    /// The transport could not be opened.
    ConnectFailed(String),
    /// AUTH from the server (enhanced authentication); answer with
    /// [`AsyncClient::auth`].
    Auth {
        /// Continue Authentication, or Success.
        reason: ReasonCode,
        /// Method and data.
        properties: AuthProperties,
    },
}

enum Slot {
    Waiting(Option<Waker>),
    Published(Result<ReasonCode, PublishError>),
    Answered(Vec<ReasonCode>),
}

struct Inner {
    client: Client,
    waiters: HashMap<RequestId, Slot>,
    incoming: VecDeque<AsyncEvent>,
    /// QoS 0 messages in `incoming`.
    qos0: usize,
    /// Notices (anything but messages) in `incoming`.
    notices: usize,
    /// The stream's reader, waiting.
    reader: Option<Waker>,
    capacity: usize,
    manual_ack: bool,
    dropped: u64,
    /// `disconnect` was called: no reconnect.
    closing: bool,
    /// The stream was dropped: messages are acknowledged and discarded.
    reader_gone: bool,
    /// A refusal no reconnection will change.
    fatal: bool,
    /// The task has ended.
    finished: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the task: something to send.
    wake: Notify,
    /// Wakes `disconnect` callers: the task ended.
    done: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle to an MQTT client; clone it freely. The connection lives in
/// one task started by [`AsyncClient::start`].
///
/// ```no_run
/// use tern_client::{ClientConfig, Message};
/// use tern_codec::{QoS, TopicName};
/// use tern_tokio::{AsyncClient, ClientOptions, AsyncEvent};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, mut incoming) =
///     AsyncClient::start(ClientOptions::new(ClientConfig::new("doorbell"), "127.0.0.1", 1883))?;
/// let msg = Message::new(TopicName::new("home/doorbell/pressed")?, "1").with_qos(QoS::AtLeastOnce);
/// client.publish(msg).await?; // resolves at PUBACK
/// while let Some(event) = incoming.recv().await {
///     if let AsyncEvent::Message(m) = event {
///         println!("{}: {:?}", m.message.topic, m.message.payload);
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AsyncClient {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Held by every handle and the stream: when the last goes, the client
/// disconnects and its task ends.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        if !inner.closing {
            inner.closing = true;
            inner.client.disconnect(Instant::now());
        }
        drop(inner);
        self.0.wake.notify_one();
    }
}

impl std::fmt::Debug for AsyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient").finish_non_exhaustive()
    }
}

/// The stream of messages and connection notices of a client. It ends
/// when the client has stopped.
///
/// Once every [`AsyncClient`] handle and this stream are dropped, the
/// client disconnects (DISCONNECT, so no will) and its task ends.
pub struct Events {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl AsyncClient {
    /// Starts the client's task: it connects, and reconnects as `options`
    /// say. Fails only for a configuration the protocol cannot carry.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start(options: ClientOptions) -> Result<(AsyncClient, Events), ConfigError> {
        options.config.validate()?;
        let manual_ack = options.config.manual_ack;
        let mut config = options.config.clone();
        // Messages are acknowledged when the application takes them.
        config.manual_ack = true;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                client: Client::new(config),
                waiters: HashMap::new(),
                incoming: VecDeque::new(),
                qos0: 0,
                notices: 0,
                reader: None,
                capacity: options.capacity.max(1),
                manual_ack,
                dropped: 0,
                closing: false,
                reader_gone: false,
                fatal: false,
                finished: false,
            }),
            wake: Notify::new(),
            done: Notify::new(),
        });
        tokio::spawn(run(shared.clone(), options));
        let owner = Arc::new(Owner(shared.clone()));
        Ok((
            AsyncClient {
                shared: shared.clone(),
                _owner: owner.clone(),
            },
            Events {
                shared,
                _owner: owner,
            },
        ))
    }

    /// Publishes `message` and resolves when it is done: at PUBACK (QoS 1),
    /// PUBCOMP (QoS 2), or once queued for the transport (QoS 0). While
    /// offline it waits in the client's bounded queue. Dropping the future
    /// does not withdraw the message.
    pub async fn publish(&self, message: Message) -> Result<ReasonCode, ClientError> {
        let id = self.submit(|c, now| c.publish(message, now).map_err(ClientError::from))?;
        match self.outcome(id).await? {
            Slot::Published(r) => r.map_err(ClientError::from),
            _ => Err(ClientError::Closed),
        }
    }

    /// Hands `message` to the client without waiting for the outcome.
    pub fn try_publish(&self, message: Message) -> Result<(), ClientError> {
        let mut inner = self.shared.lock();
        if inner.finished || inner.closing {
            return Err(ClientError::Closed);
        }
        let now = Instant::now();
        inner.client.publish(message, now)?;
        drop(inner);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Subscribes and resolves with one reason code per filter (the
    /// granted QoS, or why not).
    pub async fn subscribe(
        &self,
        filters: Vec<SubscribeFilter>,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        self.subscribe_with(filters, SubscribeProperties::default())
            .await
    }

    /// Subscribes with properties (5.0: a Subscription Identifier).
    pub async fn subscribe_with(
        &self,
        filters: Vec<SubscribeFilter>,
        properties: SubscribeProperties,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let id = self.submit(|c, now| {
            c.subscribe(filters, properties, now)
                .map_err(ClientError::from)
        })?;
        self.answer(id).await
    }

    /// Unsubscribes and resolves with one reason code per filter.
    pub async fn unsubscribe(
        &self,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        let id = self.submit(|c, now| c.unsubscribe(filters, now).map_err(ClientError::from))?;
        self.answer(id).await
    }

    /// Waits for the outcome of request `id`.
    async fn outcome(&self, id: RequestId) -> Result<Slot, ClientError> {
        Wait {
            shared: &self.shared,
            id,
        }
        .await
    }

    /// The reason codes a SUBACK or UNSUBACK gave request `id`.
    async fn answer(&self, id: RequestId) -> Result<Vec<ReasonCode>, ClientError> {
        match self.outcome(id).await? {
            Slot::Answered(codes) => Ok(codes),
            _ => Err(ClientError::Closed),
        }
    }

    /// Acknowledges a message received with manual acknowledgement.
    pub fn ack(&self, id: AckId) -> bool {
        let ok = self.shared.lock().client.ack(id, Instant::now());
        self.shared.wake.notify_one();
        ok
    }

    /// Sends AUTH (enhanced authentication).
    pub fn auth(&self, reason: ReasonCode, data: Option<Bytes>) {
        self.shared.lock().client.auth(reason, data, Instant::now());
        self.shared.wake.notify_one();
    }

    /// QoS 0 messages dropped because the application did not take them.
    pub fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }

    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().client.state() == State::Connected
    }

    /// Sends DISCONNECT (the server drops the will), stops reconnecting,
    /// and resolves once the task has ended. Publishes not yet done fail
    /// with [`ClientError::Closed`].
    pub async fn disconnect(&self) {
        self.disconnect_with(Disconnect::new(ReasonCode::Success))
            .await;
    }

    /// As [`AsyncClient::disconnect`], with this DISCONNECT (5.0: say
    /// Disconnect with Will Message to have the server publish the will).
    pub async fn disconnect_with(&self, disconnect: Disconnect) {
        {
            let mut inner = self.shared.lock();
            inner.closing = true;
            inner.client.disconnect_with(disconnect, Instant::now());
        }
        self.shared.wake.notify_one();
        loop {
            let done = self.shared.done.notified();
            if self.shared.lock().finished {
                return;
            }
            done.await;
        }
    }

    fn submit(
        &self,
        f: impl FnOnce(&mut Client, Instant) -> Result<RequestId, ClientError>,
    ) -> Result<RequestId, ClientError> {
        let mut inner = self.shared.lock();
        if inner.finished || inner.closing {
            return Err(ClientError::Closed);
        }
        let id = f(&mut inner.client, Instant::now())?;
        inner.waiters.insert(id, Slot::Waiting(None));
        // Outcomes decided at once (a message dropped from a full queue
        // while offline) reach their waiters now, not at the next
        // connection.
        if inner.finished || inner.client.state() == State::Disconnected {
            dispatch(&mut inner);
        }
        drop(inner);
        self.shared.wake.notify_one();
        Ok(id)
    }
}

/// Waits for the outcome of request `id`; forgets it when dropped.
struct Wait<'a> {
    shared: &'a Shared,
    id: RequestId,
}

impl Future for Wait<'_> {
    type Output = Result<Slot, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut inner = self.shared.lock();
        let finished = inner.finished;
        match inner.waiters.get_mut(&self.id) {
            Some(Slot::Waiting(w)) if !finished => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Some(Slot::Waiting(_)) | None => {
                inner.waiters.remove(&self.id);
                Poll::Ready(Err(ClientError::Closed))
            }
            Some(_) => Poll::Ready(Ok(inner.waiters.remove(&self.id).expect("present"))),
        }
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiters.remove(&self.id);
    }
}

impl Events {
    /// The next message or notice; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<AsyncEvent> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<AsyncEvent>> {
        let mut inner = self.shared.lock();
        match inner.incoming.pop_front() {
            Some(AsyncEvent::Message(mut d)) => {
                match d.ack {
                    None => inner.qos0 -= 1,
                    Some(id) if !inner.manual_ack => {
                        d.ack = None;
                        inner.client.ack(id, Instant::now());
                        drop(inner);
                        self.shared.wake.notify_one();
                    }
                    Some(_) => {}
                }
                Poll::Ready(Some(AsyncEvent::Message(d)))
            }
            Some(item) => {
                inner.notices -= 1;
                Poll::Ready(Some(item))
            }
            None if inner.finished => Poll::Ready(None),
            None => {
                inner.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        // Nobody will take these: acknowledge them, and from now on every
        // message as it comes, so the server's window does not stall.
        let mut inner = self.shared.lock();
        inner.reader_gone = true;
        let now = Instant::now();
        for item in std::mem::take(&mut inner.incoming) {
            if let AsyncEvent::Message(Delivery { ack: Some(id), .. }) = item {
                inner.client.ack(id, now);
            }
        }
        inner.qos0 = 0;
        inner.notices = 0;
        drop(inner);
        self.shared.wake.notify_one();
    }
}

impl Stream for Events {
    type Item = AsyncEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AsyncEvent>> {
        self.get_mut().poll_recv(cx)
    }
}

trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// The client's task: connect, drive, wait, again.
async fn run(shared: Arc<Shared>, options: ClientOptions) {
    // Whatever ends the task (a panic included), callers stop waiting.
    let _finish = Finish(&shared);
    let mut attempt = 0u32;
    let mut random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1;
    loop {
        if shared.lock().closing {
            break;
        }
        let opening = tokio::time::timeout(options.connect_timeout, open(&options.transport));
        let opened = tokio::select! {
            o = opening => o,
            () = closing(&shared) => break,
        };
        match opened {
            Ok(Ok(io)) => {
                let started = tokio::time::Instant::now();
                match drive(&shared, io).await {
                    End::Fatal => break,
                    // A connection that lasted resets the backoff; one the
                    // server keeps ending at once (a session taken over by
                    // another client with the same id) does not.
                    End::Lost if started.elapsed() >= STABLE => attempt = 0,
                    End::Lost => {}
                }
            }
            Ok(Err(e)) => {
                debug!(transport = ?options.transport, error = %e, "connect failed");
                notice(&shared, AsyncEvent::ConnectFailed(e.to_string()));
            }
            Err(_) => notice(
                &shared,
                AsyncEvent::ConnectFailed("connect timed out".into()),
            ),
        }
        let Some(backoff) = options.reconnect else {
            break;
        };
        // xorshift: jitter needs no more than that.
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let until = tokio::time::Instant::now() + backoff.delay(attempt, random);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep_until(until) => {}
            () = closing(&shared) => break,
        }
    }
}

/// How long the last packets (DISCONNECT) may take to write when a
/// connection ends.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A connection that lasted this long resets the reconnection backoff.
const STABLE: Duration = Duration::from_secs(10);

/// Resolves once `disconnect` (or the last handle's drop) asked the client
/// to stop; other wake-ups only queue work.
async fn closing(shared: &Shared) {
    loop {
        let woken = shared.wake.notified();
        if shared.lock().closing {
            return;
        }
        woken.await;
    }
}

/// Marks the client finished when its task ends, however it ends.
struct Finish<'a>(&'a Shared);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.finished = true;
        dispatch(&mut inner);
        for slot in inner.waiters.values_mut() {
            if let Slot::Waiting(w) = slot {
                if let Some(w) = w.take() {
                    w.wake();
                }
            }
        }
        if let Some(w) = inner.reader.take() {
            w.wake();
        }
        drop(inner);
        self.0.done.notify_waiters();
    }
}

fn notice(shared: &Shared, item: AsyncEvent) {
    let mut inner = shared.lock();
    inner.push_notice(item);
    if let Some(w) = inner.reader.take() {
        w.wake();
    }
}

/// Connection notices kept for an application that does not read them (a
/// publisher that never looks at its stream): the oldest go first.
const MAX_NOTICES: usize = 64;

impl Inner {
    fn push_notice(&mut self, item: AsyncEvent) {
        if self.notices >= MAX_NOTICES {
            if let Some(i) = self
                .incoming
                .iter()
                .position(|i| !matches!(i, AsyncEvent::Message(_)))
            {
                self.incoming.remove(i);
                self.notices -= 1;
            }
        }
        self.notices += 1;
        self.incoming.push_back(item);
    }
}

async fn open(t: &Transport) -> io::Result<Box<dyn ByteStream>> {
    match t {
        Transport::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s))
        }
        Transport::Tls { host, port, config } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(tls(host, config, s).await?))
        }
        Transport::WebSocket { url, tls: config } => {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            use tokio_tungstenite::tungstenite::http::HeaderValue;
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            req.headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
            let uri = req.uri().clone();
            let secure = uri.scheme_str() == Some("wss");
            let host = uri.host().unwrap_or("localhost").to_owned();
            let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
            let s = TcpStream::connect((host.as_str(), port)).await?;
            s.set_nodelay(true)?;
            if secure {
                let config = config.as_ref().ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "wss:// needs a TLS configuration",
                    )
                })?;
                let s = tls(&host, config, s).await?;
                let (ws, _) = tokio_tungstenite::client_async(req, s)
                    .await
                    .map_err(io::Error::other)?;
                Ok(Box::new(WsIo::new(ws)))
            } else {
                let (ws, _) = tokio_tungstenite::client_async(req, s)
                    .await
                    .map_err(io::Error::other)?;
                Ok(Box::new(WsIo::new(ws)))
            }
        }
    }
}

async fn tls(
    host: &str,
    config: &Arc<rustls::ClientConfig>,
    s: TcpStream,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, s)
        .await
}

/// How a connection ended.
enum End {
    /// Reconnect (if configured).
    Lost,
    /// Do not: the configuration is invalid, or the server refused us for
    /// good (bad credentials, not authorized, banned, ...).
    Fatal,
}

/// One connection: CONNECT, then bytes both ways until it ends. Reads,
/// writes, timers and calls are served together: a peer that stops
/// reading stalls only the writes.
async fn drive(shared: &Shared, io: Box<dyn ByteStream>) -> End {
    {
        let mut inner = shared.lock();
        if inner.closing {
            return End::Lost;
        }
        inner.client.connect(Instant::now());
    }
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Bytes being written, and whether a flush is owed.
    let mut writing = Bytes::new();
    let mut unflushed = false;
    loop {
        let (deadline, state) = {
            let mut inner = shared.lock();
            // Events first: passing them on may queue packets (acks).
            dispatch(&mut inner);
            if writing.is_empty() {
                if let Some(out) = inner.client.poll_transmit() {
                    writing = out;
                }
            }
            (inner.client.poll_timeout(), inner.client.state())
        };
        if state == State::Disconnected {
            // The last words (DISCONNECT), if the peer takes them soon.
            let last = async {
                wr.write_all(&writing).await?;
                loop {
                    let out = shared.lock().client.poll_transmit();
                    let Some(out) = out else { break };
                    wr.write_all(&out).await?;
                }
                wr.shutdown().await
            };
            let _ = tokio::time::timeout(CLOSE_GRACE, last).await;
            return fatal(shared);
        }
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let write = async {
            if writing.is_empty() {
                wr.flush().await.map(|()| 0)
            } else {
                wr.write(&writing).await
            }
        };
        tokio::select! {
            r = write, if !writing.is_empty() || unflushed => match r {
                Ok(n) if n > 0 || writing.is_empty() => {
                    writing.advance(n);
                    if writing.is_empty() {
                        // Let go of the buffer, so that the state machine
                        // writes into it again instead of a new one.
                        writing = Bytes::new();
                    }
                    unflushed = n > 0;
                }
                Ok(_) | Err(_) => {
                    lost(shared);
                    return fatal(shared);
                }
            },
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    lost(shared);
                    return fatal(shared);
                }
                Ok(_) => shared.lock().client.handle_read(&mut buf, Instant::now()),
            },
            () = shared.wake.notified() => {}
            () = sleep => shared.lock().client.handle_timeout(Instant::now()),
        }
        if buf.is_empty() && buf.capacity() < 1024 {
            buf = BytesMut::with_capacity(8 * 1024);
        }
    }
}

/// After a connection: whether the last reason it ended says to stop.
fn fatal(shared: &Shared) -> End {
    let mut inner = shared.lock();
    dispatch(&mut inner);
    if inner.fatal {
        End::Fatal
    } else {
        End::Lost
    }
}

/// The transport is gone: tell the state machine and pass on its events.
fn lost(shared: &Shared) {
    let mut inner = shared.lock();
    inner.client.handle_closed(Instant::now());
    // Bytes it queued for a dead transport are dropped; what matters is
    // kept in its session state.
    while inner.client.poll_transmit().is_some() {}
    dispatch(&mut inner);
}

/// Moves the state machine's events to waiters and the stream. Returns how
/// the connection ended if an event says it did.
fn dispatch(inner: &mut Inner) -> Option<End> {
    let mut end = None;
    let mut wake_reader = false;
    while let Some(e) = inner.client.poll_event() {
        match e {
            ClientEvent::Published { id, result } => finish(inner, id, Slot::Published(result)),
            ClientEvent::Subscribed { id, reason_codes }
            | ClientEvent::Unsubscribed { id, reason_codes } => {
                finish(inner, id, Slot::Answered(reason_codes))
            }
            ClientEvent::Message(d) => {
                if inner.reader_gone {
                    // Nobody reads: acknowledge, so the server's window
                    // does not stall.
                    if let Some(id) = d.ack {
                        inner.client.ack(id, Instant::now());
                    }
                    continue;
                }
                if d.ack.is_none() {
                    if inner.qos0 >= inner.capacity {
                        inner.dropped += 1;
                        if inner.dropped.is_power_of_two() {
                            warn!(
                                dropped = inner.dropped,
                                "QoS 0 messages dropped: the application does not keep up"
                            );
                        }
                        continue;
                    }
                    inner.qos0 += 1;
                }
                inner.incoming.push_back(AsyncEvent::Message(d));
                wake_reader = true;
            }
            ClientEvent::Connected {
                session_present,
                properties,
            } => {
                inner.push_notice(AsyncEvent::Connected {
                    session_present,
                    properties,
                });
                wake_reader = true;
            }
            ClientEvent::Disconnected { reason } => {
                let fatal = reason.is_permanent();
                inner.fatal |= fatal;
                end = Some(if fatal { End::Fatal } else { End::Lost });
                inner.push_notice(AsyncEvent::Disconnected(reason));
                wake_reader = true;
            }
            ClientEvent::Resubscribed { results } => {
                inner.push_notice(AsyncEvent::Resubscribed(results));
                wake_reader = true;
            }
            ClientEvent::Auth { reason, properties } => {
                inner.push_notice(AsyncEvent::Auth { reason, properties });
                wake_reader = true;
            }
            // What this version of the adapter does not know of.
            _ => {}
        }
    }
    if wake_reader {
        if let Some(w) = inner.reader.take() {
            w.wake();
        }
    }
    end
}

fn finish(inner: &mut Inner, id: RequestId, outcome: Slot) {
    if let Some(slot) = inner.waiters.get_mut(&id) {
        if let Slot::Waiting(Some(w)) = std::mem::replace(slot, outcome) {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_client::Delivery;

    #[test]
    fn notices_are_bounded_and_messages_are_kept() {
        let mut inner = Inner {
            client: Client::new(ClientConfig::new("t")),
            waiters: HashMap::new(),
            incoming: VecDeque::new(),
            qos0: 0,
            notices: 0,
            reader: None,
            capacity: 10,
            manual_ack: false,
            dropped: 0,
            closing: false,
            reader_gone: false,
            fatal: false,
            finished: false,
        };
        let m = Message::new(tern_codec::TopicName::from_static("t"), "x");
        inner.incoming.push_back(AsyncEvent::Message(Delivery {
            message: m,
            dup: false,
            ack: None,
        }));
        for i in 0..1000 {
            inner.push_notice(AsyncEvent::ConnectFailed(i.to_string()));
        }
        assert_eq!(inner.notices, MAX_NOTICES);
        assert_eq!(inner.incoming.len(), MAX_NOTICES + 1);
        assert!(matches!(inner.incoming[0], AsyncEvent::Message(_)));
        // The newest are kept.
        assert_eq!(
            inner.incoming.back(),
            Some(&AsyncEvent::ConnectFailed("999".into()))
        );
    }
}
