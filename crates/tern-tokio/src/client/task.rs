//! The client's task: connect, drive the connection (reads, writes,
//! timers and calls in one select), reconnect with backoff.

// The adapter owns the clock.
#![allow(clippy::disallowed_methods)]

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tern_client::{ClientEvent, RequestId, State};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::transport::WsIo;

use super::{AsyncEvent, ClientOptions, Inner, Shared, Slot, Transport};

pub(super) trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// The client's task: connect, drive, wait, again.
pub(super) async fn run(shared: Arc<Shared>, options: ClientOptions) {
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
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A connection that lasted this long resets the reconnection backoff.
pub(super) const STABLE: Duration = Duration::from_secs(10);

/// Resolves once `disconnect` (or the last handle's drop) asked the client
/// to stop; other wake-ups only queue work.
pub(super) async fn closing(shared: &Shared) {
    loop {
        let woken = shared.wake.notified();
        if shared.lock().closing {
            return;
        }
        woken.await;
    }
}

/// Marks the client finished when its task ends, however it ends.
pub(super) struct Finish<'a>(&'a Shared);

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

pub(super) fn notice(shared: &Shared, item: AsyncEvent) {
    let mut inner = shared.lock();
    inner.push_notice(item);
    if let Some(w) = inner.reader.take() {
        w.wake();
    }
}

/// Connection notices kept for an application that does not read them (a
/// publisher that never looks at its stream): the oldest go first.
pub(super) const MAX_NOTICES: usize = 64;

impl Inner {
    pub(super) fn push_notice(&mut self, item: AsyncEvent) {
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

pub(super) async fn open(t: &Transport) -> io::Result<Box<dyn ByteStream>> {
    match t {
        Transport::Local {
            broker,
            identity,
            peer,
            trusted,
        } => Ok(Box::new(match (trusted, identity) {
            (true, Some(name)) => broker.connect_trusted(name, *peer)?,
            _ => broker.connect(identity.clone(), *peer)?,
        })),
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

pub(super) async fn tls(
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
pub(super) enum End {
    /// Reconnect (if configured).
    Lost,
    /// Do not: the configuration is invalid, or the server refused us for
    /// good (bad credentials, not authorized, banned, ...).
    Fatal,
}

/// One connection: CONNECT, then bytes both ways until it ends. Reads,
/// writes, timers and calls are served together: a peer that stops
/// reading stalls only the writes.
pub(super) async fn drive(shared: &Shared, io: Box<dyn ByteStream>) -> End {
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
pub(super) fn fatal(shared: &Shared) -> End {
    let mut inner = shared.lock();
    dispatch(&mut inner);
    if inner.fatal {
        End::Fatal
    } else {
        End::Lost
    }
}

/// The transport is gone: tell the state machine and pass on its events.
pub(super) fn lost(shared: &Shared) {
    let mut inner = shared.lock();
    inner.client.handle_closed(Instant::now());
    // Bytes it queued for a dead transport are dropped; what matters is
    // kept in its session state.
    while inner.client.poll_transmit().is_some() {}
    dispatch(&mut inner);
}

/// Moves the state machine's events to waiters and the stream. Returns how
/// the connection ended if an event says it did.
pub(super) fn dispatch(inner: &mut Inner) -> Option<End> {
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
                    if inner.qos0 >= inner.capacity && inner.drop_oldest {
                        // The oldest QoS 0 message waiting makes room.
                        let oldest = inner
                            .incoming
                            .iter()
                            .position(|e| matches!(e, AsyncEvent::Message(m) if m.ack.is_none()));
                        if let Some(i) = oldest {
                            inner.incoming.remove(i);
                            inner.qos0 -= 1;
                            inner.dropped += 1;
                        }
                    }
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

pub(super) fn finish(inner: &mut Inner, id: RequestId, outcome: Slot) {
    if let Some(slot) = inner.waiters.get_mut(&id) {
        if let Slot::Waiting(Some(w)) = std::mem::replace(slot, outcome) {
            w.wake();
        }
    }
}
