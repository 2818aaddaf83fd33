//! TLS and WebSocket connections: a tokio task each (their handshakes are
//! async, their state large). After the handshake and the first packet the
//! task becomes a small future that shares a `Link` with its shard: the
//! bytes to write, the read credit, the waker.

use std::future::Future;
use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::accept::{first_packet, ConnConfig};
use super::inbox::{Link, ShardTx, ToShard};
use super::write::{advance, io_slices, MAX_SLICES};
use super::{Kind, Live, LiveGuard, READ_CHUNK};
use crate::transport::{common_name, websocket};

/// A TLS or WebSocket connection's byte stream, boxed: its state is large.
pub(super) type Io = Pin<Box<dyn ByteStream>>;

pub(super) trait ByteStream: AsyncRead + AsyncWrite + Send {}
impl<T: AsyncRead + AsyncWrite + Send> ByteStream for T {}

/// A connection's task: its start (handshakes, the first packet, the choice
/// of shard) is boxed and freed once done; what stays for the connection's
/// life is a [`Running`] of a few words.
pub(super) struct ConnTask {
    pub(super) start: Option<Pin<Box<dyn Future<Output = Option<Running>> + Send>>>,
    pub(super) running: Option<Running>,
    pub(super) _live: LiveGuard,
}

impl ConnTask {
    /// An in-process connection's task.
    pub(super) fn local(
        io: Io,
        identity: Option<String>,
        trusted: bool,
        peer: SocketAddr,
        shards: Arc<Vec<ShardTx>>,
        cfg: Arc<ConnConfig>,
        live: &Arc<Live>,
    ) -> ConnTask {
        ConnTask {
            start: Some(Box::pin(local(io, identity, trusted, peer, shards, cfg))),
            running: None,
            _live: LiveGuard::new(live),
        }
    }

    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        kind: Kind,
        shards: Arc<Vec<ShardTx>>,
        cfg: Arc<ConnConfig>,
        live: &Arc<Live>,
    ) -> ConnTask {
        ConnTask {
            start: Some(Box::pin(start(stream, peer, kind, shards, cfg))),
            running: None,
            _live: LiveGuard::new(live),
        }
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Some(start) = &mut this.start {
            let running = ready!(start.as_mut().poll(cx));
            this.start = None;
            match running {
                Some(r) => this.running = Some(r),
                None => return Poll::Ready(()),
            }
        }
        match &mut this.running {
            Some(r) => Pin::new(r).poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Completes the transport's handshake (TLS, WebSocket), reads the first
/// packet, and hands the connection (and its slot) to its shard; a
/// connection that does not get there gives its slot back.
pub(super) async fn start(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shards: Arc<Vec<ShardTx>>,
    cfg: Arc<ConnConfig>,
) -> Option<Running> {
    let running = handshake(stream, peer, kind, shards, cfg.clone()).await;
    if running.is_none() {
        cfg.release();
    }
    running
}

pub(super) async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    shards: Arc<Vec<ShardTx>>,
    cfg: Arc<ConnConfig>,
) -> Option<Running> {
    let _ = stream.set_nodelay(true);
    let (io, identity) = secure(stream, peer, kind, &cfg).await?;
    enter(io, identity, false, peer, shards, cfg).await
}

/// An in-process connection (a [`BrokerHandle`](super::BrokerHandle)'s
/// pipe): no handshake; the identity, when given, is the user name, as a
/// client certificate's would be; a trusted one is not put to the
/// authorization policy (the server's own adapters). Gives its slot back
/// if it does not get to its shard.
pub(super) async fn local(
    io: Io,
    identity: Option<String>,
    trusted: bool,
    peer: SocketAddr,
    shards: Arc<Vec<ShardTx>>,
    cfg: Arc<ConnConfig>,
) -> Option<Running> {
    let running = enter(io, identity, trusted, peer, shards, cfg.clone()).await;
    if running.is_none() {
        cfg.release();
    }
    running
}

/// Reads the first packet (within the connect timeout) and hands the
/// connection to the shard its client id lives on.
async fn enter(
    mut io: Io,
    identity: Option<String>,
    trusted: bool,
    peer: SocketAddr,
    shards: Arc<Vec<ShardTx>>,
    cfg: Arc<ConnConfig>,
) -> Option<Running> {
    let mut buf = BytesMut::new();
    let placed = tokio::time::timeout(
        cfg.connect_timeout,
        first_packet(&mut io, &mut buf, cfg.max_packet_size),
    )
    .await;
    let shard = match placed {
        Ok(Ok(id)) => cfg.shard(id.as_deref(), shards.len()),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection ended before CONNECT");
            return None;
        }
        Err(_) => {
            debug!(%peer, "no CONNECT in time");
            return None;
        }
    };
    let tx = shards[shard].clone();
    let budget = cfg.max_packet_size as usize + READ_CHUNK;
    let link = Arc::new(Link::new(budget.saturating_sub(buf.len())));
    let accept = ToShard::Accept {
        link: link.clone(),
        data: buf,
        peer,
        identity,
        trusted,
    };
    tx.send(accept).ok()?;
    Some(Running {
        io,
        link,
        tx,
        batch: Vec::new(),
        batch_len: 0,
        flushing: false,
        state: RunState::Drive,
        deadline: None,
        grace: cfg.close_grace,
    })
}

