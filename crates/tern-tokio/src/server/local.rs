//! The broker from its own process: in-process connections (MQTT over an
//! in-memory pipe) and direct questions to the core. For adapters that
//! live in the broker's process (the HTTP gateway, a rules engine): a
//! connection is like any other (a CONNECT, the ACL, limits, a session), so
//! an adapter reaches the core through the same inputs and outputs as a
//! client on the network; a question (the retained messages of a filter)
//! is answered by a shard's core, with its policies.

use std::io;
use std::net::SocketAddr;

use tern_broker::policy::ClientInfo;
use tern_broker::RetainedAnswer;
use tern_codec::{ReasonCode, TopicFilter};
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};

/// How many bytes each direction of an in-process pipe holds.
const PIPE: usize = 64 * 1024;

/// What the handle asks of the running server.
pub(super) enum Request {
    /// A new in-process connection.
    Connect {
        io: DuplexStream,
        identity: Option<String>,
        peer: SocketAddr,
    },
    /// The retained messages of a filter.
    Retained {
        client: ClientInfo,
        filter: TopicFilter,
        limit: usize,
        reply: oneshot::Sender<Result<RetainedAnswer, ReasonCode>>,
    },
}

/// The broker, from its own process: see [`Server::handle`](super::Server::handle).
/// Cheap to clone. Requests made before the server runs wait for it.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerHandle")
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the server has stopped")
}

impl BrokerHandle {
    // Unbounded: requests come from the process itself, each bounded by
    // its caller (an HTTP request, a stream slot), and are taken at once.
    pub(super) fn new() -> (BrokerHandle, mpsc::UnboundedReceiver<Request>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (BrokerHandle { tx }, rx)
    }

    /// A new connection's byte stream: write a CONNECT to it, as to a
    /// socket. `identity`, when given, is the connection's user name,
    /// already authenticated by the caller (as a client certificate's
    /// common name is): the CONNECT's user name and password are not
    /// checked, and the ACL applies to that user. `peer` is the address
    /// logged for it (an HTTP adapter passes its client's).
    ///
    /// The stream ends at once if the server has stopped or is at its
    /// connection limit.
    pub fn connect(&self, identity: Option<String>, peer: SocketAddr) -> io::Result<DuplexStream> {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        self.tx
            .send(Request::Connect {
                io: theirs,
                identity,
                peer,
            })
            .map_err(|_| stopped())?;
        Ok(ours)
    }

    /// The retained messages matching `filter` that `client` may read (the
    /// ACL's verdict on subscribing to it), at most `limit`, by topic.
    ///
    /// # Errors
    ///
    /// `Ok(Err(code))`: refused by the ACL. `Err`: the server has stopped.
    pub async fn retained(
        &self,
        client: ClientInfo,
        filter: TopicFilter,
        limit: usize,
    ) -> io::Result<Result<RetainedAnswer, ReasonCode>> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Retained {
                client,
                filter,
                limit,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }
}
