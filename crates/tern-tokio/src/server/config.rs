//! What the server runs: listeners, shards, the core's configuration and
//! the policies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::policy::Credentials;
use tern_broker::policy::{Authenticator, Authorizer};
use tern_broker::Config;
use tern_codec::ReasonCode;

use crate::transport::TlsSettings;

/// Builds one policy instance per shard.
pub type PolicyFactory<P> = Arc<dyn Fn() -> Box<P> + Send + Sync>;

/// What the server runs.
#[derive(Clone)]
pub struct ServerConfig {
    /// TCP listeners.
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners.
    pub tls: Vec<(SocketAddr, TlsSettings)>,
    /// WebSocket listeners: address and path (subprotocol `mqtt`).
    pub ws: Vec<(SocketAddr, String)>,
    /// New connections accepted per second at most; more are closed at
    /// once. `None`: no limit.
    pub max_connection_rate: Option<u32>,
    /// The broker core's configuration (`shard` and `forward` are set per
    /// shard by the server).
    pub broker: Config,
    /// Broker shards (`0`: one per available core but one, and at least
    /// one). With `persistence`, one: an acknowledgement does not yet wait
    /// for a forwarded copy's commit in another shard.
    pub shards: usize,
    /// How long a graceful shutdown waits for connections to flush.
    pub shutdown_grace: Duration,
    /// The authentication policy of each shard (`AllowAll` if `None`).
    pub authenticator: Option<PolicyFactory<dyn Authenticator>>,
    /// The authorization policy of each shard (`AllowAll` if `None`).
    pub authorizer: Option<PolicyFactory<dyn Authorizer>>,
    /// Checks credentials on a blocking thread, off the shards (for slow
    /// password hashes, files, databases): those of every CONNECT the
    /// `authenticator` answers with `Verdict::Ask`, or of every CONNECT
    /// when there is no `authenticator`. A quick `authenticator` in front
    /// keeps the cheap cases (anonymous clients, say) off that round trip.
    pub check_credentials: Option<CredentialCheck>,
    /// Where the durable state is kept (`None`: in memory only, lost at
    /// restart).
    pub persistence: Option<super::Persistence>,
}

/// A credentials check run off the shards' threads.
pub type CredentialCheck = Arc<dyn Fn(&Credentials) -> Result<(), ReasonCode> + Send + Sync>;

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls)
            .field("ws", &self.ws)
            .field("broker", &self.broker)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    /// Zero configuration: 127.0.0.1:1883, anonymous clients, the core's
    /// safe limits, a shard per core but one.
    fn default() -> ServerConfig {
        ServerConfig {
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            tls: Vec::new(),
            ws: Vec::new(),
            max_connection_rate: None,
            broker: Config::default(),
            shards: 0,
            shutdown_grace: Duration::from_secs(5),
            authenticator: None,
            authorizer: None,
            check_credentials: None,
            persistence: None,
        }
    }
}

pub(super) struct BoxedAuthn(pub(super) Box<dyn Authenticator>);
impl Authenticator for BoxedAuthn {
    fn authenticate(
        &mut self,
        c: &tern_broker::policy::Credentials,
    ) -> tern_broker::policy::Verdict {
        self.0.authenticate(c)
    }
}

pub(super) struct BoxedAuthz(pub(super) Box<dyn Authorizer>);
impl Authorizer for BoxedAuthz {
    fn publish(
        &mut self,
        c: &tern_broker::policy::ClientInfo,
        t: &tern_codec::TopicName,
    ) -> tern_broker::policy::Verdict {
        self.0.publish(c, t)
    }
    fn subscribe(
        &mut self,
        c: &tern_broker::policy::ClientInfo,
        f: &tern_codec::TopicFilter,
    ) -> tern_broker::policy::Verdict {
        self.0.subscribe(c, f)
    }
}
