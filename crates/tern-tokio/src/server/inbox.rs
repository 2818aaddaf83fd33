//! What crosses into a shard from other threads: its inbox (`ToShard`
//! messages and the `ShardTx` that sends them and wakes the shard's poll),
//! and the `Link` a TLS or WebSocket connection's task shares with its
//! shard (the bytes to write, the read credit, the task's waker).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use tern_broker::router::Forward;
use tern_broker::{ConnId, Stats, Token};
use tern_codec::ReasonCode;
use tokio::sync::oneshot;

use super::write::owned;
use super::READ_CHUNK;

/// A message for a shard's thread.
pub(super) enum ToShard {
    Accept {
        link: Arc<Link>,
        data: BytesMut,
        peer: SocketAddr,
        identity: Option<String>,
        /// Not put to the authorization policy.
        trusted: bool,
    },
    Read {
        conn: ConnId,
        data: BytesMut,
    },
    Written {
        conn: ConnId,
        n: usize,
    },
    Closed {
        conn: ConnId,
    },
    Forward(Forward),
    Stats(oneshot::Sender<Stats>),
    /// A question or an act of the embedding's, run on the shard's core
    /// (see `BrokerHandle`).
    Run(super::local::OnShard),
    /// The retained messages matching a filter, for a client.
    Retained {
        client: tern_broker::policy::ClientInfo,
        filter: tern_codec::TopicFilter,
        limit: usize,
        reply: oneshot::Sender<Result<tern_broker::RetainedAnswer, ReasonCode>>,
    },
    Sys(Stats),
    Shutdown(oneshot::Sender<()>),
    /// Stop at once (the server is gone).
    Stop,
    /// The shard's changes up to this number are durable.
    Persisted(u64),
    /// The store's answer to a fetch.
    Fetched {
        session: tern_broker::SessionId,
        deliveries: Vec<tern_broker::durable::StoredDelivery>,
    },
    /// The store cannot write.
    StoreFailed,
    /// A plain TCP connection, for the shard's own poll, with what was read
    /// of it so far.
    AcceptNative {
        stream: mio::net::TcpStream,
        data: BytesMut,
        peer: SocketAddr,
    },
    Answer {
        token: Token,
        result: Result<(), ReasonCode>,
    },
}

/// The sending side of a shard's inbox: a channel, and a wake-up of the
/// shard's poll when the shard may be asleep (one per drain, not one per
/// message).
#[derive(Clone)]
pub(super) struct ShardTx {
    pub(super) tx: std::sync::mpsc::Sender<ToShard>,
    pub(super) waker: Arc<mio::Waker>,
    pub(super) notified: Arc<AtomicBool>,
}

impl ShardTx {
    pub(super) fn send(&self, msg: ToShard) -> Result<(), ()> {
        self.tx.send(msg).map_err(|_| ())?;
        if !self.notified.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
        Ok(())
    }
}

/// What a connection's task and its shard share: the connection's id once
/// the core accepted it, the bytes to write, the end, the read credit, and
/// the task's waker. Nothing is allocated while the queue is empty.
pub(super) struct Link {
    pub(super) state: std::sync::Mutex<LinkState>,
}

pub(super) struct LinkState {
    /// Set by the shard when the core accepted the connection.
    pub(super) conn: Option<ConnId>,
    pub(super) out: Vec<Bytes>,
    /// Close once `out` is written.
    pub(super) close: bool,
    /// Bytes the task may still hand to the shard that the core has not
    /// consumed: the task reads only while it has `READ_CHUNK` of credit.
    pub(super) credit: usize,
    pub(super) waker: Option<Waker>,
}

impl Link {
    pub(super) fn new(credit: usize) -> Link {
        Link {
            state: std::sync::Mutex::new(LinkState {
                conn: None,
                out: Vec::new(),
                close: false,
                credit,
                waker: None,
            }),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `f`; wakes the task (outside the lock) if `f` says so.
    pub(super) fn update(&self, f: impl FnOnce(&mut LinkState) -> bool) {
        let waker = {
            let mut st = self.lock();
            if f(&mut st) {
                st.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    pub(super) fn accepted(&self, conn: ConnId) {
        self.update(|st| {
            st.conn = Some(conn);
            true
        });
    }

    /// Queues bytes to write. The task is woken only when the queue was
    /// empty: with bytes already queued, it is either about to take them or
    /// waiting for the socket to take the ones it has.
    pub(super) fn push(&self, b: Bytes) {
        // The task may hold it a while (TLS, WebSocket framing): its own
        // copy, not a slice pinning the core's encoding chunk.
        let b = owned(b);
        self.update(|st| {
            st.out.push(b);
            st.out.len() == 1
        });
    }

    pub(super) fn close(&self) {
        self.update(|st| {
            st.close = true;
            true
        });
    }

    /// The core consumed `n` bytes: they may be read again.
    pub(super) fn give_credit(&self, n: usize) {
        self.update(|st| {
            let starved = st.credit < READ_CHUNK;
            st.credit += n;
            starved && st.credit >= READ_CHUNK
        });
    }
}
