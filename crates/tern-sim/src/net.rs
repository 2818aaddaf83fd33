//! [`Net`]: the broker core and real `tern-client` state machines, wired
//! packet by packet on a virtual clock.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_broker::durable::{Change, Fetch, Image, StoredDelivery};
use tern_broker::{Broker, BrokerEvent, Config, ConnId, SessionId};
use tern_client::{Client, ClientEvent, State};

/// A client of a [`Net`], as returned by [`Net::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerRef(usize);

#[derive(Debug)]
struct Peer {
    client: Client,
    /// The link, as the client sees it: up until it closes or hears the
    /// broker closed.
    conn: Option<ConnId>,
    /// Bytes delivered to the broker it has not consumed yet.
    at_broker: BytesMut,
    /// Bytes delivered to the client it has not consumed yet.
    at_client: BytesMut,
    events: Vec<ClientEvent>,
    /// Packets from the broker to this client vanish (a half-open link).
    deaf: bool,
}

#[derive(Debug)]
enum Cargo {
    /// One whole packet.
    Packet(Bytes),
    /// The sender closed after the packets before this.
    Close,
}

#[derive(Debug)]
struct Transit {
    peer: usize,
    /// The broker connection the link had when this was sent.
    conn: ConnId,
    to_broker: bool,
    cargo: Cargo,
}

/// One [`Broker`] and any number of [`Client`]s on a simulated network.
///
/// Packets travel one at a time in the order they were sent, so a test can
/// stop the world after any packet ([`Net::step`]) and cut a link
/// ([`Net::cut`]) exactly there. Time is virtual ([`Net::advance`]): the
/// broker's and every client's timers fire in order. The broker's
/// invariants are checked after every step.
///
/// ```
/// use tern_sim::Net;
/// use tern_client::{Client, ClientConfig, ClientEvent};
///
/// let mut net = Net::default();
/// let lights = net.add(Client::new(ClientConfig::new("lights")));
/// net.open(lights);
/// net.run();
/// assert!(matches!(net.events(lights)[..], [ClientEvent::Connected { .. }]));
/// ```
#[derive(Debug)]
pub struct Net {
    /// The broker.
    pub broker: Broker,
    config: Config,
    /// The durable store, with [`Config::durable`].
    disk: Option<Disk>,
    start: Instant,
    now: Instant,
    peers: Vec<Peer>,
    /// Connections the broker has open, to their client.
    by_conn: BTreeMap<ConnId, usize>,
    transit: VecDeque<Transit>,
    delivered: u64,
    log: Vec<(PeerRef, bool, Bytes)>,
}

impl Default for Net {
    fn default() -> Net {
        Net::new(Config::default())
    }
}

