//! A simulated network and virtual clock for testing Tern's state machines.
//!
//! [`Sim`] drives one [`Broker`] and any number of scripted clients. A
//! client is raw packets through the real codec: the test decides every
//! packet it sends, and reads every packet the broker sent back. Time is
//! virtual: [`Sim::advance`] jumps the clock, firing the broker's timers and
//! delivering bytes in transit in order, so a keep-alive test that spans
//! minutes runs in microseconds. No sockets, no threads, no sleeps.
//!
//! Links can have latency ([`Sim::set_latency`]), writes can be cut into
//! chunks ([`Sim::set_chunk`]) and a link can be dropped ([`Sim::kill`]).
//!
//! [`Sim::sharded`] makes several simulations, one broker instance each,
//! that share the production [`Router`](tern_broker::router::Router): the shards of one server (or the
//! nodes of a cluster), with messages crossing between them as the server
//! moves them.
//!
//! ```
//! use tern_sim::Sim;
//! use tern_codec::{Packet, ProtocolVersion};
//!
//! let mut sim = Sim::default();
//! let c = sim.client(ProtocolVersion::V5);
//! let ack = sim.connect(c, "doorbell", true);
//! assert!(!ack.session_present);
//! ```
//!
//! [`Net`] is the same idea for the client side: the broker core and real
//! `tern-client` state machines, packet by packet, with links a test can
//! cut after any packet.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod disk;
mod net;
mod shards;

pub use disk::{disk_matches, plain, plain_retained};
pub use net::{Net, PeerRef};
use shards::Fabric;

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_broker::durable::{Image, StoredRetained, StoredSession};
use tern_broker::router::{InstanceId, Report};
use tern_broker::{AuthStep, Broker, BrokerEvent, Config, ConnId, Token};
use tern_codec::{
    ConnAck, Connect, Decoder, MqttString, Packet, ProtocolVersion, ReasonCode, TopicName,
};

/// A client of the simulation, as returned by [`Sim::client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRef(usize);

#[derive(Debug)]
struct SimClient {
    conn: Option<ConnId>,
    version: ProtocolVersion,
    decoder: Decoder,
    /// Bytes from the broker not yet decoded.
    from_broker: BytesMut,
    /// Bytes delivered to the broker it has not consumed yet.
    at_broker: BytesMut,
    received: VecDeque<Packet>,
    closed: Option<ReasonCode>,
    /// A stalled client reads nothing: the broker's writes to it pile up
    /// unwritten.
    stalled: bool,
    unwritten: VecDeque<Bytes>,
}

impl SimClient {
    fn receive(&mut self, data: &[u8]) {
        self.from_broker.extend_from_slice(data);
        loop {
            match self.decoder.decode(&mut self.from_broker) {
                Ok(Some(p)) => self.received.push_back(p),
                Ok(None) => break,
                Err(e) => panic!("the broker sent a malformed packet: {e}"),
            }
        }
    }
}

#[derive(Debug)]
struct Transit {
    client: usize,
    to_broker: bool,
    data: Bytes,
}

/// A request the broker made of its embedding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Pass to [`Sim::answer`].
    pub token: Token,
    /// The event as the broker emitted it.
    pub event: BrokerEvent,
}

/// One broker, many scripted clients, a virtual clock.
#[derive(Debug)]
pub struct Sim {
    /// The broker under test.
    pub broker: Broker,
    now: Instant,
    start: Instant,
    clients: Vec<SimClient>,
    by_conn: BTreeMap<ConnId, usize>,
    transit: BTreeMap<(Instant, u64), Transit>,
    next_transit: u64,
    latency: Duration,
    chunk: Option<usize>,
    requests: VecDeque<Request>,
    dropped: Vec<(String, Option<TopicName>)>,
    transcript: Vec<(ClientRef, Bytes)>,
    /// Reports of a broker with `forward` that shares no router.
    reports: Vec<Report>,
    /// With `Config::durable`: the durable state, every change applied (and
    /// made durable) at once, and checked against the broker every step.
    disk: Option<Image>,
    /// The router shared with the other instances of [`Sim::sharded`].
    fabric: Option<(InstanceId, Rc<RefCell<Fabric>>)>,
}

impl Default for Sim {
    fn default() -> Sim {
        Sim::new(Config::default())
    }
}

impl Sim {
    /// A simulation of a broker with `config`.
    pub fn new(config: Config) -> Sim {
        // The one real clock reading: an origin for virtual time. Only
        // differences from it matter, so runs are deterministic.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        Sim::starting_at(config, start)
    }

