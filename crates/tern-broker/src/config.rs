//! What the broker allows and how much it keeps: every limit has a safe
//! default.

use std::time::Duration;

use tern_codec::{QoS, DEFAULT_MAX_PACKET_SIZE};

/// What happens to a message for a session whose queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFullPolicy {
    /// Keep the queue as it is and drop the new message.
    #[default]
    DropNewest,
    /// Drop the oldest queued message to make room for the new one.
    DropOldest,
}

/// The broker's configuration.
///
/// `Config::default()` is a broker that accepts anonymous clients and keeps
/// every queue, table and buffer bounded. Change fields with struct update
/// syntax: `Config { max_inflight: 10, ..Config::default() }`.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// The largest packet accepted from a client (advertised to 5.0 clients
    /// as Maximum Packet Size).
    pub max_packet_size: u32,
    /// QoS 2 PUBLISH packets a client may have unreleased at once (our
    /// Receive Maximum). 5.0 clients exceeding it are disconnected with
    /// 0x93; 3.1.1 clients are disconnected.
    pub receive_maximum: u16,
    /// QoS 1 and 2 messages in flight to one client at most, whatever the
    /// client's own Receive Maximum says.
    pub max_inflight: u16,
    /// Messages queued for one session (offline, or with a full window).
    pub max_queued_messages: usize,
    /// Payload bytes queued for one session.
    pub max_queued_bytes: usize,
    /// What to do with a message for a full queue.
    pub queue_full: QueueFullPolicy,
    /// Bytes the broker may have handed out for one connection that the
    /// embedding has not yet reported written
    /// ([`Broker::handle_written`](crate::Broker::handle_written)). Beyond
    /// it the connection is a slow consumer: QoS 0 messages for it are
    /// dropped, QoS 1/2 messages wait in its session queue, and its input is
    /// not read (so a client that sends without reading stalls itself, not
    /// the broker). `None` turns the accounting off.
    pub max_unwritten_bytes: Option<usize>,
    /// Whether QoS 0 messages are queued for offline persistent sessions.
    pub queue_qos0_offline: bool,
    /// The longest a session is kept after its connection closes, in
    /// seconds. Applies to 3.1.1 persistent sessions (which ask for
    /// "forever") and caps the Session Expiry Interval of 5.0 clients.
    /// `u32::MAX` means no limit.
    pub max_session_expiry: u32,
    /// If set, the keep alive every client must use (sent to 5.0 clients as
    /// Server Keep Alive; 3.1.1 clients keep their own).
    pub server_keep_alive: Option<u16>,
    /// If set, the longest keep alive a client may have, in seconds
    /// (Mosquitto's `max_keepalive`): a 5.0 client asking for more, or for
    /// none (0), is told to use this one (Server Keep Alive in CONNACK).
    /// 3.1 and 3.1.1 have no way to tell a client its keep alive, and a
    /// server that timed a client out sooner than the client's own keep
    /// alive would drop clients that keep to it: they keep their own.
    pub max_keep_alive: Option<u16>,
    /// Topic aliases a 5.0 client may set on its PUBLISH packets.
    pub topic_alias_maximum: u16,
    /// The highest QoS clients may publish and be granted.
    pub maximum_qos: QoS,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Whether filters with `+` or `#` are accepted.
    pub wildcard_subscriptions: bool,
    /// Whether `$share/...` filters are accepted.
    pub shared_subscriptions: bool,
    /// Whether 5.0 Subscription Identifiers are accepted.
    pub subscription_identifiers: bool,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Connections (with or without CONNECT yet) open at once.
    pub max_connections: usize,
    /// Sessions kept at once, connected or not. A CONNECT that would create
    /// one more is refused with Quota exceeded (0x97; "server unavailable"
    /// on 3.1.1).
    pub max_sessions: usize,
    /// Retained messages kept at once.
    pub max_retained_messages: usize,
    /// Payload bytes of retained messages kept at once.
    pub max_retained_bytes: usize,
    /// Levels in a topic name or filter. 200, as Mosquitto allows: matching
    /// is iterative (no recursion to overflow) and costs per level of the
    /// topic, so deep topics cost their publisher, not the broker.
    pub max_topic_levels: usize,
    /// Bytes in a topic name or filter (the protocol allows 65535).
    pub max_topic_length: usize,
    /// Bytes in a client identifier.
    pub max_client_id_len: usize,
    /// Interval at which `$SYS` topics are published; `None` turns them off.
    pub sys_interval: Option<Duration>,
    /// The version string published on `$SYS/broker/version`.
    pub version: &'static str,
    /// Whether a client's connection and disconnection are published (QoS
    /// 0, not retained) on `$SYS/broker/clients/{client id}/connected` and
    /// `.../disconnected`, with `{"client_id": ..., "username": ...}`: how
    /// rules and dashboards learn presence. A client id that cannot be a
    /// topic level (with `+` or `#` in it) is not published.
    pub presence_events: bool,
    /// Which shard this broker instance is, when a server runs several
    /// (one per core). Session ids carry it, so they are unique across
    /// shards.
    pub shard: u16,
    /// Whether this instance shares a [`Router`](crate::router::Router)
    /// with others (the shards of a server): it reports its subscriptions
    /// and every message published on it
    /// ([`Broker::poll_report`](crate::Broker::poll_report)), leaves shared
    /// groups' turns to the router, and takes what the router forwards
    /// ([`Broker::handle_forward`](crate::Broker::handle_forward)).
    pub forward: bool,
    /// Whether the durable state (sessions that outlive their connection,
    /// their subscriptions and messages, inbound QoS 2 ids, retained
    /// messages, wills) is reported as [`Change`](crate::durable::Change)s
    /// ([`Broker::poll_change`](crate::Broker::poll_change)), and nothing
    /// that depends on a change is sent before the embedding says it is
    /// durable ([`Broker::handle_persisted`](crate::Broker::handle_persisted)).
    pub durable: bool,
    /// With `durable`: at most this many queued messages of a connected
    /// session are held in memory (none of an offline one's); the rest
    /// stay in the store only, and the broker asks for them
    /// ([`Broker::poll_fetch`](crate::Broker::poll_fetch)) as the queue
    /// drains. Memory stays bounded however much offline sessions have
    /// waiting; `max_queued_messages` and `max_queued_bytes` still bound
    /// each whole queue.
    pub queue_window: usize,
    /// Seeds the hash tables keyed by what clients choose (client ids,
    /// topic levels). Fixed by default, so that runs repeat; a broker
    /// facing the network should use a random seed, so that nobody can
    /// pick keys that collide.
    pub hash_seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            connect_timeout: Duration::from_secs(10),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            receive_maximum: 1024,
            max_inflight: 100,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            queue_full: QueueFullPolicy::DropNewest,
            max_unwritten_bytes: Some(1024 * 1024),
            queue_qos0_offline: false,
            max_session_expiry: u32::MAX,
            server_keep_alive: None,
            max_keep_alive: None,
            topic_alias_maximum: 64,
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            wildcard_subscriptions: true,
            shared_subscriptions: true,
            subscription_identifiers: true,
            max_subscriptions: 1000,
            max_connections: 100_000,
            max_sessions: 1_000_000,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_topic_levels: 200,
            max_topic_length: 65535,
            max_client_id_len: 256,
            sys_interval: Some(Duration::from_secs(10)),
            version: concat!("tern ", env!("CARGO_PKG_VERSION")),
            presence_events: false,
            shard: 0,
            forward: false,
            durable: false,
            queue_window: 1000,
            hash_seed: 0,
        }
    }
}
