//! MQTT connections into the broker, in-process: each is a 5.0 client of
//! the broker like any other (its CONNECT, the ACL, the limits), acting as
//! the HTTP request's user. Publishes share one connection per user;
//! every subscribe stream has its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tern_client::{ClientConfig, DisconnectReason};
use tern_tokio::{AsyncClient, ClientError, ClientOptions, Events, Transport};
use tokio::sync::OnceCell;

use crate::auth::User;
use crate::error::ApiError;
use crate::State;

/// Opens a connection as `user` (clean start, an id the broker assigns),
/// waiting for its CONNACK.
pub(crate) async fn open(
    state: &State,
    user: &User,
    peer: SocketAddr,
    capacity: usize,
    max_inflight: u16,
) -> Result<(AsyncClient, Events), ApiError> {
    let mut config = ClientConfig::new("");
    config.max_inflight = max_inflight;
    config.receive_maximum = max_inflight;
    config.max_queued = state.config.max_pending;
    // No keep alive: a pipe in the same process does not go quiet.
    config.keep_alive = std::time::Duration::ZERO;
    let options = ClientOptions {
        config,
        transport: Transport::Local {
            broker: state.broker.clone(),
            identity: user.name.clone(),
            peer,
            trusted: false,
        },
        reconnect: None,
        capacity,
        // A stream that falls behind skips the oldest: once it catches
        // up, it has the latest.
        drop_oldest: true,
        connect_timeout: std::time::Duration::from_secs(10),
    };
    let (client, mut events) = AsyncClient::start(options)
        .map_err(|e| ApiError::unavailable(format!("cannot open a connection: {e}")))?;
    match events.first_connection().await {
        Ok(_) => Ok((client, events)),
        Err(e) => Err(connect_error(&e)),
    }
}

/// Why a connection could not be had, as an answer.
pub(crate) fn connect_error(e: &ClientError) -> ApiError {
    match e {
        ClientError::Disconnected(DisconnectReason::Refused(code)) => {
            let mut e = ApiError::refused(*code, "the broker refused the connection");
            if matches!(e.status.as_u16(), 401 | 403) {
                // Anonymous access refused: ask for credentials.
                e.status = axum::http::StatusCode::UNAUTHORIZED;
            }
            e
        }
        other => ApiError::unavailable(format!("the broker is not reachable: {other}")),
    }
}

/// One publishing connection per user, opened on first use and dropped
/// when the broker ends it.
#[derive(Default)]
pub(crate) struct Pool {
    clients: Mutex<HashMap<Option<String>, Arc<OnceCell<AsyncClient>>>>,
}

impl Pool {
    /// `user`'s publishing connection.
    pub(crate) async fn get(
        &self,
        state: &Arc<State>,
        user: &User,
        peer: SocketAddr,
    ) -> Result<AsyncClient, ApiError> {
        let cell = self
            .clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user.name.clone())
            .or_default()
            .clone();
        let result = cell
            .get_or_try_init(|| async {
                let (client, mut events) =
                    open(state, user, peer, 1, state.config.publish_inflight).await?;
                // The connection's notices are read so that its end is
                // seen: the pool forgets it then.
                let (state, name, cell) = (state.clone(), user.name.clone(), cell.clone());
                tokio::spawn(async move {
                    while events.recv().await.is_some() {}
                    state.pool.forget(&name, &cell);
                });
                Ok::<_, ApiError>(client)
            })
            .await;
        match result {
            Ok(c) => Ok(c.clone()),
            Err(e) => {
                self.forget(&user.name, &cell);
                Err(e)
            }
        }
    }

    fn forget(&self, name: &Option<String>, cell: &Arc<OnceCell<AsyncClient>>) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.get(name).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            clients.remove(name);
        }
    }
}