    /// A simulation whose virtual clock starts at `start`.
    fn starting_at(mut config: Config, start: Instant) -> Sim {
        // TERN_SIM_DURABLE=1 runs every simulation durable: what the
        // broker does must not change, and its disk must match it at every
        // step (scripts/test runs the simulation tests both ways).
        if std::env::var_os("TERN_SIM_DURABLE").is_some_and(|v| v == "1") {
            config.durable = true;
            // Queues beyond two messages go to the disk and come back.
            config.queue_window = config.queue_window.min(2);
        }
        let config_durable = config.durable;
        Sim {
            broker: Broker::new(config, start),
            now: start,
            start,
            clients: Vec::new(),
            by_conn: BTreeMap::new(),
            transit: BTreeMap::new(),
            next_transit: 0,
            latency: Duration::ZERO,
            chunk: None,
            requests: VecDeque::new(),
            dropped: Vec::new(),
            transcript: Vec::new(),
            reports: Vec::new(),
            disk: config_durable.then(Image::new),
            fabric: None,
        }
    }

    /// Takes in what the router forwarded to this instance.
    pub fn sync(&mut self) {
        self.pump();
        self.deliver_due();
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// One-way latency of every link from now on.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = latency;
    }

    /// Cuts every write to the broker into chunks of `n` bytes (each handed
    /// over separately), or not at all with `None`.
    pub fn set_chunk(&mut self, n: Option<usize>) {
        self.chunk = n.map(|n| n.max(1));
    }

    /// Opens a transport to the broker for a client speaking `version`.
    ///
    /// # Panics
    ///
    /// If the broker refuses the transport (connection limit).
    pub fn client(&mut self, version: ProtocolVersion) -> ClientRef {
        self.try_client(version)
            .expect("broker accepts the transport")
    }

    /// Opens a transport, or `None` if the broker refuses it.
    pub fn try_client(&mut self, version: ProtocolVersion) -> Option<ClientRef> {
        let conn = self.broker.accept(self.now)?;
        let i = self.clients.len();
        self.clients.push(SimClient {
            conn: Some(conn),
            version,
            decoder: Decoder::client(version),
            from_broker: BytesMut::new(),
            at_broker: BytesMut::new(),
            received: VecDeque::new(),
            closed: None,
            stalled: false,
            unwritten: VecDeque::new(),
        });
        self.by_conn.insert(conn, i);
        self.pump();
        Some(ClientRef(i))
    }

    /// The protocol version the client speaks.
    pub fn version(&self, c: ClientRef) -> ProtocolVersion {
        self.clients[c.0].version
    }

    /// How many clients were opened so far.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The broker's id for the client's transport.
    pub fn conn(&self, c: ClientRef) -> Option<ConnId> {
        self.clients[c.0].conn
    }

    /// Sends CONNECT with `client_id` and `clean_start`, and returns the
    /// CONNACK.
    ///
    /// # Panics
    ///
    /// If the broker's first answer is not a CONNACK.
    pub fn connect(&mut self, c: ClientRef, client_id: &str, clean_start: bool) -> ConnAck {
        let v = self.clients[c.0].version;
        let mut connect = Connect::new(v, MqttString::from_str(client_id).expect("valid id"));
        connect.clean_start = clean_start;
        self.connect_with(c, connect)
    }

