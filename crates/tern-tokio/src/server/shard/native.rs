//! A shard's plain TCP connections: accepted from the shared listeners,
//! probed until their CONNECT is whole, read into the shard's scratch
//! buffer, written with one `writev` per turn, closed with a linger.

use std::io;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_broker::ConnId;
use tracing::{debug, warn};

use super::super::accept::FirstPacket;
use super::super::write::{advance, io_slices, own, MAX_SLICES};
use super::{Endpoint, Shard, ToShard, LISTENERS, PROBES};

/// A new plain TCP connection whose first packet is not whole yet.
pub(super) struct Probe {
    pub(super) stream: mio::net::TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) buf: BytesMut,
    pub(super) first: FirstPacket,
    /// Tells this probe from a later one with the same key.
    pub(super) serial: u64,
}

/// Reads of one connection per readiness event before the others get a
/// turn.
pub(super) const READS_PER_TURN: usize = 4;

/// A plain TCP connection owned by a shard.
pub(super) struct Native {
    pub(super) stream: mio::net::TcpStream,
    pub(super) conn: ConnId,
    /// Input the core has not consumed (a partial packet, or input held
    /// while the core waits): boxed, as it is usually empty.
    pub(super) pending: Option<Box<BytesMut>>,
    pub(super) out: Vec<Bytes>,
    /// Reading stopped with input perhaps left in the socket: the core did
    /// not keep up, or the connection had its turn.
    pub(super) unread: bool,
    /// Closed by the core: the last bytes are being written, then the
    /// peer's are drained until it closes too, or until its deadline.
    pub(super) closing: bool,
}

impl Native {
    /// Keeps what the core left unread; nothing is kept for nothing.
    pub(super) fn keep(&mut self, pending: BytesMut) {
        self.pending = (!pending.is_empty()).then(|| Box::new(pending));
    }
}