/// The transport's own handshake (TLS, WebSocket), within the connect
/// timeout: the byte stream, and the user name a client certificate
/// proves (when the listener takes its common name as one).
async fn secure(
    stream: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    cfg: &ConnConfig,
) -> Option<(Io, Option<String>)> {
    match kind {
        // Plain TCP is accepted by the shards.
        Kind::Tcp => None,
        Kind::Tls(tls) => {
            let stream = within(cfg, peer, "TLS", tls.acceptor().accept(stream)).await?;
            let identity = if tls.cn_as_username {
                common_name(stream.get_ref().1.peer_certificates())
            } else {
                None
            };
            Some((Box::pin(stream), identity))
        }
        Kind::Ws(path) => {
            // At least 64 KiB: a message may hold several small packets.
            let max = (cfg.max_packet_size as usize).max(64 * 1024);
            let ws = within(cfg, peer, "WebSocket", websocket(stream, path, max)).await?;
            Some((Box::pin(ws), None))
        }
    }
}

/// A handshake within the connect timeout; its failure is logged (a TLS
/// failure at info: a client with a wrong certificate is worth seeing).
async fn within<T>(
    cfg: &ConnConfig,
    peer: SocketAddr,
    what: &str,
    handshake: impl Future<Output = io::Result<T>>,
) -> Option<T> {
    match tokio::time::timeout(cfg.connect_timeout, handshake).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) if what == "TLS" => {
            info!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "{what} handshake failed");
            None
        }
        Err(_) => {
            debug!(%peer, "{what} handshake timed out");
            None
        }
    }
}

/// A connection in its shard's hands, as one small future: writes what the
/// shard queued (one vectored write per wake-up where the stream supports
/// it), reads while the core keeps up, and reports both to the shard. Holds
/// no buffer between wake-ups: a read goes through the stack and leaves as
/// a buffer of its exact size.
pub(super) struct Running {
    pub(super) io: Io,
    pub(super) link: Arc<Link>,
    pub(super) tx: ShardTx,
    pub(super) batch: Vec<Bytes>,
    pub(super) batch_len: usize,
    pub(super) flushing: bool,
    pub(super) state: RunState,
    /// Once the shard closed the connection: how long the last writes may
    /// take (a peer that does not read does not keep the task).
    pub(super) deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    pub(super) grace: Duration,
}

pub(super) enum RunState {
    Drive,
    /// Everything queued was written; the stream is being shut down.
    Shutdown,
}

impl Future for Running {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let RunState::Drive = this.state {
            match ready!(this.poll_drive(cx)) {
                true => this.state = RunState::Shutdown,
                false => {
                    this.closed();
                    return Poll::Ready(());
                }
            }
        }
        // Shutting down, within the deadline.
        let late = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if !late {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx)).ok();
        }
        this.closed();
        Poll::Ready(())
    }
}