    /// Sends `connect` and returns the CONNACK.
    ///
    /// # Panics
    ///
    /// If the broker's first answer is not a CONNACK.
    pub fn connect_with(&mut self, c: ClientRef, connect: Connect) -> ConnAck {
        self.send(c, connect);
        match self.recv(c) {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Sends a packet from the client, encoded for its version.
    ///
    /// # Panics
    ///
    /// If the packet cannot be encoded (the test built an invalid one).
    pub fn send(&mut self, c: ClientRef, p: impl Into<Packet>) {
        let v = self.clients[c.0].version;
        let bytes = p.into().to_bytes(v).expect("test packet encodes");
        self.send_bytes(c, &bytes);
    }

    /// Sends raw bytes from the client.
    pub fn send_bytes(&mut self, c: ClientRef, bytes: &[u8]) {
        if self.clients[c.0].conn.is_none() {
            return;
        }
        let chunk = self.chunk.unwrap_or(bytes.len().max(1));
        for part in bytes.chunks(chunk) {
            self.transmit(c.0, true, Bytes::copy_from_slice(part));
        }
        self.settle();
    }

    /// The next packet the client received, if any.
    pub fn recv(&mut self, c: ClientRef) -> Option<Packet> {
        self.sync();
        self.clients[c.0].received.pop_front()
    }

    /// Every packet the client received and has not read yet.
    pub fn take(&mut self, c: ClientRef) -> Vec<Packet> {
        self.sync();
        self.clients[c.0].received.drain(..).collect()
    }

    /// Why the broker closed the client's transport, if it did.
    pub fn closed(&self, c: ClientRef) -> Option<ReasonCode> {
        self.clients[c.0].closed
    }

    /// Whether the client's transport is open.
    pub fn is_open(&self, c: ClientRef) -> bool {
        self.clients[c.0].conn.is_some()
    }

    /// Stops (`true`) or resumes the client's reading. While it is stalled
    /// the broker's writes to it are not written (the socket buffer is
    /// full); on resuming they all go through.
    pub fn stall(&mut self, c: ClientRef, stalled: bool) {
        self.clients[c.0].stalled = stalled;
        if !stalled {
            while let Some(data) = self.clients[c.0].unwritten.pop_front() {
                self.write(c.0, data);
            }
            self.settle();
        }
    }

    /// Drops the client's link without a DISCONNECT (the broker sees the
    /// transport close).
    pub fn kill(&mut self, c: ClientRef) {
        if let Some(conn) = self.clients[c.0].conn.take() {
            self.by_conn.remove(&conn);
            self.broker.handle_closed(conn, self.now);
            self.pump();
        }
    }

    /// Requests the broker made (authentication, authorization), oldest
    /// first.
    pub fn take_requests(&mut self) -> Vec<Request> {
        self.requests.drain(..).collect()
    }

    /// Messages the broker reported dropped: (client id, topic, if known).
    pub fn dropped(&self) -> &[(String, Option<TopicName>)] {
        &self.dropped
    }

    /// Every write of the broker so far, in order: to compare two runs byte
    /// for byte.
    pub fn transcript(&self) -> &[(ClientRef, Bytes)] {
        &self.transcript
    }

    /// What a broker with `forward` and no shared router reported
    /// ([`Broker::poll_report`]), oldest first.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// Every session, as [`Broker::export_sessions`] gives it; a durable
    /// broker's queues whole, with the messages it left to the disk.
    pub fn export_sessions(&self) -> Vec<StoredSession> {
        let mut out = self.broker.export_sessions();
        let Some(disk) = &self.disk else {
            return out;
        };
        let on_disk = disk.sessions();
        for s in &mut out {
            if s.spilled.count == 0 {
                continue;
            }
            if let Some(d) = on_disk.iter().find(|d| d.client_id == s.client_id) {
                // The disk has QoS 1 messages in flight as queued.
                let flying: Vec<u64> = s.inflight.iter().map(|(_, _, x)| x.id).collect();
                s.queued = d
                    .queued
                    .iter()
                    .filter(|x| !flying.contains(&x.id))
                    .cloned()
                    .collect();
                s.spilled = Default::default();
            }
        }
        out
    }

    /// Restores a session into the broker (and, when it is durable, into
    /// its disk, as a store that held it would have it).
    ///
    /// # Panics
    ///
    /// If the broker refuses it (a session with its client id exists).
    pub fn import_session(&mut self, stored: StoredSession) {
        if let Some(disk) = &mut self.disk {
            disk.put_session(stored.clone());
        }
        let now = self.now;
        self.broker
            .import_session(stored, now)
            .expect("the session imports");
        self.broker.handle_timeout(now);
        self.pump();
    }

    /// Restores a retained message (as [`Sim::import_session`]).
    pub fn import_retained(&mut self, stored: StoredRetained) {
        if let Some(disk) = &mut self.disk {
            disk.put_retained(stored.clone());
        }
        self.broker.import_retained(stored, self.now);
        self.pump();
    }

    /// Answers a request, then lets the connection's buffered input through.
    pub fn answer(&mut self, token: Token, verdict: Result<(), ReasonCode>) {
        self.broker.answer(token, verdict, self.now);
        if let Some(&i) = self.by_conn.get(&token.conn()) {
            self.feed(i);
        }
        self.pump();
    }

    /// Answers an authentication request with the next step of an
    /// enhanced authentication.
    pub fn answer_auth(&mut self, token: Token, step: AuthStep) {
        self.broker.answer_auth(token, step, self.now);
        if let Some(&i) = self.by_conn.get(&token.conn()) {
            self.feed(i);
        }
        self.pump();
    }

    /// Moves the clock forward by `d`, running every timer and delivery due
    /// on the way, in order.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            let next_timer = self.broker.poll_timeout().filter(|&t| t <= target);
            let next_transit = self
                .transit
                .keys()
                .next()
                .map(|k| k.0)
                .filter(|&t| t <= target);
            let next = match (next_timer, next_transit) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            self.now = self.now.max(next);
            self.broker.handle_timeout(self.now);
            self.pump();
            self.deliver_due();
        }
        self.now = target;
        self.broker.handle_timeout(self.now);
        self.pump();
    }