impl Shard {
    /// Accepts what the listeners have, up to a turn's worth.
    pub(super) fn accept(&mut self, i: usize, now: Instant) {
        for _ in 0..64 {
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((stream, peer)) => {
                    if !self.cfg.admit(&peer) {
                        continue;
                    }
                    debug!(shard = self.index, %peer, "new connection");
                    let _ = stream.set_nodelay(true);
                    self.probe(stream, peer, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of file descriptors and the like: the next
                    // readiness (or the next connection's) tries again.
                    warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
        // More may wait: the listener is edge-triggered.
        self.again.push(LISTENERS - i);
    }

    /// Waits for a new connection's first packet, to know its shard.
    pub(super) fn probe(
        &mut self,
        mut stream: mio::net::TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) {
        let entry = self.probes.vacant_entry();
        let k = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            mio::Token(PROBES + k),
            mio::Interest::READABLE,
        ) {
            warn!(%peer, error = %e, "cannot poll the connection: closed");
            self.cfg.release();
            return;
        }
        self.probe_serial += 1;
        let until = now + self.cfg.connect_timeout;
        entry.insert(Probe {
            stream,
            peer,
            buf: BytesMut::new(),
            first: FirstPacket::new(self.cfg.max_packet_size),
            serial: self.probe_serial,
        });
        self.probe_deadlines
            .push_back((until, k, self.probe_serial));
        // The CONNECT may be there already.
        self.again.push(PROBES + k);
    }

    /// Reads a new connection until its first packet is whole, then hands
    /// it to its shard (perhaps this one).
    pub(super) fn read_probe(&mut self, k: usize, now: Instant) {
        loop {
            let Some(p) = self.probes.get_mut(k) else {
                return;
            };
            match std::io::Read::read(&mut p.stream, &mut self.scratch) {
                Ok(0) => return self.drop_probe(k, "connection ended before CONNECT"),
                Ok(len) => p.buf.extend_from_slice(&self.scratch[..len]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_probe(k, "connection failed before CONNECT"),
            }
            let Some(id) = p.first.client_id(&p.buf) else {
                continue;
            };
            let shard = self.cfg.shard(id.as_deref(), self.peers.len());
            let mut p = self.probes.remove(k);
            if shard == self.index {
                self.accept_native(p.stream, p.buf, p.peer, now);
            } else {
                let _ = self.poll.registry().deregister(&mut p.stream);
                let handed = self.peers[shard].send(ToShard::AcceptNative {
                    stream: p.stream,
                    data: p.buf,
                    peer: p.peer,
                });
                if handed.is_err() {
                    self.cfg.release();
                }
            }
            return;
        }
    }

    /// Lets go of new connections that sent no CONNECT in time, and of the
    /// deadlines of those that did (up to the first one still waiting), so
    /// that a burst of connections does not leave its deadlines queued for
    /// the whole connect timeout.
    pub(super) fn expire_probes(&mut self, now: Instant) {
        while let Some(&(until, k, serial)) = self.probe_deadlines.front() {
            let waiting = self.probes.get(k).is_some_and(|p| p.serial == serial);
            if waiting && until > now {
                return;
            }
            self.probe_deadlines.pop_front();
            if waiting {
                self.drop_probe(k, "no CONNECT in time");
            }
        }
    }

    /// Lets go of a new connection that will not reach a core.
    pub(super) fn drop_probe(&mut self, k: usize, why: &str) {
        let mut p = self.probes.remove(k);
        let _ = self.poll.registry().deregister(&mut p.stream);
        self.cfg.release();
        // After the slot is given back (a test waits for this line).
        debug!(shard = self.index, peer = %p.peer, "{why}");
    }

    /// Takes a connection into this shard's core and poll (it may be
    /// registered already, as this shard's probe).
    pub(super) fn accept_native(
        &mut self,
        mut stream: mio::net::TcpStream,
        data: BytesMut,
        peer: SocketAddr,
        now: Instant,
    ) {
        let k = self.native.vacant_key();
        let interest = mio::Interest::READABLE | mio::Interest::WRITABLE;
        let registry = self.poll.registry();
        let registered = registry
            .reregister(&mut stream, mio::Token(k), interest)
            .or_else(|_| registry.register(&mut stream, mio::Token(k), interest));
        if let Err(e) = registered {
            warn!(%peer, error = %e, "cannot poll the connection: closed");
            self.cfg.release();
            return;
        }
        let Some(conn) = self.core_accept(now) else {
            warn!(%peer, "connection limit reached: closed");
            let _ = self.poll.registry().deregister(&mut stream);
            return;
        };
        debug!(shard = self.index, conn = conn.get(), %peer, "accepted");
        self.native.insert(Native {
            stream,
            conn,
            pending: None,
            out: Vec::new(),
            unread: false,
            closing: false,
        });
        self.conns.insert(conn, Endpoint::native(k));
        self.native[k].keep(data);
        self.consume(k, now);
        // Bytes that came after the first read wait in the socket.
        self.again.push(k);
    }

    /// Has the core read a native connection's pending input.
    pub(super) fn consume(&mut self, k: usize, now: Instant) {
        let Some(n) = self.native.get_mut(k) else {
            return;
        };
        if n.closing {
            return;
        }
        let Some(pending) = n.pending.take() else {
            return;
        };
        self.consume_buf(k, *pending, now);
    }

    /// Has the core read `pending`, a native connection's unread input.
    pub(super) fn consume_buf(&mut self, k: usize, mut pending: BytesMut, now: Instant) {
        let Some(conn) = self.native.get(k).map(|n| n.conn) else {
            return;
        };
        self.broker.handle_read(conn, &mut pending, now);
        if let Some(n) = self.native.get_mut(k) {
            // Keep a partial packet; let go of an emptied buffer.
            if n.conn == conn {
                n.keep(pending);
            }
        }
    }

    /// Reads a native connection until the socket is empty, the core stops
    /// keeping up, or the connection had its turn.
    pub(super) fn read_native(&mut self, k: usize, now: Instant) {
        for _ in 0..READS_PER_TURN {
            let Some(n) = self.native.get_mut(k) else {
                return;
            };
            if !n.closing && n.pending.as_ref().is_some_and(|p| p.len() >= self.budget) {
                // The core holds this input back; it says when to go on.
                n.unread = true;
                return;
            }
            n.unread = false;
            let read = std::io::Read::read(&mut n.stream, &mut self.scratch);
            match read {
                Ok(0) => return self.drop_native(k, now),
                Ok(len) => {
                    // A short read emptied the socket: no read to learn
                    // that it would block (the next bytes raise a new edge).
                    let drained = len < self.scratch.len();
                    if n.closing {
                        // The peer's last words, dropped.
                        if drained {
                            return;
                        }
                        continue;
                    }
                    let data = &self.scratch[..len];
                    let buf = match n.pending.take() {
                        Some(mut p) => {
                            p.extend_from_slice(data);
                            *p
                        }
                        None => BytesMut::from(data),
                    };
                    self.consume_buf(k, buf, now);
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_native(k, now),
            }
        }
        if let Some(n) = self.native.get_mut(k) {
            n.unread = true;
            self.again.push(k);
        }
    }

    /// The socket is gone (closed by the peer, or failed).
    pub(super) fn drop_native(&mut self, k: usize, now: Instant) {
        let mut n = self.native.remove(k);
        let _ = self.poll.registry().deregister(&mut n.stream);
        if !n.closing {
            self.forget(n.conn);
            self.broker.handle_closed(n.conn, now);
            // After the slot is given back (a test waits for this line).
            debug!(
                shard = self.index,
                conn = n.conn.get(),
                "the client closed the connection"
            );
        }
    }

    /// Writes what a native connection has queued, as far as the socket
    /// takes it, and tells the core.
    pub(super) fn flush(&mut self, k: usize, now: Instant) {
        let Some(n) = self.native.get_mut(k) else {
            return;
        };
        let mut written = 0;
        let mut failed = false;
        while !n.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let (count, offered) = io_slices(&n.out, &mut slices);
            match std::io::Write::write_vectored(&mut n.stream, &slices[..count]) {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(len) => {
                    written += len;
                    advance(&mut n.out, len);
                    // A short write filled the socket: wait for it to drain
                    // rather than learn again that it would block.
                    if len < offered {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if n.out.is_empty() {
            // Give the drained queue's memory back.
            n.out = Vec::new();
        } else {
            // Behind: what waits is copied out of the core's shared
            // encoding chunks, so a slow reader pins only its own bytes.
            own(&mut n.out);
        }
        let (conn, closing, done) = (n.conn, n.closing, n.out.is_empty());
        if failed {
            return self.drop_native(k, now);
        }
        if closing {
            if done {
                let _ = n.stream.shutdown(std::net::Shutdown::Write);
            }
            return;
        }
        if written > 0 {
            self.broker.handle_written(conn, written, now);
            self.resume(conn, now);
        }
    }

    /// Closed by the core: write what is left, then wait (briefly) for the
    /// peer to close, so that unread input does not turn the close into a
    /// reset that loses the last packet.
    pub(super) fn close_native(&mut self, k: usize, now: Instant) {
        if let Some(n) = self.native.get_mut(k) {
            let until = now + self.grace.min(Duration::from_secs(5));
            n.closing = true;
            n.pending = None;
            // The same delay for all: the queue stays in deadline order.
            self.lingering.push_back((until, k, n.conn));
        }
        self.flush(k, now);
    }

    /// Lets go of closing connections whose time is up.
    pub(super) fn linger(&mut self, now: Instant) {
        while let Some(&(until, k, conn)) = self.lingering.front() {
            if until > now {
                return;
            }
            self.lingering.pop_front();
            // The key may have gone, or been reused by a new connection.
            if self
                .native
                .get(k)
                .is_some_and(|n| n.conn == conn && n.closing)
            {
                self.drop_native(k, now);
            }
        }
    }
}