impl Running {
    /// Tells the shard the connection is gone (it ignores a connection it
    /// already forgot).
    pub(super) fn closed(&self) {
        if let Some(conn) = self.link.lock().conn {
            let _ = self.tx.send(ToShard::Closed { conn });
        }
    }

    /// Returns `true` when the shard closed the connection and everything
    /// queued was written, `false` when the peer or the stream ended it.
    pub(super) fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            let (conn, close, can_read) = {
                let mut st = self.link.lock();
                if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.waker = Some(cx.waker().clone());
                }
                if self.batch.is_empty() && !self.flushing && !st.out.is_empty() {
                    self.batch = std::mem::take(&mut st.out);
                    self.batch_len = self.batch.iter().map(Bytes::len).sum();
                }
                (st.conn, st.close, st.credit >= READ_CHUNK)
            };
            if close {
                if conn.is_none() {
                    // Refused by the shard (it said why).
                    return Poll::Ready(false);
                }
                let grace = self.grace;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
            }
            let mut progress = false;
            if !self.batch.is_empty() {
                match poll_write_batch(self.io.as_mut(), cx, &mut self.batch) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
                self.flushing = self.batch.is_empty();
            }
            if self.flushing {
                match self.io.as_mut().poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.flushing = false;
                        progress = true;
                        if let Some(conn) = conn {
                            let n = self.batch_len;
                            let _ = self.tx.send(ToShard::Written { conn, n });
                        }
                        // Give the drained queue's memory back.
                        self.batch = Vec::new();
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
            }
            let idle = self.batch.is_empty() && !self.flushing;
            if close && idle && self.link.lock().out.is_empty() {
                return Poll::Ready(true);
            }
            if let (Some(conn), true, false) = (conn, can_read, close) {
                let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut rb = ReadBuf::uninit(&mut raw);
                match self.io.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => return Poll::Ready(false),
                    Poll::Ready(Ok(())) => {
                        let data = BytesMut::from(rb.filled());
                        self.link.lock().credit -= data.len();
                        if self.tx.send(ToShard::Read { conn, data }).is_err() {
                            return Poll::Ready(false);
                        }
                        progress = true;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(false),
                    Poll::Pending => {}
                }
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }
}

/// Writes some of `batch` (one system call), dropping what was written.
pub(super) fn poll_write_batch<S: AsyncWrite + ?Sized>(
    mut stream: Pin<&mut S>,
    cx: &mut Context<'_>,
    batch: &mut Vec<Bytes>,
) -> Poll<io::Result<()>> {
    if batch.len() > 1 && !stream.is_write_vectored() {
        // One buffer, one write, rather than a write per packet.
        let mut joined = BytesMut::with_capacity(batch.iter().map(Bytes::len).sum());
        for b in batch.drain(..) {
            joined.extend_from_slice(&b);
        }
        batch.push(joined.freeze());
    }
    let n = if batch.len() == 1 {
        ready!(stream.as_mut().poll_write(cx, &batch[0]))?
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let (k, _) = io_slices(batch, &mut slices);
        ready!(stream.as_mut().poll_write_vectored(cx, &slices[..k]))?
    };
    if n == 0 {
        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
    }
    advance(batch, n);
    Poll::Ready(Ok(()))
}

/// New TLS and WebSocket connections, as the listeners' tasks accept them.
pub(super) type Accepted = mpsc::UnboundedReceiver<(TcpStream, SocketAddr, Kind)>;

/// Accepts on the TLS and WebSocket listeners, one task each; the
/// connections come out of the receiver (closed at once when there are no
/// such listeners).
pub(super) fn accept(listeners: Vec<(TcpListener, Kind)>) -> (JoinSet<()>, Accepted) {
    let mut accepts = JoinSet::new();
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    for (l, kind) in listeners {
        let tx = conn_tx.clone();
        accepts.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((s, peer)) => {
                        if tx.send((s, peer, kind.clone())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }
    (accepts, conn_rx)
}