impl Net {
    /// A network around a broker with `config`.
    pub fn new(mut config: Config) -> Net {
        // As for `Sim`: TERN_SIM_DURABLE=1 makes every broker durable.
        if std::env::var_os("TERN_SIM_DURABLE").is_some_and(|v| v == "1") {
            config.durable = true;
            // Queues beyond two messages go to the disk and come back.
            config.queue_window = config.queue_window.min(2);
        }
        // The one real clock reading: an origin for virtual time.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut broker = Broker::new(config.clone(), now);
        let disk = config.durable.then(|| {
            broker.set_wall_clock(now, WALL_START);
            Disk::default()
        });
        Net {
            broker,
            config,
            disk,
            start: now,
            now,
            peers: Vec::new(),
            by_conn: BTreeMap::new(),
            transit: VecDeque::new(),
            delivered: 0,
            log: Vec::new(),
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Whether the broker's changes are made durable as soon as they come
    /// (the default), or only at [`Net::sync`]. A broker with
    /// [`Config::durable`] sends nothing that depends on a change (a PUBACK,
    /// a SUBACK, ...) before it is durable.
    ///
    /// # Panics
    ///
    /// If the broker is not durable.
    pub fn set_auto_sync(&mut self, auto: bool) {
        self.disk.as_mut().expect("a durable broker").auto = auto;
        self.pump();
    }

    /// Makes every change so far durable (an fsync), and lets through what
    /// waited for it.
    pub fn sync(&mut self) {
        if let Some(d) = &mut self.disk {
            if let Some(n) = d.sync() {
                self.broker.handle_persisted(n);
            }
        }
        self.pump();
    }

    /// The durable state as the disk has it (synced changes only).
    ///
    /// # Panics
    ///
    /// If the broker is not durable.
    pub fn disk(&self) -> &Image {
        &self.disk.as_ref().expect("a durable broker").synced
    }

    /// The changes synced since the last call, in order: to feed another
    /// store the same changes.
    ///
    /// # Panics
    ///
    /// If the broker is not durable.
    pub fn take_changes(&mut self) -> Vec<(u64, Change)> {
        self.store();
        std::mem::take(&mut self.disk.as_mut().expect("a durable broker").log)
    }

    /// Checks that the disk holds what the broker holds, when every change
    /// is synced: the sessions that outlive their connections and the
    /// retained messages, value for value. Does nothing while changes wait.
    ///
    /// # Panics
    ///
    /// If they differ: a change the broker made was not reported.
    pub fn check_disk(&mut self) {
        self.store();
        let Some(disk) = &self.disk else { return };
        if !disk.pending.is_empty() {
            return;
        }
        if let Err(e) = crate::disk_matches(&self.broker, &disk.synced, true) {
            panic!("{e}");
        }
    }

    /// The broker's process dies and starts again: every link drops (the
    /// clients hear it), what was in transit is lost, and so is every
    /// change not yet synced. The new broker is rebuilt from the disk, at
    /// the same instant (or `down` later).
    ///
    /// # Panics
    ///
    /// If the broker is not durable.
    pub fn crash(&mut self, down: Duration) {
        let disk = self.disk.as_mut().expect("a durable broker");
        disk.pending.clear();
        disk.fetches.clear();
        disk.answers.clear();
        let image = disk.synced.clone();
        self.transit.clear();
        self.by_conn.clear();
        for p in &mut self.peers {
            if p.conn.take().is_some() {
                p.client.handle_closed(self.now);
            }
            p.at_broker.clear();
            p.at_client.clear();
        }
        self.now += down;
        let wall = WALL_START + (self.now - self.start).as_millis() as u64;
        let mut broker = Broker::new(self.config.clone(), self.now);
        broker.set_wall_clock(self.now, wall);
        for s in image.sessions() {
            broker
                .import_session(s, self.now)
                .expect("a stored session imports");
        }
        for r in image.retained() {
            broker.import_retained(r, self.now);
        }
        // What fell due while it was down.
        broker.handle_timeout(self.now);
        self.broker = broker;
        self.pump();
    }

    /// Adds a client, not yet linked.
    pub fn add(&mut self, client: Client) -> PeerRef {
        self.peers.push(Peer {
            client,
            conn: None,
            at_broker: BytesMut::new(),
            at_client: BytesMut::new(),
            events: Vec::new(),
            deaf: false,
        });
        PeerRef(self.peers.len() - 1)
    }

    /// The client, to call its API (publish, subscribe, ack, ...). Call
    /// [`Net::run`] or [`Net::step`] afterwards to move its packets.
    pub fn client(&mut self, p: PeerRef) -> &mut Client {
        &mut self.peers[p.0].client
    }

    /// Opens a link for a client and lets it send CONNECT (not delivered
    /// yet).
    pub fn open(&mut self, p: PeerRef) {
        let conn = self
            .broker
            .accept(self.now)
            .expect("below the connection limit");
        let peer = &mut self.peers[p.0];
        assert!(peer.conn.is_none(), "link already open");
        peer.conn = Some(conn);
        peer.at_broker.clear();
        peer.at_client.clear();
        self.by_conn.insert(conn, p.0);
        peer.client.connect(self.now);
        self.pump();
    }

    /// Whether the client's link is up.
    pub fn is_linked(&self, p: PeerRef) -> bool {
        self.peers[p.0].conn.is_some()
    }

    /// Cuts the link now: what is in transit on it is lost, both ends hear
    /// the transport closed.
    pub fn cut(&mut self, p: PeerRef) {
        self.transit.retain(|t| t.peer != p.0);
        self.peers[p.0].conn = None;
        let open: Vec<ConnId> = self
            .by_conn
            .iter()
            .filter(|(_, &i)| i == p.0)
            .map(|(&c, _)| c)
            .collect();
        for conn in open {
            self.by_conn.remove(&conn);
            self.broker.handle_closed(conn, self.now);
        }
        self.peers[p.0].client.handle_closed(self.now);
        self.pump();
    }

    /// Packets delivered so far, all links together.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Every packet delivered so far: the client, whether it went to the
    /// broker, and its bytes.
    pub fn log(&self) -> &[(PeerRef, bool, Bytes)] {
        &self.log
    }

    /// Makes the link of `p` drop everything the broker sends it (the
    /// broker writes into a void), or stop doing so.
    pub fn set_deaf(&mut self, p: PeerRef, deaf: bool) {
        self.peers[p.0].deaf = deaf;
    }

    /// Packets in transit.
    pub fn in_transit(&self) -> usize {
        self.transit.len()
    }

    /// Delivers the oldest packet in transit; `false` when none is.
    pub fn step(&mut self) -> bool {
        // What the test made the clients do since the last step.
        self.pump();
        // The store's answers read so far arrive after the next delivery:
        // the queue may change meanwhile, as it does while a store reads.
        let answers = self
            .disk
            .as_mut()
            .map(|d| std::mem::take(&mut d.answers))
            .unwrap_or_default();
        let Some(t) = self.transit.pop_front() else {
            if answers.is_empty() {
                return false;
            }
            self.answer(answers);
            return true;
        };
        self.delivered += 1;
        let peer = &mut self.peers[t.peer];
        match (t.to_broker, t.cargo) {
            (true, Cargo::Packet(data)) => {
                self.log.push((PeerRef(t.peer), true, data.clone()));
                if self.by_conn.contains_key(&t.conn) {
                    peer.at_broker.extend_from_slice(&data);
                    let mut buf = std::mem::take(&mut peer.at_broker);
                    self.broker.handle_read(t.conn, &mut buf, self.now);
                    self.peers[t.peer].at_broker = buf;
                }
            }
            (false, Cargo::Packet(data)) => {
                self.log.push((PeerRef(t.peer), false, data.clone()));
                if peer.conn == Some(t.conn) && !peer.deaf {
                    peer.at_client.extend_from_slice(&data);
                    let mut buf = std::mem::take(&mut peer.at_client);
                    peer.client.handle_read(&mut buf, self.now);
                    self.peers[t.peer].at_client = buf;
                }
            }
            (true, Cargo::Close) => {
                if self.by_conn.remove(&t.conn).is_some() {
                    self.broker.handle_closed(t.conn, self.now);
                }
            }
            (false, Cargo::Close) => {
                if peer.conn == Some(t.conn) {
                    peer.conn = None;
                    peer.client.handle_closed(self.now);
                }
            }
        }
        self.answer(answers);
        true
    }

    /// Hands the store's answers to the broker.
    fn answer(&mut self, answers: Vec<(SessionId, Vec<StoredDelivery>)>) {
        for (session, got) in answers {
            self.broker.handle_fetched(session, got, self.now);
        }
        self.pump();
    }

    /// Delivers packets until none is in transit.
    pub fn run(&mut self) {
        let mut n = 0u64;
        while self.step() {
            n += 1;
            assert!(n < 10_000_000, "the network does not settle");
        }
    }

    /// Moves the clock forward by `d`, running every timer of the broker and
    /// the clients, and every delivery, in order.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        self.run();
        loop {
            let next = self
                .peers
                .iter()
                .filter_map(|p| p.client.poll_timeout())
                .chain(self.broker.poll_timeout())
                .min()
                .filter(|&t| t <= target);
            let Some(next) = next else {
                break;
            };
            self.now = self.now.max(next);
            self.fire();
            self.run();
        }
        self.now = target;
        self.fire();
        self.run();
    }

    fn fire(&mut self) {
        self.broker.handle_timeout(self.now);
        for p in &mut self.peers {
            p.client.handle_timeout(self.now);
        }
        self.pump();
    }

    /// Events the client emitted since the last call.
    pub fn events(&mut self, p: PeerRef) -> Vec<ClientEvent> {
        self.pump();
        std::mem::take(&mut self.peers[p.0].events)
    }

    /// Moves every output into transit and acts on events.
    fn pump(&mut self) {
        loop {
            let mut any = self.store();
            for (i, peer) in self.peers.iter_mut().enumerate() {
                while let Some(data) = peer.client.poll_transmit() {
                    any = true;
                    if let Some(conn) = peer.conn {
                        for packet in split(data) {
                            self.transit.push_back(Transit {
                                peer: i,
                                conn,
                                to_broker: true,
                                cargo: Cargo::Packet(packet),
                            });
                        }
                    }
                }
                while let Some(e) = peer.client.poll_event() {
                    any = true;
                    peer.events.push(e);
                }
                // The client gave up on the connection: its adapter closes
                // the transport after writing what it had.
                if peer.client.state() == State::Disconnected {
                    if let Some(conn) = peer.conn.take() {
                        any = true;
                        self.transit.push_back(Transit {
                            peer: i,
                            conn,
                            to_broker: true,
                            cargo: Cargo::Close,
                        });
                    }
                }
            }
            while let Some(t) = self.broker.poll_transmit() {
                any = true;
                let n = t.data.len();
                if let Some(&i) = self.by_conn.get(&t.conn) {
                    for packet in split(t.data) {
                        self.transit.push_back(Transit {
                            peer: i,
                            conn: t.conn,
                            to_broker: false,
                            cargo: Cargo::Packet(packet),
                        });
                    }
                }
                self.broker.handle_written(t.conn, n, self.now);
            }
            while let Some(e) = self.broker.poll_event() {
                any = true;
                if let BrokerEvent::Close { conn, .. } = e {
                    if let Some(i) = self.by_conn.remove(&conn) {
                        self.transit.push_back(Transit {
                            peer: i,
                            conn,
                            to_broker: false,
                            cargo: Cargo::Close,
                        });
                    }
                }
            }
            if !any {
                break;
            }
        }
        if let Err(e) = self.broker.check_invariants() {
            panic!("broker invariant broken: {e}");
        }
        // A disk that syncs every change holds what the broker holds.
        if self.disk.as_ref().is_some_and(|d| d.auto) {
            self.check_disk();
        }
    }
}

impl Net {
    /// Takes the broker's changes to the disk (and syncs them at once when
    /// the disk syncs by itself). Returns whether there were any.
    fn store(&mut self) -> bool {
        let Some(disk) = &mut self.disk else {
            return false;
        };
        let mut any = false;
        while let Some(change) = self.broker.poll_change() {
            any = true;
            disk.pending.push(change);
        }
        if disk.auto {
            if let Some(n) = disk.sync() {
                self.broker.handle_persisted(n);
            }
        }
        while let Some(f) = self.broker.poll_fetch() {
            disk.fetches.push(f);
        }
        // A store reads what it was given before the request; this disk
        // reads once that is synced.
        if disk.pending.is_empty() {
            for f in std::mem::take(&mut disk.fetches) {
                any = true;
                let got = disk.synced.fetch(&f.client_id, f.from, f.max);
                disk.answers.push((f.session, got));
            }
        }
        any
    }
}

/// The wall clock when a network starts: 2026-01-01.
const WALL_START: u64 = 1_767_225_600_000;

/// A disk that loses what was not synced when the broker crashes.
#[derive(Debug)]
struct Disk {
    synced: Image,
    pending: Vec<(u64, Change)>,
    /// Requests for spilled messages, answered once what came before them
    /// is synced.
    fetches: Vec<Fetch>,
    /// Their answers, read and on their way.
    answers: Vec<(SessionId, Vec<StoredDelivery>)>,
    auto: bool,
    /// Every change synced, for [`Net::take_changes`].
    log: Vec<(u64, Change)>,
}

impl Default for Disk {
    fn default() -> Disk {
        Disk {
            synced: Image::new(),
            pending: Vec::new(),
            fetches: Vec::new(),
            answers: Vec::new(),
            auto: true,
            log: Vec::new(),
        }
    }
}

impl Disk {
    /// Makes the pending changes durable; the number of the last, if any.
    fn sync(&mut self) -> Option<u64> {
        let last = self.pending.last().map(|c| c.0);
        for (n, c) in self.pending.drain(..) {
            self.synced.apply(&c);
            self.log.push((n, c));
        }
        last
    }
}

/// Splits bytes holding whole packets into one `Bytes` per packet.
fn split(mut data: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let mut len = 0usize;
        let mut shift = 0;
        let mut i = 1;
        loop {
            let b = data[i];
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        out.push(data.split_to(i + len));
    }
    out
}
