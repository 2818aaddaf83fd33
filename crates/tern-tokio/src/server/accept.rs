//! Admission: the connection rate and limit over every listener and shard,
//! the shard a client id lives on, and the probe that reads a new
//! connection's CONNECT to learn its client id.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tern_codec::{Decoder, Packet};
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::warn;

use super::config::ServerConfig;
use super::{now, READ_CHUNK};

pub(super) struct ConnConfig {
    pub(super) max_packet_size: u32,
    pub(super) connect_timeout: Duration,
    /// Round robin for clients without a client id.
    pub(super) next: AtomicUsize,
    /// How long a closed connection's last writes may take.
    pub(super) close_grace: Duration,
    /// New connections per second, over every listener and shard.
    pub(super) rate: std::sync::Mutex<RateLimit>,
    /// Connections at most, over every shard (each core has the same
    /// limit, which alone would allow one per shard), those still waiting
    /// for their CONNECT included.
    pub(super) max_connections: usize,
    /// Connections held, from their accept to their close.
    pub(super) connections: AtomicUsize,
}

impl ConnConfig {
    /// The limits of `server`, with no connection held yet.
    pub(super) fn new(server: &ServerConfig) -> ConnConfig {
        ConnConfig {
            max_packet_size: server.broker.max_packet_size,
            connect_timeout: server.broker.connect_timeout,
            next: AtomicUsize::new(0),
            close_grace: server.shutdown_grace,
            rate: std::sync::Mutex::new(RateLimit::new(server.max_connection_rate)),
            max_connections: server.broker.max_connections,
            connections: AtomicUsize::new(0),
        }
    }

    /// Whether a new connection from `peer` may stay: within the rate and
    /// the connection limit. It takes a slot at once, before its CONNECT,
    /// so connections that never send one are bounded too; whoever holds
    /// the connection gives the slot back ([`ConnConfig::release`]).
    pub(super) fn admit(&self, peer: &SocketAddr) -> bool {
        let within_rate = self
            .rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(peer);
        if !within_rate {
            return false;
        }
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.release();
            warn!(%peer, "connection limit reached: closed");
            return false;
        }
        true
    }

    /// Whether an in-process connection may stay: within the connection
    /// limit (the rate limit is for the network). Takes a slot, as
    /// [`ConnConfig::admit`] does.
    pub(super) fn admit_local(&self) -> bool {
        if self.connections.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.release();
            warn!("connection limit reached: in-process connection refused");
            return false;
        }
        true
    }

    /// A connection's slot is free again.
    pub(super) fn release(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// The shard of a client id (round robin without one).
    pub(super) fn shard(&self, client_id: Option<&[u8]>, shards: usize) -> usize {
        match client_id {
            Some(id) if !id.is_empty() => shard_of(id, shards),
            _ => self.next.fetch_add(1, Ordering::Relaxed) % shards,
        }
    }
}

/// FNV-1a: a stable spread of client ids over shards.
pub(super) fn shard_of(client_id: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in client_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Finds a new connection's client id in its first packet. It keeps the
/// fixed header it has read, so the packet is decoded (from a copy) once it
/// is whole, not again after every read: a CONNECT trickling in byte by
/// byte costs one copy, not one per byte.
pub(super) struct FirstPacket(Decoder);

impl FirstPacket {
    pub(super) fn new(max_packet_size: u32) -> FirstPacket {
        FirstPacket(Decoder::server().with_max_packet_size(max_packet_size))
    }

    /// `None` while the first packet in `buf` is not whole; then the client
    /// id of a CONNECT that has one (`Some(None)` for anything else,
    /// malformed included: the core answers it).
    pub(super) fn client_id(&mut self, buf: &BytesMut) -> Option<Option<Vec<u8>>> {
        if self.0.pending_len().is_some_and(|total| buf.len() < total) {
            return None;
        }
        match self.0.decode(&mut buf.clone()) {
            Ok(Some(Packet::Connect(c))) => Some(Some(c.client_id.as_bytes().to_vec())),
            Ok(Some(_)) | Err(_) => Some(None),
            Ok(None) => None,
        }
    }

    /// How much to read next, having `have`: small reads until the
    /// packet's length is known (most CONNECTs are a few dozen bytes, and
    /// every connection passes through here).
    pub(super) fn want(&self, have: usize) -> usize {
        self.0
            .pending_len()
            .map_or(512, |total| total.saturating_sub(have))
            .clamp(64, READ_CHUNK)
    }
}

/// Reads until the first packet is complete; returns its client id if it
/// is a CONNECT with one.
pub(super) async fn first_packet<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: u32,
) -> io::Result<Option<Vec<u8>>> {
    let mut first = FirstPacket::new(max);
    loop {
        if let Some(id) = first.client_id(buf) {
            return Ok(id);
        }
        buf.reserve(first.want(buf.len()));
        if rd.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// At most `max` new connections per second.
pub(super) struct RateLimit {
    pub(super) max: Option<u32>,
    pub(super) window: Instant,
    pub(super) count: u32,
}

impl RateLimit {
    pub(super) fn new(max: Option<u32>) -> RateLimit {
        RateLimit {
            max,
            window: now(),
            count: 0,
        }
    }

    /// Whether a connection from `peer` may stay; logs the first refusal
    /// of each second (or the log would be the flood).
    pub(super) fn admit(&mut self, peer: &SocketAddr) -> bool {
        let Some(max) = self.max else { return true };
        let now = now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        if self.count == max + 1 {
            warn!(%peer, "connection rate limit reached: closing the excess");
        }
        self.count <= max
    }
}
