//! The async client: `tern-client` on tokio, over TCP, TLS or WebSocket,
//! with reconnects.
//!
//! The rooms: `options` (how to reach the server, reconnection delays),
//! this module (the handle, the stream of events, what they share with the
//! task), `task` (the task: connect, drive the connection, reconnect).
//!
//! One task per client drives the connection; the handles share the
//! state machine with it behind a mutex. A call never waits on a queue:
//! `publish` hands the message to the state machine (whose queue is bounded
//! by its policy) and waits only for the server's acknowledgement, which
//! the task always reads. So publishing from the task that handles
//! messages cannot deadlock.

// The adapter owns the clock.
#![allow(clippy::disallowed_methods)]

mod options;
mod task;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use tern_client::{
    AckId, Client, ConfigError, Delivery, DisconnectReason, Message, PublishError, RequestId, State,
};
use tern_codec::{
    AuthProperties, ConnAckProperties, Disconnect, ReasonCode, SubscribeFilter,
    SubscribeProperties, TopicFilter,
};
use tokio::sync::Notify;

pub use options::{Backoff, ClientError, ClientOptions, Transport};
use task::{dispatch, run};

/// A connection the server accepted: what its CONNACK said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The server resumed the session.
    pub session_present: bool,
    /// The CONNACK's properties (5.0): assigned client id, limits, ...
    pub properties: ConnAckProperties,
}

/// What the stream of a client yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// A message. With [`ClientConfig::manual_ack`](tern_client::ClientConfig::manual_ack), acknowledge it with
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
    /// session ([`ClientConfig::resubscribe`](tern_client::ClientConfig::resubscribe)).
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

pub(super) enum Slot {
    Waiting(Option<Waker>),
    Published(Result<ReasonCode, PublishError>),
    Answered(Vec<ReasonCode>),
}

pub(super) struct Inner {
    pub(super) client: Client,
    pub(super) waiters: HashMap<RequestId, Slot>,
    pub(super) incoming: VecDeque<AsyncEvent>,
    /// QoS 0 messages in `incoming`.
    qos0: usize,
    /// Notices (anything but messages) in `incoming`.
    pub(super) notices: usize,
    /// The stream's reader, waiting.
    pub(super) reader: Option<Waker>,
    pub(super) capacity: usize,
    pub(super) drop_oldest: bool,
    pub(super) manual_ack: bool,
    pub(super) dropped: u64,
    /// `disconnect` was called: no reconnect.
    pub(super) closing: bool,
    /// The stream was dropped: messages are acknowledged and discarded.
    pub(super) reader_gone: bool,
    /// A refusal no reconnection will change.
    pub(super) fatal: bool,
    /// The task has ended.
    pub(super) finished: bool,
}

pub(super) struct Shared {
    pub(super) inner: Mutex<Inner>,
    /// Wakes the task: something to send.
    pub(super) wake: Notify,
    /// Wakes `disconnect` callers: the task ended.
    pub(super) done: Notify,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
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
pub(super) struct Owner(Arc<Shared>);

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
                drop_oldest: options.drop_oldest,
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

    pub(super) fn submit(
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
pub(super) struct Wait<'a> {
    pub(super) shared: &'a Shared,
    pub(super) id: RequestId,
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

    /// Waits for the client's first connection, as a program does right
    /// after [`AsyncClient::start`]: the CONNACK once the server accepted
    /// it; an error if the transport could not be opened, the server
    /// refused or dropped the connection first, or the client stopped.
    /// Other notices that come first are passed over. (Later, the client
    /// reconnects by itself; [`AsyncEvent::Connected`] says when.)
    pub async fn first_connection(&mut self) -> Result<Connected, ClientError> {
        loop {
            match self.recv().await {
                Some(AsyncEvent::Connected {
                    session_present,
                    properties,
                }) => {
                    return Ok(Connected {
                        session_present,
                        properties,
                    })
                }
                Some(AsyncEvent::ConnectFailed(e)) => return Err(ClientError::Connect(e)),
                Some(AsyncEvent::Disconnected(r)) => return Err(ClientError::Disconnected(r)),
                Some(_) => {}
                None => return Err(ClientError::Closed),
            }
        }
    }

    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<AsyncEvent>> {
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

#[cfg(test)]
mod tests {
    use super::task::MAX_NOTICES;
    use super::*;
    use tern_client::ClientConfig;
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
            drop_oldest: false,
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