    /// Delivers whatever is in transit now (with zero latency, everything).
    fn settle(&mut self) {
        self.pump();
        self.deliver_due();
    }

    fn transmit(&mut self, client: usize, to_broker: bool, data: Bytes) {
        let at = self.now + self.latency;
        self.transit.insert(
            (at, self.next_transit),
            Transit {
                client,
                to_broker,
                data,
            },
        );
        self.next_transit += 1;
    }

    fn deliver_due(&mut self) {
        while let Some(entry) = self.transit.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let t = entry.remove();
            let cl = &mut self.clients[t.client];
            if cl.conn.is_none() && t.to_broker {
                continue;
            }
            if t.to_broker {
                cl.at_broker.extend_from_slice(&t.data);
                self.feed(t.client);
            } else {
                cl.receive(&t.data);
            }
            self.pump();
        }
    }

    fn feed(&mut self, i: usize) {
        let Some(conn) = self.clients[i].conn else {
            return;
        };
        let mut buf = std::mem::take(&mut self.clients[i].at_broker);
        self.broker.handle_read(conn, &mut buf, self.now);
        self.clients[i].at_broker = buf;
    }

    /// The broker's bytes leave for the client: they are in transit, and
    /// the broker hears they were written.
    fn write(&mut self, i: usize, data: Bytes) {
        let n = data.len();
        self.transmit(i, false, data);
        if let Some(conn) = self.clients[i].conn {
            self.broker.handle_written(conn, n, self.now);
            if !self.clients[i].at_broker.is_empty() {
                self.feed(i);
            }
        }
    }

    /// Drains the broker's outputs: transmits go in transit, events are
    /// acted on.
    fn pump(&mut self) {
        loop {
            let mut any = self.route() | self.persist();
            while let Some(t) = self.broker.poll_transmit() {
                any = true;
                if let Some(&i) = self.by_conn.get(&t.conn) {
                    self.transcript.push((ClientRef(i), t.data.clone()));
                    if self.clients[i].stalled {
                        self.clients[i].unwritten.push_back(t.data);
                    } else {
                        self.write(i, t.data);
                    }
                }
            }
            while let Some(e) = self.broker.poll_event() {
                any = true;
                match e {
                    BrokerEvent::Close { conn, reason } => {
                        if let Some(i) = self.by_conn.remove(&conn) {
                            self.clients[i].conn = None;
                            self.clients[i].closed = Some(reason);
                        }
                    }
                    BrokerEvent::Dropped { client_id, topic } => {
                        self.dropped.push((client_id, topic))
                    }
                    BrokerEvent::Connected { .. } => {}
                    BrokerEvent::Authenticate { token, .. }
                    | BrokerEvent::AuthContinue { token, .. }
                    | BrokerEvent::AuthorizePublish { token, .. }
                    | BrokerEvent::AuthorizeSubscribe { token, .. } => {
                        self.requests.push_back(Request { token, event: e });
                    }
                    other => panic!("unexpected event {other:?}"),
                }
            }
            if !any {
                break;
            }
        }
        // Every step of every simulation checks the broker's invariants.
        if let Err(e) = self.broker.check_invariants() {
            panic!("broker invariant broken: {e}");
        }
        self.check_router();
        if let Some(disk) = &self.disk {
            // Beside other shards, every shard keeps the retained set and
            // the publishing shard stores it: only sessions compare.
            let retained = self.fabric.is_none();
            if let Err(e) = disk_matches(&self.broker, disk, retained) {
                panic!("{e}");
            }
        }
        if self.latency.is_zero() {
            // Deliver to clients at once; the client side never answers on
            // its own, so this cannot loop.
            let due: Vec<_> = self
                .transit
                .iter()
                .filter(|(k, t)| k.0 <= self.now && !t.to_broker)
                .map(|(k, _)| *k)
                .collect();
            for k in due {
                let t = self.transit.remove(&k).expect("present");
                let cl = &mut self.clients[t.client];
                cl.receive(&t.data);
            }
        }
    }

    /// With `Config::durable`: every change is applied to the disk and made
    /// durable at once. Returns whether there were any.
    fn persist(&mut self) -> bool {
        let Some(disk) = &mut self.disk else {
            return false;
        };
        let mut last = None;
        while let Some((n, change)) = self.broker.poll_change() {
            disk.apply(&change);
            last = Some(n);
        }
        if let Some(n) = last {
            self.broker.handle_persisted(n);
        }
        let mut fetched = false;
        while let Some(f) = self.broker.poll_fetch() {
            fetched = true;
            let got = disk.fetch(&f.client_id, f.from, f.max);
            let now = self.now;
            self.broker.handle_fetched(f.session, got, now);
        }
        last.is_some() || fetched
    }
}
